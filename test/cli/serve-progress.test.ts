import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/mounts.js';
import { type MirroredVolume, mirroredVolume } from '../helpers/server.js';

/** `serve --json` reports the initial mirror copy: state COPY, progress lines, state PAIR. */
describe('twinfs serve --json: progress of the initial mirror copy', () => {
  let v: MirroredVolume;
  beforeAll(async () => {
    v = await mirroredVolume();
    for (let i = 0; i < 30; i++)
      await fsp.writeFile(path.join(v.dirs.primary!, `f${i}`), Buffer.alloc(64 * 1024, i));
  });
  afterAll(async () => {
    await v?.close();
  });

  it('prints state and progress events with entries and bytes', async () => {
    const ev = (await v.start()).events;
    expect(await waitFor(() => ev.some((e) => e.event === 'state' && e.state === 'PAIR'), 20_000)).toBe(true);
    const progress = ev.filter((e) => e.event === 'progress' && e.phase === 'copy');
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)).toMatchObject({ done: true, entries: 30, bytes: 30 * 64 * 1024 });
    const first = ev.findIndex((e) => e.event === 'state' && e.state === 'COPY');
    expect(first).toBeGreaterThanOrEqual(0);
    expect(ev.indexOf(progress[0]!)).toBeGreaterThan(first);
    expect(await v.stopServer()).toBe(0);
  });
});
