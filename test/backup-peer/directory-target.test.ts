import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { emptyTotals, isTransient, targetError } from '../../src/backup-peer/target.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { dirPluginTargets, snapshotMeta, tempDir } from './peer-fixture.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

/**
 * The directory target as the peer gets it: the twinfs-dir plugin (plugins/dir) in a real plugin
 * host. The target contract itself (atomic puts, reuse, not-found, escapes, unsafe ids ...) is
 * the conformance suite's, run on it by test/plugins/dir.test.ts; here: what the peer relies on
 * beyond it — the on-disk layout and metadata, and how specs are opened through the registry.
 */
describe('directory target (plugins/dir, through the plugin host)', () => {
  const targets = dirPluginTargets();
  const open = targets.open;
  const meta = snapshotMeta;
  const fm = { size: 3, mode: 0o640, uid: 1234, gid: 5678, mtime: 1_600_000_000_500 };

  it('commits a snapshot last: packs and index first, the snapshot object at commit', async () => {
    const { root, t } = await open();
    expect(t.spec).toBe(`dir:${root}`);
    const w = await t.beginSnapshot(meta('snap1'));
    await w.putFile('/d/f', Readable.from([Buffer.from('abc')]), fm);
    // Before commit: no snapshot, no index (packs only once cut), a lock held.
    expect((await fsp.readdir(root)).sort()).toEqual(['config', 'locks']);
    expect(await fsp.readdir(path.join(root, 'locks'))).toHaveLength(1);
    await w.commit({ version: 1, meta: meta('snap1'), totals: emptyTotals(), entries: [] });
    expect((await fsp.readdir(root)).sort()).toEqual(['config', 'data', 'index', 'locks', 'snapshots']);
    expect(await fsp.readdir(path.join(root, 'snapshots'))).toEqual(['snap1']);
    // The lock is released with the commit.
    expect(await fsp.readdir(path.join(root, 'locks'))).toEqual([]);
  });

  it('keeps the manifest as committed, metadata included, whatever the files at the target', async () => {
    const { t } = await open();
    const w = await t.beginSnapshot(meta('s1'));
    await w.putDir('/ro', { ...fm, size: 0, mode: 0o555 });
    const put = await w.putFile('/ro/f', Readable.from([Buffer.from('abc')]), fm);
    const entries = [
      { path: '/ro', type: 'dir' as const, ...fm, size: 0, mode: 0o555 },
      { path: '/ro/f', type: 'file' as const, ...fm, hash: put.hash, stored: put.stamp },
    ];
    await w.commit({ version: 1, meta: meta('s1'), totals: emptyTotals(), entries });
    expect((await t.readManifest('s1')).entries).toEqual(entries);
    expect(await t.stat('s1', '/ro/f')).toEqual({ type: 'file', size: 3, stamp: put.stamp });
  });

  it('is opened from a spec through the registry like every target; unknown types and bad specs are named errors', async () => {
    const d = await tempDir();
    targets.onCleanup(d.cleanup);
    // What the CLI does: no built-in target, every type from the plugin host.
    const host = new PluginHost({
      dirs: [{ dir: path.join(ROOT, 'plugins'), source: 'builtin' }],
      storageRoot: path.join(d.dir, 'plugin-state'),
      log: () => undefined,
    });
    await host.discover();
    targets.onCleanup(() => host.dispose());
    const reg = new TargetRegistry([], (type) => host.getTargetProvider(type));
    const t = await reg.open(`dir:${d.dir}/x`);
    expect(t.id).toBe('dir');
    const unknown = reg.open('tape:/dev/st0');
    await expect(unknown).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
    await expect(unknown).rejects.toThrow(/unknown target type "tape" \(known: dir, s3, tar\)/);
    await expect(reg.open('/backups')).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
    await expect(reg.open('dir:')).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
  });

  it('maps fs errors to the contract: not found, transient (retried by the peer), permanent', () => {
    const e = (code: string) => targetError(Object.assign(new Error(code), { code }), 'op');
    expect(e('ENOENT').code).toBe('ETWIN_TARGET_NOT_FOUND');
    expect([e('EAGAIN'), e('EBUSY'), e('ETIMEDOUT')].every(isTransient)).toBe(true);
    expect([e('ENOSPC'), e('EIO'), e('EACCES')].some(isTransient)).toBe(false);
    expect(e('ENOSPC').code).toBe('ETWIN_TARGET_FAILED');
  });
});
