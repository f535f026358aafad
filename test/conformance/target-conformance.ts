import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BackupTarget, ManifestEntry, SnapshotWriter } from 'twinfs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  dirMeta,
  failingStream,
  fileEntry,
  fileMeta,
  linkMeta,
  manifest,
  pseudoRandom,
  readAll,
  sha256,
  snapMeta,
  streamOf,
  T0,
} from './fixtures.js';

/** What makeTarget gives the suite: a fresh, empty target and how to get rid of it. */
export interface TargetFixture {
  target: BackupTarget;
  /** Closes the target and removes everything it stored. */
  cleanup(): Promise<void>;
  /** Opens a second instance on the same storage (proves commits are visible to a new process). */
  reopen?(): Promise<BackupTarget>;
}

export interface ConformanceOptions {
  /** Size of the large-file case (default 20 MiB: several parts for a multipart upload). */
  largeFileBytes?: number;
  /** Per-test timeout, ms (default 60000). */
  timeoutMs?: number;
}

const NOT_FOUND = { code: 'ETWIN_TARGET_NOT_FOUND' };
const ESCAPE = { code: 'ETWIN_PATH_ESCAPE' };

/**
 * The backup-target conformance suite (after restic's and rclone's backend tests): every
 * built-in target runs it, and a third-party target runs it with one import:
 *
 * ```ts
 * import { describeTargetConformance } from 'twinfs/conformance';
 * describeTargetConformance('mine', async () => ({ target, cleanup }));
 * ```
 *
 * makeTarget is called before every case and must return an empty target; cleanup after it.
 */
