import { posix } from './native.js';

/**
 * Starts the write-back of a range of a file's dirty pages (sync_file_range(2) with
 * SYNC_FILE_RANGE_WRITE, in libuv's thread pool) and resolves once it is under way, not once it
 * is on the disk. A hint: it makes nothing durable (no metadata, no flush of the disk's cache),
 * so an fsync still decides durability; it only leaves that fsync less to write. Never rejects:
 * a file system without it (or a descriptor closed meanwhile) leaves the pages to the kernel's
 * own write-back, as before. Resolves the errno code, or undefined when it started.
 */
export async function startWriteBack(fd: number, offset: number, len: number): Promise<string | undefined> {
  try {
    const rc = await posix().syncFileRange(fd, offset, len);
    return rc === 0 ? undefined : `errno ${-rc}`;
  } catch (err) {
    return (err as Error).message;
  }
}
