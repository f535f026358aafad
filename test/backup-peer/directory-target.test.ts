import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { emptyTotals, isTransient, targetError } from '../../src/backup-peer/target.js';
import { DirectoryTarget } from '../../src/backup-peer/targets/directory.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { describeTargetConformance } from '../conformance/index.js';
import { tempDir } from './peer-fixture.js';

// The shared backup-target conformance suite (test/conformance), on the peer's own directory target.
describeTargetConformance('dir (src/backup-peer)', async () => {
  const d = await tempDir('twinfs-target-');
  const root = path.join(d.dir, 'backups');
  const target = await DirectoryTarget.open(root);
  return {
    target,
    reopen: () => DirectoryTarget.open(root),
    async cleanup() {
      await target.close();
      await d.cleanup();
    },
  };
});

describe('directory target', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });
  const open = async () => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    return { root: path.join(d.dir, 'b'), t: await DirectoryTarget.open(path.join(d.dir, 'b')) };
  };
  const meta = (id: string) => ({
    snapshotId: id,
    time: Date.now(),
    server: 's',
    deviceId: 'd',
    selector: {},
  });
  const fm = { size: 3, mode: 0o640, uid: 1234, gid: 5678, mtime: 1_600_000_000_500 };

  it('keeps a plain tree per snapshot, written under .partial and renamed on commit', async () => {
    const { root, t } = await open();
    expect(t.spec).toBe(`dir:${root}`);
    const w = await t.beginSnapshot(meta('snap1'));
    await w.putFile('/d/f', Readable.from([Buffer.from('abc')]), fm);
    expect((await fsp.readdir(root)).sort()).toEqual(['.manifests', 'snap1.partial']);
    await w.commit({ version: 1, meta: meta('snap1'), totals: emptyTotals(), entries: [] });
    expect((await fsp.readdir(root)).sort()).toEqual(['.manifests', 'snap1']);
    const st = await fsp.stat(path.join(root, 'snap1/d/f'));
    expect(await fsp.readFile(path.join(root, 'snap1/d/f'), 'utf8')).toBe('abc');
    // As root the tree carries the real owner, mode and mtime.
    expect([st.uid, st.gid, st.mode & 0o7777, Math.round(st.mtimeMs)]).toEqual([
      1234, 5678, 0o640, 1_600_000_000_500,
    ]);
  });

  it('hard-links unchanged files from the previous snapshot', async () => {
    const { root, t } = await open();
    const w1 = await t.beginSnapshot(meta('s1'));
    const r = await w1.putFile('/f', Readable.from([Buffer.from('abc')]), fm);
    await w1.commit({ version: 1, meta: meta('s1'), totals: emptyTotals(), entries: [] });
    const w2 = await t.beginSnapshot(meta('s2'));
    await w2.reuseFile('/f', 's1', { path: '/f', type: 'file', ...fm, hash: r.hash });
    await w2.commit({ version: 1, meta: meta('s2'), totals: emptyTotals(), entries: [] });
    const [a, b] = await Promise.all([fsp.stat(path.join(root, 's1/f')), fsp.stat(path.join(root, 's2/f'))]);
    expect(b.ino).toBe(a.ino);
    expect(b.nlink).toBe(2);
  });

  it('applies directory metadata at commit, after the children', async () => {
    const { root, t } = await open();
    const w = await t.beginSnapshot(meta('s1'));
    await w.putDir('/ro', { ...fm, size: 0, mode: 0o555 });
    await w.putFile('/ro/f', Readable.from([Buffer.from('abc')]), fm);
    await w.commit({ version: 1, meta: meta('s1'), totals: emptyTotals(), entries: [] });
    const st = await fsp.stat(path.join(root, 's1/ro'));
    expect([st.mode & 0o7777, Math.round(st.mtimeMs)]).toEqual([0o555, fm.mtime]);
  });

  it('is opened from a spec through the registry; unknown types and bad specs are named errors', async () => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const reg = new TargetRegistry();
    const t = await reg.open(`dir:${d.dir}/x`);
    expect(t.id).toBe('dir');
    await expect(reg.open('tape:/dev/st0')).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
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

  it('refuses unsafe snapshot ids', async () => {
    const { t } = await open();
    for (const id of ['../x', '.manifests', 'a/b', 'x.partial', ''])
      await expect(t.beginSnapshot(meta(id))).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
  });
});
