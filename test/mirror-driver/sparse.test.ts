import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dataSpans, holesBetween } from '../../src/posix/sparse.js';
import { unmountAll } from '../helpers/mounts.js';
import { tempDirs } from '../helpers/server.js';
import {
  type DriverOnTempDirs,
  driverOnTempDirs,
  type InProcess,
  mountInProcess,
  openDriver,
  run,
  sha,
} from './mirror-helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The large image's size: past LARGE_FILE (reconcile.ts), so copied chunk by chunk. */
const DISK = 512 * MiB;

/** Allocated bytes of a file (st_blocks is in 512-byte units whatever the block size). */
const allocated = (p: string) => fs.statSync(p).blocks * 512;

/** Writes bytes at an offset of an existing file, leaving the rest as it is. */
function writeAt(p: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(p, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** A sparse file: `size` bytes with the given pieces of data, holes between. */
function sparseFile(p: string, size: number, pieces: Array<[number, number]>): void {
  fs.writeFileSync(p, '');
  fs.truncateSync(p, size);
  for (const [at, len] of pieces) writeAt(p, at, Buffer.alloc(len, (at % 251) + 1));
}

/**
 * Sparse files (a disk image, a core dump, anything truncated up or with holes punched) take the
 * room of their data only. The mirror's copies (the initial copy, the chunked copy of large
 * files, the start's reconciliation, a resync's tracked ranges) copy the data and keep the holes:
 * before, every hole was written out as zeros, so a volume of sparse images needed far more room
 * in the mirror than in the primary (a 4 GiB image of 200 KiB of data became 4.1 GiB).
 */
describe('sparse files in the mirror', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'scratch');
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('dataSpans finds the data and holesBetween the rest, on this filesystem', () => {
    const p = `${t.dirs.scratch}/spans`;
    sparseFile(p, 64 * MiB, [
      [0, 8 * KiB],
      [10 * MiB, 64 * KiB],
      [64 * MiB - 4 * KiB, 4 * KiB],
    ]);
    const fd = fs.openSync(p, 'r');
    try {
      const spans = dataSpans(fd, 0, 64 * MiB);
      // Filesystems allocate in blocks: a span covers its piece, and not much more.
      expect(spans.length).toBe(3);
      expect(spans[0]![0]).toBe(0);
      expect(spans[1]![0]).toBeLessThanOrEqual(10 * MiB);
      expect(spans[1]![1]).toBeGreaterThanOrEqual(10 * MiB + 64 * KiB);
      expect(spans[2]![1]).toBe(64 * MiB);
      const covered = spans.reduce((n, [a, b]) => n + (b - a), 0);
      expect(covered).toBeLessThan(1 * MiB);
      const holes = holesBetween(spans, 0, 64 * MiB);
      expect(holes.reduce((n, [a, b]) => n + (b - a), 0) + covered).toBe(64 * MiB);
      // A window inside one hole has no data; one past the end neither.
      expect(dataSpans(fd, 20 * MiB, 30 * MiB)).toEqual([]);
      expect(dataSpans(fd, 64 * MiB, 65 * MiB)).toEqual([]);
    } finally {
      fs.closeSync(fd);
    }
  });

  const mountOn = (primary: string) =>
    mountInProcess({ primary, mount: t.dirs.mnt!, mirror: t.dirs.mirror!, stateDir: t.dirs.state! });

  it('the initial copy, a restart after changes behind the server, and a resync keep the holes', async () => {
    const P = t.dirs.primary!;
    // Before the start: a 512 MiB image (large-file path, chunk by chunk), a 3 MiB one
    // (whole-file copy) and one that is a hole end to end.
    sparseFile(`${P}/disk.img`, DISK, [
      [0, 64 * KiB],
      [200 * MiB + 12_345, 100 * KiB],
      [DISK - 100, 100],
    ]);
    sparseFile(`${P}/small.img`, 3 * MiB, [[1_000_000, 10]]);
    sparseFile(`${P}/empty.img`, 256 * MiB, []);
    m = await mountOn(P);
    await m.settle();
    const M = m.driver.dataRoot;
    for (const f of ['disk.img', 'small.img', 'empty.img']) {
      expect(fs.statSync(`${M}/${f}`).size).toBe(fs.statSync(`${P}/${f}`).size);
      expect(await sha(`${M}/${f}`)).toBe(await sha(`${P}/${f}`));
      // The mirror takes about the primary's room, not the file's size.
      expect(allocated(`${M}/${f}`)).toBeLessThanOrEqual(allocated(`${P}/${f}`) + 256 * KiB);
    }
    expect(allocated(`${M}/disk.img`)).toBeLessThan(2 * MiB);

    // Changed behind the server while it is stopped: holes punched where the mirror holds data,
    // sizes moved (the start's reconciliation copies what differs; the mirror's stale bytes
    // where the primary now has holes must read as zeros).
    await m.close();
    m = undefined;
    execFileSync('fallocate', ['-p', '-o', String(200 * MiB), '-l', String(1 * MiB), `${P}/disk.img`]);
    fs.truncateSync(`${P}/disk.img`, DISK + 1 * MiB);
    execFileSync('fallocate', ['-p', '-o', '0', '-l', String(2 * MiB), `${P}/small.img`]);
    fs.truncateSync(`${P}/small.img`, 4 * MiB);
    writeAt(`${P}/empty.img`, 128 * MiB, Buffer.from('now some data'));
    fs.truncateSync(`${P}/empty.img`, 300 * MiB);
    m = await mountOn(P);
    await m.settle();
    for (const f of ['disk.img', 'small.img', 'empty.img']) {
      expect(await sha(`${M}/${f}`)).toBe(await sha(`${P}/${f}`));
      expect(allocated(`${M}/${f}`)).toBeLessThanOrEqual(allocated(`${P}/${f}`) + 256 * KiB);
    }

    // A split holds disk.img; through the mount a hole is punched into its data and the file is
    // written near its end; the resync copies the tracked ranges, the hole as a hole.
    const s = await m.driver.split({ paths: ['/disk.img'] });
    await run(
      `cd '${t.dirs.mnt}' && fallocate -p -o 0 -l 65536 disk.img && ` +
        `dd if=/dev/urandom of=disk.img bs=4k count=2 seek=${DISK / 4096} conv=notrunc status=none`,
    );
    await m.settle();
    const before = allocated(`${M}/disk.img`);
    await m.driver.resync(s.splitId);
    expect(await sha(`${M}/disk.img`)).toBe(await sha(`${P}/disk.img`));
    expect(allocated(`${M}/disk.img`)).toBeLessThanOrEqual(before + 64 * KiB);
    expect(allocated(`${M}/disk.img`)).toBeLessThanOrEqual(allocated(`${P}/disk.img`) + 256 * KiB);
    expect(m.driver.status().broken).toEqual([]);
    expect((await m.driver.verify()).differences).toEqual([]);
  }, 180_000);
});

