import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { holeThrough, zeros } from '../posix/sparse.js';

/** Files from this size on are stored from the previous copy plus their changed ranges. */
export const RANGED_MIN_BYTES = 8 << 20;

/** A piece of the new content: from the split mirror, or from the previous stored copy. */
export interface Piece {
  from: 'mirror' | 'stored';
  start: number;
  /** Exclusive. */
  end: number;
}

/**
 * The new content of a large file as pieces: the changed ranges (and anything past the previous
 * size) from the mirror, the rest from the previous snapshot's stored copy. Undefined when the
 * ranges leave too little unchanged to be worth it (more than half changed).
 */
export function piecesOf(
  size: number,
  prevSize: number,
  changed: Array<[number, number]>,
): Piece[] | undefined {
  const fromMirror: Array<[number, number]> = [];
  for (const [a, b] of changed) {
    const s = Math.min(a, size);
    const e = Math.min(b, size);
    if (e > s) fromMirror.push([s, e]);
  }
  if (size > prevSize) fromMirror.push([prevSize, size]);
  fromMirror.sort((x, y) => x[0] - y[0]);
  const pieces: Piece[] = [];
  let at = 0;
  let mirrorBytes = 0;
  for (const [a, b] of fromMirror) {
    if (b <= at) continue;
    const s = Math.max(a, at);
    if (s > at) pieces.push({ from: 'stored', start: at, end: s });
    pieces.push({ from: 'mirror', start: s, end: b });
    mirrorBytes += b - s;
    at = b;
  }
  if (at < size) pieces.push({ from: 'stored', start: at, end: size });
  return mirrorBytes * 2 > size ? undefined : pieces;
}

/**
 * The pieces as one byte stream: mirror pieces read from fh in 1 MiB reads, stored pieces
 * through openStored (the target's ranged read). Counts what it read from the mirror.
 */
export async function* piecesStream(
  pieces: Piece[],
  fh: FileHandle,
  openStored: (start: number, endInclusive: number) => Promise<Readable>,
  onMirrorBytes: (n: number) => void,
): AsyncGenerator<Buffer> {
  // Holes are told apart only within the copy's size (past it a read comes up short, as before).
  let size: number | undefined;
  for (const p of pieces) {
    if (p.from === 'mirror') {
      size ??= (await fh.stat()).size;
      for (let off = p.start; off < p.end; ) {
        const len = Math.min(1 << 20, p.end - off);
        // A hole of the split copy (a file grown by truncate, a punched range) is zeros: not
        // read from the mirror; the bytes handed on are read-only.
        if (off + len <= size && holeThrough(fh.fd, off, off + len)) {
          off += len;
          yield zeros(len);
          continue;
        }
        const buf = Buffer.allocUnsafe(len);
        const { bytesRead } = await fh.read(buf, 0, len, off);
        if (bytesRead === 0) throw Object.assign(new Error('short read'), { code: 'ESHORT' });
        onMirrorBytes(bytesRead);
        off += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    } else {
      let got = 0;
      for await (const chunk of await openStored(p.start, p.end - 1)) {
        got += (chunk as Buffer).length;
        yield chunk as Buffer;
      }
      if (got !== p.end - p.start)
        throw Object.assign(new Error(`stored copy gave ${got} of ${p.end - p.start} bytes`), {
          code: 'ESHORT',
        });
    }
  }
}
