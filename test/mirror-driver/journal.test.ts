import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Journal } from '../../src/mirror-driver/journal.js';

/**
 * The write intent of a change is journaled before the primary is touched. appendNow writes it
 * at once on the JS thread when nothing else is pending (no trip through libuv's pool for the
 * change to wait for), and otherwise queues it behind the lines before it, so the file's order
 * stays the appends' order.
 */
describe('journal appendNow', () => {
  let dir: string;
  let j: Journal;
  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-journal-'));
    j = new Journal(path.join(dir, 'j.jsonl'), 'boot');
  });
  afterEach(async () => {
    await j.close(false);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const lines = () =>
    fs
      .readFileSync(j.file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l));

  it('writes an intent before it returns when the journal is quiet', async () => {
    await j.checkpoint(() => []);
    expect(j.appendNow({ t: 'intent', p: '/a' })).toBeUndefined();
    // Read synchronously, before any callback of libuv's pool could run.
    expect(lines().filter((r) => r.t === 'intent')).toEqual([{ t: 'intent', p: '/a' }]);
  });

  it('queues behind lines still being written, in the order appended', async () => {
    await j.checkpoint(() => []);
    const first = j.append({ t: 'broken', p: '/x' });
    const second = j.appendNow({ t: 'intent', p: '/b' });
    expect(second).toBeInstanceOf(Promise);
    await Promise.all([first, second]);
    expect(lines().slice(1)).toEqual([
      { t: 'broken', p: '/x' },
      { t: 'intent', p: '/b' },
    ]);
    // Quiet again: written at once.
    expect(j.appendNow({ t: 'intent', p: '/c' })).toBeUndefined();
    expect(lines().at(-1)).toEqual({ t: 'intent', p: '/c' });
  });

  it('holds a line back while a checkpoint runs: written into the new file, not the replaced one', async () => {
    await j.checkpoint(() => []);
    let during: Promise<void> | undefined;
    await j.checkpoint(() => {
      // After the snapshot's instant: its state is not in the snapshot, so the line must reach
      // the file that replaces this one (written at once, it would go into the old file).
      setImmediate(() => {
        during = j.appendNow({ t: 'intent', p: '/d' });
      });
      return [];
    });
    expect(during).toBeInstanceOf(Promise);
    await during;
    expect(lines().filter((r) => r.t === 'intent')).toEqual([{ t: 'intent', p: '/d' }]);
  });

  it('reads back what appendNow wrote', async () => {
    await j.checkpoint(() => []);
    j.appendNow({ t: 'intent', p: '/e' });
    const st = await new Journal(j.file, 'boot').read();
    expect([...st.intents]).toEqual(['/e']);
  });
});
