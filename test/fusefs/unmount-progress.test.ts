import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Change, type ChangeSink, TwinFs } from '../../src/fusefs/index.js';
import { unmountAll, waitFor } from '../helpers/mounts.js';
import { shOk } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';

/**
 * A stop that takes long says where the unmount is (serve.ts prints it with each "still
 * waiting" notice): here the write-back before detaching is held by the sink (standing in for a
 * slow mirror), and the progress must name that phase and the file and bytes it waits on, then
 * the later phases, and nothing before the unmount starts.
 */
describe('TwinFs.unmountProgress', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let tfs: TwinFs | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt');
  });
  afterAll(async () => {
    await tfs?.unmount().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('names the phase and the data not yet written back while the write-back is held', async () => {
    let go!: () => void;
    const gate = new Promise<void>((r) => (go = r));
    let held = false;
    const sink: ChangeSink = {
      apply: async (c: Change) => {
        if (c.op === 'write') {
          held = true;
          await gate;
        }
      },
    };
    tfs = await TwinFs.mount({ primary: t.dirs.primary!, mount: t.dirs.mnt!, writebackMs: 600_000, sink });
    const f = path.join(t.dirs.mnt!, 'f');
    // An existing file opened O_APPEND (JS's): the cache takes its writes (a new file's, and
    // those through an open JS has not taken, go to the primary natively).
    await shOk(`: > '${f}'`);
    await shOk(`printf 0123456789 >> '${f}'`);
    expect(tfs.unmountProgress()).toBe('');
    expect(tfs.status().cache.dirtyBytes).toBe(10);

    const unmounting = tfs.unmount();
    expect(await waitFor(() => held, 10_000)).toBe(true);
    expect(tfs.unmountProgress()).toMatch(
      /^writing back before detaching; 1 file\(s\) with 10 byte\(s\) not written back, \d+ open$/,
    );
    go();
    await unmounting;
    expect(tfs.unmountProgress()).toMatch(/^checking the mount is gone; 0 file\(s\) with 0 byte\(s\)/);
    expect(await fsp.readFile(path.join(t.dirs.primary!, 'f'), 'utf8')).toBe('0123456789');
    tfs = undefined;
  });
});
