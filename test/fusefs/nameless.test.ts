import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { VolumeOps } from '../../src/fusefs/volume-ops.js';
import { VolumePaths } from '../../src/fusefs/volume-paths.js';
import { WriteInhibitor } from '../../src/fusefs/write-inhibitor.js';
import { WritebackCache } from '../../src/fusefs/writeback-cache.js';
import { type DriverOnTempDirs, driverOnTempDirs, sha } from '../mirror-driver/mirror-helpers.js';

/**
 * A cached file that loses the name its changes are reported under while still open (found by
 * the stress harness, seed 700: a file created and written, then another file renamed over it
 * before the kernel's release of the first arrived; libfuse hides only files it knows are open).
 * The filesystem operations are called in this process the way FUSE calls them, in the order
 * that race produces (no mount can be made to lose that race on purpose); the primary and the
 * mirror are real directories, the sink the real mirror driver.
 */
describe('a cached file that loses its name while open', () => {
  let t: DriverOnTempDirs['t'] | undefined;
  let d: DriverOnTempDirs['d'] | undefined;
  let cache: WritebackCache | undefined;
  afterEach(async () => {
    await cache?.dispose();
    await d?.dispose();
    await t?.cleanup();
  });

  async function setup(): Promise<{ ops: VolumeOps; P: string; M: string }> {
    let P: string;
    let M: string;
    ({ t, P, d, M } = await driverOnTempDirs((p) => fsp.writeFile(`${p}/x`, randomBytes(60_000))));
    cache = new WritebackCache({ sink: d, writebackMs: 60_000 });
    const ops = new VolumeOps({ paths: new VolumePaths(P), cache, sink: d, gate: new WriteInhibitor() });
    return { ops, P, M };
  }

  it('a rename over it: its cached data never reaches the mirror under the name the other file has now', async () => {
    const { ops, P, M } = await setup();
    const fh = await ops.create('/f', 0o100644, undefined);
    const data = randomBytes(93);
    await ops.write(fh, data, data.length, 0);
    await ops.flush(fh); // close(2); the release is still on its way
    await ops.rename('/x', '/f');
    await ops.release(fh);
    await cache!.flushAll();
    await d!.whenIdle();
    expect(await sha(`${M}/f`)).toBe(await sha(`${P}/f`));
    expect((await d!.verify({ content: true })).differences).toEqual([]);
  });

  it('an unlink of one of its names: its changes are reported under another name', async () => {
    const { ops, P, M } = await setup();
    await ops.link('/x', '/y');
    const fh = await ops.open('/x', 2 /* O_RDWR */);
    const data = randomBytes(5000);
    await ops.write(fh, data, data.length, 1000);
    await ops.unlink('/x');
    // Written through the open handle after its name went.
    await ops.write(fh, data, data.length, 20_000);
    await ops.release(fh);
    await cache!.flushAll();
    await d!.whenIdle();
    expect(await sha(`${M}/y`)).toBe(await sha(`${P}/y`));
    expect((await d!.verify({ content: true })).differences).toEqual([]);
  });

  it('an unlink of a name it is not reported under: its data stays cached and reaches the other name', async () => {
    const { ops, P, M } = await setup();
    await ops.link('/x', '/y');
    const fh = await ops.open('/y', 2 /* O_RDWR */);
    const data = randomBytes(5000);
    await ops.write(fh, data, data.length, 1000);
    await ops.unlink('/x');
    // Not written back for the unlink: the primary does not have it yet.
    expect((await fsp.readFile(`${P}/y`)).subarray(1000, 6000).equals(data)).toBe(false);
    await ops.release(fh);
    await cache!.flushAll();
    await d!.whenIdle();
    expect((await fsp.readFile(`${P}/y`)).subarray(1000, 6000).equals(data)).toBe(true);
    expect(await sha(`${M}/y`)).toBe(await sha(`${P}/y`));
    expect((await d!.verify({ content: true })).differences).toEqual([]);
  });
});
