import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll } from '../helpers/mounts.js';
import { tempDirs } from '../helpers/server.js';
import { type InProcess, mountInProcess, run } from './mirror-helpers.js';

/**
 * Directory times in the mirror (found by the stress harness once its restore check compared
 * mtimes): entries coming and going move a directory's mtime, on the primary when the change
 * is made and in the mirror when it is applied or replayed, later. The mirror's directories
 * must end with the primary's times to the ns, as files do, so that a backup taken from the
 * mirror restores them. The mount is touched only by child processes (run()).
 */
describe('directory times in the mirror', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess;
  let P: string;
  let M: string;
  let mnt: string;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    P = t.dirs.primary!;
    mnt = t.dirs.mnt!;
    m = await mountInProcess({ primary: P, mount: mnt, mirror: t.dirs.mirror!, stateDir: t.dirs.state! });
    M = m.driver.dataRoot;
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await unmountAll(mnt);
    await t?.cleanup();
  });

  /** mtimes (ns) of the directories at these volume paths, on the primary and in the mirror. */
  async function dirTimes(dirs: string[]): Promise<{ primary: string[]; mirror: string[] }> {
    const at = (root: string) =>
      Promise.all(dirs.map(async (d) => String((await fsp.lstat(root + d, { bigint: true })).mtimeNs)));
    return { primary: await at(P), mirror: await at(M) };
  }

  // Each step in its own process, a little apart: the mirror applies a change after the
  // primary made it, so a directory it touched gets a later mtime there unless copied back.
  const STEPS = `mkdir -p d/e; sleep 0.05; echo x > d/f; sleep 0.05; ln d/f d/h; sleep 0.05; mkfifo d/p;
    sleep 0.05; ln -s f d/l; sleep 0.05; mv d/f d/e/g; sleep 0.05; rm d/h; sleep 0.05; mkdir d/e/n`;

  it('changes applied as they come: every directory ends with the primary mtime', async () => {
    await run(`set -e; cd '${mnt}'; mkdir live; cd live; ${STEPS}`);
    await m.settle();
    const dirs = ['/', '/live', '/live/d', '/live/d/e', '/live/d/e/n'];
    const times = await dirTimes(dirs);
    expect(times.mirror).toEqual(times.primary);
    expect((await m.driver.verify()).differences).toEqual([]);
  });

  it('changes replayed by a resync: the same', async () => {
    await run(`set -e; cd '${mnt}'; mkdir held`);
    await m.settle();
    const s = await m.driver.split({ volume: true });
    await run(`set -e; cd '${mnt}/held'; ${STEPS}`);
    await m.fs.flushAll();
    await m.driver.resync(s.splitId);
    await m.settle();
    const dirs = ['/', '/held', '/held/d', '/held/d/e', '/held/d/e/n'];
    const times = await dirTimes(dirs);
    expect(times.mirror).toEqual(times.primary);
    expect((await m.driver.verify()).differences).toEqual([]);
  });
});
