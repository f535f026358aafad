import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { libfuseFromEnv } from '../../src/fusefs/native-options.js';
import { type ControlFixture, startControlFixture, status, waitUntil } from '../control/control-fixture.js';
import { FIXTURES } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { sh } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';

/**
 * fsx-style data exerciser (fixtures/fsx.py) through a real mount with the mirror on: seeded random
 * writes at random offsets (holes past EOF), reads, truncates, fallocate(2) in every mode it has,
 * posix_fallocate, MAP_SHARED writes with and without msync, copy_file_range, O_APPEND and O_TRUNC
 * opens, fsync, reopen and rename over the open file, each checked by the child against its model.
 * Then the file must equal the model through the mount, in a split copy taken between two runs
 * (and still after the second run changed the file), in the mirror once idle, and on the primary
 * after unmount. The same stream on a plain ext4/tmpfs directory is the oracle for the model
 * itself. The long version: bench/fsx.mjs. Correctness only: no timing here.
 */
const FSX = path.join(FIXTURES, 'fsx.py');
const OPS = 1500;
/** fallocate(2)'s kinds fsx.py runs: every one is answered through the mount (no EOPNOTSUPP). */
const FALLOCATE_KINDS = ['falloc0', 'falloc_keep', 'punch', 'zero', 'zero_keep'];

/**
 * The runs through the mount. The one with two names (a hard link; opens, stats and truncates
 * pick either name) on libfuse3 only: high-level libfuse2 gives each name its own kernel inode,
 * and pages and sizes cached under one name go stale after a change through the other
 * (docs/architecture.md, "hard links"); libfuse3's exact invalidation is what this run checks.
 */
const RUNS = [
  { seed: 21, link: false },
  { seed: 22, link: false },
  ...(libfuseFromEnv() === 3 ? [{ seed: 23, link: true }] : []),
];

interface Summary {
  seed: number;
  ops: Record<string, number>;
  refused: Record<string, string>;
  size: number;
  sha256: string;
}

