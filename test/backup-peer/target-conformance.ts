import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type BackupTarget,
  type EntryMeta,
  emptyTotals,
  isTransient,
  type ManifestEntry,
  type SnapshotManifest,
  type SnapshotMeta,
  targetError,
} from '../../src/backup-peer/target.js';
import { tempDir } from './peer-fixture.js';

/**
 * The backup target contract as tests (src/backup-peer/target.ts). Every target runs it; the
 * plugin issue exports it for third-party targets. `open(dir)` gets a fresh empty directory it
 * may use for the target's storage.
 */
export function describeTargetConformance(name: string, open: (dir: string) => Promise<BackupTarget>): void {
  describe(`backup target conformance: ${name}`, () => {
    let t: BackupTarget;
    let cleanup: () => Promise<void>;
    beforeEach(async () => {
      const d = await tempDir('twinfs-target-');
      cleanup = d.cleanup;
      t = await open(d.dir);
    });
    afterEach(async () => {
      await t.close();
      await cleanup();
    });

    const meta = (id: string): SnapshotMeta => ({
      snapshotId: id,
      time: Date.now(),
      server: 'test',
      deviceId: 'dev',
      selector: { volume: true },
    });
    const fm = (size: number, mode = 0o644): EntryMeta => ({
      size,
      mode,
      uid: 0,
      gid: 0,
      mtime: 1_700_000_000_123,
    });
    const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
    const manifest = (id: string, entries: ManifestEntry[]): SnapshotManifest => ({
      version: 1,
      meta: meta(id),
      totals: emptyTotals(),
      entries,
    });
    const read = async (r: Readable) => {
      const chunks: Buffer[] = [];
      for await (const c of r) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    };
    const big = Buffer.alloc(3 * 1024 * 1024 + 17, 7).map((_, i) => (i * 31) % 251);

    /** Writes and commits a small snapshot; returns its entries. */
    const commitOne = async (id: string, extra: Record<string, Buffer> = {}) => {
      const w = await t.beginSnapshot(meta(id));
      const files: Record<string, Buffer> = {
        '/a/one.txt': Buffer.from('one'),
        '/big.bin': Buffer.from(big),
        ...extra,
      };
      const entries: ManifestEntry[] = [{ path: '/a', type: 'dir', ...fm(0, 0o755) }];
      await w.putDir('/a', fm(0, 0o755));
      for (const [p, b] of Object.entries(files)) {
        const r = await w.putFile(p, Readable.from([b]), fm(b.length));
        expect(r).toEqual({ hash: sha(b), bytes: b.length });
        entries.push({ path: p, type: 'file', ...fm(b.length), hash: r.hash });
      }
      await w.putSymlink('/a/link', '../etc/passwd', fm(0, 0o777));
      entries.push({ path: '/a/link', type: 'symlink', ...fm(0, 0o777), target: '../etc/passwd' });
      await w.commit(manifest(id, entries));
      return entries;
    };

    it('declares its capabilities', () => {
      expect(typeof t.id).toBe('string');
      expect(t.spec.startsWith(`${t.id}:`)).toBe(true);
      expect(t.capabilities.maxConcurrency).toBeGreaterThanOrEqual(1);
      for (const k of ['rangedReads', 'dedup', 'atomicRename'] as const)
        expect(typeof t.capabilities[k]).toBe('boolean');
    });

    it('stores files from streams, commits, lists, reads back (ranged) and stats', async () => {
      const entries = await commitOne('s1');
      expect((await t.listSnapshots()).map((s) => s.snapshotId)).toEqual(['s1']);
      expect((await read(await t.openFile('s1', '/big.bin'))).equals(Buffer.from(big))).toBe(true);
      expect(
        (await read(await t.openFile('s1', '/big.bin', { start: 10, end: 19 }))).equals(
          Buffer.from(big).subarray(10, 20),
        ),
      ).toBe(true);
      expect(await t.stat('s1', '/big.bin')).toEqual({ type: 'file', size: big.length });
      expect((await t.stat('s1', '/a')).type).toBe('dir');
      expect((await t.stat('s1', '/a/link')).type).toBe('symlink');
      const m = await t.readManifest('s1');
      expect(m.meta.snapshotId).toBe('s1');
      expect(m.entries).toEqual(entries);
    });

    it('reports a missing snapshot or path as ETWIN_TARGET_NOT_FOUND, and nothing else', async () => {
      await commitOne('s1');
      const attempts = [
        () => t.stat('s1', '/nope'),
        () => t.stat('s9', '/a/one.txt'),
        () => t.openFile('s1', '/a/nope'),
        () => t.readManifest('s9'),
      ];
      for (const attempt of attempts)
        await expect(attempt()).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
    });

    it('shows nothing of an uncommitted or aborted snapshot', async () => {
      const w = await t.beginSnapshot(meta('s2'));
      await w.putFile('/x', Readable.from([Buffer.from('x')]), fm(1));
      expect(await t.listSnapshots()).toEqual([]);
      await expect(t.stat('s2', '/x')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
      await w.abort();
      await w.abort();
      expect(await t.listSnapshots()).toEqual([]);
    });

    it('leaves nothing of a put whose stream fails', async () => {
      const w = await t.beginSnapshot(meta('s3'));
      const failing = new Readable({
        read() {
          this.push(Buffer.alloc(1000));
          this.destroy(Object.assign(new Error('disk gone'), { code: 'EIO' }));
        },
      });
      await expect(w.putFile('/broken', failing, fm(5000))).rejects.toBeTruthy();
      await w.putFile('/ok', Readable.from([Buffer.from('ok')]), fm(2));
      await w.commit(manifest('s3', [{ path: '/ok', type: 'file', ...fm(2), hash: sha('ok') }]));
      await expect(t.stat('s3', '/broken')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
    });

    it('shares unchanged files with an earlier snapshot (reuseFile)', async () => {
      const e1 = await commitOne('s1');
      const w = await t.beginSnapshot({ ...meta('s2'), parentId: 's1' });
      const bigEntry = e1.find((e) => e.path === '/big.bin')!;
      await w.reuseFile('/big.bin', 's1', bigEntry);
      await expect(w.reuseFile('/gone', 's1', { ...bigEntry, path: '/gone' })).rejects.toMatchObject({
        code: 'ETWIN_TARGET_NOT_FOUND',
      });
      await w.commit(manifest('s2', [bigEntry]));
      await t.deleteSnapshot('s1');
      expect((await read(await t.openFile('s2', '/big.bin'))).equals(Buffer.from(big))).toBe(true);
    });

    it('deletes snapshots idempotently', async () => {
      await commitOne('s1');
      await t.deleteSnapshot('s1');
      await t.deleteSnapshot('s1');
      await t.deleteSnapshot('never-was');
      expect(await t.listSnapshots()).toEqual([]);
      await expect(t.stat('s1', '/big.bin')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
    });

    it('refuses paths that are not clean volume paths', async () => {
      const w = await t.beginSnapshot(meta('s4'));
      for (const p of ['../escape', '/a/../../escape', 'relative', '/a/./b'])
        await expect(w.putFile(p, Readable.from([Buffer.from('x')]), fm(1))).rejects.toMatchObject({
          code: 'ETWIN_PATH_ESCAPE',
        });
      await w.abort();
    });

    it('never writes or reads through a stored symlink', async () => {
      const outside = await tempDir('twinfs-outside-');
      try {
        const w = await t.beginSnapshot(meta('s5'));
        await w.putSymlink('/l', outside.dir, fm(0, 0o777));
        await expect(w.putFile('/l/evil', Readable.from([Buffer.from('x')]), fm(1))).rejects.toMatchObject({
          code: 'ETWIN_PATH_ESCAPE',
        });
        await w.commit(
          manifest('s5', [{ path: '/l', type: 'symlink', ...fm(0, 0o777), target: outside.dir }]),
        );
        const { promises: fsp } = await import('node:fs');
        await fsp.writeFile(`${outside.dir}/secret`, 'secret');
        await expect(t.openFile('s5', '/l/secret')).rejects.toBeTruthy();
        expect(await fsp.readdir(outside.dir)).toEqual(['secret']);
      } finally {
        await outside.cleanup();
      }
    });

    it('tells transient from permanent failures', () => {
      expect(isTransient(targetError(Object.assign(new Error('x'), { code: 'EAGAIN' }), 'op'))).toBe(true);
      expect(isTransient(targetError(Object.assign(new Error('x'), { code: 'ENOSPC' }), 'op'))).toBe(false);
      expect(targetError(Object.assign(new Error('x'), { code: 'ENOENT' }), 'op').code).toBe(
        'ETWIN_TARGET_NOT_FOUND',
      );
    });
  });
}
