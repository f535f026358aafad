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
