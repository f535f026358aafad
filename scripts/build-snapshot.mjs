#!/usr/bin/env node
// Builds the CLI's start-up snapshot (docs/architecture.md "The start-up snapshot"), the last
// step of `npm run build` (after scripts/bundle-cli.mjs): the node running this script evaluates
// the bundle's entry and a backup's chunks (dist/cli/snapshot.cjs) and writes its heap into
// dist/cli-bundle/twinfs.blob, and the path of that node into twinfs.blob.node. The installed
// command's launcher (scripts/cli-launcher.sh) starts node from the blob only when the node it
// would run is that file (the same file, not newer than the blob): V8 takes a snapshot only from
// the very binary that wrote it. A snapshot that cannot be built (another Node, a chunk that
// needs what a snapshot cannot hold) is no failure of the build: the blob is removed, the
// reason printed, and the command starts as without one.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BLOB = path.join(ROOT, 'dist', 'cli-bundle', 'twinfs.blob');
const ENTRY = path.join(ROOT, 'dist', 'cli', 'snapshot.cjs');

const tmp = `${BLOB}.${process.pid}.tmp`;
// The builder runs its entry as a script with `require`, `__filename` and `__dirname` but no
// `exports`, which tsc's CommonJS output of src/cli/snapshot.cts sets: a copy beside it gives one.
const builderEntry = path.join(path.dirname(ENTRY), 'snapshot-build.cjs');
fs.writeFileSync(builderEntry, `"use strict"; var exports = {}; ${fs.readFileSync(ENTRY, 'utf8')}`);
fs.rmSync(BLOB, { force: true });
fs.rmSync(`${BLOB}.node`, { force: true });
// Without the variables that change how node starts (the builder would record them).
const env = { ...process.env };
delete env.NODE_OPTIONS;
delete env.NODE_EXTRA_CA_CERTS;
// The names of the modules the snapshot loads lazily (src/cli/snapshot.cts, LAZY), in this node.
env.TWINFS_SNAPSHOT_LAZY_KEYS = JSON.stringify(
  Object.fromEntries(
    [
      'http',
      'https',
      'http2',
      'tls',
      'net',
      'zlib',
      'dgram',
      'dns',
      'child_process',
      'worker_threads',
      'inspector',
    ].map((m) => [m, Object.getOwnPropertyNames(createRequire(import.meta.url)(m))]),
  ),
);
const r = spawnSync(process.execPath, ['--snapshot-blob', tmp, '--build-snapshot', builderEntry], {
  cwd: ROOT,
  env,
  encoding: 'utf8',
  timeout: 120_000,
});
fs.rmSync(builderEntry, { force: true });
// The builder warns for every built-in module not yet "verified" in snapshots; the snapshot's
// test (test/cli/snapshot.test.ts) is what verifies the ones the bundle loads.
const stderr = (r.stderr ?? '')
  .split('\n')
  .filter(
    (l) => !/not yet fully verified|may still work|out-of-sync after|issue tracker|trace-warnings/.test(l),
  )
  .join('\n')
  .trim();
if (r.status !== 0 || !fs.existsSync(tmp)) {
  fs.rmSync(tmp, { force: true });
  process.stderr.write(
    `build-snapshot: no start-up snapshot (the command starts without one): ${r.error?.message ?? `exit ${r.status ?? r.signal}`}\n${stderr}\n`,
  );
} else {
  fs.renameSync(tmp, BLOB);
  fs.writeFileSync(`${BLOB}.node`, `${process.execPath}\n`);
}
