import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DirectoryStore } from '../../plugins/dir/directory-store.js';
import { pageAlignedShared } from '../../src/repository/buffer-pool.js';
import {
  fileEntry,
  fileMeta,
  manifest,
  pseudoRandom,
  readAll,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { describeTargetConformance, loadTargetPlugin } from '../conformance/index.js';
import { dirRepositoryFixture } from './plugin-fixtures.js';

const PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

describeTargetConformance('dir', async () => {
  const plugin = await loadTargetPlugin(PLUGIN);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-dir-'));
  const target = await plugin.open(`dir:${dir}/backups`);
  return {
    target,
    reopen: () => plugin.open(`dir:${dir}/backups`),
    async cleanup() {
      await plugin.dispose();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
});

// The same contract on an encrypted repository (the passphrase from TWINFS_PASSWORD).
describeTargetConformance(
  'dir (encrypted)',
  async () => {
    process.env.TWINFS_PASSWORD = 'conformance passphrase';
    const plugin = await loadTargetPlugin(PLUGIN);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-dir-'));
    const target = await plugin.open(`dir:${dir}/backups`);
    return {
      target,
      reopen: () => plugin.open(`dir:${dir}/backups`),
      async cleanup() {
        delete process.env.TWINFS_PASSWORD;
        await plugin.dispose();
        await fsp.rm(dir, { recursive: true, force: true });
      },
    };
  },
  { largeFileBytes: 8 * 1024 * 1024 },
);

/** Every file below dir, relative, with its size. */
async function files(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const walk = async (rel: string) => {
    for (const d of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${d.name}` : d.name;
      if (d.isDirectory()) await walk(r);
      else out.set(r, (await fsp.stat(path.join(dir, r))).size);
    }
  };
  await walk('');
  return out;
}

/** Bytes of a file resident in the page cache (util-linux fincore). */
function cachedBytes(file: string): number {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`fincore ${file}: ${r.error?.message ?? r.stderr}`);
  return Number(r.stdout.trim());
}

const sum = (m: Map<string, number>, prefix: string) =>
  [...m].filter(([k]) => k.startsWith(prefix)).reduce((n, [, v]) => n + v, 0);

describe('dir target: a repository (docs/repository.md)', () => {
  const fx = dirRepositoryFixture();
  const open = fx.open;

  it('stores identical content once: across files, snapshots and a small change inside a large file', async () => {
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    const big = pseudoRandom(8 * 1024 * 1024, 5);
    const w1 = await t.beginSnapshot(snapMeta('one'));
    await w1.putFile('/a.bin', streamOf(big), fileMeta(big.length));
    await w1.putFile('/copy.bin', streamOf(big), fileMeta(big.length));
    await w1.commit(manifest(snapMeta('one'), [fileEntry('/a.bin', big), fileEntry('/copy.bin', big)]));
    const afterOne = sum(await files(path.join(dir, 'r')), 'data/');
    // Random data does not compress: one copy stored, not two.
    expect(afterOne).toBeGreaterThan(big.length);
    expect(afterOne).toBeLessThan(big.length * 1.05);

    const changed = Buffer.from(big);
    pseudoRandom(256 * 1024, 77).copy(changed, 3 * 1024 * 1024 + 12345);
    const w2 = await t.beginSnapshot(snapMeta('two', Date.now(), 'one'));
    await w2.putFile('/a.bin', streamOf(changed), fileMeta(changed.length));
    await w2.commit(manifest(snapMeta('two', Date.now(), 'one'), [fileEntry('/a.bin', changed)]));
    const grown = sum(await files(path.join(dir, 'r')), 'data/') - afterOne;
    // 256 KiB changed: the chunks it touches, not the 8 MiB file.
    expect(grown).toBeGreaterThan(256 * 1024);
    expect(grown).toBeLessThan(2 * 1024 * 1024);
    // (Buffer.equals: a deep toEqual of 8 MiB takes minutes.)
    expect((await readAll(await t.openFile('two', '/a.bin'))).equals(changed)).toBe(true);
    expect((await readAll(await t.openFile('one', '/a.bin'))).equals(big)).toBe(true);
  });

  it('writes objects only: config, index, packs and snapshots, no file names or contents in the clear when encrypted', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'secret words';
    const t = await open(`dir:${dir}/r`);
    const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(2000));
    const w = await t.beginSnapshot(snapMeta('snap-visible-name'));
    await w.putFile('/very-secret-name.txt', streamOf(text), fileMeta(text.length));
    await w.commit(manifest(snapMeta('snap-visible-name'), [fileEntry('/very-secret-name.txt', text)]));
    const all = await files(path.join(dir, 'r'));
    const names = [...all.keys()];
    expect(names).toContain('config');
    expect(
      names.every((n) =>
        /^(config|keys\/[0-9a-f]{32}|index\/[0-9a-f]{64}|snapshots\/[0-9a-f]{64}|data\/[0-9a-f]{2}\/[0-9a-f]{64})$/.test(
          n,
        ),
      ),
    ).toBe(true);
    for (const n of names) {
      const bytes = await fsp.readFile(path.join(dir, 'r', n));
      for (const needle of ['very-secret-name', 'quick brown fox', 'snap-visible-name'])
        expect(bytes.includes(Buffer.from(needle)), `${needle} in ${n}`).toBe(false);
    }
    // Compressed: 88 KB of repeated text takes a few KB.
    expect(sum(all, 'data/')).toBeLessThan(text.length / 10);
    expect(await readAll(await t.openFile('snap-visible-name', '/very-secret-name.txt'))).toEqual(text);
    // Another process without the passphrase, or with a wrong one, reads nothing.
    delete process.env.TWINFS_PASSWORD;
    await expect(open(`dir:${dir}/r`, false)).rejects.toMatchObject({ code: 'ETWIN_REPO_PASSWORD' });
    process.env.TWINFS_PASSWORD = 'wrong';
    await expect(open(`dir:${dir}/r`, false)).rejects.toMatchObject({ code: 'ETWIN_REPO_PASSWORD' });
  });

  it('verifies every read: a flipped byte in a pack is ETWIN_REPO_CORRUPT, never data', async () => {
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    const a = pseudoRandom(300_000, 9);
    const w = await t.beginSnapshot(snapMeta('s'));
    await w.putFile('/a', streamOf(a), fileMeta(a.length));
    await w.commit(manifest(snapMeta('s'), [fileEntry('/a', a)]));
    // Two packs: the data, and the manifest's tree blobs. The data pack is the large one.
    const packs = [...(await files(path.join(dir, 'r')))].filter(([n]) => n.startsWith('data/'));
    expect(packs).toHaveLength(2);
    const [largest] = packs.sort((x, y) => y[1] - x[1]);
    const file = path.join(dir, 'r', largest![0]);
    const bytes = await fsp.readFile(file);
    bytes[100_000] = bytes[100_000]! ^ 0x01;
    await fsp.chmod(file, 0o600);
    await fsp.writeFile(file, bytes);
    const t2 = await open(`dir:${dir}/r`, false);
    await expect(readAll(await t2.openFile('s', '/a'))).rejects.toMatchObject({ code: 'ETWIN_REPO_CORRUPT' });
  });

  it('writes packs with O_DIRECT from their page-aligned batch memory (not into the page cache), the last partial block and memory the device refuses through the page cache, the same bytes either way', async () => {
    const MiB = 1024 * 1024;
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    const big = pseudoRandom(20 * MiB + 4321, 9);
    const w = await t.beginSnapshot(snapMeta('s'));
    await w.putFile('/big.bin', streamOf(big, MiB), fileMeta(big.length));
    await w.commit(manifest(snapMeta('s'), [fileEntry('/big.bin', big)]));
    // Two data packs (a 16 MiB batch and the rest), read by nobody yet: of each, only the last
    // partial block is in the page cache (written through it), the rest went to the disk
    // directly. Through the page cache all of a pack just written is resident.
    const packs = [...(await files(path.join(dir, 'r')))].filter(
      ([k, size]) => k.startsWith('data/') && size >= MiB,
    );
    expect(packs.length).toBe(2);
    for (const [name] of packs)
      expect(cachedBytes(path.join(dir, 'r', name)), name).toBeLessThanOrEqual(4096);
    expect((await readAll(await t.openFile('s', '/big.bin'))).equals(big)).toBe(true);
    // Objects put as they are: page-aligned memory (direct), at an offset that is not (page
    // cache), and malloc's memory (its address not page-aligned even at offset 0: the device
    // refuses it, written through the page cache).
    const api = {
      errors: {
        fromFs: (err: unknown) => err,
        failed: (m: string) => new Error(m),
        badLocation: (m: string) => new Error(m),
        notFound: (m: string) => new Error(m),
      },
    };
    const store = await DirectoryStore.open(path.join(dir, 'objects'), { create: true }, api as never);
    const aligned = pageAlignedShared(MiB + 3 * 4096 + 123);
    pseudoRandom(aligned.length, 3).copy(aligned);
    const heap = Buffer.allocUnsafeSlow(2 * MiB + 5);
    pseudoRandom(heap.length, 4).copy(heap);
    for (const [name, data] of [
      ['aligned', aligned],
      ['shifted', aligned.subarray(512)],
      ['heap', heap],
    ] as const) {
      await store.put(`data/aa/${name}`, data);
      expect((await fsp.readFile(path.join(dir, 'objects/data/aa', name))).equals(data), name).toBe(true);
    }
    expect((await fsp.readdir(path.join(dir, 'objects/data/aa'))).sort()).toEqual([
      'aligned',
      'heap',
      'shifted',
    ]);
  });

  it('lists names alone (listNames) as list names them: below the prefix, nested, without unfinished temporary files', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-dir-names-'));
    try {
      const api = {
        errors: {
          fromFs: (err: unknown) => err,
          failed: (m: string) => new Error(m),
          badLocation: (m: string) => new Error(m),
          notFound: (m: string) => new Error(m),
        },
      };
      const store = await DirectoryStore.open(dir, { create: true }, api as never);
      // listNames is optional in the API; the dir: store must have it.
      const listNames = (prefix: string): Promise<string[]> => {
        if (store.listNames === undefined) throw new Error('the dir: store has no listNames');
        return store.listNames(prefix);
      };
      for (const name of [
        'config',
        'snapshots/s1',
        'snapshots/s2',
        'snapshots-x',
        'index/i1',
        'data/aa/p1',
        'data/ab/p2',
      ])
        await store.put(name, Buffer.from(name));
      // What a killed put leaves: skipped by both.
      await fsp.writeFile(path.join(dir, 'snapshots', 's3.tmp-1234-abcd'), 'torn');
      for (const prefix of ['', 'snapshots/', 'snapshots', 'index/', 'data/', 'data/a', 'none/']) {
        const names = (await listNames(prefix)).sort();
        expect(names, prefix).toEqual((await store.list(prefix)).map((o) => o.name).sort());
        expect(
          names.every((n) => n.startsWith(prefix) && !n.includes('.tmp-')),
          prefix,
        ).toBe(true);
      }
      expect((await listNames('snapshots/')).sort()).toEqual(['snapshots/s1', 'snapshots/s2']);
      expect((await listNames('data/')).sort()).toEqual(['data/aa/p1', 'data/ab/p2']);
      expect((await store.list('data/')).map((o) => o.size).sort()).toEqual([10, 10]);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('creates a repository on first use only in a new or empty directory; refuses foreign, uninitialised and relative locations', async () => {
    const dir = await fx.tmp();
    // Reading commands never create anything.
    await expect(open(`dir:${dir}/nothing`, false)).rejects.toMatchObject({
      code: 'ETWIN_REPO_NOT_INITIALISED',
    });
    await expect(fsp.stat(path.join(dir, 'nothing'))).rejects.toMatchObject({ code: 'ENOENT' });
    // Someone else's files.
    await fsp.mkdir(path.join(dir, 'foreign'));
    await fsp.writeFile(path.join(dir, 'foreign/notes.txt'), 'mine');
    await expect(open(`dir:${dir}/foreign`)).rejects.toMatchObject({ code: 'ETWIN_REPO_FOREIGN' });
    expect(await fsp.readdir(path.join(dir, 'foreign'))).toEqual(['notes.txt']);
    // A relative location would land wherever the command runs.
    await expect(open('dir:backups')).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
    // An empty directory: created when the first snapshot begins (not by opening it), and the
    // config names the format.
    await fsp.mkdir(path.join(dir, 'empty'));
    const t = await open(`dir:${dir}/empty`);
    expect(await fsp.readdir(path.join(dir, 'empty'))).toEqual([]);
    await (await t.beginSnapshot(snapMeta('first'))).abort();
    const config = JSON.parse(await fsp.readFile(path.join(dir, 'empty/config'), 'utf8'));
    expect(config).toMatchObject({ format: 'twinfs-repository', version: 1, encryption: null });
    expect(config.id).toMatch(/^[0-9a-f]{32}$/);
    // A repository of a later format is refused, not misread.
    await fsp.writeFile(path.join(dir, 'empty/config'), JSON.stringify({ ...config, version: 99 }));
    await expect(open(`dir:${dir}/empty`)).rejects.toMatchObject({ code: 'ETWIN_REPO_VERSION' });
  });
});
