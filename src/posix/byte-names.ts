/**
 * Names are bytes (docs/architecture.md, "Names are bytes"). A Linux name is any bytes but '/'
 * and NUL; Node decodes them as UTF-8 with U+FFFD for every byte that is not, and encodes a
 * string path as UTF-8 again, so a name like "a\xffb" came back as "a\xef\xbf\xbdb": another
 * name. twinfs carries such a byte as a lone low surrogate U+DC80..U+DCFF (U+DC00 + the byte:
 * Python's "surrogateescape", PEP 383); UTF-8 never encodes a surrogate, so every byte string
 * has exactly one string and back. native/common/byte-names.h is the same codec in C (the FUSE
 * layer and the posix addon); byte-paths.ts applies it at node:fs.
 */

/** A lone U+DC80..U+DCFF: a byte that is not UTF-8. */
const ESCAPED_BYTE = /(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/;

/** Whether s holds a byte that is not UTF-8 (so node:fs must get it as a Buffer). */
export function hasRawBytes(s: string): boolean {
  return ESCAPED_BYTE.test(s);
}

/** The bytes s stands for. */
export function bytesOf(s: string): Buffer {
  if (!hasRawBytes(s)) return Buffer.from(s, 'utf8');
  const out = Buffer.allocUnsafe(s.length * 3);
  let m = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        m += out.write(s.slice(i, i + 2), m, 'utf8');
        i++;
        continue;
      }
    }
    if (c >= 0xdc80 && c <= 0xdcff) out[m++] = c - 0xdc00;
    else m += out.write(s[i], m, 'utf8');
  }
  return out.subarray(0, m);
}

/** The string of a name's bytes: UTF-8 where they are, U+DC00 + byte where not. */
export function nameOf(b: Buffer): string {
  const s = b.toString('utf8');
  if (!s.includes('\uFFFD')) return s;
  let out = '';
  let i = 0;
  while (i < b.length) {
    const k = sequenceAt(b, i);
    if (k === 0) {
      out += String.fromCharCode(0xdc00 + b[i]);
      i++;
    } else {
      out += b.toString('utf8', i, i + k);
      i += k;
    }
  }
  return out;
}

/** A path as node:fs must get it: s itself, or its bytes when it holds one that is not UTF-8. */
export function fsPath(s: string): string | Buffer {
  return hasRawBytes(s) ? bytesOf(s) : s;
}

/** Length of the well-formed UTF-8 sequence at b[i], 0 when none starts there (byte-names.h). */
function sequenceAt(b: Buffer, i: number): number {
  const n = b.length - i;
  const c = b[i];
  const cont = (j: number) => (b[i + j] & 0xc0) === 0x80;
  if (c < 0x80) return 1;
  if (c < 0xc2) return 0;
  if (c < 0xe0) return n >= 2 && cont(1) ? 2 : 0;
  if (c < 0xf0) {
    if (n < 3 || !cont(1) || !cont(2)) return 0;
    if (c === 0xe0 && b[i + 1] < 0xa0) return 0;
    if (c === 0xed && b[i + 1] >= 0xa0) return 0;
    return 3;
  }
  if (c < 0xf5) {
    if (n < 4 || !cont(1) || !cont(2) || !cont(3)) return 0;
    if (c === 0xf0 && b[i + 1] < 0x90) return 0;
    if (c === 0xf4 && b[i + 1] >= 0x90) return 0;
    return 4;
  }
  return 0;
}
