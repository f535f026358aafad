import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TwinFs } from '../../src/fusefs/index.js';
import { unmountAll, waitFor } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { sh } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';
import { bytes } from './fixtures/bytes.mjs';

const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const openFds = () => fs.readdirSync('/proc/self/fd').length;

/**
 * The primary's early write-back (VolumeOps.writeBack, a 'per-file' WriteBackScheduler): large direct
 * writes (128 KiB and up, past the cache) start sync_file_range(WRITE) on the primary once 8 MiB
 * of a file wait, one at a time per file, so the fsync that ends a large sequential write finds
 * less to write, with a mirror (a sink) or without. Writes through the cache do not.
 * A descriptor is closed only once its running write-back settled: files are closed and
 * unlinked right after their large writes here, and none may stay open.
 */
describe("early write-back of the primary's large writes", () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let tfs: TwinFs | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'src');
  });
  afterAll(async () => {
    await tfs?.unmount().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  const dd = async (src: string, dst: string, bs: string) => {
    const r = await sh(`dd if='${src}' of='${dst}' bs=${bs} 2>&1`, { timeoutMs: 60_000 });
    expect(r.code, r.stdout).toBe(0);
  };

  it('starts for 1 MiB writes, not for 64 KiB ones; the bytes arrive; no descriptor is left', async () => {
    const src = path.join(t.dirs.src!, 'big');
    await fsp.writeFile(src, bytes(40 * MiB, 7));
    const want = sha(await fsp.readFile(src));
    const before = openFds();
    tfs = await TwinFs.mount({ primary: t.dirs.primary!, mount: t.dirs.mnt!, writebackMs: 600_000 });
    const started = () => tfs!.status().primaryWriteBacks.started;
    expect(started()).toBe(0);

    // 40 MiB in 1 MiB requests: the first at 8 MiB, each next once the one before settled.
    await dd(src, `${t.dirs.mnt}/big`, '1M');
    const large = started();
    expect(large).toBeGreaterThanOrEqual(2);
    expect(large).toBeLessThanOrEqual(5);
    expect(tfs.status().primaryWriteBacks.refused).toBe(0);
    expect(sha(await fsp.readFile(path.join(t.dirs.primary!, 'big')))).toBe(want);

    // 64 KiB writes go through the cache: no early write-back of the primary.
    await dd(src, `${t.dirs.mnt}/small`, '64k');
    expect(started()).toBe(large);

    // Closed and unlinked right after 9 MiB each: descriptors closed while a write-back runs.
    const r = await sh(
      `cd '${t.dirs.mnt}' && ${PYTHON} -c "
import os
b = os.urandom(1 << 20)
for i in range(12):
    fd = os.open('f%d' % i, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for k in range(9): os.write(fd, b)
    os.close(fd)
    if i % 2: os.unlink('f%d' % i)
"`,
      { timeoutMs: 60_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(started()).toBeGreaterThanOrEqual(large + 12);
    await tfs.unmount();
    tfs = undefined;
    expect(await waitFor(async () => openFds() <= before, 10_000)).toBe(true);
  }, 120_000);

  it('starts with a sink (a mirror) too, and the sink gets every byte', async () => {
    const src = path.join(t.dirs.src!, 'big');
    const want = sha(await fsp.readFile(src));
    // What the sink was handed beside the primary's writes, reassembled (a mirror's copy).
    const copy = Buffer.alloc(40 * MiB);
    let copied = 0;
    tfs = await TwinFs.mount({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      writebackMs: 600_000,
      // Large writes pass the cache beside it, as with the mirror driver (applyAlongside).
      sink: {
        apply: () => Promise.resolve(),
        applyAlongside: (c, primary) => {
          c.data.copy(copy, c.offset);
          copied += c.data.length;
          return primary.catch(() => undefined);
        },
      },
    });
    await dd(src, `${t.dirs.mnt}/big2`, '1M');
    expect(tfs.status().cache.dirtyBytes).toBe(0); // past the cache, as without a sink
    // 40 MiB in 1 MiB requests, as without a sink: the first at 8 MiB, each next once the one
    // before settled (it was off with a sink before).
    const started = tfs.status().primaryWriteBacks.started;
    expect(started).toBeGreaterThanOrEqual(2);
    expect(started).toBeLessThanOrEqual(5);
    expect(tfs.status().primaryWriteBacks.refused).toBe(0);
    expect(copied).toBe(40 * MiB);
    expect(sha(copy)).toBe(want);
    expect(sha(await fsp.readFile(path.join(t.dirs.primary!, 'big2')))).toBe(want);
    await tfs.unmount();
    tfs = undefined;
  }, 120_000);

  it('is off with TWINFS_PRIMARY_WRITEBACK=0 (the A/B switch of bench/seq-phases.mjs)', async () => {
    const src = path.join(t.dirs.src!, 'big');
    const prev = process.env.TWINFS_PRIMARY_WRITEBACK;
    process.env.TWINFS_PRIMARY_WRITEBACK = '0';
    try {
      tfs = await TwinFs.mount({ primary: t.dirs.primary!, mount: t.dirs.mnt!, writebackMs: 600_000 });
    } finally {
      if (prev === undefined) delete process.env.TWINFS_PRIMARY_WRITEBACK;
      else process.env.TWINFS_PRIMARY_WRITEBACK = prev;
    }
    await dd(src, `${t.dirs.mnt}/big3`, '1M');
    expect(tfs.status().cache.dirtyBytes).toBe(0);
    expect(tfs.status().primaryWriteBacks.started).toBe(0);
    await tfs.unmount();
    tfs = undefined;
  }, 120_000);
});
