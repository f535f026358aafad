import { spawnSync } from 'node:child_process';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mknod, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK } from '../../src/posix/mknod.js';
import { posix } from '../../src/posix/native.js';
import { readdirNoAtime } from '../../src/posix/readdir.js';
import { setTimesNs } from '../../src/posix/set-times.js';
import { startWriteBack } from '../../src/posix/write-back.js';
import { getXattr, listXattrs, readXattrs, removeXattr, setXattr } from '../../src/posix/xattr.js';

/**
 * The project's own addon (native/posix) through its wrappers in src/posix: what Node cannot
 * do — mknod of every node type, times to the ns with UTIME_OMIT and without following a
 * symlink, flock, and xattrs of a path itself — checked against lstat and a second process.
 */
describe('src/posix (native/posix addon)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-posix-'));
  });
  afterAll(() => fsp.rm(dir, { recursive: true, force: true }));

  it('mknod makes fifos, devices and sockets with the exact mode and rdev', async () => {
    const cases: Array<[string, number, number, (s: fs.Stats) => boolean]> = [
      ['fifo', S_IFIFO | 0o640, 0, (s) => s.isFIFO()],
      ['chr', S_IFCHR | 0o600, makedev(1, 3), (s) => s.isCharacterDevice()],
      ['blk', S_IFBLK | 0o660, makedev(259, 70000), (s) => s.isBlockDevice()],
      ['sock', S_IFSOCK | 0o751, 0, (s) => s.isSocket()],
    ];
    const old = process.umask(0o077);
    try {
      for (const [name, mode, dev, is] of cases) {
        const p = path.join(dir, name);
        await mknod(p, mode, dev);
        const st = await fsp.lstat(p);
        expect(is(st), name).toBe(true);
        expect(st.mode & 0o7777, name).toBe(mode & 0o7777);
        if (dev) expect(st.rdev, name).toBe(dev);
      }
    } finally {
      process.umask(old);
    }
    await expect(mknod(path.join(dir, 'fifo'), S_IFIFO | 0o600, 0)).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(mknod(path.join(dir, 'no/such'), S_IFSOCK | 0o600, 0)).rejects.toMatchObject({
      code: 'ENOENT',
    });
  });

  it('sets times to the ns, leaves one alone (UTIME_OMIT), and sets a symlink’s own times', async () => {
    const f = path.join(dir, 'times');
    await fsp.writeFile(f, 'x');
    const a = 1_700_000_000_123_456_789n;
    const m = 1_600_000_000_987_654_321n;
    setTimesNs(f, a, m);
    let st = await fsp.lstat(f, { bigint: true });
    expect([st.atimeNs, st.mtimeNs]).toEqual([a, m]);
    setTimesNs(f, null, m + 1n);
    st = await fsp.lstat(f, { bigint: true });
    expect([st.atimeNs, st.mtimeNs]).toEqual([a, m + 1n]);
    // Before 1970 too (negative ns, tv_nsec kept in range).
    setTimesNs(f, -1_500_000_001n, null);
    expect((await fsp.lstat(f, { bigint: true })).atimeNs).toBe(-1_500_000_001n);
    const l = path.join(dir, 'link');
    await fsp.symlink('times', l);
    setTimesNs(l, 5n, 7_000_000_011n);
    expect((await fsp.lstat(l, { bigint: true })).mtimeNs).toBe(7_000_000_011n);
    expect((await fsp.lstat(f, { bigint: true })).mtimeNs).toBe(m + 1n);
    expect(() => setTimesNs(path.join(dir, 'missing'), 1n, 1n)).toThrow(
      expect.objectContaining({ code: 'ENOENT' }),
    );
  });

  it('readdirNoAtime lists a directory without moving its atime (Node’s readdir moves it)', async () => {
    const sub = path.join(dir, 'listed');
    await fsp.mkdir(sub);
    await fsp.writeFile(path.join(sub, 'one'), '');
    await fsp.mkdir(path.join(sub, 'two'));
    const atime = 1_000_000_000_000_000_001n;
    // Setting times makes ctime newer than atime: relatime moves atime at the next read.
    setTimesNs(sub, atime, 2_000_000_000_000_000_000n);
    expect(readdirNoAtime(sub).sort()).toEqual(['one', 'two']);
    expect((await fsp.lstat(sub, { bigint: true })).atimeNs).toBe(atime);
    await fsp.readdir(sub);
    expect((await fsp.lstat(sub, { bigint: true })).atimeNs).not.toBe(atime);
    expect(() => readdirNoAtime(path.join(sub, 'one'))).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
  });

  it('flock: exclusive, non-blocking, held against another process until the descriptor closes', async () => {
    const f = path.join(dir, 'lock');
    const fd = fs.openSync(f, 'w');
    expect(posix().flock(fd, true, true)).toBe(0);
    const other = () =>
      spawnSync('flock', ['-n', '-x', f, 'true'], { encoding: 'utf8', timeout: 10_000 }).status;
    expect(other()).toBe(1);
    fs.closeSync(fd);
    expect(other()).toBe(0);
  });

  it('xattrs of the path itself: a symlink’s own, binary values, a vanished one is undefined', async () => {
    const f = path.join(dir, 'x');
    await fsp.writeFile(f, '');
    const bin = Buffer.from([0, 1, 2, 255]);
    setXattr(f, 'user.b', bin);
    setXattr(f, 'user.a', Buffer.from('text'));
    expect(listXattrs(f).sort()).toEqual(['user.a', 'user.b']);
    expect(getXattr(f, 'user.b')).toEqual(bin);
    expect([...readXattrs(f).keys()]).toEqual(['user.a', 'user.b']);
    removeXattr(f, 'user.a');
    expect(getXattr(f, 'user.a')).toBeUndefined();
    const l = path.join(dir, 'xl');
    await fsp.symlink('x', l);
    // trusted.* may sit on a symlink (root only); user.* may not. The target is left alone.
    setXattr(l, 'trusted.own', Buffer.from('mine'));
    expect(listXattrs(l)).toEqual(['trusted.own']);
    expect(getXattr(f, 'trusted.own')).toBeUndefined();
    expect(() => setXattr(l, 'user.no', Buffer.from('x'))).toThrow(
      expect.objectContaining({ code: 'EPERM' }),
    );
  });

  it('starts the write-back of a file range in the thread pool, and reports what refused it without throwing', async () => {
    const f = path.join(dir, 'wb');
    const fd = fs.openSync(f, 'w');
    try {
      fs.writeSync(fd, Buffer.alloc(1 << 20, 7), 0, 1 << 20, 0);
      expect(await startWriteBack(fd, 0, 1 << 20)).toBeUndefined();
      expect(fs.readFileSync(f).equals(Buffer.alloc(1 << 20, 7))).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
    // A descriptor that is not open: the hint is lost (EBADF reported), nothing thrown.
    expect(await startWriteBack(999_999, 0, 1 << 20)).toBe(`errno ${os.constants.errno.EBADF}`);
    // A negative range: EINVAL, the same way.
    expect(await startWriteBack(0, -5, 1)).toBe(`errno ${os.constants.errno.EINVAL}`);
  });

  it("aesGcmSealInPlace encrypts where the bytes lie, as Node's cipher does (same ciphertext and tag), and refuses sizes that do not fit", () => {
    for (const n of [0, 1, 15, 16, 17, 4095, 65_536, 65_537, 1_000_003]) {
      const key = randomBytes(32);
      const nonce = randomBytes(12);
      const plain = randomBytes(n);
      // Inside a larger buffer: the bytes around the sealed range stay as they were.
      const mem = Buffer.alloc(n + 16 + 64, 0xa5);
      plain.copy(mem, 32);
      const view = mem.subarray(32, 32 + n + 16);
      expect(posix().aesGcmSealInPlace(key, nonce, view, n), `${n}`).toBe(0);
      const c = createCipheriv('aes-256-gcm', key, nonce);
      const want = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
      expect(view.equals(want), `${n} bytes`).toBe(true);
      expect(
        mem.subarray(0, 32).every((b) => b === 0xa5) && mem.subarray(32 + n + 16).every((b) => b === 0xa5),
      ).toBe(true);
      const d = createDecipheriv('aes-256-gcm', key, nonce);
      d.setAuthTag(view.subarray(n));
      expect(Buffer.concat([d.update(view.subarray(0, n)), d.final()]).equals(plain)).toBe(true);
    }
    const buf = Buffer.alloc(100);
    const key = randomBytes(32);
    const nonce = randomBytes(12);
    // No room for the tag, a short key or nonce, a size that is not a count: nothing written.
    for (const [k, iv, n] of [
      [key, nonce, 85],
      [key.subarray(1), nonce, 10],
      [key, nonce.subarray(1), 10],
      [key, nonce, -1],
      [key, nonce, 1.5],
    ] as const)
      expect(posix().aesGcmSealInPlace(k, iv, buf, n), `${k.length} ${iv.length} ${n}`).toBe(-22);
    expect(buf.every((b) => b === 0)).toBe(true);
  });

  it('fadviseWillNeed starts reading a file into the page cache and returns; a bad descriptor is -EBADF', async () => {
    const file = path.join(dir, 'willneed');
    await fsp.writeFile(file, randomBytes(2 * 1024 * 1024), { flush: true });
    // Its clean pages dropped (dd's nocache: POSIX_FADV_DONTNEED), as on a cold page cache.
    expect(spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0'], { stdio: 'ignore' }).status).toBe(0);
    expect(cached(file)).toBe(0);
    const fd = fs.openSync(file, 'r');
    try {
      expect(posix().fadviseWillNeed(fd, 0, 2 * 1024 * 1024)).toBe(0);
      // The reads it started land without a read(2) of ours (bounded wait: the disk's time).
      const until = Date.now() + 20_000;
      while (cached(file) < 2 * 1024 * 1024 && Date.now() < until)
        await new Promise((r) => setTimeout(r, 20));
      expect(cached(file)).toBe(2 * 1024 * 1024);
    } finally {
      fs.closeSync(fd);
    }
    expect(posix().fadviseWillNeed(123_456, 0, 0)).toBe(-9);
  });

  it('adviseHuge: a large buffer first touched faults once per 2 MiB where THP is on, the bytes unchanged', () => {
    const MiB = 1024 * 1024;
    const thp = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    const mode = /\[(\w+)\]/.exec(thp)?.[1];
    const touch = (b: Buffer) => {
      const before = process.resourceUsage().minorPageFault;
      for (let at = 0; at < b.length; at += 4096) b[at] = 7;
      return process.resourceUsage().minorPageFault - before;
    };
    // Two 32 MiB buffers that no one touched yet: one advised, one not (the control).
    const plain = Buffer.from(new SharedArrayBuffer(32 * MiB));
    const advisedBuf = Buffer.from(new SharedArrayBuffer(32 * MiB));
    const advised = posix().adviseHuge(advisedBuf);
    // The 2 MiB-aligned part: at least 28 MiB of 32, a whole number of 2 MiB.
    expect(advised % (2 * MiB)).toBe(0);
    expect(advised).toBeGreaterThanOrEqual(28 * MiB);
    const plainFaults = touch(plain);
    const hugeFaults = touch(advisedBuf);
    // 32 MiB in 4 KiB pages is 8,192 faults; in 2 MiB pages (the unaligned ends in 4 KiB ones)
    // about 1,040. Debian's default THP mode is `madvise`: the control keeps 4 KiB pages; with
    // `always` it gets huge ones too; with `never` the advice changes nothing.
    if (mode !== 'always') expect(plainFaults).toBeGreaterThan(6000);
    if (mode === 'never') expect(hugeFaults).toBeGreaterThan(6000);
    else expect(hugeFaults).toBeLessThan(4096);
    expect(advisedBuf.every((v, at) => v === (at % 4096 === 0 ? 7 : 0))).toBe(true);
    // Less than 2 MiB aligned: nothing to advise.
    expect(posix().adviseHuge(Buffer.alloc(100))).toBe(0);
  });
});

/** Bytes of a file resident in the page cache (util-linux fincore). */
function cached(file: string): number {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`fincore ${file}: ${r.error?.message ?? r.stderr}`);
  return Number(r.stdout.trim());
}

function makedev(major: number, minor: number): number {
  return (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12);
}
