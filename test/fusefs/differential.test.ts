import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, unmountAll, waitFor } from '../helpers/mounts.js';
import { mountFixture, type PosixFixture } from '../helpers/posix.js';
import { sh, shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { firstDivergence } from './fixtures/diff-compare.mjs';

const OPS = 400;

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

/**
 * Compares the outputs line by line (fixtures/diff-compare.mjs). Fails with the seed and the
 * first differing line in context; returns false (compared up to there) when the runs part at
 * the known limitation.
 */
function compareRuns(seed: number, what: string, got: string[], want: string[]): boolean {
  const { index: i, cut } = firstDivergence(got, want);
  if (i < 0) return true;
  if (cut) return false;
  const ctx = want.slice(Math.max(0, i - 8), i).join('\n  ');
  throw new Error(
    `differential run diverged (seed ${seed}, ${what}); replay: node test/fusefs/fixtures/diff-ops.mjs run DIR ${seed} ${OPS}\n` +
      `  ...\n  ${ctx}\n` +
      `twinfs: ${got[i] ?? '<missing>'}\nplain:  ${want[i] ?? '<missing>'}`,
  );
}

/** Each configuration exercises a different path of the cache: timed write-back, the dirty limit, none. */
const CONFIGS: Array<{ name: string; args: string[]; seeds: number[] }> = [
  { name: 'write-back after 50 ms', args: ['--writeback-ms', '50'], seeds: [1, 2, 3, 4, 5, 6] },
  {
    name: '1 MiB cache, long delay',
    args: ['--cache-mb', '1', '--writeback-ms', '600000'],
    seeds: [7, 8, 9, 10, 11, 12],
  },
  { name: 'write-through', args: ['--write-through'], seeds: [13, 14] },
];

describe.each(CONFIGS)('randomized differential test: $name', ({ args, seeds }) => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  /** Seeds whose runs parted at the known limitation: their final trees are not compared. */
  const cut = new Set<number>();
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
    if (!compareRuns(seed, 'operations and final tree through the mount', onMount, onPlain)) {
      cut.add(seed);
      console.warn(
        `seed ${seed}: compared up to a rmdir/rename hitting a .fuse_hidden file (high-level libfuse limitation)`,
      );
    }
    expect(onMount.filter((l) => / = ERR /.test(l)).length).toBeLessThan(OPS * 0.6);
  });

  it('the primary holds the same trees after the server wrote everything back and stopped', async () => {
    expect(await srv!.stop()).toBe(0);
    srv = undefined;
    // libfuse releases unlinked-but-open files asynchronously; none may be left behind.
    const noHidden = async () => !(await sh(`find '${t.dirs.primary}' -name '.fuse_hidden*'`)).stdout.trim();
    expect(await waitFor(noHidden, 3000)).toBe(true);
    for (const seed of seeds) {
      if (cut.has(seed)) continue;
      const name = `s${seed}`;
      compareRuns(
        seed,
        'tree on the primary after unmount',
        await dump(path.join(t.dirs.primary!, name)),
        await dump(path.join(t.dirs.plain!, name)),
      );
    }
    expect((await fsp.readdir(t.dirs.primary!)).sort()).toEqual(seeds.map((s) => `s${s}`).sort());
    expect(cut.size).toBeLessThan(seeds.length);
  });
});

/**
 * Divergences from a local filesystem that come from libfuse's high-level API (2 and 3) as twinfs uses
 * it today, not from the cache. `it.fails`: these pass while the limitation exists; when it is
 * fixed they fail, and the marker should go (and `links` go back into the random workload).
 */
describe('known high-level libfuse limitations', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture();
  });
  afterAll(async () => {
    await fx?.close();
  });

  // Each name gets its own kernel inode with its own attribute cache (attr_timeout 1 s).
  // Fixed by attr_timeout=0 (native-options.ts): a plain test now.
  it('a size change through one hard link shows through the other at once', async () => {
    const m = fx.mnt;
    const out = await shOk(
      `cd '${m}' && printf abc > a && ln a c && stat -c %s c >/dev/null && printf defgh >> a && stat -c %s a c`,
    );
    expect(out).toBe('8\n8\n');
  });

  // An unlinked open file becomes .fuse_hidden… in its directory until it is closed. Fixed by
  // rmdir dropping such names (volume-ops.ts dropHiddenNames; rmdir-open-unlinked.test.ts): a
  // plain test now.
  it('rmdir succeeds when the last file in it was unlinked while still open', async () => {
    const m = fx.mnt;
    const out = await sh(
      `mkdir '${m}/d' && exec 3>'${m}/d/f' && rm '${m}/d/f' && rmdir '${m}/d'; echo "rmdir=$?"`,
    );
    expect(out.stdout).toContain('rmdir=0');
  });
});
