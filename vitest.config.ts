import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import { DEFAULT_LIBFUSE } from './src/fusefs/native-options.js';

// Tests mount real FUSE filesystems and start real processes: generous timeouts, files run in
// separate forks (a hung mount must not take the runner down), limited parallelism for 2 cores.
const shared = {
  pool: 'forks',
  maxWorkers: 2,
  testTimeout: 60_000,
  hookTimeout: 60_000,
  teardownTimeout: 30_000,
} as const;

/** The other libfuse than the default: a few FUSE test files run on it too, so both builds stay tested. */
const OTHER_LIBFUSE = DEFAULT_LIBFUSE === 3 ? 2 : 3;
const ON_OTHER_LIBFUSE = [
  'test/fusefs/smoke.test.ts',
  'test/fusefs/posix-files.test.ts',
  'test/fusefs/posix-links.test.ts',
  'test/fusefs/posix-xattr.test.ts',
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
    ],
  },
});
