#!/usr/bin/env node
// The command's entry point. CommonJS, so that it runs before anything has used libuv's thread
// pool: Node 20 loads an ES module entry with asynchronous reads, which start the pool with its
// default 4 threads before the entry's first line runs, and the size is read only then. The
// server's FUSE handlers and the backup peer's target calls wait in that pool: with 4 threads a
// stopped target (4 copies stuck in it) left the peer unable to record its own failure, and the
// server's requests queue behind slow primary calls (FUSE-NOTES). src/cli/env.ts sets the same
// for code that imports main.js directly.
process.env.UV_THREADPOOL_SIZE ??= '32';
void import(entry());

/**
 * The CLI as bundled by `npm run build` (scripts/bundle-cli.mjs: dist/cli-bundle/main.js, the
 * same modules in a few files, so a start resolves, reads and compiles ~40 files instead of
 * ~300), or dist/cli/main.js when there is no bundle, it is older than dist/cli/main.js (a `tsc`
 * without the bundle step) or TWINFS_NO_BUNDLE=1.
 */
function entry(): string {
  const fs = require('node:fs') as typeof import('node:fs');
  const path = require('node:path') as typeof import('node:path');
  const plain = './main.js';
  if (process.env.TWINFS_NO_BUNDLE === '1') return plain;
  const bundled = path.join(__dirname, '..', 'cli-bundle', 'main.js');
  try {
    const b = fs.statSync(bundled).mtimeMs;
    const m = fs.statSync(path.join(__dirname, 'main.js')).mtimeMs;
    return b >= m ? '../cli-bundle/main.js' : plain;
  } catch {
    return plain;
  }
}
