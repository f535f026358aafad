import { posix } from '../posix/native.js';

const ENXIO = -6;

/** What a read into a caller's buffer gave: bytes read, or a hole of the file filled with zeros. */
export type ReadResult = number | { hole: number };

/**
 * Reads a file of `size` bytes from its start into callers' buffers, one call after the other,
 * without reading its holes: where the file has none of its data (SEEK_DATA / SEEK_HOLE say so)
 * the buffer is filled with zeros and the answer is `{ hole: n }` instead of a count, so the
 * caller may skip what zeros need not cost (their chunk ids, docs/architecture.md "Sparse files
 * in backups"). A read of a hole on ext4 or XFS costs what a read of data from the page cache
 * does (a page of zeros allocated, cleared and copied per 4 KiB): the first full backup of a
 * 15 GiB image with 200 KiB of data read 15 GiB. Files that are not sparse (allocated blocks
 * cover their size) and filesystems without the seeks are read as before.
 *
 * @param read reads up to `length` bytes at `position` into buf at offset (a FileHandle's read)
 * @param sparse whether to look for holes: the file's allocated bytes (st_blocks × 512) are
 *   fewer than its size
 */
export function sparseReader(
  fd: number,
  size: number,
  sparse: boolean,
  read: (buf: Buffer, offset: number, length: number, position: number) => Promise<number>,
): { next(buf: Buffer, offset: number, length: number): Promise<ReadResult>; readonly at: number } {
  let at = 0;
  // [dataFrom, dataTo): the data span `at` lies in, as last asked.
  let dataFrom = 0;
  let dataTo = sparse ? 0 : Number.POSITIVE_INFINITY;
  let seeks = sparse;
  const addon = sparse ? posixOrNull() : null;
  if (!addon) seeks = false;
  return {
    get at() {
      return at;
    },
    async next(buf, offset, length) {
      let want = Math.min(length, size - at);
      if (want <= 0) return 0;
      if (seeks && !(at >= dataFrom && at < dataTo)) {
        const d = addon!.seekData(fd, at, false);
        if (d !== ENXIO && d < 0) {
          // No SEEK_DATA here (EINVAL, EOPNOTSUPP): the rest is read.
          seeks = false;
          dataTo = Number.POSITIVE_INFINITY;
        } else {
          // ENXIO: no data at or after `at`, the rest of the size is a hole.
          const from = d === ENXIO ? size : d;
          if (from > at) {
            const n = Math.min(want, from - at);
            buf.fill(0, offset, offset + n);
            at += n;
            return { hole: n };
          }
          const h = addon!.seekData(fd, from, true);
          dataFrom = from;
          // A failed SEEK_HOLE (the file shrank meanwhile: the caller's size check catches it)
          // reads on to the size.
          dataTo = h < 0 ? Number.POSITIVE_INFINITY : h;
          if (dataTo <= at) dataTo = Number.POSITIVE_INFINITY;
        }
      }
      want = Math.min(want, dataTo - at);
      const n = await read(buf, offset, want, at);
      at += n;
      return n;
    },
  };
}

function posixOrNull(): ReturnType<typeof posix> | null {
  try {
    return posix();
  } catch {
    return null;
  }
}