async function fsx(dir: string, seed: number, extra: string[] = []): Promise<Summary> {
  const r = await sh(`${PYTHON} '${FSX}' run '${dir}' ${seed} ${OPS} ${extra.join(' ')}`, {
    timeoutMs: 120_000,
  });
  if (r.code !== 0)
    throw new Error(`fsx.py seed ${seed} in ${dir} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Summary;
}

/** Null when file holds model's bytes, else fsx.py's description of the first difference. */
async function differs(file: string, model: string): Promise<string | null> {
  const r = await sh(`${PYTHON} '${FSX}' check '${file}' '${model}'`, { timeoutMs: 60_000 });
  return r.code === 0 ? null : `${r.stderr}${r.stdout}`;
}

describe('fsx on a plain directory (the oracle of the model)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('plain', 'models');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('every operation kind runs and none is refused; the file is the model', async () => {
    const model = path.join(t.dirs.models!, 'm');
    const s = await fsx(t.dirs.plain!, 5, ['--model-out', model]);
    expect(s.refused).toEqual({});
    expect(Object.keys(s.ops).sort()).toEqual(
      [
        'append',
        'copy_file_range',
        'fdatasync',
        'fsync',
        'ftruncate',
        'mmap_r',
        'mmap_w_nosync',
        'mmap_w_sync',
        'otrunc',
        'posix_fallocate',
        'pread',
        'pwrite',
        'readall',
        'rename_over',
        'reopen',
        'stat',
        'truncate',
        'write',
        ...FALLOCATE_KINDS,
      ].sort(),
    );
    expect(await differs(path.join(t.dirs.plain!, 'fsx.dat'), model)).toBeNull();
  });

  it('a byte changed behind the model is reported with the seed, op index and op log', async () => {
    const r = await sh(`${PYTHON} '${FSX}' run '${t.dirs.plain}' 7 400 --name tamper --tamper-at 40`, {
      timeoutMs: 60_000,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^FSX FAILURE seed 7 op \d+ /);
    expect(r.stderr).toContain('40 tamper: byte 0 changed behind the model');
  });

  it('a mapped access that kills fsx.py (SIGBUS) is reported with the seed, op index and op log', async () => {
    // A SIGBUS cannot be caught in Python: without the forked child and the parent's report, the
    // process died with nothing on stderr (two of the two-name fsx runs, docs/reliability.md).
    const r = await sh(
      `${PYTHON} '${FSX}' run '${t.dirs.plain}' 7 400 --name sigbus --tamper-at 40 --tamper-kind sigbus`,
      { timeoutMs: 60_000 },
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^FSX FAILURE seed 7 op 40 \(\w+\) on .*sigbus: killed by SIGBUS during the tamper/,
    );
    expect(r.stderr).toContain(
      '40 tamper: mapped read after the file was cut to 0 behind the model  <- died here',
    );
  });
});

describe('fsx through a mount with the mirror on', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  let models: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    models = await tempDirs('m');
    fx = await startControlFixture();
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
    await models?.cleanup();
  });

  for (const { seed, link } of RUNS)
    it(`seed ${seed}${link ? ', two names' : ''}: the mount, a split copy, the mirror and the primary hold the model`, async () => {
      const name = `s${seed}.dat`;
      const names = link ? [name, `${name}.lnk`] : [name];
      const more = link ? ['--link', '1'] : [];
      const mA = path.join(models.dirs.m!, `${seed}-a`);
      const mB = path.join(models.dirs.m!, `${seed}-b`);
      const a = await fsx(fx.mnt, seed, ['--name', name, '--model-out', mA, ...more]);
      // Nothing refused, and every fallocate kind ran (so the split copy and the mirror below
      // are checked after holes punched and ranges zeroed).
      expect(a.refused).toEqual({});
      for (const k of FALLOCATE_KINDS) expect(a.ops[k] ?? 0).toBeGreaterThan(0);

      const p = await c.prepare({ paths: [`/${name}`] });
      const item = p.items.find((i) => i.path === `/${name}`);
      expect(item).toBeDefined();
      const splitCopy = path.join(p.mirrorRoot, item!.mirrorPath);
      try {
        expect(await differs(splitCopy, mA)).toBeNull();
        // A second run changes the file while the split is held: the copy must not move.
        await fsx(fx.mnt, seed + 1000, ['--name', name, '--model-in', mA, '--model-out', mB, ...more]);
        expect(await differs(splitCopy, mA)).toBeNull();
      } finally {
        await c.release(p.backupId);
      }
      for (const n of names) expect(await differs(path.join(fx.mnt, n), mB)).toBeNull();

      await c.request('flush');
      await waitUntil(
        async () => {
          const s = await status(c);
          return s.mirror.queueLength === 0 && s.mirror.splits.length === 0;
        },
        30_000,
        'mirror idle',
      );
      expect((await status(c)).mirror.broken).toEqual([]);
      for (const n of names) {
        expect(await differs(path.join(fx.mirrorRoot, n), mB)).toBeNull();
        expect(await differs(path.join(fx.primary, n), mB)).toBeNull();
      }
    });

  it('after unmount the primary and the mirror hold every file of the runs, nothing hidden left', async () => {
    expect(await fx.srv.stop()).toBe(0);
    for (const { seed, link } of RUNS) {
      const mB = path.join(models.dirs.m!, `${seed}-b`);
      for (const n of link ? [`s${seed}.dat`, `s${seed}.dat.lnk`] : [`s${seed}.dat`]) {
        expect(await differs(path.join(fx.primary, n), mB)).toBeNull();
        expect(await differs(path.join(fx.mirrorRoot, n), mB)).toBeNull();
      }
    }
    const left = (await fsp.readdir(fx.primary)).filter((n) => n.startsWith('.fuse_hidden'));
    expect(left).toEqual([]);
  });
});
