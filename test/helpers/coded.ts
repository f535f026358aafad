import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { twinfs } from '../repl/fixtures.js';
import { isMounted } from './mounts.js';
import type { RunResult } from './proc.js';

/** The environment with none of the variables the operator commands read (TWINFS_*). */
export const CLEAN_ENV = { TWINFS_SERVER: undefined, TWINFS_TOKEN: undefined, TWINFS_CONFIG: undefined };

/** One line `twinfs: error CODE: ...`, no stack trace, the exit status. */
export function expectCoded(r: RunResult, exit: number, code: string, text?: RegExp): void {
  expect(r.code, `stderr: ${r.stderr}`).toBe(exit);
  expect(r.stderr).toMatch(new RegExp(`^twinfs: error ${code}: \\S`));
  expect(r.stderr.trim().split('\n'), `one line: ${r.stderr}`).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  if (text) expect(r.stderr).toMatch(text);
}

/**
 * `twinfs serve` of d.primary on d.mnt with a mirror (d.mirror, d.state) and a control channel
 * (token in d.etc), for tests of what serve refuses before mounting; d() gives the directories
 * (made in beforeAll, so read when called).
 */
export function serveRefusals(d: () => Record<string, string>) {
  /** The serve command line; extra arguments last. */
  const serveArgs = (...extra: string[]) => {
    const x = d();
    return [
      'serve',
      '--primary',
      x.primary!,
      '--mount',
      x.mnt!,
      '--mirror',
      x.mirror!,
      '--state-dir',
      x.state!,
      '--token-file',
      path.join(x.etc!, 'control.token'),
      ...extra,
    ];
  };
  /** A failed serve: the coded line, and the mount point an ordinary, empty, unmounted directory. */
  const expectServeRefused = async (extra: string[], exit: number, code: string, text?: RegExp) => {
    const r = await twinfs(serveArgs(...extra), { env: CLEAN_ENV, timeoutMs: 30_000 });
    expectCoded(r, exit, code, text);
    expect(r.stdout).not.toContain('mounted');
    expect(await isMounted(d().mnt!)).toBe(false);
    expect(await fsp.readdir(d().mnt!)).toEqual([]);
  };
  return { serveArgs, expectServeRefused };
}
