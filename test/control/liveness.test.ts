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

/**
 * Issue 11, row 9: a holder that stops answering (SIGSTOP) is dropped within a few seconds
 * (ping every 1 s; dropped after 4 s of silence when it holds writes, 10 s when it holds only
 * splits), and what it held is given back: the held write resumes, the split is released.
 * Before, the heartbeat took 15–30 s (a write was held 27 s). A holder that answers keeps its
 * hold however long it lasts; a peer that is only slow to answer keeps its split past 4 s.
 */

/** Drop after 4 s of silence, pings every 1 s, plus slack for a loaded machine. */
const BOUND_MS = 8000;
/** A holder of splits only: dropped after 10 s of silence, plus the same slack. */
const SPLIT_BOUND_MS = 14_000;

describe('holders are bounded by liveness', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const writers: Writer[] = [];
  const holders: Array<ReturnType<typeof startHoldClient>> = [];

  beforeAll(async () => {
    fx = await startControlFixture();
    c = await fx.connect();
    for (const f of ['frozen', 'split']) await fsp.writeFile(path.join(fx.mnt, f), `${f}\n`);
  });
  afterAll(async () => {
    for (const w of writers) await w.kill();
    for (const h of holders) {
      h.proc.kill('SIGCONT');
      await h.kill9();
    }
    await fx?.close();
  });

  it('a freeze whose client is SIGSTOPped: the held write resumes within the bound; a live holder keeps it', {
    timeout: 60_000,
  }, async () => {
    const events = recordEvents(c);
    const h = startHoldClient(fx, 'freeze', { selector: { paths: ['/frozen'] }, timeoutMs: 120_000 });
    holders.push(h);
    const { result } = await h.reply;
    expect(result.freezeId).toMatch(/^fz-/);
    const w = startWriter({
      file: path.join(fx.mnt, 'frozen'),
      size: 4096,
      fsync: false,
      count: 1,
      keep: true,
    });
    writers.push(w);
    await waitUntil(() => w.opened, 5000, 'the writer to open the frozen file');
    // The holder answers pings: its freeze holds well past the silence bound.
    await sleep(6000);
    expect(w.acked).toBe(0);
    expect((await status(c)).backup.freezes).toHaveLength(1);
    h.proc.kill('SIGSTOP');
    const stoppedAt = Date.now();
    await w.waitFor(1, 30_000);
    const resumedAt = w.records[0]!.at + w.records[0]!.writeMs;
    expect(resumedAt - stoppedAt).toBeLessThan(BOUND_MS);
    expect(w.error).toBeNull();
    const thawed = events.find((e) => e.event === 'thawed' && e.data.freezeId === result.freezeId);
    expect(thawed?.data.reason).toBe('owner disconnected');
    expect((await status(c)).backup.freezes).toEqual([]);
  });

  it('a split whose peer is SIGSTOPped is released within the bound, long before its lease', {
    timeout: 60_000,
  }, async () => {
    const events = recordEvents(c);
    const h = startHoldClient(fx, 'prepare', { selector: { paths: ['/split'] }, leaseMs: 600_000 });
    holders.push(h);
    const { result } = await h.reply;
    expect(result.backupId).toMatch(/^bk-|./);
    await sleep(5000);
    expect((await status(c)).mirror.splits).toHaveLength(1);
    h.proc.kill('SIGSTOP');
    const stoppedAt = Date.now();
    // Silent for 6 s (past the 4 s bound of a holder of writes): a busy peer keeps its split.
    await sleep(6000);
    expect((await status(c)).mirror.splits).toHaveLength(1);
    expect(events.some((e) => e.event === 'released')).toBe(false);
    await waitUntil(
      () => events.some((e) => e.event === 'released' && e.data.backupId === result.backupId),
      30_000,
      'the split to be released',
    );
    const releasedAt = events.find((e) => e.event === 'released')!.at;
    expect(releasedAt - stoppedAt).toBeLessThan(SPLIT_BOUND_MS);
    await waitUntil(async () => (await status(c)).mirror.splits.length === 0, 10_000, 'no splits');
  });

  it('a stopped client that holds nothing is not dropped at the holder bound', {
    timeout: 30_000,
  }, async () => {
    const h = startHoldClient(fx, 'status', {});
    holders.push(h);
    await h.reply;
    const before = (await status(c)).connections.filter((x: any) => x.client === 'hold-client').length;
    expect(before).toBe(1);
    h.proc.kill('SIGSTOP');
    await sleep(BOUND_MS + 1000);
    const after = (await status(c)).connections.filter((x: any) => x.client === 'hold-client').length;
    expect(after).toBe(1);
  });
});
