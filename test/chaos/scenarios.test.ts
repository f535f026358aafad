import { describe, expect, it } from 'vitest';
import { SCENARIOS } from './scenarios.js';

/**
 * The chaos runs' disk and target faults, once each (bench/chaos.mjs --parts scenarios runs the
 * same; docs/reliability.md has the figures): full primary, full mirror, vanished mirror, hung
 * target. Each scenario lists what did not hold; the figures say it did what it is there for.
 */
describe('chaos scenarios against a real server', () => {
  it('full primary: the writer gets ENOSPC, acknowledged bytes stay, the volume recovers', async () => {
    const r = await SCENARIOS['full primary']!({ seed: 21 });
    expect(r.problems).toEqual([]);
    expect(r.fsyncs).toBeGreaterThan(0);
  }, 120_000);

  it('full mirror: the primary never notices, status shows ENOSPC, repair and verify', async () => {
    const r = await SCENARIOS['full mirror']!({ seed: 22 });
    expect(r.problems).toEqual([]);
    expect(r.prepareWhileBroken).toBe('ETWIN_MIRROR_BROKEN');
  }, 120_000);

  it('vanished mirror: writes go on, ENODEV shown, backups refused, repair refuses the leftover', async () => {
    const r = await SCENARIOS['vanished mirror']!({ seed: 23 });
    expect(r.problems).toEqual([]);
    expect(r.prepareWhileVanished).toBe('ETWIN_MIRROR_BROKEN');
  }, 120_000);

  it('hung target: writes go on, the split is released, ETWIN_TARGET_HUNG, no snapshot', async () => {
    const r = await SCENARIOS['hung target']!({ seed: 24 });
    expect(r.problems).toEqual([]);
    expect(r.catalogSays).toEqual(['failed ETWIN_TARGET_HUNG']);
  }, 150_000);
});
