import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as xattr from 'fs-xattr';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MirrorDriver } from '../../src/mirror-driver/index.js';
import { setTimesNs } from '../../src/posix/set-times.js';
import { type DriverOnTempDirs, driverOnTempDirs, openDriver } from './mirror-helpers.js';

/**
 * Reads of the primary by path in a queue turn while namespace changes the primary has already
 * made are still queued behind it (docs/reliability.md, "The primary ahead of the queue"): the
 * primary's entry under such a name may be another one than the mirror's at that point of the
 * queue. The driver runs in this process without a mount; the test changes the primary itself
 * and reports each change the way the filesystem does, so the queue's order is the test's.
 */
describe('reads by path while the primary is ahead of the queue', () => {
  let t: DriverOnTempDirs['t'];
  let d: MirrorDriver;
  let P: string;
  let M: string;
  let logs: string[];
  const MTIME = 1_000_000_100_987_654_321n;

  beforeEach(async () => {
    ({ t, P, d, M } = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/a`, randomBytes(10_000));
      await fsp.link(`${p}/a`, `${p}/b`);
      await fsp.mkdir(`${p}/d`, { mode: 0o755 });
      await fsp.mkdir(`${p}/f`, { mode: 0o755 });
      await fsp.writeFile(`${p}/f/k`, randomBytes(3000));
      for (const dir of ['d', 'f']) {
        await xattr.setAttribute(`${p}/${dir}`, 'user.k', Buffer.from('old'));
        setTimesNs(`${p}/${dir}`, MTIME, MTIME);
      }
    }));
    // Reopened with its log kept: the tests check that the walk they are about did run.
    await d.dispose();
    logs = [];
    d = await openDriver({
      primary: P,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
      log: (m) => logs.push(m),
    });
  });
  afterEach(async () => {
    await d?.dispose();
    await t?.cleanup();
  });

  /**
   * A third name of /a, mirrored as one file with the others, that the mirror then loses: its
   * rename to /c fails there and heals /c as a copy of its own, in the rename's turn. A fourth
   * name made on the primary and reported after it keeps the link index from vouching for the
   * file's names (4 on the primary, 3 known), so the heal links them by comparing the volume
   * (Reconciler.relinkVolume), a walk inside that turn.
   */
  async function healThatWalksTheVolume(): Promise<Array<Promise<void>>> {
    await fsp.link(`${P}/a`, `${P}/x`);
    await d.apply({ op: 'link', from: '/a', path: '/x' });
    await d.barrier();
    await fsp.rm(`${M}/x`);
    await fsp.rename(`${P}/x`, `${P}/c`);
    await fsp.link(`${P}/a`, `${P}/y`);
    return [
      d.apply({ op: 'rename', from: '/x', path: '/c' }),
      d.apply({ op: 'link', from: '/a', path: '/y' }),
    ];
  }

  // /d is empty, /f has an entry: renamed away and made again behind a heal that walks the
  // volume, each under a name the walk read from the primary ahead of those changes.
  for (const [dir, entries] of [
    ['d', []],
    ['f', ['k']],
  ] as const)
    it(`the volume walk of a heal leaves a directory renamed away and made again behind it to the queued changes (${entries.length} entries)`, async () => {
      const turns = await healThatWalksTheVolume();
      // Behind the heal: renamed to /e, and a new directory under the old name with another
      // mode, xattr and times.
      await fsp.rename(`${P}/${dir}`, `${P}/e`);
      await fsp.mkdir(`${P}/${dir}`, { mode: 0o700 });
      await fsp.chmod(`${P}/${dir}`, 0o700);
      await xattr.setAttribute(`${P}/${dir}`, 'user.k', Buffer.from('new'));
      setTimesNs(`${P}/${dir}`, MTIME + 5_000_000n, MTIME + 5_000_000n);
      turns.push(
        d.apply({ op: 'rename', from: `/${dir}`, path: '/e' }),
        d.apply({ op: 'mkdir', path: `/${dir}`, mode: 0o40700, uid: 0, gid: 0 }),
        d.apply({ op: 'setxattr', path: `/${dir}`, name: 'user.k', value: Buffer.from('new') }),
      );
      await Promise.all(turns);
      await d.whenIdle();
      expect(logs.filter((m) => m.includes('comparing the volume')).length).toBeGreaterThan(0);
      expect(d.status().brokenReasons).toEqual({});
      const e = await fsp.lstat(`${M}/e`, { bigint: true });
      expect((Number(e.mode) & 0o7777).toString(8)).toBe('755');
      expect((await xattr.getAttribute(`${M}/e`, 'user.k')).toString()).toBe('old');
      expect(e.mtimeNs).toBe(MTIME);
      expect(await fsp.readdir(`${M}/e`)).toEqual(entries);
      expect((await d.verify()).differences).toEqual([]);
    });
});
