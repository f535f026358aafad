import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadPeerConfig, selectorFor } from '../../src/backup-peer/peer-config.js';
import { SplitLease } from '../../src/backup-peer/split-lease.js';
import { FakeControl, makeMirror, tempDir } from './peer-fixture.js';

describe('split lease', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });
  const control = async () => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const c = new FakeControl(await makeMirror(d.dir, {}));
    const prep = await c.prepare({ volume: true }, { leaseMs: 1500 });
    return { c, backupId: prep.backupId };
  };

  it('renews every third of the lease while held, and releases once on dispose', async () => {
    const { c, backupId } = await control();
    const lost: unknown[] = [];
    const lease = new SplitLease(c, backupId, 1500, (e) => lost.push(e));
    await new Promise((r) => setTimeout(r, 1200));
    expect(c.count('renew')).toBeGreaterThanOrEqual(2);
    await lease.confirm();
    await lease.dispose();
    await lease.dispose();
    expect(c.count('release')).toBe(1);
    const renews = c.count('renew');
    await new Promise((r) => setTimeout(r, 700));
    expect(c.count('renew')).toBe(renews);
    expect(lost).toEqual([]);
  });

  it('reports the split lost on a release event for it, not for others', async () => {
    const { c, backupId } = await control();
    const lost: any[] = [];
    const lease = new SplitLease(c, backupId, 60_000, (e) => lost.push(e));
    (c as any)._onEvent.fire({ event: 'released', data: { backupId: 'bk-other' } });
    expect(lost).toEqual([]);
    (c as any)._onEvent.fire({ event: 'lease-expired', data: { backupId } });
    (c as any)._onEvent.fire({ event: 'released', data: { backupId } });
    expect(lost.map((e) => e.code)).toEqual(['ETWIN_SPLIT_LOST']);
    await expect(lease.confirm()).rejects.toMatchObject({ code: 'ETWIN_SPLIT_LOST' });
    await lease.dispose();
  });

  it('reports the split lost when the connection closes or a renew is refused', async () => {
    const a = await control();
    const lostA: any[] = [];
    const leaseA = new SplitLease(a.c, a.backupId, 60_000, (e) => lostA.push(e));
    a.c.disconnect();
    expect(lostA.map((e) => e.message)).toEqual([expect.stringMatching(/connection closed/)]);
    await leaseA.dispose();

    const b = await control();
    const lostB: any[] = [];
    const leaseB = new SplitLease(b.c, b.backupId, 1500, (e) => lostB.push(e));
    b.c.held.clear(); // the server forgot it: the next renew is refused
    await new Promise((r) => setTimeout(r, 700));
    expect(lostB.map((e) => e.code)).toEqual(['ETWIN_SPLIT_LOST']);
    await leaseB.dispose();
  });
});

describe('peer config', () => {
  it('resolves relative paths against the file and validates the rest', async () => {
    const d = await tempDir();
    try {
      const file = path.join(d.dir, 'peer.json');
      await fsp.writeFile(
        file,
        JSON.stringify({
          server: 'ws://127.0.0.1:7070',
          tokenFile: 'token',
          target: 'dir:backups',
          intervalSec: 60,
          mirrorMap: { dev: 'mirror' },
        }),
      );
      const c = await loadPeerConfig(file);
      expect(c).toMatchObject({
        tokenFile: path.join(d.dir, 'token'),
        target: `dir:${path.join(d.dir, 'backups')}`,
        mirrorMap: { dev: path.join(d.dir, 'mirror') },
      });
      for (const bad of [
        { server: 'http://x', tokenFile: 't', target: 'dir:/b', intervalSec: 1 },
        { server: 'ws://x', tokenFile: 't', target: 'dir:/b', intervalSec: 0 },
        { server: 'ws://x', tokenFile: 't', target: 'dir:/b', intervalSec: 1, surprise: true },
        { server: 'ws://x', tokenFile: 't', target: 'dir:/b', intervalSec: 1, paths: ['/a'], subtree: '/b' },
      ]) {
        await fsp.writeFile(file, JSON.stringify(bad));
        await expect(loadPeerConfig(file)).rejects.toMatchObject({ code: 'ETWIN_CONFIG' });
      }
      await expect(loadPeerConfig(path.join(d.dir, 'missing.json'))).rejects.toMatchObject({
        code: 'ETWIN_CONFIG',
      });
    } finally {
      await d.cleanup();
    }
  });

  it('turns paths / a subtree / nothing into a selector, refusing ".."', () => {
    expect(selectorFor({ paths: ['a/b', '/c/./d'] })).toEqual({ paths: ['/a/b', '/c/d'] });
    expect(selectorFor({ subtree: '/home/' })).toEqual({ subtree: '/home' });
    expect(selectorFor({})).toEqual({ volume: true });
    expect(() => selectorFor({ paths: ['/a/../..'] })).toThrow(
      expect.objectContaining({ code: 'ETWIN_PATH_ESCAPE' }),
    );
    expect(() => selectorFor({ paths: ['/a'], subtree: '/b' })).toThrow(
      expect.objectContaining({ code: 'ETWIN_USAGE' }),
    );
  });
});
