import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DIRECT_ALIGN, directReads } from '../../src/posix/direct-read.js';
import { pageAlignedShared } from '../../src/repository/buffer-pool.js';
import { cachedPages } from '../helpers/posix.js';

/**
 * directReads (src/posix/direct-read.ts): a large file the page cache does not hold is read with
 * O_DIRECT into page-aligned memory, every other read through the page cache, the same bytes
 * either way. Real files on the test machine's /tmp (ext4) and /dev/shm (tmpfs); the page cache
 * of one file is emptied with GNU dd's `iflag=nocache count=0` (posix_fadvise DONTNEED) after an
 * fsync, and cachestat(2) (the addon's cachedPages) tells what the cache holds.
 */

const MiB = 1024 * 1024;
const SIZE = 9 * MiB + 12_345; // an unaligned tail

/** Empties the page cache of a file whose data is on the disk (fsync'd first). */
function dropCache(file: string): void {
  const r = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  expect(r.status, r.stderr.toString()).toBe(0);
}

/** Reads the whole file in 2 MiB steps into page-aligned memory (as the backup's cutter does). */
async function readAll(file: string, size: number, into = pageAlignedShared(2 * MiB)) {
  const fh = await fsp.open(file, 'r');
  const src = await directReads(fh, size);
  try {
    const parts: Buffer[] = [];
    for (let at = 0; at < size; ) {
      const n = await src.read(into, 0, Math.min(2 * MiB, size - at), at);
      if (n === 0) break;
      parts.push(Buffer.from(into.subarray(0, n)));
      at += n;
    }
    return { data: Buffer.concat(parts), direct: src.direct, directBytes: src.directBytes, src, fh };
  } finally {
    await src.close();
    await fh.close();
  }
}

describe('directReads: large cold files past the page cache', () => {
  let dir: string;
  let content: Buffer;
  let file: string;
  const saved = process.env.TWINFS_DIRECT_READ;

  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-direct-'));
    content = randomBytes(SIZE);
    file = path.join(dir, 'big');
    const fh = await fsp.open(file, 'w');
    await fh.write(content, 0, SIZE, 0);
    await fh.sync();
    await fh.close();
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.TWINFS_DIRECT_READ;
    else process.env.TWINFS_DIRECT_READ = saved;
  });

  it('reads a cold file with O_DIRECT, tail included, and leaves the page cache empty', async () => {
    dropCache(file);
    const before = cachedPages(file);
    // The kernel here has cachestat (Linux 6.5); the drop worked.
    expect(before).toBeGreaterThanOrEqual(0);
    expect(before * DIRECT_ALIGN).toBeLessThan(SIZE / 4);
    const r = await readAll(file, SIZE);
    expect(r.direct).toBe(true);
    expect(r.directBytes).toBe(SIZE);
    expect(r.data.equals(content)).toBe(true);
    // Nothing went through the page cache: a buffered read would have filled it.
    expect(cachedPages(file) * DIRECT_ALIGN).toBeLessThan(SIZE / 4);
  });

  it('reads a file the cache holds through the cache', async () => {
    fs.readFileSync(file);
    expect(cachedPages(file) * DIRECT_ALIGN).toBeGreaterThan(SIZE / 2);
    const r = await readAll(file, SIZE);
    expect(r.direct).toBe(false);
    expect(r.directBytes).toBe(0);
    expect(r.data.equals(content)).toBe(true);
  });

  it('reads unaligned positions and memory through the cache, the same bytes', async () => {
    dropCache(file);
    const fh = await fsp.open(file, 'r');
    const src = await directReads(fh, SIZE);
    try {
      expect(src.direct).toBe(true);
      // An unaligned position into aligned memory, then an aligned one into plain memory.
      const a = pageAlignedShared(64 * 1024);
      expect(await src.read(a, 0, 5000, 1000)).toBe(5000);
      expect(a.subarray(0, 5000).equals(content.subarray(1000, 6000))).toBe(true);
      const b = Buffer.alloc(3 * DIRECT_ALIGN + 7);
      expect(await src.read(b, 7, 3 * DIRECT_ALIGN, 4 * DIRECT_ALIGN)).toBe(3 * DIRECT_ALIGN);
      expect(b.subarray(7).equals(content.subarray(4 * DIRECT_ALIGN, 7 * DIRECT_ALIGN))).toBe(true);
      // An aligned read with too little room after it for a whole last page: through the cache.
      const c = pageAlignedShared(DIRECT_ALIGN);
      expect(await src.read(c, 100, 200, 0)).toBe(200);
      expect(c.subarray(100, 300).equals(content.subarray(0, 200))).toBe(true);
      expect(src.directBytes).toBe(0);
      // And an aligned one goes direct.
      expect(await src.read(a, 0, 8192, 8192)).toBe(8192);
      expect(src.directBytes).toBe(8192);
      expect(a.subarray(0, 8192).equals(content.subarray(8192, 16384))).toBe(true);
    } finally {
      await src.close();
      await fh.close();
    }
  });

  it('sees data written and not yet on the disk (the kernel writes it back first)', async () => {
    dropCache(file);
    // Dirty pages in the cache, not synced: a direct read must not return the old blocks.
    const patch = randomBytes(3 * DIRECT_ALIGN + 11);
    const at = 4 * MiB + 123;
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, patch, 0, patch.length, at);
    fs.closeSync(fd);
    patch.copy(content, at);
    process.env.TWINFS_DIRECT_READ = 'always';
    const r = await readAll(file, SIZE);
    expect(r.direct).toBe(true);
    expect(r.directBytes).toBe(SIZE);
    expect(r.data.equals(content)).toBe(true);
  });

  it('TWINFS_DIRECT_READ=off and files under the minimum keep the page cache', async () => {
    dropCache(file);
    process.env.TWINFS_DIRECT_READ = 'off';
    expect((await readAll(file, SIZE)).direct).toBe(false);
    delete process.env.TWINFS_DIRECT_READ;
    const small = path.join(dir, 'small');
    fs.writeFileSync(small, content.subarray(0, 2 * MiB));
    fs.fsyncSync(fs.openSync(small, 'r'));
    dropCache(small);
    const r = await readAll(small, 2 * MiB);
    expect(r.direct).toBe(false);
    expect(r.data.equals(content.subarray(0, 2 * MiB))).toBe(true);
  });

  it('on tmpfs: the same bytes whether it takes O_DIRECT or refuses it', async () => {
    const shm = await fsp.mkdtemp('/dev/shm/twinfs-direct-');
    try {
      const f = path.join(shm, 'big');
      fs.writeFileSync(f, content);
      process.env.TWINFS_DIRECT_READ = 'always';
      const r = await readAll(f, SIZE);
      expect(r.data.equals(content)).toBe(true);
    } finally {
      await fsp.rm(shm, { recursive: true, force: true });
    }
  });
});
