/**
 * Dirty byte ranges of one file, kept sorted and non-overlapping. Sequential appends copy
 * into the spare capacity of the last extent (capacity doubles up to MAX_CHUNK), so a
 * stream of 4 KiB writes costs one memcpy each and flushes as a few large writes.
 */
export interface Extent {
  off: number;
  len: number;
  /** Backing memory; bytes [0, len) are data, [len, cap) spare capacity for appends. */
  buf: Buffer;
  /** How much of buf may be used. 0 spare capacity when the memory is shared with a split piece. */
  cap: number;
}

const MAX_CHUNK = 1 << 20;

export class ExtentMap {
  private extents: Extent[] = [];
  private bytes = 0;

  get size(): number {
    return this.bytes;
  }

  get count(): number {
    return this.extents.length;
  }

  get isEmpty(): boolean {
    return this.extents.length === 0;
  }

  /** Highest offset covered plus one (0 when empty). */
  get end(): number {
    const last = this.extents[this.extents.length - 1];
    return last ? last.off + last.len : 0;
  }

  /** Copies data in at off (the caller's buffer may die after this returns). Returns the change in dirty bytes. */
  write(off: number, data: Uint8Array): number {
    const n = data.length;
    if (n === 0) return 0;
    const exts = this.extents;
    const last = exts[exts.length - 1];
    // Fast path: a sequential append into the last extent's spare capacity.
    if (last && off === last.off + last.len && last.len + n <= last.cap) {
      last.buf.set(data, last.len);
      last.len += n;
      this.bytes += n;
      return n;
    }
    const sequential = last !== undefined && off === last.off + last.len;
    const removed = this.cut(off, off + n);
    let cap = n;
    if (sequential) {
      // Growing a sequential stream: give the next extent room to absorb the following writes.
      cap = Math.max(n, Math.min(MAX_CHUNK, last.cap * 2));
    }
    const buf = Buffer.allocUnsafe(cap);
    buf.set(data, 0);
    this.insert({ off, len: n, buf, cap });
    this.bytes += n;
    return n - removed;
  }

  /** Drops everything at or beyond size. Returns the bytes dropped. */
  truncate(size: number): number {
    return this.cut(size, Number.POSITIVE_INFINITY);
  }

  /** Removes all extents and returns them (they are never modified afterwards). */
  takeAll(): Extent[] {
    const out = this.extents;
    for (const e of out) e.cap = e.len;
    this.extents = [];
    this.bytes = 0;
    return out;
  }

  /**
   * Puts extents back underneath the current ones (used when a flush failed: the data taken
   * for it is older than anything written since). Returns the change in dirty bytes (bytes of
   * old not covered by newer data).
   */
  restoreUnder(old: Extent[]): number {
    const sizeBefore = this.bytes;
    const newer = this.takeAll();
    for (const e of old) this.write(e.off, e.buf.subarray(0, e.len));
    for (const e of newer) this.write(e.off, e.buf.subarray(0, e.len));
    return this.bytes - sizeBefore;
  }

  /** The extents intersecting [off, off+len), in order. */
  overlapping(off: number, len: number): Extent[] {
    return overlappingIn(this.extents, off, len);
  }

  all(): readonly Extent[] {
    return this.extents;
  }

  /** Removes [from, to) from all extents. Returns the bytes removed. */
  private cut(from: number, to: number): number {
    const exts = this.extents;
    let i = firstEndingAfter(exts, from);
    let removed = 0;
    while (i < exts.length && exts[i]!.off < to) {
      const e = exts[i]!;
      const eEnd = e.off + e.len;
      if (e.off >= from && eEnd <= to) {
        exts.splice(i, 1);
        removed += e.len;
        continue;
      }
      if (e.off < from && eEnd > to) {
        // The cut is inside e: split into a left and a right piece sharing memory.
        const right: Extent = {
          off: to,
          len: eEnd - to,
          buf: e.buf.subarray(to - e.off, e.len),
          cap: eEnd - to,
        };
        e.len = from - e.off;
        e.cap = e.len;
        exts.splice(i + 1, 0, right);
        removed += to - from;
        break;
      }
      if (e.off < from) {
        removed += eEnd - from;
        e.len = from - e.off;
        e.cap = e.len;
        i++;
        continue;
      }
      // e starts inside the cut and ends after it: keep its tail.
      const drop = to - e.off;
      removed += drop;
      e.buf = e.buf.subarray(drop);
      e.off = to;
      e.len -= drop;
      e.cap = e.len;
      i++;
    }
    this.bytes -= removed;
    return removed;
  }

  private insert(ext: Extent): void {
    const exts = this.extents;
    const last = exts[exts.length - 1];
    if (!last || last.off < ext.off) {
      exts.push(ext);
      return;
    }
    let lo = 0;
    let hi = exts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (exts[mid]!.off < ext.off) lo = mid + 1;
      else hi = mid;
    }
    exts.splice(lo, 0, ext);
  }
}

function firstEndingAfter(exts: readonly Extent[], off: number): number {
  let lo = 0;
  let hi = exts.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = exts[mid]!;
    if (e.off + e.len <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export function overlappingIn(exts: readonly Extent[], off: number, len: number): Extent[] {
  const out: Extent[] = [];
  const end = off + len;
  for (let i = firstEndingAfter(exts, off); i < exts.length && exts[i]!.off < end; i++) out.push(exts[i]!);
  return out;
}

/** Copies the parts of extents that fall in [off, off+target.length) into target. */
export function overlay(target: Buffer, off: number, exts: readonly Extent[]): void {
  const end = off + target.length;
  for (const e of exts) {
    const from = Math.max(off, e.off);
    const to = Math.min(end, e.off + e.len);
    if (from < to) e.buf.copy(target, from - off, from - e.off, to - e.off);
  }
}
