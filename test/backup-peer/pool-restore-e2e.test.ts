import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pseudoRandom } from '../conformance/fixtures.js';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { privatePluginState, runCli } from '../helpers/cli.js';
import { snapshotTree } from './peer-fixture.js';

const MiB = 1024 * 1024;

/**
 * A full backup whose repository work runs on worker threads (src/repository/worker-pool.ts),
 * end to end: a real server, a real `twinfs backup` and `twinfs restore`, an encrypted dir:
 * repository. The tree is big enough that every path of the pool is taken at once: several
 * large files streamed in windows by different workers at the same time, files cut whole by a
 * worker, tiny files hashed inline, duplicate content, and more packs than the pool seals at
 * once.
 */
privatePluginState('pool-e2e');

describe('full backup through the worker pool, restored byte for byte', () => {
  let fx: ControlFixture;

  beforeAll(async () => {
    fx = await startControlFixture();
    const m = fx.mnt;
    await fsp.mkdir(path.join(m, 'big'), { recursive: true });
    // Large files of odd sizes (several 8 MiB windows each, the last one short).
    for (const [i, size] of [19 * MiB + 12345, 17 * MiB + 1, 9 * MiB - 7].entries())
      await fsp.writeFile(path.join(m, 'big', `f${i}.bin`), pseudoRandom(size, 10 + i));
    // The same content under another name: stored once, restored twice.
    await fsp.copyFile(path.join(m, 'big', 'f2.bin'), path.join(m, 'big', 'same-as-f2.bin'));
    // Files a worker cuts whole (more than one chunk for the largest), and tiny ones.
    for (let d = 0; d < 4; d++) {
      const dir = path.join(m, 'small', `d${d}`);
      await fsp.mkdir(dir, { recursive: true });
      for (let i = 0; i < 60; i++) {
        const n = d * 60 + i;
        const size = n % 3 === 0 ? 900 * 1024 + n : n % 3 === 1 ? 70 * 1024 + n : 1 + ((n * 37) % 9000);
        await fsp.writeFile(path.join(dir, `f${i}`), pseudoRandom(size, 1000 + n));
      }
    }
    await fsp.writeFile(path.join(m, 'empty'), '');
    // Settled times (the write-back cache reaches the primary later than the writes return).
    const names = await fsp.readdir(m, { recursive: true });
    for (const rel of names.sort().reverse())
      await fsp.utimes(path.join(m, rel), 1_700_000_000, 1_700_000_000);
    await fsp.utimes(m, 1_700_000_000, 1_700_000_000);
  }, 180_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('restores every file exactly, and check reads every pack back', async () => {
    const target = `dir:${path.join(fx.base, 'repo')}`;
    const catalog = path.join(fx.base, 'catalog');
    const env = { ...process.env, TWINFS_PASSWORD: 'pool e2e', TWINFS_REPO_WORKERS: '3' };
    const common = ['--target', target, '--catalog', catalog];
    const b = await runCli(
      ['backup', '--server', fx.url, '--token-file', fx.tokenFile, ...common, '--json'],
      { timeoutMs: 240_000, env },
    );
    expect(b.code, b.stderr).toBe(0);
    expect(b.last).toMatchObject({ event: 'done', totals: { files: 245, reusedFiles: 0 } });
    const to = path.join(fx.base, 'restored');
    const r = await runCli(['restore', b.last.snapshotId, '--to', to, ...common, '--json'], {
      timeoutMs: 240_000,
      env,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(await snapshotTree(to)).toEqual(await snapshotTree(fx.primary));
    const c = await runCli(['check', '--target', target, '--read-data', '--json'], {
      timeoutMs: 240_000,
      env,
    });
    expect(c.code, c.stderr).toBe(0);
  }, 600_000);
});
