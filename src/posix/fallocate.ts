import * as fs from 'node:fs';
import { check } from './errno.js';
import { posix } from './native.js';
import { writeAll } from './write-all.js';

/** fallocate(2)'s mode bits that twinfs passes on (linux/falloc.h); any other is EOPNOTSUPP. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const FALLOC_SUPPORTED = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;

/** fallocate(2) in libuv's pool; throws the errno error (EOPNOTSUPP, ENOSPC, ...). */
export async function fallocate(fd: number, mode: number, offset: number, len: number): Promise<void> {
  check(await posix().fallocate(fd, mode, offset, len), `fallocate(${mode}, ${offset}, ${len})`);
}

const ZEROS = Buffer.alloc(1024 * 1024);

/**
 * Makes [offset, offset + length) of fd read as zeros without changing its size: a hole punched
 * (PUNCH_HOLE | KEEP_SIZE), or, where the filesystem has no holes (EOPNOTSUPP), zeros written
 * up to the file's end and not beyond.
 */
export async function zeroRange(fd: number, offset: number, length: number): Promise<void> {
  const r = await posix().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
  if (r === 0) return;
  if (r !== -95 /* EOPNOTSUPP */) check(r, `fallocate(PUNCH_HOLE, ${offset}, ${length})`);
  const end = Math.min(offset + length, fs.fstatSync(fd).size);
  for (let at = offset; at < end; at += ZEROS.length)
    await writeAll(fd, ZEROS.subarray(0, Math.min(ZEROS.length, end - at)), at);
}
