import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  recordEvents,
  sleep,
  startControlFixture,
  startHoldClient,
  startWriter,
  status,
  type Writer,
  waitUntil,
} from './control-fixture.js';
import { checkPrefix } from './fixtures/records.mjs';

/**
 * Who holds a split or a freeze, and for how long (invariant 7): leases that run out, clients
 * that die or go silent, renew, release, freeze/thaw and their timeouts, busy selections.
 */

const REC = 4096;

describe('leases, disconnects, freeze/thaw and busy selections', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const writers: Writer[] = [];
  const writer = (o: Parameters<typeof startWriter>[0]) => {
    const w = startWriter(o);
    writers.push(w);
    return w;
  };
  const holders: Array<ReturnType<typeof startHoldClient>> = [];
  const active = async () => {
    const s = await status(c);
    return {
      backups: s.backup.backups.length,
      freezes: s.backup.freezes.length,
      splits: s.mirror.splits.length,
    };
  };
  const idle = () =>
    waitUntil(
      async () => {
        const a = await active();
        return a.backups === 0 && a.freezes === 0 && a.splits === 0;
      },
      5000,
      'no backups, freezes or splits',
    );

  beforeAll(async () => {
    fx = await startControlFixture();
    c = await fx.connect();
    for (const f of ['f1', 'f2', 'f3', 'f4']) await fsp.writeFile(path.join(fx.mnt, f), `${f}\n`);
    await fsp.mkdir(path.join(fx.mnt, 'dir/sub'), { recursive: true });
    await fsp.writeFile(path.join(fx.mnt, 'dir/sub/g'), 'g\n');
    await fsp.writeFile(path.join(fx.mnt, 'dir/h'), 'h\n');
  });
  afterAll(async () => {
    for (const w of writers) await w.kill();
    for (const h of holders) await h.kill9();
    await fx?.close();
  });

  it('a lease that is not renewed expires: the server releases and resyncs the split by itself', async () => {
    const events = recordEvents(c);
    const w = writer({ file: path.join(fx.mnt, 'lease.dat'), size: REC, fsync: true, intervalMs: 5 });
    await w.waitFor(10);
    const t0 = Date.now();
    const p = await c.prepare({ paths: ['/lease.dat'] }, { leaseMs: 1000 });
    expect(p.leaseMs).toBe(1000);
    expect(p.expiresAt).toBeGreaterThanOrEqual(t0 + 1000);
    expect((await active()).backups).toBe(1);
    await waitUntil(() => events.some((e) => e.event === 'lease-expired'), 3000, 'lease-expired');
    const expired = events.find((e) => e.event === 'lease-expired')!;
    expect(expired.data.backupId).toBe(p.backupId);
    expect(expired.at - t0).toBeGreaterThanOrEqual(1000);
    await waitUntil(
      () => events.some((e) => e.event === 'resynced' && e.data.backupId === p.backupId),
      3000,
      'resynced',
    );
    await idle();
    await expect(c.release(p.backupId)).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_BACKUP' });
    await expect(c.renew(p.backupId)).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_BACKUP' });
    // Writes during the split were tracked and resynced: the mirror follows the primary again.
    await w.kill();
    await c.request('flush');
    await waitUntil(
      async () => {
        const m = await fsp.readFile(path.join(fx.mirrorRoot, 'lease.dat'));
        return m.equals(await fsp.readFile(path.join(fx.primary, 'lease.dat')));
      },
      5000,
      'mirror copy of lease.dat to equal the primary',
    );
    expect(checkPrefix(await fsp.readFile(path.join(fx.mirrorRoot, 'lease.dat')), REC).error).toBeUndefined();
  });

  it('renew extends the lease; release ends it once', async () => {
    const p = await c.prepare({ paths: ['/f1'] }, { leaseMs: 1000 });
    await sleep(600);
    const r: any = await c.renew(p.backupId, 2000);
    expect(r.backupId).toBe(p.backupId);
    expect(r.expiresAt).toBeGreaterThan(p.expiresAt + 400);
    await sleep(900); // past the first lease
    expect((await active()).backups).toBe(1);
    // renew without leaseMs keeps the lease length last asked for (2000), not the server default
    const r2: any = await c.renew(p.backupId);
    expect(r2.expiresAt - Date.now()).toBeLessThanOrEqual(2000);
    expect(r2.expiresAt - Date.now()).toBeGreaterThan(1500);
    const rel: any = await c.release(p.backupId);
    expect(rel.backupId).toBe(p.backupId);
    await expect(c.release(p.backupId)).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_BACKUP' });
    await idle();
  });

  it('a client killed with -9 loses its split and its freeze at once', async () => {
    const events = recordEvents(c);
    const h = startHoldClient(fx, 'prepare', { selector: { paths: ['/f2'] }, leaseMs: 600_000 });
    holders.push(h);
    const reply = await h.reply;
    expect(reply.result.backupId).toMatch(/^bk-/);
    const f = startHoldClient(fx, 'freeze', { selector: { paths: ['/f3'] }, timeoutMs: 600_000 });
    holders.push(f);
    const frozen = await f.reply;
    expect(frozen.result.freezeId).toMatch(/^fz-/);
    expect(await active()).toEqual({ backups: 1, freezes: 1, splits: 1 });
    const held = writer({ file: path.join(fx.mnt, 'f3'), size: REC, fsync: false, count: 1, keep: true });
    await waitUntil(() => held.opened, 5000, 'writer to open f3');
    await sleep(300);
    expect(held.acked).toBe(0);
    const t0 = Date.now();
    await h.kill9();
    await f.kill9();
    await idle();
    expect(Date.now() - t0).toBeLessThan(2000);
    await held.waitFor(1, 2000);
    expect(events.filter((e) => e.event === 'released').map((e) => e.data.backupId)).toContain(
      reply.result.backupId,
    );
    const thawed = events.find((e) => e.event === 'thawed');
    expect(thawed?.data).toMatchObject({ freezeId: frozen.result.freezeId, reason: 'owner disconnected' });
    // A clean close gives everything back just the same.
    const other = await fx.connect();
    const p = await other.prepare({ paths: ['/f2'] }, { leaseMs: 600_000 });
    await other.request('freeze', { selector: { paths: ['/f3'] } });
    expect(await active()).toEqual({ backups: 1, freezes: 1, splits: 1 });
    await other.close();
    await idle();
    expect(events.filter((e) => e.event === 'resynced').map((e) => e.data.backupId)).toContain(p.backupId);
  });

  it('a client that closes its socket while its prepare or freeze is still running holds nothing afterwards', async () => {
    // 16 MiB dirty: prepare and freeze have real write-back to do when the socket goes away.
    const w = writer({ file: path.join(fx.mnt, 'dirty.dat'), size: 64 * 1024, fsync: false, count: 256 });
    await w.waitFor(256);
    const r = await fx.raw();
    expect((await r.hello(fx.token)).type).toBe('result');
    r.send({ type: 'freeze', id: 1, selector: { paths: ['/dirty.dat'] }, timeoutMs: 600_000 });
    r.terminate();
    await sleep(200);
    await idle();
    const w2 = writer({ file: path.join(fx.mnt, 'dirty.dat'), size: 64 * 1024, fsync: false, count: 256 });
    await w2.waitFor(256);
    const r2 = await fx.raw();
    expect((await r2.hello(fx.token)).type).toBe('result');
    r2.send({ type: 'prepare', id: 1, selector: { paths: ['/dirty.dat'] }, leaseMs: 600_000 });
    r2.terminate();
    await sleep(200);
    await idle();
    // and the file takes writes without waiting
    const w3 = writer({ file: path.join(fx.mnt, 'dirty.dat'), size: REC, fsync: true, count: 3, keep: true });
    await w3.waitFor(3, 3000);
    expect(w3.maxWriteMs()).toBeLessThan(500);
  });

  it('overlapping prepares are busy (also when sent at the same time); disjoint ones both succeed', async () => {
    const a = await c.prepare({ paths: ['/dir/sub/g'] });
    await expect(c.prepare({ subtree: '/dir' })).rejects.toMatchObject({
      code: 'ETWIN_BUSY',
      data: { backupId: a.backupId },
    });
    await expect(c.prepare({ volume: true })).rejects.toMatchObject({ code: 'ETWIN_BUSY' });
    await expect(c.prepare({ paths: ['/f4', '/dir/sub/g'] })).rejects.toMatchObject({ code: 'ETWIN_BUSY' });
    // another connection is just as busy
    const other = await fx.connect();
    await expect(other.prepare({ subtree: '/dir/sub' })).rejects.toMatchObject({ code: 'ETWIN_BUSY' });
    const b = await other.prepare({ paths: ['/dir/h', '/f4'] });
    expect((await active()).backups).toBe(2);
    await c.release(a.backupId);
    await other.release(b.backupId);
    // Two prepares of the same file in flight at once (8 MiB to write back: the first takes a
    // while): one wins, the other is busy.
    await fsp.writeFile(path.join(fx.mnt, 'f4'), Buffer.alloc(8 << 20, 4));
    const both = await Promise.allSettled([c.prepare({ paths: ['/f4'] }), other.prepare({ paths: ['/f4'] })]);
    const won = both.filter((x) => x.status === 'fulfilled');
    const lost = both.filter((x) => x.status === 'rejected') as PromiseRejectedResult[];
    expect(won).toHaveLength(1);
    expect(lost.map((x) => x.reason.code)).toEqual(['ETWIN_BUSY']);
    await c.release((won[0] as PromiseFulfilledResult<any>).value.backupId);
    // Freezes: overlapping ones are busy too.
    const f: any = await c.request('freeze', { selector: { subtree: '/dir' } });
    await expect(other.request('freeze', { selector: { paths: ['/dir/h'] } })).rejects.toMatchObject({
      code: 'ETWIN_BUSY',
    });
    await c.request('thaw', { freezeId: f.freezeId });
    await expect(c.request('thaw', { freezeId: f.freezeId })).rejects.toMatchObject({
      code: 'ETWIN_UNKNOWN_FREEZE',
    });
    await idle();
  });

  it("a prepare of a selection where a live split keeps an entry frozen (a held rename's source) is busy until that split is released", async () => {
    for (const d of ['held/s', 'held/d']) await fsp.mkdir(path.join(fx.mnt, d), { recursive: true });
    await fsp.writeFile(path.join(fx.mnt, 'held/s/t'), 'selected');
    await fsp.writeFile(path.join(fx.mnt, 'held/d/r'), 'renamed over the selected name');
    const a = await c.prepare({ paths: ['/held/s/t'] });
    // Held by a's split: the mirror keeps /held/d/r where it was until a is released, so a
    // split of /held/d would copy a file the primary no longer has there.
    await fsp.rename(path.join(fx.mnt, 'held/d/r'), path.join(fx.mnt, 'held/s/t'));
    await expect(c.prepare({ subtree: '/held/d' })).rejects.toMatchObject({
      code: 'ETWIN_BUSY',
      data: { splitId: expect.any(String) },
    });
    // A selection the split does not reach is not busy.
    const other = await c.prepare({ paths: ['/f4'] });
    await c.release(other.backupId);
    await c.release(a.backupId);
    const b = await c.prepare({ subtree: '/held/d' });
    expect(b.items.map((x: { path: string }) => x.path)).toEqual(['/held/d']);
    await c.release(b.backupId);
    await idle();
  });

  it('freeze holds writes to the frozen file (not failed by a FUSE timeout) until thaw; freeze without thaw ends at its timeout', async () => {
    const events = recordEvents(c);
    const f: any = await c.request('freeze', { selector: { paths: ['/f1'] }, timeoutMs: 60_000 });
    expect(f.timeoutMs).toBe(60_000);
    const held = writer({ file: path.join(fx.mnt, 'f1'), size: REC, fsync: true, count: 1, keep: true });
    const free = writer({ file: path.join(fx.mnt, 'free.dat'), size: REC, fsync: false, intervalMs: 10 });
    await waitUntil(() => held.opened, 5000, 'writer to open f1');
    const freeBefore = free.acked;
    await sleep(2500);
    expect(held.acked).toBe(0);
    // Writes to a file the freeze does not cover went on while it held f1.
    expect(free.acked).toBeGreaterThan(freeBefore);
    const t: any = await c.request('thaw', { freezeId: f.freezeId });
    expect(t.heldMs).toBeGreaterThanOrEqual(2500);
    await held.waitFor(1, 3000);
    expect(held.error).toBeNull();
    expect(held.records[0]!.writeMs).toBeGreaterThan(2400);
    expect(await held.exited).toBe(0);
    // None of them waited for the thaw (the hold was 2.5 s; a bound with room for a loaded machine).
    expect(free.maxWriteMs()).toBeLessThan(1500);
    await free.kill();
    expect(events.find((e) => e.event === 'frozen')?.data.freezeId).toBe(f.freezeId);
    expect(events.find((e) => e.event === 'thawed')?.data).toMatchObject({
      freezeId: f.freezeId,
      reason: 'thaw',
    });

    const g: any = await c.request('freeze', { selector: { paths: ['/f1'] }, timeoutMs: 1500 });
    const t0 = Date.now();
    const held2 = writer({ file: path.join(fx.mnt, 'f1'), size: REC, fsync: false, count: 1, keep: true });
    await held2.waitFor(1, 5000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    expect(events.find((e) => e.event === 'thawed' && e.data.freezeId === g.freezeId)?.data.reason).toBe(
      'timeout',
    );
    await idle();
  });

  it('a write held longer than fuse-native’s 15 s default op timeout still succeeds', {
    timeout: 40_000,
  }, async () => {
    const f: any = await c.request('freeze', { selector: { paths: ['/f4'] }, timeoutMs: 60_000 });
    const held = writer({ file: path.join(fx.mnt, 'f4'), size: REC, fsync: true, count: 1, keep: true });
    await waitUntil(() => held.opened, 5000, 'writer to open f4');
    await sleep(16_500);
    expect(held.acked).toBe(0);
    await c.request('thaw', { freezeId: f.freezeId });
    await held.waitFor(1, 3000);
    expect(held.error).toBeNull();
    expect(held.records[0]!.writeMs).toBeGreaterThan(16_000);
  });

  it('a client that stops answering heartbeats is dropped and its split released', {
    timeout: 45_000,
  }, async () => {
    // autoPong off: the socket stays open but never answers the server's pings.
    const r = await fx.raw({ autoPong: false });
    expect((await r.hello(fx.token)).type).toBe('result');
    const p = await r.request({ type: 'prepare', id: 2, selector: { paths: ['/f2'] }, leaseMs: 600_000 });
    expect(p.type).toBe('result');
    const closed = await r.whenClosed(35_000);
    expect(closed.code).toBe(1006);
    await idle();
  });
});
