import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import { DEFAULT_LIBFUSE } from './src/fusefs/native-options.js';
import { HangWatchdog } from './test/helpers/watchdog-reporter.js';

// The peer's caches (the repository index cache, docs/repository.md) go to a directory of the test
// run, not the user's ~/.cache; inherited by every fork and the processes tests start.
process.env.TWINFS_CACHE_DIR ??= path.join(os.tmpdir(), `twinfs-test-cache-${process.pid}`);

// Tests mount real FUSE filesystems and start real processes: generous timeouts, files run in
// separate forks (a hung mount must not take the runner down), limited parallelism for 2 cores.
const shared = {
  pool: 'forks',
  maxWorkers: 2,
  testTimeout: 60_000,
  hookTimeout: 60_000,
  teardownTimeout: 30_000,
} as const;

/**
 * The other libfuse than the default (libfuse2 while the default is 3): the FUSE files whose
 * behaviour depends on the build run on it too, so both builds stay tested. What differs there:
 * no kernel caching (every stat asks twinfs; hard links), 128 KiB requests, the mount options,
 * hidden renames of open files (rename-own-link, differential's known limitations), permission
 * checks and times through the kernel, and dirty mmap pages before a split.
 */
const OTHER_LIBFUSE = DEFAULT_LIBFUSE === 3 ? 2 : 3;
const ON_OTHER_LIBFUSE = [
  'test/fusefs/smoke.test.ts',
  'test/fusefs/posix-files.test.ts',
  'test/fusefs/posix-links.test.ts',
  'test/fusefs/posix-xattr.test.ts',
  'test/fusefs/posix-perms.test.ts',
  'test/fusefs/posix-times.test.ts',
  'test/fusefs/rename-own-link.test.ts',
  'test/fusefs/differential.test.ts',
  'test/fusefs/fsx.test.ts',
  'test/fusefs/fallocate.test.ts',
  'test/fusefs/byte-names.test.ts',
  'test/fusefs/posix-meta.test.ts',
  'test/control/mmap-prepare.test.ts',
  'test/mirror-driver/crash.test.ts',
];

export default defineConfig({
  // The examples import the conformance suite the way a third party does ('twinfs/conformance',
  // package.json "exports"); inside this repository that name is resolved here.
  resolve: {
    alias: { 'twinfs/conformance': fileURLToPath(new URL('./test/conformance/index.ts', import.meta.url)) },
  },
  test: {
    ...shared,
    // A file whose worker is blocked (its timeouts cannot fire) is diagnosed and stopped.
    reporters: ['default', new HangWatchdog()],
    // Each test records its fork's pid for the watchdog (test/helpers/fork-pid.ts).
    setupFiles: ['test/helpers/fork-pid.ts', 'test/helpers/byte-paths.ts'],
    // `vitest run` runs both projects; one file on the default path only: `--project default`.
    projects: [
      {
        extends: true,
        test: { name: 'default', include: ['test/**/*.test.ts', 'examples/**/*.test.ts'] },
      },
      {
        extends: true,
        test: {
          name: `libfuse${OTHER_LIBFUSE}`,
          include: ON_OTHER_LIBFUSE,
          // Inherited by the servers the tests start (native-options.ts, libfuseFromEnv).
          env: { TWINFS_FUSE: String(OTHER_LIBFUSE) },
        },
      },
      // Race finders that are run on demand, like the long stress runs (docs/reliability.md):
      // TWINFS_ATTACK=1 npx vitest run --project attack
      ...(process.env.TWINFS_ATTACK === '1'
        ? [{ extends: true, test: { name: 'attack', include: ['test/**/*.attack.ts'] } }]
        : []),
    ],
  },
});
