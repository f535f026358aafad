import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Tests mount real FUSE filesystems and start real processes: generous timeouts, files run in
// separate forks (a hung mount must not take the runner down), limited parallelism for 2 cores.
export default defineConfig({
  // The examples import the conformance suite the way a third party does ('twinfs/conformance',
  // package.json "exports"); inside this repository that name is resolved here.
  resolve: {
    alias: { 'twinfs/conformance': fileURLToPath(new URL('./test/conformance/index.ts', import.meta.url)) },
  },
  test: {
    include: ['test/**/*.test.ts', 'examples/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
  },
});
