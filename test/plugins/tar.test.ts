import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  failingStream,
  fileEntry,
  fileMeta,
  linkMeta,
  manifest,
  pseudoRandom,
  readAll,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { describeTargetConformance, type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';

const PLUGIN = path.resolve(import.meta.dirname, '../../plugins/tar');

/** A fresh target directory per case, opened through the real plugin host. */
function fixture(query: string, configuration?: Record<string, unknown>) {
  return async () => {
    const plugin = await loadTargetPlugin(PLUGIN, { configuration });
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-tar-'));
    const target = await plugin.open(`tar:${dir}${query}`);
    return {
      target,
      reopen: () => plugin.open(`tar:${dir}${query}`),
      async cleanup() {
        await target.close();
        await plugin.dispose();
        await fsp.rm(dir, { recursive: true, force: true });
      },
    };
  };
}

describeTargetConformance('tar', fixture(''));
// Small gzip members, so ranged reads cross member boundaries.
describeTargetConformance('tar?gzip', fixture('?gzip', { gzipBlockKiB: 64 }));

describe('tar target specifics', () => {
  let plugin: LoadedPlugin;
  let dir: string;
  beforeAll(async () => {
    plugin = await loadTargetPlugin(PLUGIN, { configuration: { gzipBlockKiB: 64 } });
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-tar-'));
  });
  afterAll(async () => {
    await plugin?.dispose();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  for (const gzip of [false, true]) {
    it(`writes an archive that plain tar lists and extracts${gzip ? ' (gzip)' : ''}, with relative names`, async () => {
      const t = await plugin.open(`tar:${dir}${gzip ? '?gzip' : ''}`);
      const id = gzip ? 'plain-gz' : 'plain';
      const big = pseudoRandom(300_000, 5);
      const long = `/${'d'.repeat(120)}/${'n'.repeat(150)}.txt`;
      const w = await t.beginSnapshot(snapMeta(id));
      await w.putFile('/big.bin', streamOf(big), fileMeta(big.length));
      await expect(
        w.putFile('/torn', failingStream(pseudoRandom(1000, 1)), fileMeta(5000)),
      ).rejects.toThrow();
      await w.putFile(long, streamOf(Buffer.from('long name')), fileMeta(9));
      await w.putSymlink('/escape', '../../../../etc/passwd', linkMeta());
      await w.commit(
        manifest(snapMeta(id), [fileEntry('/big.bin', big), fileEntry(long, Buffer.from('long name'))]),
      );
      const archive = path.join(dir, `${id}.tar${gzip ? '.gz' : ''}`);
      const names = execFileSync('tar', [gzip ? '-tzf' : '-tf', archive], { encoding: 'utf8' }).split('\n');
      expect(names).toContain('big.bin');
      expect(names).toContain(long.slice(1));
      expect(names.every((n) => !n.startsWith('/') && !n.split('/').includes('..'))).toBe(true);
      const out = path.join(dir, `x-${id}`);
      await fsp.mkdir(out);
      execFileSync('tar', [gzip ? '-xzf' : '-xf', archive, '-C', out]);
      expect(await fsp.readFile(path.join(out, 'big.bin'))).toEqual(big);
      expect(await fsp.readFile(path.join(out, long))).toEqual(Buffer.from('long name'));
      expect(await fsp.readlink(path.join(out, 'escape'))).toBe('../../../../etc/passwd');
      // The torn put is padded in the archive body but not part of the snapshot.
      await expect(t.stat(id, '/torn')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
      expect(await readAll(await t.openFile(id, long))).toEqual(Buffer.from('long name'));
      await t.close();
    });
  }

  it('restores one file of a gzip archive by decompressing only the members that hold it', async () => {
    const t = await plugin.open(`tar:${dir}?gzip`);
    const files = Array.from({ length: 20 }, (_, i) => pseudoRandom(100_000, 40 + i));
    const w = await t.beginSnapshot(snapMeta('members'));
    for (const [i, f] of files.entries()) await w.putFile(`/f${i}`, streamOf(f), fileMeta(f.length));
    await w.commit(
      manifest(
        snapMeta('members'),
        files.map((f, i) => fileEntry(`/f${i}`, f)),
      ),
    );
    const index = (await fsp.readFile(path.join(dir, 'members.index.jsonl'), 'utf8')).split('\n');
    const head = JSON.parse(index[0]!) as { members: Array<[number, number]> };
    expect(head.members.length).toBeGreaterThan(20);
    // Corrupt the first member: a restore of the last file must not need it.
    const fh = await fsp.open(path.join(dir, 'members.tar.gz'), 'r+');
    await fh.write(Buffer.alloc(64, 0xff), 0, 64, 10);
    await fh.close();
    expect(await readAll(await t.openFile('members', '/f19'))).toEqual(files[19]);
    await expect((async () => readAll(await t.openFile('members', '/f0')))()).rejects.toThrow();
    await t.close();
  });

  it('refuses unknown options and bad gzip levels in the spec', async () => {
    await expect(plugin.open(`tar:${dir}?zstd`)).rejects.toMatchObject({ code: 'ETWIN_TARGET_FAILED' });
    await expect(plugin.open(`tar:${dir}?gzip=12`)).rejects.toMatchObject({ code: 'ETWIN_TARGET_FAILED' });
    const t = await plugin.open(`tar:${dir}?gzip=9`);
    expect(t.spec).toBe(`tar:${dir}?gzip`);
  });
});
