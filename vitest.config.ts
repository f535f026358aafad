import { defineConfig } from 'vitest/config';

// Tests mount real FUSE filesystems and start real processes: generous timeouts, files run in
// separate forks (a hung mount must not take the runner down), limited parallelism for 2 cores.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
  },
});
