import { defineConfig } from 'vitest/config';
import { HangWatchdog } from '../watchdog-reporter.js';

// The run test/common/hang-watchdog.test.ts starts: one fixture file (HANG_FIXTURE), the real
// watchdog with a short limit (TWINFS_TEST_FILE_LIMIT_S), the suite's pool and timeouts.
export default defineConfig({
  test: {
    root: new URL('../../..', import.meta.url).pathname,
    include: [process.env.HANG_FIXTURE ?? 'none'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', new HangWatchdog()],
  },
});
