import { promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { sh } from '../helpers/proc.js';
import { ROOT, tempDirs } from '../helpers/server.js';

/**
 * The suite's watchdog (test/helpers/watchdog-reporter.ts) against real blocked workers: a vitest
 * run of one fixture file whose worker can never run its timers again, with a limit of 15 s
 * (5 s stopped a file still loading at load 25). Without the watchdog each run waits forever
 * (the sh timeout below then fails the test).
 */
const CONFIG = 'test/helpers/watchdog-fixtures/vitest.hang.config.ts';

async function runFixture(fixture: string, env: NodeJS.ProcessEnv = {}) {
  const started = Date.now();
  const r = await sh(`exec ./node_modules/.bin/vitest run --config ${CONFIG}`, {
    cwd: ROOT,
    timeoutMs: 120_000,
    env: { ...process.env, TWINFS_TEST_FILE_LIMIT_S: '15', ...env, HANG_FIXTURE: fixture },
  });
  return { ...r, seconds: (Date.now() - started) / 1000, out: r.stdout + r.stderr };
}

function fuseMountedAt(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

describe('a test file whose worker is blocked', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>> | undefined;
  afterAll(async () => {
    await dirs?.cleanup();
  });

  it('in JavaScript is reported as failed, with its last test, and the run ends', async () => {
    const r = await runFixture('test/helpers/watchdog-fixtures/blocked-js.hang.ts');
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(
      /\[watchdog\] test\/helpers\/watchdog-fixtures\/blocked-js\.hang\.ts ran \d+ s; last seen: .*unfinished tests: "never returns"/,
    );
    expect(r.out).toMatch(/\[watchdog\] killed \d+ process\(es\); 0 needed an abort/);
    // The account comes again after vitest's summary (a CI log's tail).
    expect(r.out).toMatch(/\[watchdog\] 1 file\(s\) were stopped:/);
  }, 150_000);

  it('on a request to its own FUSE mount is stopped by aborting the connection', async () => {
    dirs = await tempDirs('primary', 'mnt');
    await fsp.writeFile(path.join(dirs.dirs.primary!, 'x'), 'x');
    const r = await runFixture('test/helpers/watchdog-fixtures/blocked-fuse.hang.ts', {
      HANG_DIR: dirs.base,
    });
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(/last seen: .*unfinished tests: "writes to a file of its own mount synchronously"/);
    // Only the connection of the mount the blocked call names (other runs' mounts are left alone).
    const aborted = r.out.split('\n').filter((l) => l.includes('aborted fuse connection'));
    expect(new Set(aborted.map((l) => l.trim()))).toEqual(
      new Set([expect.stringMatching(new RegExp(`\\(\\d+ waiting\\) ${dirs.dirs.mnt}$`))]),
    );
    // The blocked thread waits for a FUSE answer in the fsync(2) of the file on the mount (its
    // write is answered in libfuse's threads since fuse-native level 29), and SIGKILL alone did
    // not end it.
    expect(r.out).toMatch(new RegExp(`task \\d+ [SD] request_wait_answer syscall 74 ${dirs.dirs.mnt}/x\n`));
    expect(r.out).toMatch(/needed an abort/);
    expect(r.out).not.toMatch(/; 0 needed an abort/);
    expect(fuseMountedAt(dirs.dirs.mnt!)).toBe(false);
  }, 150_000);

  it('after its tests passed, on exit, fails the run and is stopped the same way', async () => {
    await dirs?.cleanup();
    dirs = await tempDirs('primary', 'mnt');
    const r = await runFixture('test/helpers/watchdog-fixtures/exit-blocked.hang.ts', {
      HANG_DIR: dirs.base,
      TWINFS_TEST_EXIT_LIMIT_S: '5',
      // The file must end (its test passes) before the fork's exit is watched.
      TWINFS_TEST_FILE_LIMIT_S: '120',
    });
    // The test passed, and still the run fails.
    expect(r.out).toMatch(/Tests .*1 passed/);
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(
      /\[watchdog\] test\/helpers\/watchdog-fixtures\/exit-blocked\.hang\.ts ended \d+ s ago; its fork \(pid \d+\) never exited/,
    );
    expect(r.out).toMatch(new RegExp(`request_wait_answer syscall \\d+ ${dirs.dirs.mnt}/x\n`));
    expect(r.out).toMatch(new RegExp(`aborted fuse connection \\d+ \\(\\d+ waiting\\) ${dirs.dirs.mnt}\n`));
    expect(fuseMountedAt(dirs.dirs.mnt!)).toBe(false);
  }, 150_000);
});
