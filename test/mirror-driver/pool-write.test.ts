import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MirrorWriter, SYNC_WRITE_BYTES } from '../../src/mirror-driver/mirror-writer.js';
import { unmountAll } from '../helpers/mounts.js';
import { tempDirs } from '../helpers/server.js';
import { fingerprint, type InProcess, mountInProcess, run } from './mirror-helpers.js';

/**
 * The mirror's writes larger than SYNC_WRITE_BYTES: synchronous on the JS thread while the
 * mirror takes them at page-cache speed, in libuv's pool once their running mean cost per MiB
 * passes ASYNC_WRITE_NS_PER_MIB (TWINFS_MIRROR_POOL_WRITE_US sets the bound; 0: always the pool),
 * with every 32nd write still synchronous to keep the measure current. The bound is set here,
 * not the disk's speed: the writes and their timing are real, so a bound of 1 µs per MiB is one
 * no write meets.
 */
describe("the mirror's large writes: on the JS thread or in the pool", () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess | undefined;
  const before = process.env.TWINFS_MIRROR_POOL_WRITE_US;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'direct');
  });
  afterEach(() => {
    if (before === undefined) delete process.env.TWINFS_MIRROR_POOL_WRITE_US;
    else process.env.TWINFS_MIRROR_POOL_WRITE_US = before;
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  /**
   * 100 writes of 256 KiB at shuffled offsets of one 25 MiB file, then 100 of 1 KiB over their
   * edges (synchronous always): the file must hold the last bytes written at every offset,
   * whichever way each large write went.
   */
  async function writeSeries(dir: string, name: string): Promise<{ w: MirrorWriter; expected: string }> {
    const w = new MirrorWriter(dir);
    const big = 256 * 1024;
    expect(big).toBeGreaterThan(SYNC_WRITE_BYTES);
    const model = Buffer.alloc(100 * big);
    await w.apply({
      op: 'create',
      path: `/${name}`,
      mode: 0o644,
      uid: process.getuid!(),
      gid: process.getgid!(),
    });
    const order = Array.from({ length: 100 }, (_, i) => (i * 37) % 100);
    for (const i of order) {
      const data = randomBytes(big);
      data.copy(model, i * big);
      await w.apply({ op: 'write', path: `/${name}`, offset: i * big, data });
    }
    for (let i = 1; i < 100; i++) {
      const data = randomBytes(1024);
      data.copy(model, i * big - 512);
      await w.apply({ op: 'write', path: `/${name}`, offset: i * big - 512, data });
    }
    return { w, expected: createHash('sha256').update(model).digest('hex') };
  }

  const shaOf = (p: string) => createHash('sha256').update(fs.readFileSync(p)).digest('hex');

  // [what, TWINFS_MIRROR_POOL_WRITE_US, synchronous large writes, large writes in the pool] of
  // writeSeries' 100: with a bound no write meets, write 1 is measured (the mean starts at 0),
  // 2–32 go to the pool, 33 is measured, and so on.
  it.each([
    [
      'a bound no write meets: the first is synchronous, then the pool, every 32nd synchronous again',
      '0.001',
      4,
      96,
    ],
    ['a bound of 0: every large write in the pool', '0', 0, 100],
    ['a bound every write meets: all of them synchronous', String(3600e6), 100, 0],
  ] as const)('%s', async (_what, bound, sync, pool) => {
    process.env.TWINFS_MIRROR_POOL_WRITE_US = bound;
    const name = `series-${bound}`;
    const { w, expected } = await writeSeries(t.dirs.direct!, name);
    try {
      expect(w.syncLargeWrites).toBe(sync);
      expect(w.poolWrites).toBe(pool);
      expect(shaOf(`${t.dirs.direct}/${name}`)).toBe(expected);
    } finally {
      w.closeAll();
    }
  });

  it('through the mount, both ways at once under four writers: the mirror is exact', async () => {
    // The bound no write meets: the writer takes the pool, and every 32nd write the JS thread,
    // while four dd streams and then rewrites of their middles run beside one another.
    process.env.TWINFS_MIRROR_POOL_WRITE_US = '0.001';
    m = await mountInProcess({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    const streams = [0, 1, 2, 3]
      .map((i) => `dd if=/dev/urandom of=s${i} bs=1M count=24 status=none`)
      .join(' & ');
    const rewrite = [0, 1, 2, 3]
      .map((i) => `dd if=/dev/urandom of=s${i} bs=256k seek=20 count=16 conv=notrunc status=none`)
      .join(' & ');
    await run(`cd '${t.dirs.mnt}' && (${streams} & wait) && (${rewrite} & wait)`, 120_000);
    await m.settle();
    const writer = (m.driver as unknown as { c: { writer: MirrorWriter } }).c.writer;
    // Both ways were taken: 96 MiB of 1 MiB requests and 16 MiB of 256 KiB ones, the cache's
    // write-back runs besides.
    expect(writer.syncLargeWrites).toBeGreaterThanOrEqual(3);
    expect(writer.poolWrites).toBeGreaterThan(90);
    expect(await fingerprint(m.driver.dataRoot)).toEqual(await fingerprint(t.dirs.primary!));
    expect(m.driver.status().broken).toEqual([]);
    expect((await m.driver.verify()).differences).toEqual([]);
  }, 150_000);
});
