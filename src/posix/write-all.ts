import * as fs from 'node:fs';

/**
 * Every byte of data at pos through a descriptor (write(2) may write less than asked). A write of
 * nothing is EIO rather than a loop. Shared by the FUSE layer's writes to the primary and the
 * mirror writer.
 */
export async function writeAll(fd: number, data: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const n = await new Promise<number>((res, rej) =>
      fs.write(fd, data, off, data.length - off, pos + off, (e, w) => (e ? rej(e) : res(w))),
    );
    if (n === 0) throw shortWrite();
    off += n;
  }
}

/** writeAll on the calling thread (small writes, where a trip through libuv's pool costs more). */
export function writeAllSync(fd: number, data: Buffer, pos: number): void {
  let off = 0;
  while (off < data.length) {
    const n = fs.writeSync(fd, data, off, data.length - off, pos + off);
    if (n === 0) throw shortWrite();
    off += n;
  }
}

function shortWrite(): Error {
  return Object.assign(new Error('short write'), { code: 'EIO' });
}
