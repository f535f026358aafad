import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, startControlFixture, startWriter, type Writer } from './control-fixture.js';

/**
 * Issue 11, row 10: prepares with a budget too small to make (maxStallMs 1) against a busy
 * writer. The contract, checked without timing thresholds: a successful prepare never reports
 * a stall above its budget (an overrun is a failure, ETWIN_STALL_EXCEEDED, whatever the event
 * loop did to the timer), every failure is that code, and writes go on after each failed one.
 * What the prepares add to write latency is measured in bench/stall.mjs --tight.
 */
describe('prepare with a tiny stall budget against a busy writer', () => {
  let fx: ControlFixture;
  let client: ControlClient;
  let writer: Writer;
  beforeAll(async () => {
    fx = await startControlFixture();
    client = await fx.connect();
    // Back to back 4 KiB records, no fsync: the file always has cached data to flush.
    writer = startWriter({
      file: path.join(fx.mnt, 'busy'),
      size: 4096,
      fsync: false,
      intervalMs: 1,
      burst: 0,
    });
    await writer.waitFor(50);
  });
  afterAll(async () => {
    await writer?.kill();
    await fx?.close();
  });

  it('successes report stallMs ≤ budget; failures are ETWIN_STALL_EXCEEDED and writes resume after each', async () => {
    const budget = 1;
    const N = 60;
    let ok = 0;
    let failed = 0;
    const stalls: number[] = [];
    const failedEvents: any[] = [];
    const sub = client.onEvent((e) => {
      if (e.event === 'prepare-failed') failedEvents.push(e.data);
    });
    for (let i = 0; i < N; i++) {
      let outcome: { stallMs: number; backupId: string } | { code?: string };
      try {
        outcome = await client.prepare({ paths: ['/busy'] }, { maxStallMs: budget, leaseMs: 30_000 });
      } catch (err) {
        outcome = { code: (err as { code?: string }).code };
      }
      if ('backupId' in outcome) {
        ok++;
        stalls.push(outcome.stallMs);
        await client.release(outcome.backupId);
      } else {
        failed++;
        expect(outcome.code).toBe('ETWIN_STALL_EXCEEDED');
        // Writes resume: the writer gets two more records acknowledged.
        const seen = writer.acked;
        await writer.waitFor(seen + 2, 10_000);
      }
    }
    sub.dispose();
    expect(stalls.filter((s) => s > budget)).toEqual([]);
    expect(ok + failed).toBe(N);
    // Each failure was told to every connection (sent before its error reply), with its code.
    expect(failedEvents).toHaveLength(failed);
    for (const e of failedEvents)
      expect(e).toMatchObject({
        code: 'ETWIN_STALL_EXCEEDED',
        budgetMs: budget,
        selector: { paths: ['/busy'] },
      });
    const st = (await client.request('status')) as any;
    // The server's own record agrees: no successful prepare held writes longer than the budget.
    expect(st.backup.stall.prepares).toBe(ok);
    expect(st.backup.stall.failedPrepares).toBe(failed);
    expect(st.backup.stall.maxStallMs).toBeLessThanOrEqual(budget);
    expect(st.backup.stall.inhibitor.activeInhibitions).toBe(0);
    // Nothing stays split: late splits of failed prepares are undone once they land.
    const until = Date.now() + 10_000;
    let splits = -1;
    while (Date.now() < until) {
      splits = ((await client.request('status')) as any).mirror.splits.length;
      if (splits === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(splits).toBe(0);
    expect(writer.error).toBeNull();
  });
});