export function describeTargetConformance(
  name: string,
  makeTarget: () => Promise<TargetFixture>,
  options: ConformanceOptions = {},
): void {
  const timeout = options.timeoutMs ?? 60_000;
  const largeBytes = options.largeFileBytes ?? 20 * 1024 * 1024;

  describe(`backup target conformance: ${name}`, () => {
    let fx: TargetFixture;
    let t: BackupTarget;
    beforeEach(async () => {
      fx = await makeTarget();
      t = fx.target;
    }, timeout);
    afterEach(async () => {
      await fx?.cleanup();
    }, timeout);

    /** Writes a snapshot of the given files (plus /dir and a symlink) and commits it. */
    async function commitSnapshot(
      id: string,
      files: Record<string, Buffer>,
      time = T0,
    ): Promise<ManifestEntry[]> {
      const w = await t.beginSnapshot(snapMeta(id, time));
      const entries: ManifestEntry[] = [];
      for (const [p, data] of Object.entries(files)) {
        const r = await w.putFile(p, streamOf(data), fileMeta(data.length));
        expect(r).toMatchObject({ hash: sha256(data), bytes: data.length });
        // A target that stamps its copies checks the stamp before it shares one (reuseFile).
        entries.push({ ...fileEntry(p, data), stored: r.stamp });
      }
      await w.commit(manifest(snapMeta(id, time), entries));
      return entries;
    }

    it('declares its capabilities and a spec naming its type', () => {
      expect(t.spec.startsWith(`${t.id}:`)).toBe(true);
      expect(typeof t.capabilities.rangedReads).toBe('boolean');
      expect(typeof t.capabilities.dedup).toBe('boolean');
      expect(typeof t.capabilities.atomicRename).toBe('boolean');
      expect(Number.isInteger(t.capabilities.maxConcurrency)).toBe(true);
      expect(t.capabilities.maxConcurrency).toBeGreaterThanOrEqual(1);
    });

    it(
      'keeps what a faithful restore needs: hard links (putHardLink when offered), nodes, xattrs, ns times',
      async () => {
        const a = pseudoRandom(10_000, 3);
        const id = 'snap-fidelity';
        const w = await t.beginSnapshot(snapMeta(id));
        await w.putFile('/a', streamOf(a), fileMeta(a.length));
        // Another name of /a: a target that can share the data says so with putHardLink; the
        // peer stores the data again otherwise. Either way the name reads as the file.
        if (w.putHardLink) await w.putHardLink('/b', '/a', fileMeta(a.length));
        else await w.putFile('/b', streamOf(a), fileMeta(a.length));
        const times = { mtimeNs: '1767323045678123456', atimeNs: '1767323045999000001' };
        const m = manifest(snapMeta(id), [
          { ...fileEntry('/a', a), ...times, xattrs: [['user.k', Buffer.from([0, 255]).toString('base64')]] },
          { ...fileEntry('/b', a), ...times, linkTo: '/a' },
          { path: '/fifo', type: 'fifo', ...fileMeta(0, 0o640), ...times },
          { path: '/dev-null', type: 'char', ...fileMeta(0, 0o666), rdev: 259, ...times },
          { path: '/disk', type: 'block', ...fileMeta(0, 0o660), rdev: 2049 },
          { path: '/app.sock', type: 'socket', ...fileMeta(0, 0o755) },
        ]);
        await w.commit(m);
        expect(await t.readManifest(id)).toEqual(m);
        // toMatchObject: a target may add its stamp of the stored copy.
        expect(await t.stat(id, '/b')).toMatchObject({ type: 'file', size: a.length });
        expect(await readAll(await t.openFile(id, '/b'))).toEqual(a);
        expect(await readAll(await t.openFile(id, '/a'))).toEqual(a);
      },
      timeout,
    );

    it(
      'commit makes a snapshot visible and durable, with its manifest, files, dirs and symlinks',
      async () => {
        const a = pseudoRandom(100_000, 7);
        const id = 'snap-commit';
        const w = await t.beginSnapshot(snapMeta(id));
        expect(w.snapshotId).toBe(id);
        await w.putDir('/docs', dirMeta());
        await w.putDir('/docs/deep', dirMeta());
        expect(await w.putFile('/docs/deep/a.bin', streamOf(a), fileMeta(a.length))).toMatchObject({
          hash: sha256(a),
          bytes: a.length,
        });
        expect(await w.putFile('/empty', streamOf(Buffer.alloc(0)), fileMeta(0))).toMatchObject({
          hash: sha256(Buffer.alloc(0)),
          bytes: 0,
        });
        const uname = '/docs/ünïcødé name with spaces & ümlauts.txt';
        const u = Buffer.from('unicode\n');
        await w.putFile(uname, streamOf(u), fileMeta(u.length));
        await w.putSymlink('/docs/link', 'deep/a.bin', linkMeta());
        await w.putSymlink('/abs-link', '/etc/passwd', linkMeta());
        const m = manifest(snapMeta(id), [
          { path: '/docs', type: 'dir', ...dirMeta() },
          { path: '/docs/deep', type: 'dir', ...dirMeta() },
          fileEntry('/docs/deep/a.bin', a),
          fileEntry('/empty', Buffer.alloc(0)),
          fileEntry(uname, u),
          { path: '/docs/link', type: 'symlink', ...linkMeta(), target: 'deep/a.bin' },
          { path: '/abs-link', type: 'symlink', ...linkMeta(), target: '/etc/passwd' },
        ]);
        await w.commit(m);

        expect(await t.listSnapshots()).toEqual([{ snapshotId: id, time: T0 }]);
        expect(await t.readManifest(id)).toEqual(m);
        expect(await t.stat(id, '/docs')).toMatchObject({ type: 'dir' });
        expect(await t.stat(id, '/docs/deep/a.bin')).toMatchObject({ type: 'file', size: a.length });
        expect(await t.stat(id, '/empty')).toMatchObject({ type: 'file', size: 0 });
        expect(await t.stat(id, '/docs/link')).toMatchObject({ type: 'symlink' });
        expect(await readAll(await t.openFile(id, '/docs/deep/a.bin'))).toEqual(a);
        expect(await readAll(await t.openFile(id, '/empty'))).toEqual(Buffer.alloc(0));
        expect(await readAll(await t.openFile(id, uname))).toEqual(u);
        // A stored symlink is never followed, not even to a file of the same snapshot.
        await expect((async () => readAll(await t.openFile(id, '/docs/link')))()).rejects.toBeTruthy();

        if (fx.reopen) {
          const t2 = await fx.reopen();
          try {
            expect(await t2.listSnapshots()).toEqual([{ snapshotId: id, time: T0 }]);
            expect(await t2.readManifest(id)).toEqual(m);
            expect(await readAll(await t2.openFile(id, '/docs/deep/a.bin'))).toEqual(a);
          } finally {
            await t2.close();
          }
        }
      },
      timeout,
    );

    it(
      'putSmallFile (when offered) stores a buffer like putFile: content, hash, an empty file, no overwrite',
      async () => {
        const id = 'snap-small';
        const w = await t.beginSnapshot(snapMeta(id));
        if (!w.putSmallFile) {
          await w.abort();
          return; // optional in the contract; putFile covers everything
        }
        const a = pseudoRandom(70_000, 9);
        await w.putDir('/s', dirMeta());
        expect(await w.putSmallFile('/s/a.bin', a, fileMeta(a.length))).toMatchObject({
          hash: sha256(a),
          bytes: a.length,
        });
        expect(await w.putSmallFile('/s/empty', Buffer.alloc(0), fileMeta(0))).toMatchObject({
          hash: sha256(Buffer.alloc(0)),
          bytes: 0,
        });
        // A path already put is not written through again.
        await expect(w.putSmallFile('/s/a.bin', Buffer.from('other'), fileMeta(5))).rejects.toBeTruthy();
        const m = manifest(snapMeta(id), [
          { path: '/s', type: 'dir', ...dirMeta() },
          fileEntry('/s/a.bin', a),
          fileEntry('/s/empty', Buffer.alloc(0)),
        ]);
        await w.commit(m);
        expect(await readAll(await t.openFile(id, '/s/a.bin'))).toEqual(a);
        expect(await t.stat(id, '/s/empty')).toMatchObject({ type: 'file', size: 0 });
        expect(await t.readManifest(id)).toEqual(m);
      },
      timeout,
    );

    it(
      'lists committed snapshots oldest first',
      async () => {
        await commitSnapshot('snap-b', { '/f': Buffer.from('b') }, T0 + 2000);
        await commitSnapshot('snap-a', { '/f': Buffer.from('a') }, T0 + 1000);
        await commitSnapshot('snap-c', { '/f': Buffer.from('c') }, T0 + 3000);
        expect(await t.listSnapshots()).toEqual([
          { snapshotId: 'snap-a', time: T0 + 1000 },
          { snapshotId: 'snap-b', time: T0 + 2000 },
          { snapshotId: 'snap-c', time: T0 + 3000 },
        ]);
        expect(await readAll(await t.openFile('snap-b', '/f'))).toEqual(Buffer.from('b'));
      },
      timeout,
    );

    it(
      'keeps an uncommitted snapshot invisible, and abort (idempotent) leaves nothing',
      async () => {
        await commitSnapshot('snap-kept', { '/k': Buffer.from('kept') });
        const w = await t.beginSnapshot(snapMeta('snap-open', T0 + 1));
        await w.putFile('/x', streamOf(Buffer.from('xx')), fileMeta(2));
        await w.putDir('/d', dirMeta());
        expect(await t.listSnapshots()).toEqual([{ snapshotId: 'snap-kept', time: T0 }]);
        await expect(t.readManifest('snap-open')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.stat('snap-open', '/x')).rejects.toMatchObject(NOT_FOUND);
        await w.abort();
        await w.abort();
        expect(await t.listSnapshots()).toEqual([{ snapshotId: 'snap-kept', time: T0 }]);
        await expect(t.stat('snap-open', '/x')).rejects.toMatchObject(NOT_FOUND);
        // The id is free again after an abort.
        await commitSnapshot('snap-open', { '/y': Buffer.from('y') }, T0 + 1);
        await expect(t.stat('snap-open', '/x')).rejects.toMatchObject(NOT_FOUND);
        expect(await t.stat('snap-open', '/y')).toMatchObject({ type: 'file', size: 1 });
      },
      timeout,
    );

    it(
      'a failed or cancelled put leaves nothing, and a retry of the same path succeeds',
      async () => {
        const id = 'snap-failed-put';
        const w = await t.beginSnapshot(snapMeta(id));
        await expect(
          w.putFile('/broken', failingStream(pseudoRandom(70_000, 3)), fileMeta(140_000)),
        ).rejects.toBeTruthy();
        const ac = new AbortController();
        ac.abort(new Error('cancelled by the test'));
        await expect(
          w.putFile('/cancelled', streamOf(pseudoRandom(10_000, 4)), fileMeta(10_000), { signal: ac.signal }),
        ).rejects.toBeTruthy();
        const good = pseudoRandom(140_000, 5);
        await w.putFile('/broken', streamOf(good), fileMeta(good.length));
        await w.putFile('/other', streamOf(Buffer.from('other')), fileMeta(5));
        await w.commit(
          manifest(snapMeta(id), [fileEntry('/broken', good), fileEntry('/other', Buffer.from('other'))]),
        );
        expect(await readAll(await t.openFile(id, '/broken'))).toEqual(good);
        await expect(t.stat(id, '/cancelled')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.openFile(id, '/cancelled')).rejects.toMatchObject(NOT_FOUND);
      },
      timeout,
    );

    it(
      'openFile reads whole files, and ranges where the target declares rangedReads',
      async () => {
        const data = pseudoRandom(300_000, 11);
        await commitSnapshot('snap-read', { '/r.bin': data });
        expect(await readAll(await t.openFile('snap-read', '/r.bin'))).toEqual(data);
        if (!t.capabilities.rangedReads) return;
        const cases: Array<[number | undefined, number | undefined]> = [
          [0, 0],
          [1000, 1999],
          [65_530, 70_000],
          [data.length - 10, undefined],
          [undefined, 99],
          [data.length - 1, data.length - 1],
        ];
        for (const [start, end] of cases) {
          const got = await readAll(await t.openFile('snap-read', '/r.bin', { start, end }));
          const want = data.subarray(start ?? 0, end === undefined ? undefined : end + 1);
          expect(got.equals(want), `range ${start}-${end}: ${got.length} bytes, want ${want.length}`).toBe(
            true,
          );
        }
      },
      timeout,
    );

    it(
      'stat and openFile answer not-found (and nothing else) for a missing snapshot or path',
      async () => {
        await commitSnapshot('snap-stat', { '/a': Buffer.from('a') });
        await expect(t.stat('snap-stat', '/missing')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.stat('snap-stat', '/a/below-a-file')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.stat('no-such-snapshot', '/a')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.openFile('snap-stat', '/missing')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.openFile('no-such-snapshot', '/a')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.readManifest('no-such-snapshot')).rejects.toMatchObject(NOT_FOUND);
      },
      timeout,
    );

    it(
      'reuseFile shares an unchanged file with an earlier snapshot, and survives its deletion',
      async () => {
        const a = pseudoRandom(200_000, 21);
        const [entry] = await commitSnapshot('snap-base', { '/same.bin': a });
        const id = 'snap-incr';
        const w = await t.beginSnapshot(snapMeta(id, T0 + 10, 'snap-base'));
        await w.reuseFile('/same.bin', 'snap-base', entry!);
        await expect(w.reuseFile('/gone', 'snap-base', { ...entry!, path: '/gone' })).rejects.toMatchObject(
          NOT_FOUND,
        );
        await expect(w.reuseFile('/same.bin', 'no-such-snapshot', entry!)).rejects.toMatchObject(NOT_FOUND);
        // A target that stamps its copies refuses one that is not as it was stored.
        if (entry!.stored !== undefined)
          await expect(
            w.reuseFile('/same.bin', 'snap-base', { ...entry!, stored: `${entry!.stored}-not-it` }),
          ).rejects.toMatchObject(NOT_FOUND);
        await w.commit(manifest(snapMeta(id, T0 + 10, 'snap-base'), [entry!]));
        expect(await readAll(await t.openFile(id, '/same.bin'))).toEqual(a);
        await t.deleteSnapshot('snap-base');
        expect(await readAll(await t.openFile(id, '/same.bin'))).toEqual(a);
        expect(await t.stat(id, '/same.bin')).toMatchObject({ type: 'file', size: a.length });
      },
      timeout,
    );

    it(
      'deleteSnapshot is idempotent and removes committed and uncommitted snapshots',
      async () => {
        await commitSnapshot('snap-del', { '/d': Buffer.from('d') });
        await commitSnapshot('snap-stay', { '/s': Buffer.from('s') }, T0 + 1);
        await t.deleteSnapshot('snap-del');
        await t.deleteSnapshot('snap-del');
        await t.deleteSnapshot('never-existed');
        expect(await t.listSnapshots()).toEqual([{ snapshotId: 'snap-stay', time: T0 + 1 }]);
        await expect(t.readManifest('snap-del')).rejects.toMatchObject(NOT_FOUND);
        await expect(t.openFile('snap-del', '/d')).rejects.toMatchObject(NOT_FOUND);
        const w = await t.beginSnapshot(snapMeta('snap-half', T0 + 2));
        await w.putFile('/h', streamOf(Buffer.from('h')), fileMeta(1));
        await t.deleteSnapshot('snap-half');
        await w.abort();
        expect(await t.listSnapshots()).toEqual([{ snapshotId: 'snap-stay', time: T0 + 1 }]);
      },
      timeout,
    );

    it(
      'refuses paths that escape the volume root',
      async () => {
        await commitSnapshot('snap-esc', { '/a': Buffer.from('a') });
        const w = await t.beginSnapshot(snapMeta('snap-esc2', T0 + 1));
        const bad = ['/../x', 'a/b', '/a/./b', '/a/../../x', '/..', '', '/a\0b'];
        for (const p of bad) {
          await expect(w.putFile(p, streamOf(Buffer.from('evil')), fileMeta(4)), p).rejects.toMatchObject(
            ESCAPE,
          );
          await expect(w.putDir(p, dirMeta()), p).rejects.toMatchObject(ESCAPE);
          await expect(w.putSymlink(p, '/etc/passwd', linkMeta()), p).rejects.toMatchObject(ESCAPE);
          await expect(t.stat('snap-esc', p), p).rejects.toMatchObject(ESCAPE);
          await expect(t.openFile('snap-esc', p), p).rejects.toMatchObject(ESCAPE);
        }
        await w.abort();
      },
      timeout,
    );

    it(
      'never writes or reads through a stored symlink',
      async () => {
        const outside = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-outside-'));
        try {
          const w = await t.beginSnapshot(snapMeta('snap-link'));
          await w.putSymlink('/l', outside, linkMeta());
          await expect(w.putFile('/l/evil', streamOf(Buffer.from('x')), fileMeta(1))).rejects.toMatchObject(
            ESCAPE,
          );
          await expect(w.putDir('/l/d', dirMeta())).rejects.toMatchObject(ESCAPE);
          await w.commit(
            manifest(snapMeta('snap-link'), [
              { path: '/l', type: 'symlink', ...linkMeta(), target: outside },
            ]),
          );
          await fsp.writeFile(path.join(outside, 'secret'), 'secret');
          await expect(
            (async () => readAll(await t.openFile('snap-link', '/l/secret')))(),
          ).rejects.toBeTruthy();
          await expect(t.stat('snap-link', '/l/secret')).rejects.toBeTruthy();
          expect(await fsp.readdir(outside)).toEqual(['secret']);
        } finally {
          await fsp.rm(outside, { recursive: true, force: true });
        }
      },
      timeout,
    );

    it(
      'refuses snapshot ids that are not safe names',
      async () => {
        await expect(t.beginSnapshot(snapMeta('../evil'))).rejects.toBeTruthy();
        await expect(t.beginSnapshot(snapMeta('a/b'))).rejects.toBeTruthy();
        await expect(t.beginSnapshot(snapMeta(''))).rejects.toBeTruthy();
        expect(await t.listSnapshots()).toEqual([]);
      },
      timeout,
    );

    it(
      `stores a large file (${Math.round(largeBytes / 1048576)} MiB) whole, and reads it back`,
      async () => {
        const big = pseudoRandom(largeBytes, 99);
        await commitSnapshot('snap-large', { '/large.bin': big });
        const back = await readAll(await t.openFile('snap-large', '/large.bin'));
        expect(back.length).toBe(big.length);
        expect(sha256(back)).toBe(sha256(big));
        if (t.capabilities.rangedReads) {
          const start = largeBytes - 1_000_000 - 7;
          const tail = await readAll(
            await t.openFile('snap-large', '/large.bin', { start, end: start + 99_999 }),
          );
          expect(tail.equals(big.subarray(start, start + 100_000))).toBe(true);
        }
      },
      timeout * 3,
    );

    it(
      'takes concurrent puts up to capabilities.maxConcurrency',
      async () => {
        const n = Math.min(t.capabilities.maxConcurrency, 16);
        const files = Array.from({ length: Math.max(n * 2, 4) }, (_, i) => ({
          path: `/c/f${i}`,
          data: pseudoRandom(50_000 + i * 1000, 100 + i),
        }));
        const id = 'snap-conc';
        const w: SnapshotWriter = await t.beginSnapshot(snapMeta(id));
        await w.putDir('/c', dirMeta());
        const queue = [...files];
        await Promise.all(
          Array.from({ length: n }, async () => {
            for (let f = queue.shift(); f; f = queue.shift())
              expect((await w.putFile(f.path, streamOf(f.data, 8192), fileMeta(f.data.length))).hash).toBe(
                sha256(f.data),
              );
          }),
        );
        await w.commit(
          manifest(snapMeta(id), [
            { path: '/c', type: 'dir', ...dirMeta() },
            ...files.map((f) => fileEntry(f.path, f.data)),
          ]),
        );
        for (const f of files)
          expect((await readAll(await t.openFile(id, f.path))).equals(f.data)).toBe(true);
      },
      timeout,
    );
  });
}
