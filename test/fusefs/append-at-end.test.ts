import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { KernelNames } from '../../src/fusefs/kernel-names.js';
import { VolumeOps } from '../../src/fusefs/volume-ops.js';
import { VolumePaths } from '../../src/fusefs/volume-paths.js';
import { WriteInhibitor } from '../../src/fusefs/write-inhibitor.js';
import { WritebackCache } from '../../src/fusefs/writeback-cache.js';
import { type DriverOnTempDirs, driverOnTempDirs, sha } from '../mirror-driver/mirror-helpers.js';

/**
 * O_APPEND WRITEs of a file with several names (cause 3 of the two-name fsx finding,
 * docs/reliability.md): the kernel sends them at the i_size of its inode of the name written
 * through, which can be stale. The operations are called in this process the way libfuse3 calls
 * them, with the offsets a stale name's inode gives (test/fusefs/append-names.test.ts makes the
 * kernel do it through a mount); KernelNames' invalidations are recorded, not sent (no kernel
 * here). The primary and the mirror are real directories, the sink the real mirror driver.
 */
describe('appends through two names of one file', () => {
  let t: DriverOnTempDirs['t'] | undefined;
  let d: DriverOnTempDirs['d'] | undefined;
  let cache: WritebackCache | undefined;
  afterEach(async () => {
    await cache?.dispose();
    await d?.dispose();
    await t?.cleanup();
  });

  async function setup(writeThrough: boolean) {
    let P: string;
    let M: string;
    ({ t, P, d, M } = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/a`, Buffer.alloc(1000, 'a'));
      await fsp.link(`${p}/a`, `${p}/b`);
    }));
    cache = new WritebackCache({ sink: d, writebackMs: 60_000, writeThrough });
    const sent: string[] = [];
    const names = new KernelNames(
      async (paths) => {
        sent.push(...paths);
      },
      () => false,
      () => undefined,
      (paths) => sent.push(...paths.map((p) => `behind ${p}`)),
    );
    const ops = new VolumeOps({
      paths: new VolumePaths(P),
      cache,
      sink: d,
      gate: new WriteInhibitor(),
      kernelNames: names,
    });
    // The kernel looked both names up: they are its inodes of the file.
    await ops.getattr('/a');
    await ops.getattr('/b');
    expect([...names.namesOf((await fsp.stat(`${P}/a`)).ino)].sort()).toEqual(['/a', '/b']);
    return { ops, P, M, sent };
  }

  for (const writeThrough of [false, true])
    it(`two appends at one stale end, in flight at once, land one after the other at the end${writeThrough ? ' (write-through)' : ''}`, async () => {
      const { ops, P, M } = await setup(writeThrough);
      const fa = await ops.open('/a', constants.O_WRONLY | constants.O_APPEND);
      const fb = await ops.open('/b', constants.O_WRONLY | constants.O_APPEND);
      const x = Buffer.alloc(500, 'x');
      await ops.write(fa, x, x.length, 1000, '/a');
      // /b's inode still says 1000 bytes: both appends come at 1000, the second before the
      // first is answered (two kernel inodes, not serialized by the kernel).
      const y = Buffer.alloc(100, 'y');
      const z = Buffer.alloc(100, 'z');
      const w1 = ops.write(fb, y, y.length, 1000, '/b');
      const w2 = ops.write(fa, z, z.length, 1500, '/a');
      expect(await Promise.all([w1, w2])).toEqual([100, 100]);
      await ops.release(fa);
      await ops.release(fb);
      await cache!.flushAll();
      await d!.whenIdle();
      const want = Buffer.concat([Buffer.alloc(1000, 'a'), x, y, z]);
      expect((await fsp.readFile(`${P}/a`)).equals(want)).toBe(true);
      expect(await sha(`${M}/b`)).toBe(await sha(`${P}/b`));
      // Both moved: z's offset (a's end before y) was stale too by the time it was written.
      expect(ops.appendsOffEnd).toBe(2);
      // What the kernel's inodes of the names hold after a moved append: append-stale-end.test.ts.
    });

  it('a WRITE through a handle opened without O_APPEND, or a page write-back, stays where the kernel put it', async () => {
    const { ops, P } = await setup(false);
    const fa = await ops.open('/a', constants.O_RDWR | constants.O_APPEND);
    const fb = await ops.open('/b', constants.O_RDWR);
    const data = randomBytes(100);
    await ops.write(fb, data, data.length, 200, '/b');
    // A page write-back through the O_APPEND handle (a shared mapping of it): the page's offset.
    const page = randomBytes(100);
    await ops.write(fa, page, page.length, 500, '/a', true);
    await ops.release(fa);
    await ops.release(fb);
    await cache!.flushAll();
    const got = await fsp.readFile(`${P}/a`);
    expect(got.length).toBe(1000);
    expect(got.subarray(200, 300).equals(data)).toBe(true);
    expect(got.subarray(500, 600).equals(page)).toBe(true);
    expect(ops.appendsOffEnd).toBe(0);
  });
});
