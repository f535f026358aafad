import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import type { MirrorDriver } from '../../src/mirror-driver/index.js';
import { tempDirs } from '../helpers/server.js';
import { openDriver, sha } from './mirror-helpers.js';

/**
 * A mirror copy that is wrong while its size and times are the primary's (finding 33 of
 * docs/reliability.md: a split copy of the volume held other content with the primary's size
 * and mtime). The fault is made for real: the mirror's file is written behind the driver's back
 * and its times put back, as a lost or misdirected mirror write followed by a copy of the times
 * by path leaves it. The driver runs in this process without a mount; the test changes the
 * primary itself and reports each change the way the filesystem does (beforeChange, then apply).
 */
describe('a mirror copy with the primary size and times but other content', () => {
  let t: Awaited<ReturnType<typeof tempDirs>> | undefined;
  let d: MirrorDriver | undefined;
  afterEach(async () => {
    await d?.dispose();
    await t?.cleanup();
    d = undefined;
    t = undefined;
  });

  async function open(): Promise<{ P: string; M: string; d: MirrorDriver }> {
    t ??= await tempDirs('primary', 'mirror', 'state');
    d = await openDriver({
      primary: t.dirs.primary!,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    return { P: t.dirs.primary!, M: d.dataRoot, d };
  }

  /** Overwrites [at, at + len) of the mirror's file behind the driver, keeping its size and the primary's times. */
  async function spoil(P: string, M: string, name: string, at: number, len: number): Promise<void> {
    const fh = await fsp.open(M + name, 'r+');
    await fh.write(Buffer.alloc(len, 0xee), 0, len, at);
    await fh.close();
    const pst = await fsp.stat(P + name);
    await fsp.utimes(M + name, pst.atime, pst.mtime);
    const mst = await fsp.stat(M + name);
    // What a comparison by size and times sees: equal (and the mirror's ctime is newer).
    expect([mst.size, Math.abs(mst.mtimeMs - pst.mtimeMs) < 1]).toEqual([pst.size, true]);
    expect(await sha(M + name)).not.toBe(await sha(P + name));
  }

  /** pwrite on the primary, reported as the filesystem reports it. */
  async function write(
    drv: MirrorDriver,
    P: string,
    name: string,
    offset: number,
    len: number,
  ): Promise<void> {
    await drv.beforeChange(name);
    const data = randomBytes(len);
    const fh = await fsp.open(P + name, 'r+');
    await fh.write(data, 0, len, offset);
    await fh.close();
    await drv.apply({ op: 'write', path: name, offset, data });
  }

  it("a resync's comparison reads a file changed under the split instead of trusting its size and times, and rewrites what differs", async () => {
    t = await tempDirs('primary', 'mirror', 'state');
    const P0 = t.dirs.primary!;
    await fsp.writeFile(`${P0}/f`, randomBytes(20_000));
    await fsp.writeFile(`${P0}/a`, randomBytes(10_000));
    await fsp.link(`${P0}/a`, `${P0}/b`);
    const { P, M, d: drv } = await open();
    await spoil(P, M, '/f', 5000, 100);
    const s = await drv.split({ volume: true });
    // /f changes under the split (its tracked range is copied by the resync, and its times).
    await write(drv, P, '/f', 0, 100);
    // A changed file loses a name: the resync compares the volume (lostLinks), /f included.
    await write(drv, P, '/a', 0, 1000);
    await drv.beforeChange('/a');
    await fsp.unlink(`${P}/a`);
    await drv.apply({ op: 'unlink', path: '/a' });
    await drv.resync(s.splitId);
    await drv.whenIdle();
    // On the old code /f kept the spoiled bytes: size, mtime and an older primary ctime said equal.
    expect(await sha(`${M}/f`)).toBe(await sha(`${P}/f`));
    expect(drv.status().stats.rereadRewrites).toBe(1);
    expect((await drv.verify({ content: true })).differences).toEqual([]);
  });

  it('a comparison that finds the names of one file as two mirror files reads the copy it keeps before linking the other names to it', async () => {
    t = await tempDirs('primary', 'mirror', 'state');
    const P0 = t.dirs.primary!;
    await fsp.writeFile(`${P0}/x1`, randomBytes(30_000));
    await fsp.link(`${P0}/x1`, `${P0}/x2`);
    let { P, M, d: drv } = await open();
    expect((await fsp.stat(`${M}/x1`)).ino).toBe((await fsp.stat(`${M}/x2`)).ino);
    await drv.dispose();
    d = undefined;
    // While no server runs, the mirror's /x1 becomes a file of its own that missed a write (the
    // state a heal or copy of one name leaves until its names are linked again): the primary's
    // mode, owner and times, other content. /x2 keeps the right copy.
    const pst = await fsp.stat(`${P}/x1`);
    const copy = await fsp.readFile(`${M}/x1`);
    copy.fill(0xee, 7000, 7300);
    await fsp.writeFile(`${M}/x1.tmp`, copy, { mode: pst.mode & 0o7777 });
    await fsp.chmod(`${M}/x1.tmp`, pst.mode & 0o7777);
    await fsp.rename(`${M}/x1.tmp`, `${M}/x1`);
    await fsp.utimes(`${M}/x1`, pst.atime, pst.mtime);
    expect((await fsp.stat(`${M}/x1`)).ino).not.toBe((await fsp.stat(`${M}/x2`)).ino);
    // The start-up comparison: /x1 comes first and looks equal; /x2 is linked to it.
    ({ P, M, d: drv } = await open());
    expect((await fsp.stat(`${M}/x1`)).ino).toBe((await fsp.stat(`${M}/x2`)).ino);
    // On the old code both names had /x1's spoiled copy.
    expect(await sha(`${M}/x2`)).toBe(await sha(`${P}/x2`));
    expect(drv.status().stats.rereadRewrites).toBe(1);
    expect((await drv.verify({ content: true })).differences).toEqual([]);
  });
});
