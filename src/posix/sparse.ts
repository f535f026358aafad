import { posix } from './native.js';

const ENXIO = -6;

/**
 * The data of fd within [from, to): [start, end) spans in order, found with SEEK_DATA and
 * SEEK_HOLE; what lies between them is a hole (reads as zeros, takes no space). A filesystem
 * without those seeks (EINVAL, EOPNOTSUPP) answers one span, all of [from, to). The file may
 * change meanwhile (a live primary): the spans are what it held when asked, as a read would be.
 */
export function dataSpans(fd: number, from: number, to: number): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  const addon = posix();
  for (let at = from; at < to; ) {
    const d = addon.seekData(fd, at, false);
    if (d === ENXIO) break; // no data at or after `at`: the rest is a hole, or past the end
    if (d < 0) return spans.length === 0 ? [[from, to]] : [...spans, [at, to]];
    if (d >= to) break;
    const h = addon.seekData(fd, d, true);
    // ENXIO: the file shrank below d meanwhile; nothing more to read.
    if (h === ENXIO) break;
    const end = h < 0 ? to : Math.min(h, to);
    if (end <= d) break;
    spans.push([d, end]);
    at = end;
  }
  return spans;
}

/** The holes of [from, to) that dataSpans left out: the complement of spans in that range. */
export function holesBetween(
  spans: Array<[number, number]>,
  from: number,
  to: number,
): Array<[number, number]> {
  const holes: Array<[number, number]> = [];
  let at = from;
  for (const [a, b] of spans) {
    if (a > at) holes.push([at, a]);
    at = Math.max(at, b);
  }
  if (at < to) holes.push([at, to]);
  return holes;
}

/**
 * Whether [from, to) of fd holds no data: a hole (or past the end) by SEEK_DATA. False where the
 * filesystem has no such seek, or any error: then the range is to be read.
 */
export function holeThrough(fd: number, from: number, to: number): boolean {
  const d = posix().seekData(fd, from, false);
  return d === ENXIO || d >= to;
}

/** What a read into a caller's buffer gave: bytes read, or a hole of the file filled with zeros. */
export type ReadResult = number | { hole: number };

/**
 * Reads a file of `size` bytes from its start into callers' buffers, one call after the other,
 * without reading its holes: where the file has no data (dataSpans) the buffer is filled with
 * zeros and the answer is `{ hole: n }` instead of a count, so a caller may also skip what zeros
 * need not cost (the backup's chunk ids, docs/architecture.md "Sparse files in backups"). A read
 * of a hole on ext4 or XFS costs what a read of cached data does (a page of zeros allocated,
 * cleared and copied per 4 KiB). With `sparse` false (the file's allocated blocks cover its
 * size), or on a filesystem without the seeks, everything is read. A read that comes up short
 * (the file shrank) answers 0, the end, as a plain read would.
 *
 * @param read reads up to `length` bytes at `position` into buf at offset (a FileHandle's read)
 */
export function sparseReader(
  fd: number,
  size: number,
  sparse: boolean,
  read: (buf: Buffer, offset: number, length: number, position: number) => Promise<number>,
): { next(buf: Buffer, offset: number, length: number): Promise<ReadResult> } {
  const spans = sparse ? dataSpans(fd, 0, size) : [[0, size] as [number, number]];
  let at = 0;
  let i = 0;
  return {
    async next(buf, offset, length) {
      const want = Math.min(length, size - at);
      if (want <= 0) return 0;
      while (i < spans.length && spans[i]![1] <= at) i++;
      const span = spans[i];
      if (span === undefined || span[0] > at) {
        const n = Math.min(want, (span?.[0] ?? size) - at);
        buf.fill(0, offset, offset + n);
        at += n;
        return { hole: n };
      }
      const n = await read(buf, offset, Math.min(want, span[1] - at), at);
      at += n;
      return n;
    },
  };
}

let zeroBuf = Buffer.alloc(0);

/** n zero bytes, read only (one buffer shared by every caller, grown to the largest n asked for). */
export function zeros(n: number): Buffer {
  if (zeroBuf.length < n) zeroBuf = Buffer.alloc(Math.max(n, 1 << 20));
  return zeroBuf.subarray(0, n);
}
