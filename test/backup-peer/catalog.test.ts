import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Datastore from 'nedb-promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Catalog } from '../../src/backup-peer/catalog.js';
import { planForget } from '../../src/backup-peer/forget.js';
import { emptyTotals, type ManifestEntry } from '../../src/backup-peer/target.js';
import { tempDir } from './peer-fixture.js';

describe('catalog', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('twinfs-catalog-'));
  });
  afterEach(() => cleanup());

  const rec = (id: string, time: number, extra: Record<string, unknown> = {}) => ({
    id,
    time,
    server: 'ws://x',
    deviceId: 'dev',
    selector: { volume: true },
    paths: ['/'],
    totals: emptyTotals(),
    target: 'dir:/b',
    ...extra,
  });
  const entries: ManifestEntry[] = [
    { path: '/b', type: 'file', size: 1, mode: 0o644, uid: 0, gid: 0, mtime: 1, hash: 'h1' },
    { path: '/a', type: 'dir', size: 0, mode: 0o755, uid: 0, gid: 0, mtime: 1 },
  ];

  it('records a snapshot as running, then complete with its entries; survives reopening', async () => {
    await Catalog.with(dir, async (c) => {
      const s = await c.begin(rec('20250101T000000Z-aaaaaa', 1000));
      expect(s.state).toBe('running');
      expect(s.pid).toBe(process.pid);
      expect(await c.entries(s.id)).toEqual([]);
      const done = await c.complete(s.id, entries, { ...emptyTotals(), files: 1, bytes: 1 });
      expect(done.state).toBe('complete');
      expect(done.finishedAt).toBeGreaterThan(0);
    });
    await Catalog.with(dir, async (c) => {
      const [s] = await c.list();
      expect(s).toMatchObject({
        id: '20250101T000000Z-aaaaaa',
        state: 'complete',
        totals: { files: 1, bytes: 1 },
      });
      // Sorted by path, snapshotId attached.
      expect((await c.entries(s!.id)).map((e) => [e.path, e.snapshotId])).toEqual([
        ['/a', s!.id],
        ['/b', s!.id],
      ]);
    });
  });

  it('entries staged while the target commits: the snapshot stays running until markComplete, fail removes them', async () => {
    await Catalog.with(dir, async (c) => {
      await c.begin(rec('20250101T000000Z-aaaaaa', 1000));
      await c.begin(rec('20250101T000001Z-bbbbbb', 2000));
      const staged = await c.stageEntries('20250101T000000Z-aaaaaa', entries);
      const s = await c.get('20250101T000000Z-aaaaaa');
      expect(s?.state).toBe('running');
      expect(await c.hasEntries(s!.id)).toBe(true);
      // Staged for another snapshot: refused.
      await expect(c.markComplete('20250101T000001Z-bbbbbb', emptyTotals(), staged)).rejects.toMatchObject({
        code: 'ETWIN_CATALOG',
      });
      const done = await c.markComplete(s!.id, { ...emptyTotals(), files: 1, bytes: 1 }, staged);
      expect(done).toMatchObject({ state: 'complete', totals: { files: 1, bytes: 1 } });
      // A complete snapshot's entries are never written again.
      await expect(c.stageEntries(s!.id, [])).rejects.toMatchObject({ code: 'ETWIN_CATALOG' });
      // The other run stages, then its commit fails: no entries are left behind.
      await c.stageEntries('20250101T000001Z-bbbbbb', entries);
      await c.fail('20250101T000001Z-bbbbbb', { code: 'ETWIN_TARGET_FAILED', message: 'commit failed' });
      expect(await c.hasEntries('20250101T000001Z-bbbbbb')).toBe(false);
      await expect(
        c.markComplete('20250101T000001Z-bbbbbb', emptyTotals(), { id: '20250101T000001Z-bbbbbb' }),
      ).rejects.toMatchObject({
        code: 'ETWIN_CATALOG',
      });
    });
    await Catalog.with(dir, async (c) => {
      expect((await c.entries('20250101T000000Z-aaaaaa')).map((e) => e.path)).toEqual(['/a', '/b']);
    });
  });

  it('entries written whole in batches read back exactly, through nedb and the text searches', async () => {
    // More rows than one write takes, with everything a manifest entry may carry.
    const many: ManifestEntry[] = [
      { path: '/d', type: 'dir', size: 0, mode: 0o755, uid: 0, gid: 0, mtime: 1 },
    ];
    for (let i = 0; i < 9000; i++)
      many.push({
        path: `/d/f${String(i).padStart(5, '0')}`,
        type: 'file',
        size: i,
        mode: 0o640,
        uid: 1001,
        gid: 1002,
        mtime: 1_650_000_000_000.123,
        mtimeNs: '1650000000000123456',
        atimeNs: '1650000000000000001',
        hash: `h${i}`,
        storedIn: 's-1',
        stored: `st${i}`,
        ...(i % 1000 === 0 ? { xattrs: [['user.k', Buffer.from(`v"\n${i}`).toString('base64')]] } : {}),
        ...(i === 7 ? { linkTo: '/d/f00006' } : {}),
      } as ManifestEntry);
    many.push({
      path: '/d/l "q"',
      type: 'symlink',
      size: 0,
      mode: 0o777,
      uid: 0,
      gid: 0,
      mtime: 1,
      target: '../x\ny',
    });
    many.push({ path: '/d/n', type: 'char', size: 0, mode: 0o600, uid: 0, gid: 0, mtime: 1, rdev: 259 });
    await Catalog.with(dir, async (c) => {
      await c.begin(rec('s-1', 1000));
      await c.complete('s-1', many, emptyTotals());
    });
    await Catalog.with(dir, async (c) => {
      const back = await c.entries('s-1');
      const want = many.map((e) => ({ ...e, snapshotId: 's-1' })).sort((a, b) => (a.path < b.path ? -1 : 1));
      expect(back).toEqual(want);
      const at = await c.entriesAt('s-1', ['/d/f08000', '/d/l "q"', '/d/none']);
      expect([...at.keys()].sort()).toEqual(['/d/f08000', '/d/l "q"']);
      expect(at.get('/d/f08000')?.xattrs).toEqual(many.find((e) => e.path === '/d/f08000')?.xattrs);
      // More paths than are searched for one by one: one pass over the records finds the same.
      const more = ['/d/f08000', '/d/l "q"', '/d/none', '/d/n', '/d/f00006', '/d/f0800'];
      const all = await c.entriesAt('s-1', more);
      expect([...all.keys()].sort()).toEqual(['/d/f00006', '/d/f08000', '/d/l "q"', '/d/n']);
      for (const p of all.keys()) expect(all.get(p)).toEqual(want.find((e) => e.path === p));
      // Those were found through the entry file's path index; without it (none, a damaged one,
      // one of another file) the text search finds the same.
      const file = path.join(dir, 'entries', 's-1.db');
      const idx = await fsp.readFile(`${file}.idx`);
      expect(idx.length).toBe(68 + 16 * many.length);
      const damaged = Buffer.from(idx);
      damaged[100]! ^= 1;
      const other = Buffer.from(idx);
      other.writeDoubleBE(other.readDoubleBE(48) + 1, 48);
      for (const variant of [damaged, other, undefined]) {
        if (variant) await fsp.writeFile(`${file}.idx`, variant);
        else await fsp.rm(`${file}.idx`);
        expect(await c.entriesAt('s-1', more)).toEqual(all);
      }
      expect([...(await c.linkedPaths('s-1'))].sort()).toEqual(['/d/f00006', '/d/f00007']);
    });
  });

  it('a failed snapshot keeps no entries and is never "latest"', async () => {
    await Catalog.with(dir, async (c) => {
      await c.begin(rec('s-1', 1000));
      await c.complete('s-1', [], emptyTotals());
      await c.begin(rec('s-2', 2000));
      await c.fail('s-2', { code: 'ETWIN_SPLIT_LOST', message: 'gone' });
      expect(await c.entries('s-2')).toEqual([]);
      expect((await c.get('s-2'))!.error).toEqual({ code: 'ETWIN_SPLIT_LOST', message: 'gone' });
      expect((await c.resolve('latest')).id).toBe('s-1');
      expect((await c.latestComplete('dev', 'dir:/b'))!.id).toBe('s-1');
      expect(await c.latestComplete('dev', 'dir:/other')).toBeUndefined();
    });
  });

  it('resolves ids, unique prefixes and latest; unknown and ambiguous refs are named errors', async () => {
    await Catalog.with(dir, async (c) => {
      await expect(c.resolve('latest')).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_SNAPSHOT' });
      await c.begin(rec('20250101T000000Z-abc', 1));
      await c.begin(rec('20250101T000000Z-abd', 2));
      expect((await c.resolve('20250101T000000Z-abc')).id).toBe('20250101T000000Z-abc');
      expect((await c.resolve('20250101T000000Z-abd')).id).toBe('20250101T000000Z-abd');
      await expect(c.resolve('20250101')).rejects.toMatchObject({
        code: 'ETWIN_UNKNOWN_SNAPSHOT',
        message: /ambiguous/,
      });
      await expect(c.resolve('nope')).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_SNAPSHOT' });
    });
  });

  it('removes a snapshot with its entries', async () => {
    await Catalog.with(dir, async (c) => {
      await c.begin(rec('s-1', 1));
      await c.complete('s-1', [], emptyTotals());
      await c.remove('s-1');
      expect(await c.list()).toEqual([]);
      expect(await c.entries('s-1')).toEqual([]);
    });
  });

  it('is exclusive: a second opener waits, then fails with ETWIN_CATALOG_LOCKED', async () => {
    const c = await Catalog.open(dir);
    try {
      const t0 = Date.now();
      await expect(Catalog.open(dir, { lockTimeoutMs: 300 })).rejects.toMatchObject({
        code: 'ETWIN_CATALOG_LOCKED',
      });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    } finally {
      await c.close();
    }
    await (await Catalog.open(dir, { lockTimeoutMs: 300 })).close();
  });

  it('takes over a lock left by a dead process, and tells abandoned running snapshots', async () => {
    await fsp.writeFile(path.join(dir, 'lock'), JSON.stringify({ pid: 999_999_999, host: os.hostname() }));
    await Catalog.with(
      dir,
      async (c) => {
        await c.begin(rec('mine', 1));
        const dead = { ...(await c.get('mine'))!, pid: 999_999_999 };
        expect(c.isAbandoned(dead)).toBe(true);
        expect(c.isAbandoned((await c.get('mine'))!)).toBe(false);
        expect(c.isAbandoned({ ...dead, host: 'elsewhere' })).toBe(false);
      },
      { lockTimeoutMs: 300 },
    );
  });

  it('a lock file that names no holder is held while fresh, taken over once stale', async () => {
    // What a process killed between creating the lock and writing it left (older code).
    const lock = path.join(dir, 'lock');
    await fsp.writeFile(lock, '');
    await expect(Catalog.open(dir, { lockTimeoutMs: 300 })).rejects.toMatchObject({
      code: 'ETWIN_CATALOG_LOCKED',
    });
    const old = new Date(Date.now() - 60_000);
    await fsp.utimes(lock, old, old);
    const c = await Catalog.open(dir, { lockTimeoutMs: 300 });
    try {
      // The lock names its holder from the moment it exists; no file of the taking is left.
      expect(JSON.parse(await fsp.readFile(lock, 'utf8'))).toMatchObject({
        pid: process.pid,
        host: os.hostname(),
      });
      expect((await fsp.readdir(dir)).filter((f) => f.startsWith('lock'))).toEqual(['lock']);
    } finally {
      await c.close();
    }
    expect((await fsp.readdir(dir)).filter((f) => f.startsWith('lock'))).toEqual([]);
  });

  it('a process killed -9 at any moment while taking or holding the lock never blocks the next', async () => {
    // A real process takes and releases the catalog lock in a loop and is killed at seeded random
    // moments; each time the next opener must get the catalog at once (dead holder taken over).
    const script = `
      const { LockFile } = await import(${JSON.stringify(path.resolve('dist/backup-peer/catalog-lock.js'))});
      process.stdout.write('ready\\n');
      for (;;) await (await LockFile.acquire(${JSON.stringify(path.join(dir, 'lock'))})).release();
    `;
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = 0; i < 12; i++) {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      await new Promise<void>((res) => child.stdout!.once('data', () => res()));
      await new Promise((r) => setTimeout(r, rnd() * 40));
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      const t0 = Date.now();
      await (await Catalog.open(dir, { lockTimeoutMs: 5_000 })).close();
      expect(Date.now() - t0).toBeLessThan(4_000);
    }
    // Nothing of the lock is left: a killed taker's own file (lock.PID.RANDOM) is removed by the
    // next one that takes the lock.
    expect((await fsp.readdir(dir)).filter((f) => f.startsWith('lock'))).toEqual([]);
  }, 60_000);

  it('a damaged datafile is a clear ETWIN_CATALOG error', async () => {
    await fsp.writeFile(path.join(dir, 'snapshots.db'), 'garbage\n'.repeat(20));
    await expect(Catalog.open(dir)).rejects.toMatchObject({ code: 'ETWIN_CATALOG' });
    // ... and the lock was released on the way out.
    await expect(fsp.stat(path.join(dir, 'lock'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('forget policy', () => {
  const day = 24 * 3600_000;
  const base = new Date(2025, 0, 10, 12).getTime();
  const snap = (
    id: string,
    time: number,
    state: 'complete' | 'failed' | 'running' = 'complete',
    extra = {},
  ) => ({
    id,
    time,
    server: 's',
    deviceId: 'dev',
    selector: {},
    paths: ['/'],
    state,
    totals: emptyTotals(),
    target: 'dir:/b',
    pid: 1,
    host: 'h',
    ...extra,
  });

  it('keeps the newest N, and the newest of each of the last N days, per group', () => {
    const all = [
      snap('d0-a', base - 2 * day),
      snap('d0-b', base - 2 * day + 1000),
      snap('d1-a', base - day),
      snap('d2-a', base),
      snap('d2-b', base + 1000),
      snap('other-dev', base - 5 * day, 'complete', { deviceId: 'dev2' }),
    ];
    const p1 = planForget(all, { keepLast: 1 }, () => false);
    expect(p1.keep.map((s) => s.id).sort()).toEqual(['d2-b', 'other-dev']);
    const p2 = planForget(all, { keepDaily: 2 }, () => false);
    expect(p2.keep.map((s) => s.id).sort()).toEqual(['d1-a', 'd2-b', 'other-dev']);
    const p3 = planForget(all, { keepLast: 2, keepDaily: 3 }, () => false);
    expect(p3.remove.map((s) => s.id).sort()).toEqual(['d0-a']);
  });

  it('always removes failed and abandoned snapshots, never a live running one', () => {
    const all = [
      snap('f', 1, 'failed'),
      snap('dead', 2, 'running'),
      snap('live', 3, 'running'),
      snap('c', 4),
    ];
    const p = planForget(all, { keepLast: 5 }, (s) => s.id === 'dead');
    expect(p.remove.map((s) => [s.id, s.reason])).toEqual([
      ['f', 'failed'],
      ['dead', 'abandoned'],
    ]);
    expect(p.keep.map((s) => s.id).sort()).toEqual(['c', 'live']);
  });

  it('wants a policy', () => {
    expect(() => planForget([], {}, () => false)).toThrow(expect.objectContaining({ code: 'ETWIN_USAGE' }));
  });
});

describe('catalog deltas', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('twinfs-catalog-delta-'));
  });
  afterEach(() => cleanup());
  const rec = (id: string, time: number) => ({
    id,
    time,
    server: 'ws://x',
    deviceId: 'dev',
    selector: { volume: true },
    paths: ['/'],
    totals: emptyTotals(),
    target: 'dir:/b',
  });

  /** n plain file entries, /f000 on, sizes and hashes by index. */
  const fileEntries = (n: number): ManifestEntry[] =>
    Array.from({ length: n }, (_, i) => ({
      path: `/f${String(i).padStart(3, '0')}`,
      type: 'file',
      size: i,
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: 1,
      hash: `h${i}`,
    }));

  it('a snapshot mostly like its parent is recorded as a delta on it, resolved on read and made whole when the parent goes', async () => {
    const many = fileEntries(100);
    const ids = ['20250101T000000Z-aaaaaa', '20250102T000000Z-bbbbbb', '20250103T000000Z-cccccc'];
    const next = [
      ...many.filter((e) => e.path !== '/f007').map((e) => (e.path === '/f003' ? { ...e, hash: 'new' } : e)),
      { ...many[0]!, path: '/g', hash: 'g' },
    ];
    const expected = [...next].sort((a, b) => (a.path < b.path ? -1 : 1));
    await Catalog.with(dir, async (c) => {
      await c.begin(rec(ids[0]!, 1000));
      await c.complete(ids[0]!, many, emptyTotals());
      const parent = new Map((await c.entries(ids[0]!)).map((e) => [e.path, e]));
      await c.begin(rec(ids[1]!, 2000));
      const s = await c.complete(ids[1]!, next, emptyTotals(), { base: { id: ids[0]!, entries: parent } });
      expect(s).toMatchObject({ entriesBase: ids[0], entriesDepth: 1 });
      // Only the delta is stored: one changed, one new, one gone.
      const own = (await fsp.readFile(path.join(dir, 'entries', `${ids[1]}.db`), 'utf8')).trim().split('\n');
      expect(own).toHaveLength(3);
      // A snapshot mostly unlike its parent stores all its entries.
      await c.begin(rec(ids[2]!, 3000));
      const other = many.map((e) => ({ ...e, hash: `x${e.hash}` }));
      const s3 = await c.complete(ids[2]!, other, emptyTotals(), { base: { id: ids[0]!, entries: parent } });
      expect(s3.entriesBase).toBeUndefined();
    });
    const strip = (xs: Array<Record<string, unknown>>) => xs.map(({ snapshotId: _, ...e }) => e);
    await Catalog.with(dir, async (c) => {
      const got = await c.entries(ids[1]!);
      expect(strip(got as any)).toEqual(expected);
      expect(new Set(got.map((e) => e.snapshotId))).toEqual(new Set([ids[1]]));
      await c.remove(ids[0]!);
      expect((await c.get(ids[1]!))?.entriesBase).toBeUndefined();
      expect(strip((await c.entries(ids[1]!)) as any)).toEqual(expected);
    });
  });

  it('a chain of unchanged snapshots built by reference stays one delta deep, past the bound, and each survives its parent going', async () => {
    const many = fileEntries(50);
    const id = (n: number) => `20250101T0000${String(n).padStart(2, '0')}Z-aaaaaa`;
    const changed = { ...many[5]!, hash: 'changed' };
    const expected = many.map((e) => (e.path === changed.path ? changed : e));
    const strip = (xs: Array<Record<string, unknown>>) => xs.map(({ snapshotId: _, ...e }) => e);
    const CHAIN = 20; // more than MAX_DELTA_CHAIN
    await Catalog.with(dir, async (c) => {
      await c.begin(rec(id(0), 1000));
      await c.complete(id(0), many, emptyTotals());
      // One change, then nothing changed, CHAIN times.
      await c.begin(rec(id(1), 1001));
      await c.completeOnBase(id(1), id(0), { entries: [changed], gone: ['/f009'] }, emptyTotals());
      for (let n = 2; n <= CHAIN; n++) {
        await c.begin(rec(id(n), 1000 + n));
        const s = await c.completeOnBase(id(n), id(n - 1), { entries: [], gone: [] }, emptyTotals());
        // On the snapshot with all the entries, with the one delta: never deeper, never rewritten whole.
        expect(s).toMatchObject({ entriesBase: id(0), entriesDepth: 1 });
        const own = (await fsp.readFile(path.join(dir, 'entries', `${id(n)}.db`), 'utf8')).trim().split('\n');
        expect(own).toHaveLength(2);
      }
      const want = expected.filter((e) => e.path !== '/f009');
      expect(strip((await c.entries(id(CHAIN))) as any)).toEqual(want);
      expect((await c.entriesAt(id(CHAIN), ['/f005', '/f009'])).get('/f005')).toMatchObject({
        hash: 'changed',
      });
      expect((await c.entriesAt(id(CHAIN), ['/f009'])).size).toBe(0);
      // Forgetting the middle and the first: the last is still whole.
      await c.remove(id(1));
      await c.remove(id(10));
      expect(strip((await c.entries(id(CHAIN))) as any)).toEqual(want);
      await c.remove(id(0));
      expect((await c.get(id(CHAIN)))?.entriesBase).toBeUndefined();
      expect(strip((await c.entries(id(CHAIN))) as any)).toEqual(want);
    });
  });
  it('a session takes the snapshots this process loaded while the file is as it left it, and loads again after another writer', async () => {
    const file = path.join(dir, 'snapshots.db');
    const ino = async () => (await fsp.stat(file)).ino;
    const ids = () => Catalog.with(dir, async (c) => (await c.list()).map((s) => s.id).sort());
    await Catalog.with(dir, (c) => c.begin(rec('s-1', 1000)));
    const first = await ino();
    // Not loaded again: nedb's load writes the file anew (a new inode) every time.
    expect(await ids()).toEqual(['s-1']);
    expect(await ino()).toBe(first);
    // Another writer's load (compaction) and insert, and an append of a row as nedb writes it.
    const other = Datastore.create({ filename: file });
    await other.load();
    await other.insert({ ...rec('s-2', 2000), _id: 's-2', state: 'complete' });
    expect(await ids()).toEqual(['s-1', 's-2']);
    await fsp.appendFile(file, `${JSON.stringify({ ...rec('s-3', 3000), _id: 's-3', state: 'complete' })}\n`);
    expect(await ids()).toEqual(['s-1', 's-2', 's-3']);
    const loaded = await ino();
    expect(await ids()).toEqual(['s-1', 's-2', 's-3']);
    expect(await ino()).toBe(loaded);
    // After a failed session the next loads the file again (a datastore of its own).
    await expect(
      Catalog.with(dir, async (c) => {
        await c.begin(rec('s-4', 4000));
        throw new Error('failed on purpose');
      }),
    ).rejects.toThrow('failed on purpose');
    const create = vi.spyOn(Datastore, 'create');
    try {
      expect(await ids()).toEqual(['s-1', 's-2', 's-3', 's-4']);
      expect(create.mock.calls.map(([o]) => (o as { filename?: string }).filename)).toEqual([file]);
    } finally {
      create.mockRestore();
    }
  });
  it('a load writes snapshots.db anew only when it holds more lines to drop (superseded, deleted) than documents', async () => {
    const file = path.join(dir, 'snapshots.db');
    const ino = async () => (await fsp.stat(file)).ino;
    const lines = async () => (await fsp.readFile(file, 'utf8')).split('\n').filter(Boolean).length;
    // Another process's view: the file's stamp changed, so the next session loads it.
    let t = 1_700_000_000;
    const touch = () => fsp.utimes(file, ++t, t);
    const ids = () => Catalog.with(dir, async (c) => (await c.list()).map((s) => `${s.id} ${s.state}`));
    await Catalog.with(dir, async (c) => {
      await c.begin(rec('s-1', 1000));
      await c.begin(rec('s-2', 2000));
      await c.complete('s-1', [], emptyTotals());
    });
    // s-1 twice (running, then complete), as every backup leaves its row: loaded, not rewritten.
    expect(await lines()).toBe(3);
    const before = await ino();
    await touch();
    expect(await ids()).toEqual(['s-1 complete', 's-2 running']);
    expect(await ino()).toBe(before);
    expect(await lines()).toBe(3);
    // s-3 removed and recorded again, 10 times: 20 lines to drop for 3 documents, compacted.
    for (let i = 0; i < 10; i++)
      await Catalog.with(dir, async (c) => {
        await c.begin(rec('s-3', 3000));
        await c.remove('s-3');
      });
    await Catalog.with(dir, (c) => c.begin(rec('s-3', 3000)));
    expect(await lines()).toBe(24);
    await touch();
    expect(await ids()).toEqual(['s-1 complete', 's-2 running', 's-3 running']);
    expect(await lines()).toBe(3);
    expect(await ino()).not.toBe(before);
  });

  it('entries are read as nedb loads the file (last line of an _id wins, $$deleted removes), and the read writes nothing', async () => {
    const id = '20250101T000000Z-bbbbbb';
    await Catalog.with(dir, async (c) => {
      await c.begin(rec(id, 1000));
      await c.complete(
        id,
        [
          { path: '/b', type: 'file', size: 1, mode: 0o644, uid: 0, gid: 0, mtime: 1, hash: 'h1' },
          { path: '/a', type: 'dir', size: 0, mode: 0o755, uid: 0, gid: 0, mtime: 1 },
        ],
        emptyTotals(),
      );
    });
    const file = (await fsp.readdir(path.join(dir, 'entries'))).find((f) => f.endsWith('.db'))!;
    const abs = path.join(dir, 'entries', file);
    const rows = (await fsp.readFile(abs, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    const a = rows.find((r) => r.path === '/a');
    const b = rows.find((r) => r.path === '/b');
    await fsp.appendFile(
      abs,
      `${JSON.stringify({ $$deleted: true, _id: a._id })}\n${JSON.stringify({ ...b, size: 7 })}\n{"$$indexCreated":{"fieldName":"path"}}\n`,
    );
    const before = await fsp.stat(abs);
    const read = await Catalog.with(dir, (c) => c.entries(id));
    const after = await fsp.stat(abs);
    expect([after.ino, after.mtimeMs, after.size]).toEqual([before.ino, before.mtimeMs, before.size]);
    expect(read.map((e) => [e.path, e.size])).toEqual([['/b', 7]]);
    // What nedb itself loads from the same lines (a copy: its load rewrites the file).
    await fsp.copyFile(abs, `${abs}.copy`);
    const nedb = Datastore.create({ filename: `${abs}.copy` });
    await nedb.load();
    const docs = (await nedb.find({})) as Array<{ path: string; size: number }>;
    expect(docs.map((d) => [d.path, d.size])).toEqual([['/b', 7]]);
  });
});

describe('catalog head (snapshots.head)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('twinfs-catalog-head-'));
  });
  afterEach(() => cleanup());
  const rec = (id: string, time: number, deviceId: string, target: string) => ({
    id,
    time,
    server: 'ws://x',
    deviceId,
    selector: { volume: true },
    paths: ['/'],
    totals: emptyTotals(),
    target,
  });
  const one: ManifestEntry[] = [{ path: '/', type: 'dir', size: 0, mode: 0o755, uid: 0, gid: 0, mtime: 1 }];
  const pairs = [
    ['dev-a', 'dir:/t1'],
    ['dev-a', 'dir:/t2'],
    ['dev-b', 'dir:/t1'],
  ] as const;

  /**
   * 40 snapshots a pair (120 in all): the first of each with its entries whole, the others each
   * built on the one before by reference (a delta on the first), every fifth failed, and one
   * running run a pair; times interleaved across the pairs.
   */
  async function fill(): Promise<void> {
    await Catalog.with(dir, async (c) => {
      const last = new Map<string, string>();
      for (let n = 0; n < 40; n++)
        for (const [k, [dev, target]] of pairs.entries()) {
          const id = `2025${String(n).padStart(4, '0')}T00000${k}Z-abcdef`;
          await c.begin(rec(id, 1_000 + n * 10 + k, dev, target));
          const prev = last.get(`${dev} ${target}`);
          if (n % 5 === 4) await c.fail(id, { code: 'ETWIN_ABORTED', message: 'x' });
          else if (!prev) await c.complete(id, one, emptyTotals());
          else await c.completeOnBase(id, prev, { entries: [], gone: [] }, emptyTotals());
          if (n % 5 !== 4) last.set(`${dev} ${target}`, id);
        }
      for (const [k, [dev, target]] of pairs.entries())
        await c.begin(rec(`20260000T00000${k}Z-running`, 9_000 + k, dev, target));
    });
  }

  /** What a session answers for every pair and target: the newest, the ids, the running. */
  const answers = (c: Catalog) =>
    Promise.all([
      Promise.all(pairs.map(([dev, t]) => c.latestComplete(dev, t))),
      Promise.all(['dir:/t1', 'dir:/t2', 'dir:/none'].map(async (t) => (await c.completeIds(t)).sort())),
      c.list({ state: 'running' }),
    ]);
  /** The same from every row (a session that loaded snapshots.db). */
  const fromAll = async (c: Catalog) => {
    const all = await c.list();
    const done = all.filter((s) => s.state === 'complete');
    return [
      pairs.map(([dev, t]) => done.filter((s) => s.deviceId === dev && s.target === t).pop()),
      ['dir:/t1', 'dir:/t2', 'dir:/none'].map((t) =>
        done
          .filter((s) => s.target === t)
          .map((s) => s.id)
          .sort(),
      ),
      all.filter((s) => s.state === 'running'),
    ];
  };

  it("a session answers a backup's questions from the head, without loading snapshots.db, as a load of every row answers them", async () => {
    await fill();
    const create = vi.spyOn(Datastore, 'create');
    try {
      const [fromHead, loads] = await Catalog.with(dir, async (c) => {
        const a = await answers(c);
        return [a, create.mock.calls.length] as const;
      });
      expect(loads).toBe(0);
      const whole = await Catalog.with(dir, fromAll);
      expect(fromHead).toEqual(whole);
      expect(fromHead[0].map((s) => s?.id)).toEqual([
        '20250038T000000Z-abcdef',
        '20250038T000001Z-abcdef',
        '20250038T000002Z-abcdef',
      ]);
      // The parent's entries resolve through its chain as with every row loaded.
      create.mockClear();
      const entries = await Catalog.with(dir, (c) => c.entries('20250038T000001Z-abcdef'));
      expect(create).not.toHaveBeenCalled();
      expect(entries.map((e) => e.path)).toEqual(['/']);
    } finally {
      create.mockRestore();
    }
  });

  it('a run recorded through the head is what nedb loads, and the next session builds on it', async () => {
    await fill();
    const id = '20260001T000000Z-newrun';
    await Catalog.with(dir, async (c) => {
      const parent = (await c.latestComplete('dev-a', 'dir:/t1'))!;
      await c.begin({ ...rec(id, 10_000, 'dev-a', 'dir:/t1'), parentId: parent.id });
      const staged = await c.stageOnBase(id, parent.id, { entries: [], gone: [] });
      await c.markComplete(id, { ...emptyTotals(), files: 7 }, staged);
      // An abandoned run's failure, written the same way.
      await c.fail('20260000T000002Z-running', { code: 'ETWIN_ABORTED', message: 'died' });
    });
    const fromHead = await Catalog.with(dir, answers);
    expect(fromHead[0][0]).toMatchObject({ id, state: 'complete', totals: { files: 7 }, entriesDepth: 1 });
    expect(fromHead[1][0]).toContain(id);
    expect(fromHead[2].map((s) => s.id)).toEqual(['20260000T000000Z-running', '20260000T000001Z-running']);
    // nedb itself, from a copy of the file (its load rewrites it), sees the same rows.
    await fsp.copyFile(path.join(dir, 'snapshots.db'), path.join(dir, 'copy.db'));
    const nedb = Datastore.create({ filename: path.join(dir, 'copy.db') });
    await nedb.load();
    const row = (await nedb.findOne({ _id: id })) as Record<string, unknown>;
    expect(row).toMatchObject({
      state: 'complete',
      totals: { files: 7 },
      entriesBase: '20250000T000000Z-abcdef',
    });
    expect(await nedb.findOne({ _id: '20260000T000002Z-running' })).toMatchObject({ state: 'failed' });
    await fsp.rm(path.join(dir, 'snapshots.head'));
    expect(await Catalog.with(dir, fromAll)).toEqual(fromHead);
  });

  it('a head of another state of snapshots.db, or a damaged one, is not used', async () => {
    await fill();
    const file = path.join(dir, 'snapshots.db');
    const head = path.join(dir, 'snapshots.head');
    const kept = await fsp.readFile(head);
    // Another writer (an older twinfs, which writes no head) appends a newer snapshot.
    const newer = { ...rec('20270000T000000Z-other', 50_000, 'dev-b', 'dir:/t1'), state: 'complete' };
    const { id: _, ...doc } = newer;
    await fsp.appendFile(file, `${JSON.stringify({ ...doc, _id: newer.id, pid: 1, host: 'elsewhere' })}\n`);
    const create = vi.spyOn(Datastore, 'create');
    try {
      const latest = await Catalog.with(dir, (c) => c.latestComplete('dev-b', 'dir:/t1'));
      expect(latest?.id).toBe(newer.id);
      expect(create).toHaveBeenCalledTimes(1);
    } finally {
      create.mockRestore();
    }
    // The session wrote the head for the file as it is: the next one answers from it.
    expect((await fsp.readFile(head)).equals(kept)).toBe(false);
    expect((await Catalog.with(dir, answers))[0][2]?.id).toBe(newer.id);
    // A torn head, or one that is not JSON at all.
    for (const bad of [(await fsp.readFile(head, 'utf8')).slice(0, 200), 'garbage']) {
      await fsp.writeFile(head, bad);
      expect((await Catalog.with(dir, answers))[0][2]?.id).toBe(newer.id);
    }
  });
});
