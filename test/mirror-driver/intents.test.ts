import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { waitUntil } from '../control/control-fixture.js';
import { type DriverOnTempDirs, driverOnTempDirs, openDriver } from './mirror-helpers.js';

/**
 * A write intent is journaled before a change reaches the primary and must stay in the journal
 * until the mirror has that change: a crash in between is repaired from it. Checkpoints rewrite
 * the journal with only what is live. They once dropped every intent 30 s after its renewal: a
 * write-back renews once and then writes its runs one after the other, each reported after it
 * landed, so a write-back taking longer lost its intent while later runs were on the primary
 * and not yet on the mirror. (The clock is moved forward: the test does not wait 30 s.)
 */
describe('mirror write intents across checkpoints', () => {
  let env: DriverOnTempDirs | undefined;
  afterEach(async () => {
    vi.restoreAllMocks();
    await env?.d.dispose();
    await env?.t.cleanup();
    env = undefined;
  });

  function journalFile(stateDir: string): string {
    const dir = path.join(stateDir, 'journals');
    return path.join(dir, fs.readdirSync(dir).find((f) => f.endsWith('.jsonl'))!);
  }

  /** The paths with an intent in the journal as it is on disk now. */
  async function journaledIntents(stateDir: string): Promise<string[]> {
    const lines = (await fsp.readFile(journalFile(stateDir), 'utf8')).split('\n').filter(Boolean);
    return lines
      .map((l) => JSON.parse(l))
      .filter((r) => r.t === 'intent')
      .map((r) => r.p);
  }

  /** Waits for two checkpoints (one that started before this call may have taken its snapshot). */
  async function checkpoints(stateDir: string): Promise<void> {
    for (let i = 0; i < 2; i++) {
      // A checkpoint writes a new file and renames it over the journal.
      const ino = fs.statSync(journalFile(stateDir)).ino;
      await waitUntil(() => fs.statSync(journalFile(stateDir)).ino !== ino, 10_000, 'a checkpoint');
    }
  }

  it('a write-back longer than 30 s keeps its intent while runs are unreported, and loses it once idle', async () => {
    env = await driverOnTempDirs(async (p) => fs.writeFileSync(`${p}/big`, ''));
    await env.d.dispose();
    // Again, with checkpoints every 50 ms.
    const d = await openDriver({
      primary: env.P,
      mirror: env.t.dirs.mirror!,
      stateDir: env.t.dirs.state!,
      checkpointMs: 50,
    });
    env = { ...env, d };
    const stateDir = env.t.dirs.state!;
    const real = Date.now.bind(Date);
    let offset = 0;
    vi.spyOn(Date, 'now').mockImplementation(() => real() + offset);
    const run = (n: number) => Buffer.alloc(4096, 48 + n);
    const primary = fs.openSync(`${env.P}/big`, 'r+');
    try {
      await d.beforeChange('/big');
      fs.writeSync(primary, run(1), 0, 4096, 0);
      offset = 25_000;
      await d.apply({ op: 'write', path: '/big', offset: 0, data: run(1) });
      // Run 2 is on the primary, its report not made yet, 40 s after the intent.
      fs.writeSync(primary, run(2), 0, 4096, 4096);
      offset = 40_000;
      await checkpoints(stateDir);
      expect(await journaledIntents(stateDir)).toContain('/big');
      await d.apply({ op: 'write', path: '/big', offset: 4096, data: run(2) });
    } finally {
      fs.closeSync(primary);
    }
    // Idle for longer than the bound since its last report: nothing of it is on its way.
    offset = 75_000;
    await checkpoints(stateDir);
    expect(await journaledIntents(stateDir)).not.toContain('/big');
    expect((await d.verify()).differences).toEqual([]);
  });
});
