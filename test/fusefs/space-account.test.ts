import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nullSink } from '../../src/fusefs/index.js';
import { SpaceAccount } from '../../src/fusefs/space-account.js';
import { WritebackCache } from '../../src/fusefs/writeback-cache.js';
import { tempDirs } from '../helpers/server.js';

const MiB = 1024 * 1024;

/**
 * The space promised to cached writes (space-account.ts), with a statfs that answers what a
 * primary would: its free bytes after everything that landed so far.
 */
describe('SpaceAccount', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('d');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  /** A primary with `free` bytes; data handed to land() reaches it while the next statfs runs. */
  function primary(free: number) {
    let landing: (() => void) | null = null;
    return {
      statfs: async () => {
        // The write-back's pwrites finish before the statfs in the thread pool: its answer
        // holds them, and their completions reach the account while it runs.
        landing?.();
        landing = null;
        return { bavail: free / 4096, bsize: 4096 };
      },
      land(acct: () => SpaceAccount, reserved: number, bytes: number) {
        landing = () => {
          free -= bytes;
          acct().release(reserved, bytes);
        };
      },
    };
  }

  it('a write the primary has room for is accepted while write-behind data lands during the statfs it was refused on', async () => {
    const KiB = 1024;
    const p = primary(3 * MiB);
    const a = await SpaceAccount.open('/', { marginBytes: 0, refreshMs: 0, statfs: p.statfs });
    const cache = new WritebackCache({ sink: nullSink, writebackMs: 60_000, space: a });
    try {
      const node = cache.adopt(1, '/f', fs.openSync(path.join(t.dirs.d!, 'f'), 'w+'), true);
      // 2 MiB accepted; written behind, they land during the account's next statfs.
      expect(cache.write(node, 0, Buffer.alloc(2 * MiB, 1))).toBeUndefined();
      p.land(() => a, 2 * MiB, 2 * MiB);
      await a.refresh();
      // The primary has 1 MiB free; the account, counting the 2 MiB twice, none: the next
      // write is refused at first and asked about again, while 512 KiB more land.
      p.land(() => a, 0, 512 * KiB);
      await cache.write(node, 2 * MiB, Buffer.alloc(256 * KiB, 2));
      // 512 KiB free on the primary: accepted (it was ENOSPC with one statfs).
      expect(a.freeBytes).toBe(256 * KiB);
      await expect(cache.write(node, 2 * MiB + 256 * KiB, Buffer.alloc(512 * KiB, 3))).rejects.toMatchObject({
        code: 'ENOSPC',
      });
    } finally {
      await cache.dispose();
      a.dispose();
    }
  });

  it('a write refused on a statfs during which data landed is asked about again, on one with nothing landing', async () => {
    const p = primary(10 * MiB);
    const a = await SpaceAccount.open('/', { marginBytes: 0, refreshMs: 0, statfs: p.statfs });
    expect(a.freeBytes).toBe(10 * MiB);
    // 6 MiB of a file's writes are accepted, then written behind: they land during the next statfs.
    expect(a.tryReserve(6 * MiB)).toBe(true);
    p.land(() => a, 6 * MiB, 6 * MiB);
    await a.refresh();
    // That statfs's answer (4 MiB free) holds the 6 MiB, which were also counted as landing.
    expect(a.tryReserve(1 * MiB)).toBe(false);
    // The refusal's own read: the primary has 4 MiB free.
    await a.refreshSettled();
    expect(a.freeBytes).toBe(4 * MiB);
    expect(a.tryReserve(1 * MiB)).toBe(true);
    expect(a.tryReserve(4 * MiB)).toBe(false);
    a.dispose();
  });

  it('refreshSettled reads again while data lands during its statfs', async () => {
    const p = primary(10 * MiB);
    const a = await SpaceAccount.open('/', { marginBytes: 0, refreshMs: 0, statfs: p.statfs });
    expect(a.tryReserve(2 * MiB)).toBe(true);
    p.land(() => a, 2 * MiB, 2 * MiB);
    await a.refreshSettled();
    expect(a.freeBytes).toBe(8 * MiB);
    a.dispose();
  });
});