// The driver alone (no mount): a new mirror of a primary whose files are all holes (nothing to
// write but sizes), and the start's comparison of files that look unchanged (same size and
// mtime, a newer ctime: changed behind the server), where a hole of the primary must become a
// hole of the mirror, not written zeros, and holes in both are equal without a read.
describe('sparse files, the driver without a mount', () => {
  let on: DriverOnTempDirs | undefined;
  afterEach(async () => {
    await on?.d.dispose().catch(() => undefined);
    await on?.t.cleanup();
    on = undefined;
  });

  it('a volume of images that are holes end to end takes no room in the mirror', async () => {
    on = await driverOnTempDirs(async (P) => {
      for (let i = 0; i < 8; i++) sparseFile(`${P}/hole${i}.img`, (i + 1) * 64 * MiB, []);
    });
    for (let i = 0; i < 8; i++) {
      const f = `${on.M}/hole${i}.img`;
      expect(fs.statSync(f).size).toBe((i + 1) * 64 * MiB);
      expect(allocated(f)).toBe(0);
    }
    expect((await on.d.verify({ content: true })).differences).toEqual([]);
  }, 120_000);

  it('a hole punched behind the server becomes a hole in the mirror, large file and small', async () => {
    on = await driverOnTempDirs(async (P) => {
      sparseFile(`${P}/disk.img`, DISK, [
        [16 * MiB, 8 * MiB],
        [300 * MiB + 5, 3 * MiB],
      ]);
      sparseFile(`${P}/small.img`, 6 * MiB, [[1 * MiB, 4 * MiB]]);
    });
    const { t, P, M } = on;
    for (const f of ['disk.img', 'small.img'])
      expect(allocated(`${M}/${f}`)).toBeGreaterThanOrEqual(allocated(`${P}/${f}`) - 64 * KiB);
    await on.d.dispose();

    // Behind the server: most of the data punched out, the same size, the mtime put back.
    for (const [f, off, len] of [
      ['disk.img', 16 * MiB, 8 * MiB],
      ['disk.img', 300 * MiB, 2 * MiB],
      ['small.img', 1 * MiB, 3 * MiB],
    ] as const) {
      const st = fs.statSync(`${P}/${f}`);
      execFileSync('fallocate', ['-p', '-o', String(off), '-l', String(len), `${P}/${f}`]);
      fs.utimesSync(`${P}/${f}`, st.atime, st.mtime);
    }
    on.d = await openDriver({ primary: P, mirror: t.dirs.mirror!, stateDir: t.dirs.state! });
    for (const f of ['disk.img', 'small.img']) {
      expect(fs.statSync(`${M}/${f}`).size).toBe(fs.statSync(`${P}/${f}`).size);
      expect(await sha(`${M}/${f}`)).toBe(await sha(`${P}/${f}`));
      // Without the punch the mirror kept the old data's blocks, written over with zeros.
      expect(allocated(`${M}/${f}`)).toBeLessThanOrEqual(allocated(`${P}/${f}`) + 256 * KiB);
    }
    expect((await on.d.verify({ content: true })).differences).toEqual([]);
  }, 120_000);
});
