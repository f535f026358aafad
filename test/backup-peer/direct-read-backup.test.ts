import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { privatePluginState, runCli } from '../helpers/cli.js';
import { cachedPages } from '../helpers/posix.js';

/**
 * A large file of the split copy that the page cache does not hold is read with O_DIRECT by the
 * peer (src/posix/direct-read.ts), end to end: a real `twinfs serve --mirror --control`, real
 * `twinfs backup|restore` processes, the repository's dir: target. The mirror's copy is made
 * cold with GNU dd's `iflag=nocache count=0` after a sync; cachestat(2) checks it.
 * docs/architecture.md, "Large files read with O_DIRECT".
 */

const MiB = 1024 * 1024;
const SIZE = 40 * MiB + 4321;
const cli = (args: string[], timeoutMs?: number) => runCli(args, { timeoutMs });
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

privatePluginState('direct-read');

describe('large cold files read past the page cache (real server, real peer processes)', () => {
  let fx: ControlFixture;
  let common: string[];
  let content: Buffer;

  beforeAll(async () => {
    fx = await startControlFixture();
    common = [
      '--server',
      fx.url,
      '--token-file',
      fx.tokenFile,
      '--target',
      `dir:${path.join(fx.base, 'repo')}`,
      '--catalog',
      path.join(fx.base, 'catalog'),
    ];
    content = randomBytes(SIZE);
    await fsp.writeFile(path.join(fx.mnt, 'big.bin'), content);
  }, 60_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('a cached copy is read through the cache, a cold one with O_DIRECT; both restore exactly', async () => {
    const mirrorFile = path.join(fx.mirrorRoot, 'big.bin');
    // First backup: the mirror's copy was just written, so the cache holds it.
    const a = await cli(['backup', ...common, '--json'], 120_000);
    expect(a.code, a.stderr).toBe(0);
    expect(a.last).toMatchObject({ event: 'done', totals: { files: 1, bytes: SIZE } });
    expect(cachedPages(mirrorFile) * 4096).toBeGreaterThan(SIZE / 2);
    expect(a.last.direct).toBeUndefined();

    // The copy made cold: on the disk (sync), then out of the cache.
    expect(spawnSync('sync').status).toBe(0);
    const dd = spawnSync('dd', [`if=${mirrorFile}`, 'iflag=nocache', 'count=0', 'status=none']);
    expect(dd.status, dd.stderr.toString()).toBe(0);
    expect(cachedPages(mirrorFile) * 4096).toBeLessThan(SIZE / 4);
    const b = await cli(['backup', ...common, '--full', '--json'], 120_000);
    expect(b.code, b.stderr).toBe(0);
    expect(b.last).toMatchObject({ event: 'done', totals: { files: 1, bytes: SIZE } });
    expect(b.last.direct).toEqual({ files: 1, bytes: SIZE });
    // Read past the cache: it still does not hold the copy.
    expect(cachedPages(mirrorFile) * 4096).toBeLessThan(SIZE / 4);

    for (const [name, snap] of [
      ['a', a.last.snapshotId],
      ['b', b.last.snapshotId],
    ] as const) {
      const to = path.join(fx.base, `restored-${name}`);
      const r = await cli(['restore', snap, '--to', to, '--catalog', path.join(fx.base, 'catalog')], 120_000);
      expect(r.code, r.stderr).toBe(0);
      expect(sha(await fsp.readFile(path.join(to, 'big.bin')))).toBe(sha(content));
    }
  }, 240_000);
});
