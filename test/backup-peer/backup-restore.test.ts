import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  type BackupHooks,
  type BackupOptions,
  BackupRun,
  newSnapshotId,
} from '../../src/backup-peer/backup-run.js';
import { Catalog } from '../../src/backup-peer/catalog.js';
import { checkSnapshot } from '../../src/backup-peer/check.js';
import { forget } from '../../src/backup-peer/forget.js';
import { MirrorReader } from '../../src/backup-peer/mirror-source.js';
import { restore } from '../../src/backup-peer/restore.js';
import type { BackupTarget, EntryMeta, ReadIntoWriter } from '../../src/backup-peer/target.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { TwinError } from '../../src/common/errors.js';
import type { ReadInto } from '../../src/repository/content-cutter.js';
import { RepositoryTarget } from '../../src/repository/repository-target.js';
import { type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';
import {
  dataPacks,
  FakeControl,
  filesUnder,
  type Mirror,
  makeMirror,
  snapshotTree,
  tempDir,
  volumeBackupRun,
  writeTree,
} from './peer-fixture.js';

const DIR_PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

/**
 * Backup runs against a hand-made mirror and a fake control channel: no server needed. The
 * target is the directory target plugin (plugins/dir) in a real plugin host, as the CLI opens it.
 */
describe('backup run, restore, check, forget (hand-made mirror)', () => {
  let base: string;
  let cleanup: () => Promise<void>;
  let mirror: Mirror;
  let plugin: LoadedPlugin;
  let target: BackupTarget;
  let targetRoot: string;
  let catalogDir: string;
  const registry = new TargetRegistry([], (type) => plugin.host.getTargetProvider(type));

  beforeAll(async () => {
    plugin = await loadTargetPlugin(DIR_PLUGIN);
  });
  afterAll(() => plugin?.dispose());
  const big = Buffer.from(Buffer.alloc(2 * 1024 * 1024 + 3).map((_, i) => (i * 7) % 256));

  beforeEach(async () => {
    ({ dir: base, cleanup } = await tempDir());
    mirror = await makeMirror(base, {
      docs: {
        'a.txt': { content: 'alpha\n', mode: 0o640, uid: 1001, gid: 1002, mtime: 1_650_000_000_250 },
        'b.txt': 'bravo\n',
        deep: { er: { 'c.bin': big } },
        'link-to-a': { symlink: 'a.txt' },
        'abs-link': { symlink: '/etc/passwd' },
      },
      'top.txt': { content: 'top', mode: 0o4755, mtime: 1_600_000_000_000 },
      empty: {},
    });
    await fsp.chmod(path.join(mirror.data, 'docs/deep'), 0o700);
    await fsp.chown(path.join(mirror.data, 'docs/deep'), 1001, 1002);
    await fsp.utimes(path.join(mirror.data, 'docs'), 1_500_000_000, 1_500_000_000);
    targetRoot = path.join(base, 'backups');
    target = await registry.open(`dir:${targetRoot}`);
    catalogDir = path.join(base, 'catalog');
  });
  afterEach(() => cleanup());

  const backup = (control: FakeControl, o: Partial<BackupOptions> = {}) =>
    volumeBackupRun(target, catalogDir, control, o).run();

  it('backs up the split selection and restores it byte for byte, metadata included', async () => {
    const control = new FakeControl(mirror);
    const progress: number[] = [];
    const run = volumeBackupRun(target, catalogDir, control);
    run.onDidProgress((p) => progress.push(p.bytes));
    const r = await run.run();
    expect(r.snapshot.state).toBe('complete');
    // The volume: the peer walks the mirror itself (prepare asks for no item list), the root
    // directory included.
    expect(control.lastListItems).toBe(false);
    expect(r.snapshot.totals).toMatchObject({
      files: 4,
      dirs: 5,
      symlinks: 2,
      bytes: big.length + 6 + 6 + 3,
      reusedFiles: 0,
    });
    expect(r.snapshot.totals.copiedBytes).toBe(r.snapshot.totals.bytes);
    expect(progress.at(-1)).toBe(r.snapshot.totals.bytes);
    expect(control.count('release')).toBe(1);
    expect(control.held.size).toBe(0);
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).toEqual([r.snapshot.id]);

    const to = path.join(base, 'restored');
    const rr = await restore({ snapshot: r.snapshot.id, to, catalogDir, registry });
    expect(rr.failures).toEqual([]);
    expect(await snapshotTree(to)).toEqual(await snapshotTree(mirror.data));
    expect((await checkSnapshot({ snapshot: 'latest', catalogDir, registry })).ok).toBe(true);
  });

  it('restores sparse files sparse, with their exact size and content', async () => {
    const f = path.join(mirror.data, 'sparse.img');
    const fh = await fsp.open(f, 'w');
    await fh.write(Buffer.from('head'), 0, 4, 0);
    await fh.write(Buffer.alloc(100_000, 0x61), 0, 100_000, 5 * 1024 * 1024 + 7);
    await fh.truncate(9 * 1024 * 1024 + 3); // a hole at the end too
    await fh.close();
    const r = await backup(new FakeControl(mirror));
    const to = path.join(base, 'sparse-restored');
    const rr = await restore({ snapshot: r.snapshot.id, paths: ['/sparse.img'], to, catalogDir, registry });
    expect(rr.failures).toEqual([]);
    const out = path.join(to, 'sparse.img');
    expect((await fsp.readFile(out)).equals(await fsp.readFile(f))).toBe(true);
    const st = await fsp.stat(out);
    expect(st.size).toBe(9 * 1024 * 1024 + 3);
    // 4 bytes and 100,000 bytes of data: a few 64 KiB blocks at most, not 9 MiB.
    expect(st.blocks * 512).toBeLessThan(512 * 1024);
  });

  it('copies only what changed since the previous complete snapshot (size, mtime, mode, owner)', async () => {
    const first = await backup(new FakeControl(mirror));
    await fsp.writeFile(path.join(mirror.data, 'docs/b.txt'), 'bravo, changed\n');
    await fsp.chmod(path.join(mirror.data, 'top.txt'), 0o700); // metadata only: copied again too
    await fsp.writeFile(path.join(mirror.data, 'new.txt'), 'new!');
    await fsp.rm(path.join(mirror.data, 'docs/a.txt'));
    const second = await backup(new FakeControl(mirror));
    expect(second.snapshot.parentId).toBe(first.snapshot.id);
    expect(second.snapshot.totals.copiedBytes).toBe(15 + 3 + 4);
    expect(second.snapshot.totals.reusedFiles).toBe(1);
    // Shared: the same chunks (the stamp is a digest of them), no data stored again.
    const stamp = async (id: string) => (await target.stat(id, '/docs/deep/er/c.bin')).stamp;
    expect(await stamp(second.snapshot.id)).toBe(await stamp(first.snapshot.id));

    const to2 = path.join(base, 'r2');
    await restore({ snapshot: second.snapshot.id, to: to2, catalogDir, registry });
    expect(await snapshotTree(to2)).toEqual(await snapshotTree(mirror.data));
    // The first snapshot still restores the tree as it was.
    const to1 = path.join(base, 'r1');
    await restore({
      snapshot: first.snapshot.id,
      paths: ['/docs/a.txt', 'docs/b.txt'],
      to: to1,
      catalogDir,
      registry,
    });
    expect(await fsp.readFile(path.join(to1, 'docs/a.txt'), 'utf8')).toBe('alpha\n');
    expect(await fsp.readFile(path.join(to1, 'docs/b.txt'), 'utf8')).toBe('bravo\n');
  });

  // The copy takes the entries (and lstats) the sizing walk found, as it finds them: a split
  // copy rewritten after that walk, the same size, must fail the run, not land as new content
  // under the old mtime.
  for (const [label, rel, size] of [
    ['small file (read in the workers)', 'docs/b.txt', 6],
    ['large file (streamed)', 'docs/deep/er/c.bin', big.length],
  ] as const)
    it(`fails when a ${label} changes between the walk and its copy`, async () => {
      const file = path.join(mirror.data, rel);
      const walk = MirrorReader.prototype.walk;
      // Synchronously, as the walk hands the entry on: lstat'ed, not read yet.
      const spy = vi.spyOn(MirrorReader.prototype, 'walk').mockImplementation(async function* (
        this: MirrorReader,
        sel,
      ) {
        for await (const s of walk.call(this, sel)) {
          if (s.path === `/${rel}`) {
            fs.writeFileSync(file, Buffer.alloc(size, 0x5a));
            fs.utimesSync(file, 1000, 1000);
          }
          yield s;
        }
      });
      const run = volumeBackupRun(target, catalogDir, new FakeControl(mirror));
      await expect(run.run().finally(() => spy.mockRestore())).rejects.toMatchObject({
        code: 'ETWIN_MIRROR_CHANGED',
        data: { path: `/${rel}` },
      });
      const all = await Catalog.with(catalogDir, (k) => k.list());
      expect(all.map((s) => s.state)).toEqual(['failed']);
      expect(await target.listSnapshots()).toEqual([]);
    });

  it('copies while the sizing walk goes on; the copy phase starts when it is over, with totals fixed from then on', async () => {
    const walk = MirrorReader.prototype.walk;
    let copiedDuringWalk = false;
    let copying: (() => void) | undefined;
    const copied = new Promise<void>((r) => {
      copying = r;
    });
    const events: Array<{ phase: string; files: number; filesTotal: number; bytesTotal: number }> = [];
    // After its first file the walk waits for a copy to finish (at most 2 s: a walk that
    // the copy waits for gives nothing to wait for).
    const spy = vi.spyOn(MirrorReader.prototype, 'walk').mockImplementation(async function* (
      this: MirrorReader,
      sel,
    ) {
      let waited = false;
      for await (const s of walk.call(this, sel)) {
        yield s;
        if (!waited && s.stat?.isFile()) {
          waited = true;
          await Promise.race([copied, new Promise((r) => setTimeout(r, 2000))]);
        }
      }
    });
    const run = volumeBackupRun(target, catalogDir, new FakeControl(mirror));
    run.onDidProgress((p) => {
      events.push({ phase: p.phase, files: p.files, filesTotal: p.filesTotal, bytesTotal: p.bytesTotal });
      if (p.files > 0 && p.phase === 'size') copiedDuringWalk = true;
      if (p.files > 0) copying?.();
    });
    const r = await run.run().finally(() => spy.mockRestore());
    expect(copiedDuringWalk).toBe(true);
    const copy = events.filter((e) => e.phase === 'copy');
    expect(copy.length).toBeGreaterThan(0);
    const files =
      r.snapshot.totals.files +
      r.snapshot.totals.dirs +
      r.snapshot.totals.symlinks +
      (r.snapshot.totals.nodes ?? 0);
    for (const e of copy) expect(e).toMatchObject({ filesTotal: files, bytesTotal: r.snapshot.totals.bytes });
    // Never more done than found.
    for (const e of events) expect(e.files).toBeLessThanOrEqual(e.filesTotal);
  });

  it('past the entries the sizing walk keeps, the copy walks again and the snapshot is the same', async () => {
    const kept = await backup(new FakeControl(mirror), { full: true });
    const rewalked = await backup(new FakeControl(mirror), { full: true, walkKeep: 2 });
    expect(rewalked.snapshot.totals).toEqual(kept.snapshot.totals);
    const [a, b] = await Promise.all(
      [kept, rewalked].map((r) => Catalog.with(catalogDir, (c) => c.entries(r.snapshot.id))),
    );
    // A symlink's atime aside: the first backup's readlink moved it (docs/architecture.md).
    const same = (es: typeof a) =>
      es!.map(({ snapshotId: _, storedIn: __, atimeNs, ...e }) =>
        e.type === 'symlink' ? e : { ...e, atimeNs },
      );
    expect(same(b)).toEqual(same(a));
    const to = path.join(base, 'rewalked');
    await restore({ snapshot: rewalked.snapshot.id, to, catalogDir, registry });
    expect(await snapshotTree(to)).toEqual(await snapshotTree(mirror.data));
  });

  it('walks the mirror itself when the item list was cut short', async () => {
    const r = await backup(new FakeControl(mirror, { itemsComplete: false }), {
      selector: { subtree: '/docs' },
    });
    expect(r.snapshot.totals).toMatchObject({ files: 3, symlinks: 2 });
    const to = path.join(base, 'r');
    await restore({ snapshot: r.snapshot.id, to, catalogDir, registry });
    expect(await snapshotTree(path.join(to, 'docs'))).toEqual(
      await snapshotTree(path.join(mirror.data, 'docs')),
    );
  });

  it('maps the device to a local path (mirror root or data dir) and refuses another device', async () => {
    const moved = path.join(base, 'elsewhere');
    await fsp.rename(mirror.root, moved);
    // The server still names its own path of the mirror; this host sees it at `moved`.
    const server = () =>
      new FakeControl({ ...mirror, data: path.join(moved, 'data') }, { mirrorRoot: mirror.data });
    const gone = server();
    await expect(backup(gone)).rejects.toMatchObject({ code: 'ETWIN_MIRROR_UNREADABLE' });
    expect(gone.held.size).toBe(0);
    const r = await backup(server(), { mirrorMap: { [mirror.deviceId]: moved } });
    expect(r.snapshot.state).toBe('complete');
    await backup(server(), { mirrorMap: { [mirror.deviceId]: path.join(moved, 'data') } });
    const other = await makeMirror(path.join(base, 'o'), {}, 'twin-other');
    const c = server();
    await expect(backup(c, { mirrorMap: { [mirror.deviceId]: other.root } })).rejects.toMatchObject({
      code: 'ETWIN_DEVICE_MISMATCH',
    });
    expect(c.count('release')).toBe(1);
  });

  it('re-checks the server paths: ".." and symlinked parents are refused, the split released', async () => {
    // A paths selection: the peer uses the server's item list (it walks subtrees itself).
    const listed = { selector: { paths: ['/docs/a.txt', '/top.txt'] } };
    const dotdot = new FakeControl(mirror, {
      items: (items) => [...items, { ...items[0]!, path: '/docs/../../etc/passwd' }],
    });
    await expect(backup(dotdot, listed)).rejects.toMatchObject({ code: 'ETWIN_PATH_ESCAPE' });
    expect(dotdot.held.size).toBe(0);

    await fsp.symlink('/etc', path.join(mirror.data, 'etc-link'));
    const through = new FakeControl(mirror, {
      items: (items) => [
        ...items,
        {
          ...items.find((i) => i.type === 'file')!,
          path: '/etc-link/passwd',
          mirrorPath: '/etc-link/passwd',
        },
      ],
    });
    await expect(backup(through, listed)).rejects.toMatchObject({ code: 'ETWIN_PATH_ESCAPE' });
    expect(through.held.size).toBe(0);
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.list()).map((s) => s.state)).toEqual(['failed']);
    });
    expect(await target.listSnapshots()).toEqual([]);
    // No snapshot, and the aborted run's packs removed.
    expect(await filesUnder(targetRoot, 'snapshots')).toEqual([]);
    expect(await filesUnder(targetRoot, 'data')).toEqual([]);
  });

  it('stops at once when the split is lost mid-copy: no snapshot, catalog says failed', async () => {
    const control = new FakeControl(mirror);
    // The connection drops while a file is being written.
    const dropping: BackupTarget = Object.create(target, {
      beginSnapshot: {
        value: async (meta: Parameters<BackupTarget['beginSnapshot']>[0]) => {
          const w = await target.beginSnapshot(meta);
          return Object.create(w, {
            putFile: {
              value: (p: string, data: Readable, ...rest: [EntryMeta, { signal?: AbortSignal }?]) =>
                w.putFile(
                  p,
                  Readable.from(
                    (async function* () {
                      for await (const chunk of data) {
                        yield chunk;
                        control.disconnect(); // after the first chunk went to the target
                      }
                    })(),
                    { objectMode: false },
                  ),
                  ...rest,
                ),
            },
            // A large file read straight into the target's buffers (ReadIntoWriter).
            putFileFrom: {
              value: (p: string, read: ReadInto, ...rest: [EntryMeta, { signal?: AbortSignal }?]) =>
                (w as typeof w & ReadIntoWriter).putFileFrom(
                  p,
                  async (buf, offset, length) => {
                    const n = await read(buf, offset, length);
                    control.disconnect(); // after the first piece went to the target
                    return n;
                  },
                  ...rest,
                ),
            },
          });
        },
      },
    });
    await expect(backup(control, { target: dropping })).rejects.toMatchObject({ code: 'ETWIN_SPLIT_LOST' });
    await Catalog.with(catalogDir, async (c) => {
      const [s] = await c.list();
      expect(s).toMatchObject({ state: 'failed', error: { code: 'ETWIN_SPLIT_LOST' } });
      expect(await c.entries(s!.id)).toEqual([]);
    });
    expect(await target.listSnapshots()).toEqual([]);
    // No snapshot, and the aborted run's packs removed.
    expect(await filesUnder(targetRoot, 'snapshots')).toEqual([]);
    expect(await filesUnder(targetRoot, 'data')).toEqual([]);
  });

  it('confirms the split after the last read: a lease lost silently fails the run', async () => {
    const control = new FakeControl(mirror);
    const origRelease = control.held;
    const r = backup(control, {
      target: Object.create(target, {
        beginSnapshot: {
          value: async (meta: Parameters<BackupTarget['beginSnapshot']>[0]) => {
            origRelease.clear(); // the server let the lease run out, and no event reached us
            return target.beginSnapshot(meta);
          },
        },
      }),
    });
    await expect(r).rejects.toMatchObject({ code: 'ETWIN_SPLIT_LOST' });
    await Catalog.with(catalogDir, async (c) => expect((await c.list({ state: 'complete' })).length).toBe(0));
  });

  it('cleans up after a peer that died mid-run', async () => {
    await Catalog.with(catalogDir, (c) =>
      c.begin({
        id: '20200101T000000Z-dead00',
        time: 1,
        server: 's',
        deviceId: mirror.deviceId,
        selector: {},
        paths: ['/'],
        totals: { files: 0, dirs: 0, symlinks: 0, bytes: 0, copiedBytes: 0, reusedFiles: 0, skipped: 0 },
        target: target.spec,
      }),
    );
    // Pretend that run's process is gone.
    const db = path.join(catalogDir, 'snapshots.db');
    await fsp.writeFile(
      db,
      (await fsp.readFile(db, 'utf8')).replace(`"pid":${process.pid}`, '"pid":999999999'),
    );
    await backup(new FakeControl(mirror));
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.get('20200101T000000Z-dead00'))!.state).toBe('failed');
    });
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).not.toContain('20200101T000000Z-dead00');
  });

  it('a peer that died after its commit: its snapshot object, still in the listing, is not adopted nor built on, and is deleted', async () => {
    const s1 = await backup(new FakeControl(mirror));
    // A run that committed at the target (its object written, newer than s1) and died before the
    // catalog marked it complete: its row says running, by a process that is gone.
    const dead = '20991231T000000Z-dead01';
    const repo = (target as RepositoryTarget).repo;
    const obj = await (target as RepositoryTarget).snapshotObject(s1.snapshot.id);
    await repo.writeSnapshot({
      ...obj,
      meta: { ...obj.meta, snapshotId: dead, time: s1.snapshot.time + 60_000 },
    });
    await Catalog.with(catalogDir, (c) =>
      c.begin({
        id: dead,
        time: s1.snapshot.time + 60_000,
        server: 's',
        deviceId: mirror.deviceId,
        selector: {},
        paths: ['/'],
        totals: s1.snapshot.totals,
        target: target.spec,
      }),
    );
    const db = path.join(catalogDir, 'snapshots.db');
    await fsp.writeFile(
      db,
      (await fsp.readFile(db, 'utf8')).replace(
        new RegExp(`("_id":"${dead}".*)"pid":${process.pid}`),
        '$1"pid":999999999',
      ),
    );
    const s2 = await backup(new FakeControl(mirror));
    expect(s2.snapshot.parentId).toBe(s1.snapshot.id);
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.get(dead))?.state).toBe('failed');
      expect(await c.completeIds(target.spec)).not.toContain(dead);
    });
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).toEqual([s1.snapshot.id, s2.snapshot.id]);
  });

  it("a cold run reads no snapshot object but its parent's when the catalog knows them all (O(1), not O(snapshots))", async () => {
    for (let i = 0; i < 4; i++) await backup(new FakeControl(mirror));
    // A cold command: a target opened afresh (no objects read yet) with a catalog that knows all.
    const fresh = await registry.open(`dir:${targetRoot}`);
    expect(fresh).toBeInstanceOf(RepositoryTarget);
    const store = (fresh as RepositoryTarget).repo.store;
    const get = vi.spyOn(store, 'get');
    const list = vi.spyOn(store, 'list');
    const r = await volumeBackupRun(fresh, catalogDir, new FakeControl(mirror)).run();
    // Listed by name (the dir store's listNames: no lstat per object), never with sizes.
    expect(list).not.toHaveBeenCalled();
    const snapshotGets = get.mock.calls.map(([name]) => name).filter((n) => n.startsWith('snapshots/'));
    const parent = r.snapshot.parentId!;
    // The new id's name (must not exist yet) and the parent it is built on; before, all five.
    expect(new Set(snapshotGets)).toEqual(new Set([`snapshots/${r.snapshot.id}`, `snapshots/${parent}`]));
    expect((await target.listSnapshots()).map((s) => s.snapshotId).at(-2)).toBe(parent);
  });

  it('a run still builds on what the target holds: a snapshot of another catalog is read and built on, a forgotten one is not', async () => {
    const other = path.join(base, 'catalog-2');
    const s1 = await backup(new FakeControl(mirror));
    // Another peer (a catalog of its own) backs up the same volume to the same target.
    const s2 = await volumeBackupRun(target, other, new FakeControl(mirror)).run();
    expect(s2.snapshot.parentId).toBe(s1.snapshot.id);
    // This catalog never saw s2: the target says it is the newest, so it is the parent.
    const fresh = await registry.open(`dir:${targetRoot}`);
    const s3 = await volumeBackupRun(fresh, catalogDir, new FakeControl(mirror)).run();
    expect(s3.snapshot.parentId).toBe(s2.snapshot.id);
    // Built on a parent whose entries are only at the target (this catalog's row of s2 has none):
    // the whole volume, not an empty snapshot.
    const { files, dirs, symlinks, bytes } = s1.snapshot.totals;
    expect(s3.snapshot.totals).toMatchObject({ files, dirs, symlinks, bytes });
    expect((await fresh.readManifest(s3.snapshot.id)).entries.map((e) => e.path)).toEqual(
      (await fresh.readManifest(s1.snapshot.id)).entries.map((e) => e.path),
    );
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.get(s2.snapshot.id))?.state).toBe('complete');
    });
    // s3 forgotten at the target by the other peer: its row goes, s2 is the parent again.
    await (await registry.open(`dir:${targetRoot}`)).deleteSnapshot(s3.snapshot.id);
    const s4 = await volumeBackupRun(
      await registry.open(`dir:${targetRoot}`),
      catalogDir,
      new FakeControl(mirror),
    ).run();
    expect(s4.snapshot.parentId).toBe(s2.snapshot.id);
    await Catalog.with(catalogDir, async (c) => {
      expect(await c.get(s3.snapshot.id)).toBeUndefined();
    });
  });

  it('restore refuses paths escaping --to and never writes through a symlink there', async () => {
    const r = await backup(new FakeControl(mirror));
    const to = path.join(base, 'to');
    const outside = path.join(base, 'outside');
    await fsp.mkdir(outside, { mode: 0o711 });
    await fsp.utimes(outside, 1000, 1000);
    for (const p of ['../outside/x', '/docs/../../outside', '..'])
      await expect(
        restore({ snapshot: r.snapshot.id, paths: [p], to, catalogDir, registry }),
      ).rejects.toMatchObject({
        code: 'ETWIN_PATH_ESCAPE',
      });
    expect(await fsp.readdir(outside)).toEqual([]);
    // A symlink already at the destination does not redirect the restore out of --to.
    await fsp.mkdir(to, { recursive: true });
    await fsp.symlink(outside, path.join(to, 'docs'));
    const rr = await restore({ snapshot: r.snapshot.id, paths: ['/docs'], to, catalogDir, registry });
    expect(rr.failures.length).toBeGreaterThan(0);
    expect(rr.failures.every((f) => f.code === 'ETWIN_PATH_ESCAPE')).toBe(true);
    expect(await fsp.readdir(outside)).toEqual([]);
    const st = await fsp.stat(outside);
    expect([st.mode & 0o7777, st.mtimeMs]).toEqual([0o711, 1_000_000]);
    await expect(
      restore({ snapshot: r.snapshot.id, paths: ['/nope'], to, catalogDir, registry }),
    ).rejects.toMatchObject({
      code: 'ETWIN_NOT_FOUND',
    });
  });

  it('restores over existing files whole, and only complete snapshots', async () => {
    const r = await backup(new FakeControl(mirror));
    const to = path.join(base, 'to');
    await writeTree(to, { docs: { 'b.txt': 'stale content that is longer' } });
    await restore({ snapshot: r.snapshot.id, paths: ['/docs/b.txt'], to, catalogDir, registry });
    expect(await fsp.readFile(path.join(to, 'docs/b.txt'), 'utf8')).toBe('bravo\n');
    expect((await fsp.readdir(path.join(to, 'docs'))).filter((n) => n.includes('twinfs-restore'))).toEqual(
      [],
    );
    await Catalog.with(catalogDir, (c) => c.begin({ ...r.snapshot, id: 'running-one', time: Date.now() }));
    await expect(restore({ snapshot: 'running-one', to, catalogDir, registry })).rejects.toMatchObject({
      code: 'ETWIN_SNAPSHOT_INCOMPLETE',
    });
  });

  it('check finds corrupted and missing target data; restore reports it instead of writing it', async () => {
    const r = await backup(new FakeControl(mirror));
    // c.bin's chunks (2 MiB of a 256-byte pattern: one chunk, stored once) get a flipped byte.
    const [pack] = await dataPacks(targetRoot);
    const row = pack!.rows.find(([, type, , , raw]) => type === 'data' && raw > 1000)!;
    const fh = await fsp.open(pack!.file, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, row[2] + 5);
    await fh.write(Buffer.from([b[0]! ^ 0xff]), 0, 1, row[2] + 5);
    await fh.close();
    const c = await checkSnapshot({ snapshot: r.snapshot.id, catalogDir, registry });
    expect(c.ok).toBe(false);
    expect(c.problems.map((p) => [p.path, p.kind]).sort()).toEqual([['/docs/deep/er/c.bin', 'hash']]);
    // Restore verifies too: the corrupted file is reported, not silently restored.
    const rr = await restore({
      snapshot: r.snapshot.id,
      paths: ['/docs/deep'],
      to: path.join(base, 'x'),
      catalogDir,
      registry,
    });
    expect(rr.failures.map((f) => f.code)).toEqual(['ETWIN_REPO_CORRUPT']);
    await expect(fsp.stat(path.join(base, 'x/docs/deep/er/c.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    // The pack gone: every file of it is missing.
    await fsp.rm(pack!.file);
    const gone = await checkSnapshot({ snapshot: r.snapshot.id, catalogDir, registry });
    expect(gone.problems.map((p) => [p.path, p.kind]).sort()).toEqual([
      ['/docs/a.txt', 'missing'],
      ['/docs/b.txt', 'missing'],
      ['/docs/deep/er/c.bin', 'missing'],
      ['/top.txt', 'missing'],
    ]);
  });

  it('check reports a snapshot emptied by the old code after a lost catalog (finding 41), and the ones carried on it', async () => {
    const s1 = await backup(new FakeControl(mirror));
    // What a backup before 8227586 committed when the catalog row of its parent held no entries:
    // a complete snapshot on s1 with nothing in it, then one carried by reference on that (the
    // manifests written as that code wrote them: no entries, zero totals, the parent named).
    const old = async (parentId: string, at: number) => {
      const meta = {
        snapshotId: newSnapshotId(new Date(at)),
        time: at,
        server: s1.snapshot.server,
        deviceId: s1.snapshot.deviceId,
        selector: s1.snapshot.selector,
        parentId,
        ...(s1.snapshot.generation ? { generation: s1.snapshot.generation } : {}),
      };
      const w = await target.beginSnapshot(meta);
      const totals = { files: 0, dirs: 0, symlinks: 0, bytes: 0, copiedBytes: 0, reusedFiles: 0, skipped: 0 };
      await w.commit({ version: 1, meta, totals, entries: [] });
      return meta.snapshotId;
    };
    const s2 = await old(s1.snapshot.id, s1.snapshot.time + 60_000);
    const content = `${s1.snapshot.totals.files + s1.snapshot.totals.symlinks} entries other than directories`;
    const s3 = await old(s2, s1.snapshot.time + 120_000);
    // Read with a catalog that lost everything: its rows come from the target, without entries.
    const lost = path.join(base, 'catalog-lost');
    const spec = `dir:${targetRoot}`;
    const c2 = await checkSnapshot({ snapshot: s2, catalogDir: lost, registry, target: spec });
    expect(c2.ok).toBe(false);
    expect(c2.problems).toEqual([
      expect.objectContaining({ path: '/', kind: 'emptied', code: 'ETWIN_SNAPSHOT_EMPTIED' }),
    ]);
    expect(c2.problems[0]!.message).toContain(`its parent ${s1.snapshot.id} has ${content}`);
    const c3 = await checkSnapshot({ snapshot: s3, catalogDir: lost, registry, target: spec });
    expect(c3.problems.map((p) => [p.kind, p.code])).toEqual([['emptied', 'ETWIN_SNAPSHOT_EMPTIED']]);
    expect(c3.problems[0]!.message).toContain(`its ancestor ${s1.snapshot.id} has ${content}`);
    // The same through this peer's own catalog, and the snapshot with content stays clean.
    expect((await checkSnapshot({ snapshot: s3, catalogDir, registry, target: spec })).problems).toHaveLength(
      1,
    );
    expect(
      (await checkSnapshot({ snapshot: s1.snapshot.id, catalogDir: lost, registry, target: spec })).ok,
    ).toBe(true);
  });

  it('forget removes snapshots and their data; kept snapshots still restore', async () => {
    const s1 = await backup(new FakeControl(mirror));
    await fsp.writeFile(path.join(mirror.data, 'docs/b.txt'), 'second');
    const s2 = await backup(new FakeControl(mirror));
    const f = await forget({ catalogDir, policy: { keepLast: 1 }, registry });
    expect(f.remove.map((s) => s.id)).toEqual([s1.snapshot.id]);
    expect(f.orphaned).toEqual([]);
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).toEqual([s2.snapshot.id]);
    await expect(target.readManifest(s1.snapshot.id)).rejects.toMatchObject({
      code: 'ETWIN_TARGET_NOT_FOUND',
    });
    const to = path.join(base, 'r');
    await restore({ snapshot: s2.snapshot.id, to, catalogDir, registry });
    expect(await snapshotTree(to)).toEqual(await snapshotTree(mirror.data));
    expect((await checkSnapshot({ snapshot: s2.snapshot.id, catalogDir, registry })).ok).toBe(true);
  });

  /** Plugin hooks that record what the run tells them, and how many prepares came before. */
  const recordingHooks = (
    control: FakeControl,
    failures: Array<{ plugin: string; message: string }> = [],
  ) => {
    const log: Array<{ name: string; payload: Record<string, unknown>; prepares: number }> = [];
    const hooks: BackupHooks = {
      async willFreeze(payload, timeoutMs) {
        log.push({
          name: 'onWillFreeze',
          payload: { ...payload, timeoutMs },
          prepares: control.count('prepare'),
        });
        return failures;
      },
      async emit(name, payload) {
        log.push({ name, payload, prepares: control.count('prepare') });
      },
    };
    return { hooks, log, names: () => log.map((l) => l.name) };
  };

  it('tells plugins about the run in order; onWillFreeze comes before prepare, with its own timeout', async () => {
    const control = new FakeControl(mirror);
    const h = recordingHooks(control);
    const r = await backup(control, {
      hooks: h.hooks,
      freezeHookTimeoutMs: 1234,
      selector: { subtree: '/docs' },
    });
    expect(h.names()).toEqual([
      'onWillBackup',
      'onWillFreeze',
      'onDidFreeze',
      'onDidSplit',
      'onDidThaw',
      'onDidResync',
      'onDidCompleteBackup',
    ]);
    const at = (n: string) => h.log.find((l) => l.name === n)!;
    const selector = { subtrees: ['/docs'] };
    expect(at('onWillBackup')).toEqual({
      name: 'onWillBackup',
      payload: { snapshotId: r.snapshot.id, selector, target: target.spec },
      prepares: 0,
    });
    expect(at('onWillFreeze')).toEqual({
      name: 'onWillFreeze',
      payload: { selector, timeoutMs: 1234 },
      prepares: 0,
    });
    expect(at('onDidFreeze').payload).toEqual({ selector, backupId: r.backupId });
    expect(at('onDidSplit').payload).toEqual({ selector, backupId: r.backupId, deviceId: mirror.deviceId });
    expect(at('onDidThaw').payload).toEqual({ selector, backupId: r.backupId, stallMs: 1 });
    expect(at('onDidResync').payload).toMatchObject({ backupId: r.backupId });
    expect(at('onDidCompleteBackup').payload).toEqual({
      snapshotId: r.snapshot.id,
      totals: r.snapshot.totals,
      target: target.spec,
    });
    expect(r.hookFailures).toEqual([]);
  });

  it('a failed onWillFreeze hook: a warning and a crash-consistent backup by default, or no backup with "fail"', async () => {
    const failures = [{ plugin: 'app-quiescer', message: 'onWillFreeze: did not finish within 10 ms' }];
    const h = recordingHooks(new FakeControl(mirror), failures);
    const run = new BackupRun({
      server: 'ws://fake',
      token: 't',
      target,
      catalogDir,
      selector: { volume: true },
      connect: async () => new FakeControl(mirror),
      hooks: h.hooks,
    });
    const warnings: string[] = [];
    run.onDidWarn((w) => warnings.push(`${w.code} ${w.plugin}: ${w.message}`));
    const r = await run.run();
    expect(r.snapshot.state).toBe('complete');
    expect(r.hookFailures).toEqual(failures);
    expect(warnings).toEqual([
      'ETWIN_PLUGIN_FAILED app-quiescer: plugin app-quiescer: onWillFreeze: did not finish within 10 ms; going on crash-consistent',
    ]);

    const control = new FakeControl(mirror);
    const strict = recordingHooks(control, failures);
    await expect(backup(control, { hooks: strict.hooks, onHookFailure: 'fail' })).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_FAILED',
      data: { failures },
    });
    // Nothing was held or split; paused applications are let go; plugins hear of the failure.
    expect(control.count('prepare')).toBe(0);
    expect(strict.names()).toEqual(['onWillBackup', 'onWillFreeze', 'onDidThaw', 'onDidFail']);
    expect(strict.log.at(-1)!.payload).toMatchObject({ code: 'ETWIN_PLUGIN_FAILED' });
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).toEqual([r.snapshot.id]);
  });

  it('a prepare that fails still lets paused applications go (onDidThaw), then onDidFail', async () => {
    const control = new FakeControl(mirror);
    control.prepare = async () => {
      throw new TwinError('ETWIN_BUSY', 'files in this selection are being backed up');
    };
    const h = recordingHooks(control);
    await expect(backup(control, { hooks: h.hooks })).rejects.toMatchObject({ code: 'ETWIN_BUSY' });
    expect(h.names()).toEqual(['onWillBackup', 'onWillFreeze', 'onDidThaw', 'onDidFail']);
    expect(h.log.at(-1)!.payload).toMatchObject({ code: 'ETWIN_BUSY', snapshotId: expect.any(String) });
  });
});
