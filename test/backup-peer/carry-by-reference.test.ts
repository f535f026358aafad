import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyDelta } from '../../src/backup-peer/manifest-delta.js';
import { type BackupTarget, emptyTotals, type ManifestEntry } from '../../src/backup-peer/target.js';
import { setPasswordFile } from '../../src/repository/crypto.js';
import { RepositoryTarget } from '../../src/repository/repository-target.js';
import { runCli } from '../helpers/cli.js';
import { dirPluginTargets, snapshotMeta, tempDir } from './peer-fixture.js';

const _ROOT = path.resolve(import.meta.dirname, '../..');

/**
 * A snapshot built by reference on an earlier one (SnapshotWriter.carryFrom): the repository
 * of the dir: target (plugins/dir in a real plugin host) records the earlier manifest plus a
 * delta, and every reader (readManifest, openFile, prune) sees the whole snapshot.
 */
describe('snapshots built by reference (dir: repository)', () => {
  const targets = dirPluginTargets();
  const open = targets.open;
  // The peer's index caches (src/repository/index-cache.ts) of this file's repositories.
  let cacheDir: Awaited<ReturnType<typeof tempDir>>;
  const envBefore = process.env.TWINFS_CACHE_DIR;
  beforeAll(async () => {
    cacheDir = await tempDir('twinfs-index-cache-');
    process.env.TWINFS_CACHE_DIR = cacheDir.dir;
  });
  afterAll(async () => {
    if (envBefore === undefined) delete process.env.TWINFS_CACHE_DIR;
    else process.env.TWINFS_CACHE_DIR = envBefore;
    await cacheDir.cleanup();
  });
  /** The repository's cache file at this peer. */
  const cacheFile = async (root: string) =>
    path.join(
      cacheDir.dir,
      'index',
      JSON.parse(await fsp.readFile(path.join(root, 'config'), 'utf8')).id as string,
    );
  /** How the target's repository loaded its index (from the cache, objects read). */
  const report = (t: BackupTarget) => {
    expect(t).toBeInstanceOf(RepositoryTarget);
    return (t as RepositoryTarget).repo.indexReport;
  };
  const meta = snapshotMeta;
  const m = { mode: 0o644, uid: 0, gid: 0, mtime: 1_600_000_000_000 };
  const dir = (p: string): ManifestEntry => ({ path: p, type: 'dir', ...m, size: 0 });

  /** s1: /a, /d, /d/x, /d/y, /e, /e/z. */
  const first = async (t: Awaited<ReturnType<typeof open>>['t']) => {
    const w = await t.beginSnapshot(meta('s1'));
    const entries: ManifestEntry[] = [dir('/d'), dir('/e')];
    for (const [p, body] of [
      ['/a', 'alpha'],
      ['/d/x', 'ex'],
      ['/d/y', 'why'],
      ['/e/z', 'zed'],
    ] as const) {
      const r = await w.putFile(p, Readable.from([Buffer.from(body)]), { ...m, size: body.length });
      entries.push({ path: p, type: 'file', ...m, size: body.length, hash: r.hash, stored: r.stamp });
    }
    entries.sort((x, y) => (x.path < y.path ? -1 : 1));
    await w.commit({ version: 1, meta: meta('s1'), totals: emptyTotals(), entries });
    return entries;
  };

  it('keeps the base entries the commit does not name, changed by the delta; a gone directory takes what was below it', async () => {
    const { t } = await open();
    const s1 = await first(t);
    const w = await t.beginSnapshot(meta('s2'));
    expect(await w.carryFrom!('s1')).toBe(true);
    const r = await w.putFile('/d/x', Readable.from([Buffer.from('changed')]), { ...m, size: 7 });
    const x: ManifestEntry = { path: '/d/x', type: 'file', ...m, size: 7, hash: r.hash, stored: r.stamp };
    // /d/y and the directory /e are gone; /e/z is not listed (below a gone directory).
    await w.commit({
      version: 1,
      meta: meta('s2'),
      totals: emptyTotals(),
      entries: [x],
      gone: ['/d/y', '/e'],
    });
    const want = s1
      .filter((e) => !['/d/y', '/e', '/e/z'].includes(e.path))
      .map((e) => (e.path === '/d/x' ? x : e));
    expect((await t.readManifest('s2')).entries).toEqual(want);
    expect(await text(await t.openFile('s2', '/a'))).toBe('alpha');
    expect(await text(await t.openFile('s2', '/d/x'))).toBe('changed');
    // The base is unchanged.
    expect((await t.readManifest('s1')).entries).toEqual(s1);
    // A snapshot on that one: a chain of two deltas.
    const w3 = await t.beginSnapshot(meta('s3'));
    expect(await w3.carryFrom!('s2')).toBe(true);
    await w3.commit({ version: 1, meta: meta('s3'), totals: emptyTotals(), entries: [], gone: ['/a'] });
    expect((await t.readManifest('s3')).entries).toEqual(want.filter((e) => e.path !== '/a'));
  });

  it('the base forgotten and pruned: the snapshot built on it is still whole', async () => {
    const { root, t } = await open();
    const s1 = await first(t);
    const w = await t.beginSnapshot(meta('s2'));
    expect(await w.carryFrom!('s1')).toBe(true);
    await w.commit({ version: 1, meta: meta('s2'), totals: emptyTotals(), entries: [], gone: [] });
    await t.deleteSnapshot('s1');
    const pr = await runCli(['prune', '--target', `dir:${root}`, '--json'], { timeoutMs: 60_000 });
    expect(pr.code, pr.stderr).toBe(0);
    const t2 = await targets.plugin().open(`dir:${root}`);
    expect((await t2.readManifest('s2')).entries).toEqual(s1);
    expect(await text(await t2.openFile('s2', '/e/z'))).toBe('zed');
  });

  it('refuses a base whose packs are gone (the peer then passes every entry)', async () => {
    const { root, t } = await open();
    await first(t);
    for (const sub of await fsp.readdir(path.join(root, 'data')))
      await fsp.rm(path.join(root, 'data', sub), { recursive: true });
    const t2 = await targets.plugin().open(`dir:${root}`);
    const w = await t2.beginSnapshot(meta('s2'));
    expect(await w.carryFrom!('s1')).toBe(false);
    expect(await w.carryFrom!('nope')).toBe(false);
    await w.abort();
  });

  /** Every object at the repository, by name. */
  const objects = async (root: string) =>
    (await fsp.readdir(root, { recursive: true, withFileTypes: true }))
      .filter((e) => e.isFile())
      .map((e) => path.relative(root, path.join(e.parentPath, e.name)))
      .sort();

  it("an unchanged snapshot is its base's manifest: a chain of them, past the depth bound, adds only snapshot objects and reads whole", async () => {
    const { root, t } = await open();
    await first(t);
    // One change, then nothing changed, more times than a manifest chain may be deep.
    const w2 = await t.beginSnapshot(meta('s2'));
    expect(await w2.carryFrom!('s1')).toBe(true);
    const r = await w2.putFile('/d/x', Readable.from([Buffer.from('changed')]), { ...m, size: 7 });
    const x: ManifestEntry = { path: '/d/x', type: 'file', ...m, size: 7, hash: r.hash, stored: r.stamp };
    await w2.commit({ version: 1, meta: meta('s2'), totals: emptyTotals(), entries: [x], gone: ['/e'] });
    const want = (await t.readManifest('s2')).entries;
    const before = await objects(root);
    const CHAIN = 20;
    for (let n = 3; n <= CHAIN; n++) {
      const w = await t.beginSnapshot(meta(`s${n}`));
      expect(await w.carryFrom!(`s${n - 1}`)).toBe(true);
      await w.commit({ version: 1, meta: meta(`s${n}`), totals: emptyTotals(), entries: [], gone: [] });
    }
    const added = (await objects(root)).filter((o) => !before.includes(o));
    // No pack, no index object: a snapshot object each (and no lock left behind).
    expect(added.map((o) => o.split('/')[0])).toEqual(Array(CHAIN - 2).fill('snapshots'));
    const t2 = await targets.plugin().open(`dir:${root}`);
    expect((await t2.readManifest(`s${CHAIN}`)).entries).toEqual(want);
    expect(await text(await t2.openFile(`s${CHAIN}`, '/d/x'))).toBe('changed');
    expect(await text(await t2.openFile(`s${CHAIN}`, '/a'))).toBe('alpha');
    // A catalog rebuilt from the target alone, then check and restore through it.
    const catalog = path.join(root, '..', 'catalog');
    const rb = await runCli(
      ['catalog', 'rebuild', '--target', `dir:${root}`, '--catalog', catalog, '--json'],
      {
        timeoutMs: 120_000,
      },
    );
    expect(rb.code, rb.stderr).toBe(0);
    expect(rb.last).toMatchObject({ snapshots: CHAIN, added: CHAIN });
    const ck = await runCli(['check', `s${CHAIN}`, '--catalog', catalog, '--json'], { timeoutMs: 120_000 });
    expect(ck.code, ck.stderr).toBe(0);
    expect(ck.last).toMatchObject({ ok: true, problems: [] });
    const to = path.join(root, '..', 'restored');
    const rr = await runCli(['restore', `s${CHAIN}`, '--to', to, '--catalog', catalog, '--json'], {
      timeoutMs: 120_000,
    });
    expect(rr.code, rr.stderr).toBe(0);
    expect(await fsp.readFile(path.join(to, 'd/x'), 'utf8')).toBe('changed');
    expect(await fsp.readFile(path.join(to, 'd/y'), 'utf8')).toBe('why');
    expect(await fsp.readFile(path.join(to, 'a'), 'utf8')).toBe('alpha');
    expect(await fsp.stat(path.join(to, 'e')).catch(() => undefined)).toBeUndefined();
    // The snapshots it was built on forgotten and pruned: still whole.
    for (let n = 1; n < CHAIN; n++) await t2.deleteSnapshot(`s${n}`);
    const pr = await runCli(['prune', '--target', `dir:${root}`, '--json'], { timeoutMs: 60_000 });
    expect(pr.code, pr.stderr).toBe(0);
    const t3 = await targets.plugin().open(`dir:${root}`);
    expect((await t3.readManifest(`s${CHAIN}`)).entries).toEqual(want);
    expect(await text(await t3.openFile(`s${CHAIN}`, '/d/y'))).toBe('why');
  }, 300_000);

  /** Every index object of the repository overwritten in place: same names, unreadable. */
  const garbleIndex = async (root: string) => {
    const names = await fsp.readdir(path.join(root, 'index'));
    for (const n of names) await fsp.writeFile(path.join(root, 'index', n), 'not an index object');
    return names;
  };
  const unchanged = (id: string) => ({
    version: 1 as const,
    meta: meta(id),
    totals: emptyTotals(),
    entries: [],
    gone: [],
  });

  it("an unchanged snapshot is vouched for without reading the index; a changed one looks its chunks up in the peer's index cache, and reads the index without it", async () => {
    const { root, t } = await open();
    await first(t);
    // s2 is vouched for by the index (it holds its stamp for s3 to vouch by).
    const w2 = await t.beginSnapshot(meta('s2'));
    expect(await w2.carryFrom!('s1')).toBe(true);
    await w2.commit(unchanged('s2'));
    expect(await garbleIndex(root)).toHaveLength(1);
    // A new process: nothing of the index read yet. The unchanged snapshot never reads it.
    const t2 = await targets.plugin().open(`dir:${root}`);
    const w3 = await t2.beginSnapshot(meta('s3'));
    expect(await w3.carryFrom!('s2')).toBe(true);
    await w3.commit(unchanged('s3'));
    expect((await t2.listSnapshots()).map((s) => s.snapshotId).sort()).toEqual(['s1', 's2', 's3']);
    // A changed one stores content, which is looked up in the index: in the cache this peer
    // wrote when s1 was committed, which holds exactly the index objects listed. None is read.
    const t3 = await targets.plugin().open(`dir:${root}`);
    const w4 = await t3.beginSnapshot(meta('s4'));
    expect(await w4.carryFrom!('s3')).toBe(true);
    const put = async (w: typeof w4, p: string, body: string) => {
      const r = await w.putFile(p, Readable.from([Buffer.from(body)]), { ...m, size: body.length });
      return { path: p, type: 'file' as const, ...m, size: body.length, hash: r.hash, stored: r.stamp };
    };
    // 'zed' is stored already (deduplicated by the cache's row); 'new' is not.
    const n = await put(w4, '/n', 'new');
    const z = await put(w4, '/z2', 'zed');
    await w4.commit({ ...unchanged('s4'), entries: [n, z] });
    expect(report(t3)).toMatchObject({ cache: 'used', fromCache: 1, read: 0 });
    expect(await text(await t3.openFile('s4', '/n'))).toBe('new');
    expect(await text(await t3.openFile('s4', '/z2'))).toBe('zed');
    expect(await text(await t3.openFile('s4', '/a'))).toBe('alpha');
    // Without the cache the index objects are read: the coded error.
    await fsp.rm(await cacheFile(root));
    const t4 = await targets.plugin().open(`dir:${root}`);
    const w5 = await t4.beginSnapshot(meta('s5'));
    expect(await w5.carryFrom!('s4')).toBe(true);
    await expect(
      w5.putFile('/n2', Readable.from([Buffer.from('new 2')]), { ...m, size: 5 }),
    ).rejects.toMatchObject({
      code: 'ETWIN_REPO_CORRUPT',
    });
    expect(report(t4).cache).toBe('missing');
    await w5.abort();
  });

  it("a cache that is stale (an index object it holds is gone), damaged or another repository's is not used: the index is read from the target", async () => {
    const { root, t } = await open();
    await first(t);
    const file = await cacheFile(root);
    const good = await fsp.readFile(file);
    const storeOne = async (id: string, base: string, body: string) => {
      const u = await targets.plugin().open(`dir:${root}`);
      const w = await u.beginSnapshot(meta(id));
      expect(await w.carryFrom!(base)).toBe(true);
      const r = await w.putFile('/d/x', Readable.from([Buffer.from(body)]), { ...m, size: body.length });
      const x: ManifestEntry = {
        path: '/d/x',
        type: 'file',
        ...m,
        size: body.length,
        hash: r.hash,
        stored: r.stamp,
      };
      await w.commit({ ...unchanged(id), entries: [x] });
      return u;
    };
    // One index object more than the cache holds: the cache is used, that one is read.
    const u2 = await storeOne('s2', 's1', 'second');
    expect(report(u2)).toMatchObject({ cache: 'used', fromCache: 1, read: 0 });
    const u3 = await storeOne('s3', 's2', 'third');
    expect(report(u3)).toMatchObject({ cache: 'used', fromCache: 1, read: 1 });
    // A byte of a row changed (a blob's offset): the digest fails, nothing of it is trusted.
    const damaged = Buffer.from(good);
    damaged[damaged.length - 40]! ^= 1;
    await fsp.writeFile(file, damaged);
    const u4 = await targets.plugin().open(`dir:${root}`);
    expect(await text(await u4.openFile('s3', '/a'))).toBe('alpha');
    expect(report(u4)).toMatchObject({ cache: 'unreadable', fromCache: 0, read: 3 });
    // Another repository's cache in this one's place (whole, but of another id).
    const { root: other, t: o } = await open();
    await first(o);
    await fsp.copyFile(await cacheFile(other), file);
    const u5 = await targets.plugin().open(`dir:${root}`);
    expect(await text(await u5.openFile('s3', '/d/x'))).toBe('third');
    expect(report(u5)).toMatchObject({ cache: 'foreign', fromCache: 0, read: 3 });
    // After a prune (index objects replaced): the cache of before is stale, even renamed to
    // this repository (the other's rows under this id) or this repository's own.
    await t.deleteSnapshot('s1');
    await t.deleteSnapshot('s2');
    const pr = await runCli(['prune', '--target', `dir:${root}`, '--json'], { timeoutMs: 60_000 });
    expect(pr.code, pr.stderr).toBe(0);
    await fsp.writeFile(file, good);
    const u6 = await targets.plugin().open(`dir:${root}`);
    expect(await text(await u6.openFile('s3', '/d/x'))).toBe('third');
    expect(await text(await u6.openFile('s3', '/e/z'))).toBe('zed');
    expect(report(u6)).toMatchObject({ cache: 'stale', fromCache: 0, read: 1 });
    // That read wrote the cache afresh: the next process uses it.
    const u7 = await targets.plugin().open(`dir:${root}`);
    expect(await text(await u7.openFile('s3', '/d/y'))).toBe('why');
    expect(report(u7)).toMatchObject({ cache: 'used', fromCache: 1, read: 0 });
  }, 120_000);

  it('a new index object since the base (a damage record, a repack) or a pack of another size: carryFrom reads the index', async () => {
    const { root, t } = await open();
    await first(t);
    const [name] = await garbleIndex(root);
    // Another index object than the base was built against: the index is read (and fails here).
    await fsp.copyFile(path.join(root, 'index', name!), path.join(root, 'index', `${'0'.repeat(63)}1`));
    const t2 = await targets.plugin().open(`dir:${root}`);
    const w2 = await t2.beginSnapshot(meta('s2'));
    await expect(w2.carryFrom!('s1')).rejects.toMatchObject({ code: 'ETWIN_REPO_CORRUPT' });
    await w2.abort();
    // The same index objects but a pack one byte shorter: not vouched for by the stamp; the
    // index (readable again) finds it of another size than indexed.
    const { root: root2, t: u } = await open();
    await first(u);
    const packs = (
      await fsp.readdir(path.join(root2, 'data'), { recursive: true, withFileTypes: true })
    ).filter((e) => e.isFile());
    const pack = path.join(packs[0]!.parentPath, packs[0]!.name);
    await fsp.truncate(pack, (await fsp.stat(pack)).size - 1);
    const u2 = await targets.plugin().open(`dir:${root2}`);
    const wu = await u2.beginSnapshot(meta('s2'));
    expect(await wu.carryFrom!('s1')).toBe(false);
    await wu.abort();
  });

  it("an encrypted repository's cache is bound to its key: another key's cache under the same id is not used", async () => {
    const d = await tempDir('twinfs-enc-cache-');
    targets.onCleanup(d.cleanup);
    const pass = path.join(d.dir, 'pass');
    await fsp.writeFile(pass, 'correct horse battery staple\n', { mode: 0o600 });
    const [a, b] = [path.join(d.dir, 'a'), path.join(d.dir, 'b')];
    for (const root of [a, b]) {
      const init = await runCli(
        ['init', '--target', `dir:${root}`, '--encrypt', '--password-file', pass, '--json'],
        {
          timeoutMs: 60_000,
        },
      );
      expect(init.code, init.stderr).toBe(0);
    }
    setPasswordFile(pass);
    try {
      await first(await targets.plugin().open(`dir:${a}`));
      const ta = await targets.plugin().open(`dir:${a}`);
      expect(await text(await ta.openFile('s1', '/a'))).toBe('alpha');
      expect(report(ta)).toMatchObject({ cache: 'used', read: 0 });
      // b takes a's id (its config is not encrypted): a's cache is found, and its digest fails.
      const config = JSON.parse(await fsp.readFile(path.join(b, 'config'), 'utf8'));
      config.id = JSON.parse(await fsp.readFile(path.join(a, 'config'), 'utf8')).id;
      await fsp.writeFile(path.join(b, 'config'), JSON.stringify(config));
      const tb = await targets.plugin().open(`dir:${b}`);
      await first(tb);
      expect(report(tb)).toMatchObject({ cache: 'unreadable', fromCache: 0 });
      expect(await text(await tb.openFile('s1', '/e/z'))).toBe('zed');
    } finally {
      setPasswordFile(undefined);
    }
  }, 120_000);

  it('a freshly opened repository of many blobs finds each one, the first few by a scan of the index rows, then by its map', async () => {
    const { root, t } = await open();
    // More rows than the index scans (1,024) before it builds its map at once.
    const N = 1100;
    const w = await t.beginSnapshot(meta('s1'));
    const entries: ManifestEntry[] = [];
    const put = async (i: number) => {
      const body = `file ${i}`;
      const r = await w.putFile(`/f${i}`, Readable.from([Buffer.from(body)]), { ...m, size: body.length });
      entries.push({ path: `/f${i}`, type: 'file', ...m, size: body.length, hash: r.hash, stored: r.stamp });
    };
    for (let i = 0; i < N; i += 16)
      await Promise.all(Array.from({ length: Math.min(16, N - i) }, (_, k) => put(i + k)));
    entries.sort((a, b) => (a.path < b.path ? -1 : 1));
    await w.commit({ version: 1, meta: meta('s1'), totals: emptyTotals(), entries });
    // Without the peer's cache (which would answer every lookup by its sorted rows).
    await fsp.rm(await cacheFile(root));
    const t2 = await targets.plugin().open(`dir:${root}`);
    const w2 = await t2.beginSnapshot(meta('s2'));
    expect(await w2.carryFrom!('s1')).toBe(true);
    await w2.commit({ version: 1, meta: meta('s2'), totals: emptyTotals(), entries: [], gone: [] });
    for (let i = 0; i < 80; i++) {
      const k = (i * 37) % N;
      expect(await text(await t2.openFile('s2', `/f${k}`))).toBe(`file ${k}`);
    }
    expect((await t2.readManifest('s2')).entries).toEqual(entries);
    expect(report(t2)).toMatchObject({ cache: 'missing', read: 1 });
    // The cache it wrote then answers a new process the same.
    const t3 = await targets.plugin().open(`dir:${root}`);
    for (let i = 0; i < 40; i++) {
      const k = (i * 53) % N;
      expect(await text(await t3.openFile('s2', `/f${k}`))).toBe(`file ${k}`);
    }
    // Every file's chunk and the manifest's tree blobs.
    expect(report(t3)).toMatchObject({ cache: 'used', read: 0 });
    expect(report(t3).cachedRows).toBeGreaterThan(N);
  }, 240_000);

  it('applyDelta: a directory named again keeps what the delta lists below it', () => {
    const base = [dir('/d'), dir('/d/e'), { ...dir('/d/e/f'), type: 'file' as const }];
    const out = applyDelta(base, [{ path: '/d', gone: true }, dir('/d'), { path: '/d/e', gone: true }]);
    expect(out.map((e) => e.path)).toEqual(['/d']);
  });
});
