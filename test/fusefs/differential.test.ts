import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, unmountAll, waitFor } from '../helpers/mounts.js';
import { sh } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

const OPS = 300;

/** Runs the workload for seed under root in a child process; returns its output lines. */
async function workload(root: string, seed: number): Promise<string[]> {
  const r = await sh(`node '${FIXTURES}/diff-ops.mjs' run '${root}' ${seed} ${OPS}`, { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`seed ${seed}: diff-ops.mjs failed on ${root} (${r.code}): ${r.stderr}`);
  return r.stdout.trimEnd().split('\n');
}

async function dump(root: string): Promise<string[]> {
  const r = await sh(`node '${FIXTURES}/diff-ops.mjs' dump '${root}'`, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`dump of ${root} failed: ${r.stderr}`);
  return r.stdout.trimEnd().split('\n');
}

/** Fails with the seed and the first differing line, in context. */
function expectSameRun(seed: number, what: string, got: string[], want: string[]): void {
  const n = Math.max(got.length, want.length);
  for (let i = 0; i < n; i++) {
    if (got[i] !== want[i]) {
      const ctx = want.slice(Math.max(0, i - 8), i).join('\n  ');
      throw new Error(
        `differential run diverged (seed ${seed}, ${what}); replay: node test/fusefs/fixtures/diff-ops.mjs run DIR ${seed} ${OPS}\n` +
          `  ...\n  ${ctx}\n` +
          `twinfs: ${got[i] ?? '<missing>'}\nplain:  ${want[i] ?? '<missing>'}`,
      );
    }
  }
}

/** Each configuration exercises a different path of the cache: timed write-back, the dirty limit, none. */
const CONFIGS: Array<{ name: string; args: string[]; seeds: number[] }> = [
  { name: 'write-back after 50 ms', args: ['--writeback-ms', '50'], seeds: [1, 2, 3] },
  { name: '1 MiB cache, long delay', args: ['--cache-mb', '1', '--writeback-ms', '600000'], seeds: [4, 5, 6] },
  { name: 'write-through', args: ['--write-through'], seeds: [7] },
];

describe.each(CONFIGS)('randomized differential test: $name', ({ args, seeds }) => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'plain');
    srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, args });
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it.each(seeds)('seed %i: same results and same tree as a plain directory', async (seed) => {
    const name = `s${seed}`;
    const [onMount, onPlain] = await Promise.all([
      workload(path.join(t.dirs.mnt!, name), seed),
      workload(path.join(t.dirs.plain!, name), seed),
    ]);
    expectSameRun(seed, 'operations and final tree through the mount', onMount, onPlain);
    expect(onMount.filter((l) => / = ERR /.test(l)).length).toBeLessThan(OPS * 0.8);
  });

  it('the primary holds the same trees after the server wrote everything back and stopped', async () => {
    expect(await srv!.stop()).toBe(0);
    srv = undefined;
    // libfuse releases unlinked-but-open files asynchronously; none may be left behind.
    const noHidden = async () => !(await sh(`find '${t.dirs.primary}' -name '.fuse_hidden*'`)).stdout.trim();
    expect(await waitFor(noHidden, 3000)).toBe(true);
    for (const seed of seeds) {
      const name = `s${seed}`;
      expectSameRun(
        seed,
        'tree on the primary after unmount',
        await dump(path.join(t.dirs.primary!, name)),
        await dump(path.join(t.dirs.plain!, name)),
      );
    }
    expect((await fsp.readdir(t.dirs.primary!)).sort()).toEqual(seeds.map((s) => `s${s}`).sort());
  });
});
