import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MirrorDriver } from '../../src/mirror-driver/index.js';
import { setTimesNs } from '../../src/posix/set-times.js';
import { getXattr, setXattr } from '../../src/posix/xattr.js';
import { type DriverOnTempDirs, driverOnTempDirs, openDriver } from './mirror-helpers.js';

/**
 * Reads of the primary by path in a queue turn while namespace changes the primary has already
 * made are still queued behind it (docs/reliability.md, "The primary ahead of the queue"): the
 * primary's entry under such a name may be another one than the mirror's at that point of the
 * queue. The driver runs in this process without a mount; the test changes the primary itself
 * and reports each change the way the filesystem does, so the queue's order is the test's.
 */
let t: DriverOnTempDirs['t'];
let d: MirrorDriver;
let P: string;
let M: string;
let logs: string[];

/** Reopens the driver with its log kept: the tests check that the walk they are about did run. */
async function reopenLogged(): Promise<void> {
  await d.dispose();
  logs = [];
  d = await openDriver({
    primary: P,
    mirror: t.dirs.mirror!,
    stateDir: t.dirs.state!,
    log: (m) => logs.push(m),
  });
}

describe('reads by path while the primary is ahead of the queue', () => {
  const MTIME = 1_000_000_100_987_654_321n;

  beforeEach(async () => {
    ({ t, P, d, M } = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/a`, randomBytes(10_000));
      await fsp.link(`${p}/a`, `${p}/b`);
      await fsp.mkdir(`${p}/d`, { mode: 0o755 });
      await fsp.mkdir(`${p}/f`, { mode: 0o755 });
      await fsp.writeFile(`${p}/f/k`, randomBytes(3000));
      for (const dir of ['d', 'f']) {
        setXattr(`${p}/${dir}`, 'user.k', Buffer.from('old'));
        setTimesNs(`${p}/${dir}`, MTIME, MTIME);
      }
    }));
    await reopenLogged();
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
      setXattr(`${P}/${dir}`, 'user.k', Buffer.from('new'));
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
      expect(getXattr(`${M}/e`, 'user.k')?.toString()).toBe('old');
      expect(e.mtimeNs).toBe(MTIME);
      expect(await fsp.readdir(`${M}/e`)).toEqual(entries);
      expect((await d.verify()).differences).toEqual([]);
    });
});

describe('heals while the primary is ahead of the queue', () => {
  let t: DriverOnTempDirs['t'];
  let d: MirrorDriver;
  let P: string;
  let M: string;
  const C = randomBytes(5000);
  const W = randomBytes(7000);

  beforeEach(async () => {
    ({ t, P, d, M } = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/c`, C, { mode: 0o644 });
      await fsp.writeFile(`${p}/w`, W, { mode: 0o644 });
      await fsp.mkdir(`${p}/g`, { mode: 0o755 });
      await fsp.writeFile(`${p}/g/h`, C);
    }));
  });
  afterEach(async () => {
    await d?.dispose();
    await t?.cleanup();
  });

  it('a heal of a name renamed away and renamed over behind it copies neither file into the other', async () => {
    // The mirror lacks /c: a chmod of it fails there and heals /c in its turn. Behind it on the
    // primary, /c is renamed to /z and /w to /c.
    await fsp.rm(`${M}/c`);
    await fsp.chmod(`${P}/c`, 0o600);
    await fsp.rename(`${P}/c`, `${P}/z`);
    await fsp.rename(`${P}/w`, `${P}/c`);
    await Promise.all([
      d.apply({ op: 'chmod', path: '/c', mode: 0o100600 }),
      d.apply({ op: 'rename', from: '/c', path: '/z' }),
      d.apply({ op: 'rename', from: '/w', path: '/c' }),
    ]);
    await d.whenIdle();
    expect(await fsp.readFile(`${M}/z`)).toEqual(C);
    expect(await fsp.readFile(`${M}/c`)).toEqual(W);
    expect(d.status().brokenReasons).toEqual({});
    expect((await d.verify()).differences).toEqual([]);
  });

  it('a heal that makes a missing directory does not give it the mode of the one made under its name behind it', async () => {
    // The mirror lacks /g: a write to /g/h fails there and heals it, parents first. Behind it on
    // the primary, /g is renamed to /g2 and a new /g made with another mode.
    await fsp.rm(`${M}/g`, { recursive: true });
    const data = randomBytes(100);
    const fh = await fsp.open(`${P}/g/h`, 'r+');
    await fh.write(data, 0, data.length, 0);
    await fh.close();
    await fsp.rename(`${P}/g`, `${P}/g2`);
    await fsp.mkdir(`${P}/g`, { mode: 0o700 });
    await fsp.chmod(`${P}/g`, 0o700);
    await Promise.all([
      d.apply({ op: 'write', path: '/g/h', offset: 0, data }),
      d.apply({ op: 'rename', from: '/g', path: '/g2' }),
      d.apply({ op: 'mkdir', path: '/g', mode: 0o40700, uid: 0, gid: 0 }),
    ]);
    await d.whenIdle();
    expect(((await fsp.lstat(`${M}/g2`)).mode & 0o7777).toString(8)).toBe('755');
    expect(await fsp.readFile(`${M}/g2/h`)).toEqual(await fsp.readFile(`${P}/g2/h`));
    expect(d.status().brokenReasons).toEqual({});
    expect((await d.verify()).differences).toEqual([]);
  });
});

describe('the link index while the primary is ahead of the queue', () => {
  beforeEach(async () => {
    ({ t, P, d, M } = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/a`, randomBytes(5000));
      await fsp.writeFile(`${p}/f`, randomBytes(6000));
    }));
    await reopenLogged();
  });
  afterEach(async () => {
    await d?.dispose();
    await t?.cleanup();
  });

  it('a link whose new name is renamed over behind it is indexed under its own file, not the one renamed there', async () => {
    // /a gets a second name /b, which /f is renamed over behind the link; then a third name /e.
    await fsp.link(`${P}/a`, `${P}/b`);
    await fsp.rename(`${P}/f`, `${P}/b`);
    await fsp.link(`${P}/a`, `${P}/e`);
    await Promise.all([
      d.apply({ op: 'link', from: '/a', path: '/b' }),
      d.apply({ op: 'rename', from: '/f', path: '/b' }),
      d.apply({ op: 'link', from: '/a', path: '/e' }),
    ]);
    await d.whenIdle();
    // The mirror loses /e: a chmod of it heals it as a copy of its own, whose other name the
    // index gives (keyed under /f's file, it could not: the volume was compared instead).
    await fsp.rm(`${M}/e`);
    await fsp.chmod(`${P}/e`, 0o600);
    await d.apply({ op: 'chmod', path: '/e', mode: 0o100600 });
    await d.whenIdle();
    expect((await fsp.stat(`${M}/e`)).ino).toBe((await fsp.stat(`${M}/a`)).ino);
    expect(logs.filter((m) => m.includes('comparing the volume'))).toEqual([]);
    expect((await d.verify()).differences).toEqual([]);
  });
});
