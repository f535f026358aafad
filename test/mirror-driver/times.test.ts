import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { syncEntry } from '../../src/mirror-driver/entry-sync.js';
import type { MirrorDriver } from '../../src/mirror-driver/index.js';
import { underRoot } from '../../src/posix/long-path.js';
import { setTimesNs } from '../../src/posix/set-times.js';
import { PYTHON } from '../helpers/posix.js';
import { spawn } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';
import { type DriverOnTempDirs, driverOnTempDirs } from './mirror-helpers.js';

/**
 * Times of mirror entries (src/mirror-driver/times.ts): a data write moves the mirror's mtime,
 * and the driver copies the primary's times back, to the ns. The driver runs in this process
 * without a mount; the test changes the primary itself and reports each change the way the
 * filesystem does. The primary's times are set to a value no write can produce (2001, odd ns),
 * so the mirror can only have them by copying them.
 */
describe('mirror times', () => {
  let t: DriverOnTempDirs['t'];
  let d: MirrorDriver;
  let P: string;
  let M: string;
  const ATIME = 1_000_000_000_123_456_789n;
  const MTIME = 1_000_000_100_987_654_321n;

  beforeEach(async () => {
    ({ t, P, d, M } = await driverOnTempDirs((p) => fsp.writeFile(`${p}/a`, randomBytes(10_000))));
  });
  afterEach(async () => {
    await d?.dispose();
    await t?.cleanup();
  });

  /** pwrite on the primary, then its times set as above; reported as a write unless report is false. */
  async function write(name: string, offset: number, report = true): Promise<Buffer> {
    const data = randomBytes(1000);
    const fh = await fsp.open(`${P}${name}`, 'r+');
    await fh.write(data, 0, data.length, offset);
    await fh.close();
    setTimesNs(`${P}${name}`, ATIME, MTIME);
    if (report) await d.apply({ op: 'write', path: name, offset, data });
    return data;
  }

  async function mtimeNs(file: string): Promise<bigint> {
    return (await fsp.lstat(file, { bigint: true })).mtimeNs;
  }

  it('after a write, the mirror gets the primary times to the ns once the queue is idle', async () => {
    await write('/a', 100);
    await d.whenIdle();
    expect(await mtimeNs(`${M}/a`)).toBe(MTIME);
    expect((await fsp.lstat(`${M}/a`, { bigint: true })).atimeNs).toBe(ATIME);
  });

  it('an fsync copies the times at once', async () => {
    await write('/a', 100);
    await d.apply({ op: 'fsync', path: '/a', datasync: false });
    expect(await mtimeNs(`${M}/a`)).toBe(MTIME);
  });

  it('a pending copy follows a rename: the new name gets the times', async () => {
    await write('/a', 100);
    await fsp.rename(`${P}/a`, `${P}/b`);
    await d.apply({ op: 'rename', from: '/a', path: '/b' });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
  });

  it('a pending copy follows a rename over a file whose own copy was pending too (noted after the source)', async () => {
    await fsp.writeFile(`${P}/b`, randomBytes(5000));
    await d.apply({ op: 'create', path: '/b', mode: 0o100644, uid: 0, gid: 0 });
    await d.whenIdle();
    // The source first, then the target: both copies pending, the target's noted last.
    await write('/a', 100);
    const data = randomBytes(1000);
    await fsp.appendFile(`${P}/b`, data);
    await d.apply({ op: 'write', path: '/b', offset: 5000, data });
    await fsp.rename(`${P}/a`, `${P}/b`);
    await d.apply({ op: 'rename', from: '/a', path: '/b' });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
  });

  it('a pending copy of a name whose rename a split holds does not change the split copy (held renames route no time move)', async () => {
    await write('/a', 100);
    // The primary runs ahead: /a renamed before the split, reported after it (held). The split's
    // copy of the pending times finds /a gone and keeps it pending.
    await fsp.rename(`${P}/a`, `${P}/x`);
    const s = await d.split({ paths: ['/a', '/x'] });
    await d.apply({ op: 'rename', from: '/a', path: '/x' });
    const frozen = await mtimeNs(`${M}/a`);
    // A new /a under the split, with other times; then a change the split does not hold, after
    // which the pending copies run.
    const data = randomBytes(100);
    await fsp.writeFile(`${P}/a`, data);
    setTimesNs(`${P}/a`, ATIME + 7n, MTIME + 7n);
    await d.apply({ op: 'create', path: '/a', mode: 0o100644, uid: 0, gid: 0 });
    await d.apply({ op: 'write', path: '/a', offset: 0, data });
    await fsp.writeFile(`${P}/z`, '');
    await d.apply({ op: 'create', path: '/z', mode: 0o100644, uid: 0, gid: 0 });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/a`)).toBe(frozen);
    await d.resync(s.splitId);
    await d.whenIdle();
    expect(await mtimeNs(`${M}/a`)).toBe(MTIME + 7n);
    expect(await mtimeNs(`${M}/x`)).toBe(MTIME);
    expect((await d.verify()).differences).toEqual([]);
  });

  it('a write through a name of a file with several names copies the times before its next change', async () => {
    await fsp.link(`${P}/a`, `${P}/c`);
    await d.apply({ op: 'link', from: '/a', path: '/c' });
    await write('/c', 0);
    // The name goes at once (the primary unlinks it as libfuse drops a hidden name): the times
    // were copied while it could still be read.
    await fsp.unlink(`${P}/c`);
    await d.apply({ op: 'unlink', path: '/c' });
    await d.barrier();
    expect(await mtimeNs(`${M}/a`)).toBe(MTIME);
  });

  // Stress seed 4 in CI (2026-12-05): a restored symlink had an mtime 8 ms after the primary's.
  // The primary runs ahead of the mirror's queue (namespace changes are answered before the
  // mirror has them): a copy of times by path in a turn before a queued rename read the entry
  // made under the old name since, and the rename carried those times to the new name.
  it('a copy of times due before a queued rename and a new file under the old name keeps each its own', async () => {
    const MTIME2 = MTIME + 7_000_001n;
    await write('/a', 100);
    // The primary renames /a away and makes a new /a; both are reported behind a change whose
    // turn copies /a's times (an fsync: the turn the 200 ms timer's copy can take as well).
    await fsp.rename(`${P}/a`, `${P}/b`);
    await fsp.writeFile(`${P}/a`, '');
    setTimesNs(`${P}/a`, ATIME, MTIME2);
    const turns = [
      d.apply({ op: 'fsync', path: '/a', datasync: false }),
      d.apply({ op: 'rename', from: '/a', path: '/b' }),
      d.apply({ op: 'create', path: '/a', mode: 0o100644, uid: 0, gid: 0 }),
    ];
    await Promise.all(turns);
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
    expect(await mtimeNs(`${M}/a`)).toBe(MTIME2);
    expect((await d.verify()).differences).toEqual([]);
  });

  it('a new symlink gets the times its change carries, not those of whatever has its name later', async () => {
    const MTIME2 = MTIME + 8_000_000n;
    await fsp.symlink('x', `${P}/l`);
    setTimesNs(`${P}/l`, ATIME, MTIME);
    const st = await fsp.lstat(`${P}/l`, { bigint: true });
    await d.apply({
      op: 'symlink',
      path: '/l',
      target: 'x',
      uid: 0,
      gid: 0,
      atimeNs: String(st.atimeNs),
      mtimeNs: String(st.mtimeNs),
    });
    // Renamed away and replaced on the primary; the changes reach the driver only after a
    // copy of times by path has had its turn.
    await fsp.rename(`${P}/l`, `${P}/m`);
    await fsp.symlink('y', `${P}/l`);
    setTimesNs(`${P}/l`, ATIME, MTIME2);
    await d.whenIdle();
    await d.apply({ op: 'rename', from: '/l', path: '/m' });
    const st2 = await fsp.lstat(`${P}/l`, { bigint: true });
    await d.apply({
      op: 'symlink',
      path: '/l',
      target: 'y',
      uid: 0,
      gid: 0,
      atimeNs: String(st2.atimeNs),
      mtimeNs: String(st2.mtimeNs),
    });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/m`)).toBe(MTIME);
    expect(await mtimeNs(`${M}/l`)).toBe(MTIME2);
  });

  // The deferral above must not wait on a change that leaves the name's entry as it is: a link
  // from /a (queued while the write-back through /a was) keeps /a the same file. A write through
  // a name of a file with several names copies its times at once because that name may go next
  // (the unlink drops the pending copy): deferred for the link, the file's other names kept the
  // mirror's own write time.
  it("a link from a name queued behind a write through it does not defer that file's times", async () => {
    await fsp.link(`${P}/a`, `${P}/b`);
    await d.apply({ op: 'link', from: '/a', path: '/b' });
    await d.whenIdle();
    const data = await write('/a', 100, false);
    await fsp.link(`${P}/a`, `${P}/e`);
    // The write-back is reported, and the link (answered behind) is queued before the write's
    // turn has copied the times.
    const written = d.apply({ op: 'write', path: '/a', offset: 100, data });
    const linked = d.apply({ op: 'link', from: '/a', path: '/e' });
    await Promise.all([written, linked]);
    // Then the name goes, before the 200 ms timer's copy.
    await fsp.unlink(`${P}/a`);
    await d.apply({ op: 'unlink', path: '/a' });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
    expect((await d.verify()).differences).toEqual([]);
  });

  // Where the deferral has to wait, the file's times are still owed to its other names: a
  // rename over the written name (queued behind the write-back through it) drops the pending
  // copy with the name. Before the deferral the copy read the renamed file's times instead.
  it('a rename over a name queued behind a write through it: the written file keeps the primary times under its other names', async () => {
    await fsp.link(`${P}/a`, `${P}/b`);
    await d.apply({ op: 'link', from: '/a', path: '/b' });
    await fsp.writeFile(`${P}/x`, 'x');
    await d.apply({ op: 'create', path: '/x', mode: 0o100644, uid: 0, gid: 0 });
    await d.apply({ op: 'write', path: '/x', offset: 0, data: Buffer.from('x') });
    setTimesNs(`${P}/x`, ATIME, MTIME + 5_000_003n);
    await d.apply({ op: 'fsync', path: '/x', datasync: false });
    await d.whenIdle();
    const data = await write('/a', 100, false);
    await fsp.rename(`${P}/x`, `${P}/a`);
    const written = d.apply({ op: 'write', path: '/a', offset: 100, data });
    const renamed = d.apply({ op: 'rename', from: '/x', path: '/a' });
    await Promise.all([written, renamed]);
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
    expect(await mtimeNs(`${M}/a`)).toBe(MTIME + 5_000_003n);
    expect((await d.verify()).differences).toEqual([]);
  });

  describe('directories (found by the stress harness once its restore check compared mtimes)', () => {
    // Entries coming and going move a directory's mtime on the primary when the change is
    // made, and in the mirror when it is applied or replayed. Every primary directory gets the
    // odd 2001 times after each change, which only a copy can give the mirror.
    const DIRS = ['/', '/d', '/d/e'];
    async function onPrimary(fn: () => Promise<unknown>): Promise<void> {
      await fn();
      for (const dir of DIRS) setTimesNs(`${P}${dir}`, ATIME, MTIME);
    }
    async function changes(): Promise<void> {
      await onPrimary(() => fsp.mkdir(`${P}/d/e`, { recursive: true }));
      await d.apply({ op: 'mkdir', path: '/d', mode: 0o755, uid: 0, gid: 0 });
      await d.apply({ op: 'mkdir', path: '/d/e', mode: 0o755, uid: 0, gid: 0 });
      await onPrimary(() => fsp.writeFile(`${P}/d/f`, ''));
      await d.apply({ op: 'create', path: '/d/f', mode: 0o100644, uid: 0, gid: 0 });
      await onPrimary(() => fsp.link(`${P}/d/f`, `${P}/d/h`));
      await d.apply({ op: 'link', from: '/d/f', path: '/d/h' });
      await onPrimary(() => fsp.symlink('f', `${P}/d/l`));
      await d.apply({ op: 'symlink', path: '/d/l', target: 'f', uid: 0, gid: 0 });
      await onPrimary(() => fsp.rename(`${P}/d/f`, `${P}/d/e/g`));
      await d.apply({ op: 'rename', from: '/d/f', path: '/d/e/g' });
      await onPrimary(() => fsp.unlink(`${P}/d/h`));
      await d.apply({ op: 'unlink', path: '/d/h' });
      await onPrimary(() => fsp.unlink(`${P}/a`));
      await d.apply({ op: 'unlink', path: '/a' });
    }
    const mirrorTimes = () => Promise.all(DIRS.map((dir) => mtimeNs(`${M}${dir}`)));

    it('changes applied as they come: every directory gets the primary times', async () => {
      await changes();
      await d.whenIdle();
      expect(await mirrorTimes()).toEqual(DIRS.map(() => MTIME));
      expect((await d.verify()).differences).toEqual([]);
    });

    it('changes replayed by a resync: the same', async () => {
      const s = await d.split({ volume: true });
      await changes();
      await d.resync(s.splitId);
      await d.whenIdle();
      expect(await mirrorTimes()).toEqual(DIRS.map(() => MTIME));
      expect((await d.verify()).differences).toEqual([]);
    });
  });

  // Stress seed 2211: the restore of the last snapshot gave a symlink an mtime 37 ns off the
  // primary's (the mirror's, which `verify` compares to the ms). A copy whose entry is renamed
  // away on the primary between its lstat and the times read (the rename queued behind the
  // copy) set the times from fs.Stats' ms doubles; the queued rename then carried them to the
  // new name, and nothing copies a symlink's times again. Real race: a child renames the
  // primary's symlink back and forth as fast as it can while syncEntry copies it.
  it('a copy of an entry renamed away meanwhile still gets its times to the ns (stress seed 2211)', async () => {
    const dirs = await tempDirs('p', 'm');
    const [p, m] = [dirs.dirs.p!, dirs.dirs.m!];
    await fsp.symlink('target', `${p}/a`);
    setTimesNs(`${p}/a`, ATIME, MTIME);
    const flipper = spawn(
      PYTHON,
      [
        '-c',
        'import os,sys\nd=sys.argv[1]\nwhile True:\n os.rename(d+"/a",d+"/b"); os.rename(d+"/b",d+"/a")',
        p,
      ],
      { stdio: 'ignore' },
    );
    let copies = 0;
    const wrong: bigint[] = [];
    try {
      const end = Date.now() + 3000;
      while (Date.now() < end) {
        // Gone at the first lstat (the mirror entry is removed) or at readlink (ENOENT): no copy.
        if (
          !(await syncEntry(`${p}/a`, `${m}/a`).then(
            () => true,
            () => false,
          ))
        )
          continue;
        const st = await fsp.lstat(`${m}/a`, { bigint: true }).catch(() => undefined);
        if (!st) continue;
        copies++;
        // A rename does not move a symlink's mtime: the primary's is MTIME all along.
        if (st.mtimeNs !== MTIME) wrong.push(st.mtimeNs - MTIME);
      }
    } finally {
      flipper.kill('SIGKILL');
      await new Promise((r) => flipper.once('exit', r));
      await dirs.cleanup();
    }
    expect(copies).toBeGreaterThan(50);
    expect(wrong).toEqual([]);
  });

  it('a new symlink and the directory it went into past PATH_MAX get the primary times to the ns', async () => {
    // 16 directories of 255 bytes: the volume path alone is over 4 KiB, as under a mount
    // (fusefs/long-path.test.ts); every change is reported the way the filesystem does.
    let deep = '';
    for (let i = 0; i < 16; i++) {
      deep += `/${String.fromCharCode(97 + i).repeat(255)}`;
      underRoot(P, [deep], (bp) => fs.mkdirSync(bp!));
      await d.apply({ op: 'mkdir', path: deep, mode: 0o40755, uid: 0, gid: 0 });
    }
    const link = `${deep}/l`;
    underRoot(P, [link], (bp) => fs.symlinkSync('target', bp!));
    await d.apply({ op: 'symlink', path: link, target: 'target', uid: 0, gid: 0 });
    // Times no symlink or mkdir made now can have: only a copy gives them to the mirror.
    underRoot(P, [link], (bp) => setTimesNs(bp!, ATIME, MTIME));
    underRoot(P, [deep], (bp) => setTimesNs(bp!, ATIME, MTIME + 1n));
    await d.whenIdle();
    const mtime = (p: string) => underRoot(M, [p], (bp) => fs.lstatSync(bp!, { bigint: true }).mtimeNs);
    expect(mtime(link)).toBe(MTIME);
    expect(mtime(deep)).toBe(MTIME + 1n);
  });
  // bench/handle-diff.mjs seed 9726: a write through a file's only name notes a copy of its times
  // by that name; a link gives it a second name; the first name goes (unlink, or a rename over it)
  // before the copy is made. The other name kept the mirror's own mtime (a few ms off).
  it('a write, a link, then an unlink of the written name: the other name gets the times', async () => {
    await write('/a', 100);
    await fsp.link(`${P}/a`, `${P}/b`);
    await d.apply({ op: 'link', from: '/a', path: '/b' });
    await fsp.unlink(`${P}/a`);
    await d.apply({ op: 'unlink', path: '/a' });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
  });

  it('a write, a link, then a rename over the written name: the other name gets the times', async () => {
    await write('/a', 100);
    await fsp.link(`${P}/a`, `${P}/b`);
    await d.apply({ op: 'link', from: '/a', path: '/b' });
    await fsp.writeFile(`${P}/c`, randomBytes(10));
    await d.apply({ op: 'create', path: '/c', mode: 0o100644, uid: 0, gid: 0 });
    await d.apply({ op: 'write', path: '/c', offset: 0, data: await fsp.readFile(`${P}/c`) });
    await fsp.rename(`${P}/c`, `${P}/a`);
    await d.apply({ op: 'rename', from: '/c', path: '/a' });
    await d.whenIdle();
    expect(await mtimeNs(`${M}/b`)).toBe(MTIME);
  });
});
