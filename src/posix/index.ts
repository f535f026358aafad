/**
 * POSIX helpers shared by the FUSE layer, the mirror driver, the server's volume lock and the
 * backup peer (restore): the calls Node lacks, through the project's own addon (native/posix).
 * Nothing here imports the FUSE layer: a peer host needs no FUSE build.
 */
export { check, errnoError } from './errno.js';
export {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  FALLOC_SUPPORTED,
  fallocate,
  zeroRange,
} from './fallocate.js';
export { isTooLong, PATH_MAX, underRoot } from './long-path.js';
export { mknod, S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, S_IFREG, S_IFSOCK } from './mknod.js';
export { posix } from './native.js';
export { readdirNoAtime } from './readdir.js';
export { msToNs, nsToMs, setFdTimesNs, setTimesNs } from './set-times.js';
export { type LockedPart, VolumeLock, type VolumeLockOptions } from './volume-lock.js';
export {
  startWriteBack,
  WRITEBACK_BATCH_BYTES,
  type WriteBackConcurrency,
  WriteBackScheduler,
} from './write-back.js';
export { getXattr, listXattrs, readXattrs, removeXattr, setXattr } from './xattr.js';
