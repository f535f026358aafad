#!/usr/bin/env node
// The command's entry point. CommonJS, so that it runs before anything has used libuv's thread
// pool: Node 20 loads an ES module entry with asynchronous reads, which start the pool with its
// default 4 threads before the entry's first line runs, and the size is read only then. The
// server's FUSE handlers and the backup peer's target calls wait in that pool: with 4 threads a
// stopped target (4 copies stuck in it) left the peer unable to record its own failure, and the
// server's requests queue behind slow primary calls (FUSE-NOTES). src/cli/env.ts sets the same
// for code that imports main.js directly.
process.env.UV_THREADPOOL_SIZE ??= '32';
void import('./main.js');
