import { installBytePaths } from '../posix/byte-paths.js';

// Imported first by the entry point, before anything can touch libuv's thread pool: FUSE
// handlers call fs.* on the primary while kernel requests wait on them, and the default pool of
// 4 threads starves (see FUSE-NOTES). The pool size is read once, at first use.
process.env.UV_THREADPOOL_SIZE ??= '32';

// Names are bytes at node:fs before any module reads a directory (src/posix/byte-paths.ts).
installBytePaths();
