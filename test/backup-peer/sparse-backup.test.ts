import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { privatePluginState, runCli } from '../helpers/cli.js';
import { Rng } from '../stress/prng.js';
import { dataPacks } from './peer-fixture.js';

/**
 * Sparse files in backups, end to end (a real `twinfs serve --mirror --control`, real `twinfs
 * backup|restore` processes): a disk image's holes are not read from the mirror, its chunks are
 * the ones a dense copy of the same bytes gets (they deduplicate), and the restore gives the
 * same bytes back, sparse. docs/architecture.md, "Sparse files in backups".
 */

const MiB = 1024 * 1024;
const cli = (args: string[], timeoutMs?: number) => runCli(args, { timeoutMs });

privatePluginState('sparse');

/** Data spans (offset, length) of the image: seeded, across window and chunk boundaries. */
function spans(seed: number, size: number): Array<[number, number]> {
  const r = new Rng(seed);
  const out: Array<[number, number]> = [
    [0, 4096],
    [2 * MiB - 100, 300],
    [5 * MiB + 17, 3 * MiB],
    [size - 5000, 5000],
  ];
  for (let i = 0; i < 12; i++) {
    const at = Math.floor(r.float() * (size - MiB));
    out.push([at, 1 + Math.floor(r.float() * 200_000)]);
  }
  return out;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('sparse files in backups (real server, real peer processes)', () => {
  let fx: ControlFixture;
  let common: string[];
  let repo: string;
  const SIZE = 96 * MiB + 12345;
  let content: Buffer;

  beforeAll(async () => {
    fx = await startControlFixture();
    repo = path.join(fx.base, 'repo');
    common = [
      '--server',
      fx.url,
      '--token-file',
      fx.tokenFile,
      '--target',
      `dir:${repo}`,
      '--catalog',
      path.join(fx.base, 'catalog'),
    ];
    // The image, written through the mount (this process does not serve it): a size, then data.
    content = Buffer.alloc(SIZE);
    const r = new Rng(31);
    const img = await fsp.open(path.join(fx.mnt, 'disk.img'), 'w');
    try {
      await img.truncate(SIZE);
      for (const [at, len] of spans(77, SIZE)) {
        const data = Buffer.from(new Uint8Array(len).map(() => Math.floor(r.float() * 256)));
        data.copy(content, at);
        await img.write(data, 0, len, at);
      }
    } finally {
      await img.close();
    }
  }, 60_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('reads around the holes, restores the same bytes sparse, and shares chunks with a dense copy', async () => {
    // The mirror's copy is sparse (writes through the mount keep holes).
    const mirrorFile = path.join(fx.mirrorRoot, 'disk.img');
    const ms = await fsp.stat(mirrorFile);
    expect(ms.size).toBe(SIZE);
    expect(ms.blocks * 512).toBeLessThan(SIZE / 4);
    // The bytes the spans cover (they may overlap).
    let dataBytes = 0;
    let reach = 0;
    for (const [at, len] of spans(77, SIZE).sort((a, b) => a[0] - b[0])) {
      dataBytes += Math.max(0, at + len - Math.max(at, reach));
      reach = Math.max(reach, at + len);
    }

    const r = await cli(['backup', ...common, '--json'], 120_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.last).toMatchObject({ event: 'done', totals: { files: 1, bytes: SIZE } });
    // Holes not read: at least everything but the data (spans may share allocation blocks).
    expect(r.last.sparse.files).toBe(1);
    expect(r.last.sparse.holeBytes).toBeGreaterThanOrEqual(SIZE - dataBytes - 64 * 1024 * 20);
    expect(r.last.sparse.holeBytes).toBeLessThanOrEqual(SIZE - dataBytes);
    const first = r.last.snapshotId as string;
    const packsAfterFirst = (await dataPacks(repo)).reduce((s, p) => s + p.rows.length, 0);

    // Restored: the same bytes, and holes where the image had them.
    const to = path.join(fx.base, 'restored');
    const rr = await cli(['restore', first, '--to', to, '--catalog', path.join(fx.base, 'catalog')], 120_000);
    expect(rr.code, rr.stderr).toBe(0);
    const back = await fsp.readFile(path.join(to, 'disk.img'));
    expect(back.length).toBe(SIZE);
    expect(sha(back)).toBe(sha(content));
    expect((await fsp.stat(path.join(to, 'disk.img'))).blocks * 512).toBeLessThan(SIZE / 4);

    // A dense copy of the same bytes (every block written): no hole to skip, and its chunks are
    // the image's, so the repository gains no data blob.
    await fsp.writeFile(path.join(fx.mnt, 'dense.img'), content);
    const d = await cli(['backup', '/dense.img', ...common, '--full', '--json'], 120_000);
    expect(d.code, d.stderr).toBe(0);
    expect(d.last.sparse).toBeUndefined();
    const blobs = (await dataPacks(repo)).reduce((s, p) => s + p.rows.length, 0);
    expect(blobs).toBe(packsAfterFirst);
    const rd = await cli(
      [
        'restore',
        d.last.snapshotId,
        '/dense.img',
        '--to',
        path.join(fx.base, 'dense'),
        '--catalog',
        path.join(fx.base, 'catalog'),
      ],
      120_000,
    );
    expect(rd.code, rd.stderr).toBe(0);
    expect(sha(await fsp.readFile(path.join(fx.base, 'dense', 'dense.img')))).toBe(sha(content));
  }, 300_000);

  it('an incremental after the image grew reads only the data of the new range, not its hole', async () => {
    // The baseline: a backup of the volume as it is.
    const base = await cli(['backup', ...common, '--json'], 120_000);
    expect(base.code, base.stderr).toBe(0);
    // Grown by 32 MiB (a resized VM disk) with 4 KiB written near the new end.
    const GROWN = SIZE + 32 * MiB;
    const tail = Buffer.alloc(4096, 0x5a);
    const img = await fsp.open(path.join(fx.mnt, 'disk.img'), 'r+');
    try {
      await img.truncate(GROWN);
      await img.write(tail, 0, tail.length, GROWN - 10_000);
    } finally {
      await img.close();
    }
    const grown = Buffer.alloc(GROWN);
    content.copy(grown);
    tail.copy(grown, GROWN - 10_000);
    const r = await cli(['backup', ...common, '--json'], 120_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.last.changes, JSON.stringify(r.last)).toMatchObject({ rangedFiles: 1 });
    // The new range's data, not its 32 MiB.
    expect(r.last.changes.rangedMirrorBytes).toBeGreaterThanOrEqual(tail.length);
    // (The pieces read whole: the old end's last chunk and the MiB holding the new bytes.)
    expect(r.last.changes.rangedMirrorBytes).toBeLessThan(4 * MiB);
    const to = path.join(fx.base, 'grown');
    const rr = await cli(
      ['restore', r.last.snapshotId, '/disk.img', '--to', to, '--catalog', path.join(fx.base, 'catalog')],
      120_000,
    );
    expect(rr.code, rr.stderr).toBe(0);
    expect(sha(await fsp.readFile(path.join(to, 'disk.img')))).toBe(sha(grown));
  }, 300_000);
});
