import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { removeXattr } from '../common/xattrs.js';
import type { Change } from '../fusefs/change-sink.js';
import { zeroRange } from '../posix/fallocate.js';
import { underRoot } from '../posix/long-path.js';
import { mknod } from '../posix/mknod.js';
import { msToNs, setTimesNs } from '../posix/set-times.js';
import { writeAll, writeAllSync } from '../posix/write-all.js';
import { WriteBackScheduler } from '../posix/write-back.js';
import { setXattr } from '../posix/xattr.js';

const FD_CACHE = 128;

/**
 * Mirror writes this small (the write-back cache's runs of small application writes) are written
 * synchronously in their turn: a pwrite of a few KiB into the page cache costs the JS thread less
 * than handing it to libuv's pool (the wake of a pool thread, then the completion's wake of this
 * one: each a futex and an eventfd on this machine's vCPUs), and the turn, which every later
 * change waits for, ends at once. Larger writes (the large writes beside the primary, 128 KiB and
 * up, and the cache's write-back runs) are synchronous too while the mirror takes them at
 * page-cache speed (ASYNC_WRITE_NS_PER_MIB); the primary's `pwrite` of a large write beside the
 * primary already runs in the pool when its turn comes, so the two copies still overlap.
 */
export const SYNC_WRITE_BYTES = 64 * 1024;

/**
 * Writes this large (the FUSE layer's large-write threshold, and the cache's write-back runs)
 * start their write-back to the mirror's disk at once (sync_file_range WRITE): the mirror holds
 * a second copy of every byte, and left to the kernel's write-back the fsync that follows a
 * large sequential write had to write both copies then (docs/architecture.md, "The mirror's
 * write-back starts with the write").
 */
export const EARLY_WRITEBACK_BYTES = 128 * 1024;

/**
 * A mirror whose synchronous writes larger than SYNC_WRITE_BYTES took longer than this per MiB,
 * in the running mean (about the last eight), writes them in libuv's pool: a mirror disk whose
 * dirty pages throttle their writer, or a slow filesystem, then waits there and not on the JS
 * thread, which serves every request of the mount. Below it (a copy into the page cache: 0.2–0.4
 * ms per MiB here) the synchronous write costs less than the pool trip: the server's CPU per MiB
 * of `dd bs=1M conv=fsync` with the mirror on the primary's disk fell from 1.93 to 1.00 ms and
 * the rate rose 22% (docs/benchmarks.md, "Large mirror writes on the JS thread"). Every
 * SAMPLE_EVERY-th large write stays synchronous to keep the measure current (PoolSwitch).
 * TWINFS_MIRROR_POOL_WRITE_US (µs per MiB) sets it; 0: every large write in the pool, as before.
 */
export const ASYNC_WRITE_NS_PER_MIB = 4_000_000;

/**
 * A mirror whose synchronous create (open O_CREAT|O_EXCL) took longer than this, in the running
 * mean, creates in libuv's pool: there the open's wait for the disk is no longer the JS thread's.
 * Below it, a pool trip's two thread wakes cost more than the open. Every SAMPLE_EVERY-th
 * create stays synchronous to keep the measure current (a disk that got fast again).
 * TWINFS_MIRROR_POOL_CREATE_US sets it (0: every create in the pool; for the tests of that path
 * on a fast disk, and the benchmark's A/B).
 */
export const ASYNC_CREATE_NS = 100_000;

/** While a PoolSwitch sends calls to the pool, every this-many-th one is measured on the JS thread. */
const SAMPLE_EVERY = 32;

/**
 * Whether one kind of mirror call runs on the JS thread or in libuv's pool: on the JS thread
 * while the running mean of its measured cost (about the last eight) is below the bound; in the
 * pool above it, every SAMPLE_EVERY-th call on the JS thread again to keep the mean current (a
 * disk that got fast again). A bound of 0: always the pool. Counts the calls each way.
 */
class PoolSwitch {
  private readonly boundNs: number;
  private meanNs = 0;
  private sinceSample = 0;
  sync = 0;
  pool = 0;

  /** boundNs: from the environment variable `env` (µs) where set, else the default. */
  constructor(env: string, defaultNs: number) {
    const us = process.env[env];
    this.boundNs =
      us !== undefined && us !== '' && Number.isFinite(Number(us)) ? Number(us) * 1000 : defaultNs;
  }

  inPool(): boolean {
    if (this.boundNs === 0) return this.toPool();
    if (this.meanNs < this.boundNs) return this.toSync();
    if (++this.sinceSample < SAMPLE_EVERY) return this.toPool();
    this.sinceSample = 0;
    return this.toSync();
  }

  /** The cost of a call made on the JS thread: one that waited for the CPU does not switch. */
  note(ns: number): void {
    this.meanNs += (ns - this.meanNs) / 8;
  }

  private toPool(): boolean {
    this.pool++;
    return true;
  }

  private toSync(): boolean {
    this.sync++;
    return false;
  }
}

/**
 * Applies changes to the mirror's data directory, the way the primary saw them. Keeps a small
 * cache of open descriptors for files being written, closed on rename/unlink of their path.
 */
export class MirrorWriter {
  private readonly fds = new Map<string, number>();
  /** Link counts of the cached descriptors' inodes, read when they were opened. */
  private readonly nlinks = new Map<string, number>();
  /**
   * Early write-backs (EARLY_WRITEBACK_BYTES): one at a time for the whole mirror, outside the
   * change's turn: the turn does not wait for it, and it takes one thread of libuv's pool at
   * most (the primary's and the mirror's writes keep the others, however many files are
   * written). A descriptor is closed only once its running write-back settled (close).
   */
  private readonly writeBacks = new WriteBackScheduler('global');
  /** Creates whose open runs in the pool now, by path: marked when forget closes the path. */
  private readonly creating = new Map<string, { forgotten: boolean }>();
  /** The create's open (ns, see ASYNC_CREATE_NS). */
  private readonly creates = new PoolSwitch('TWINFS_MIRROR_POOL_CREATE_US', ASYNC_CREATE_NS);
  /** Writes larger than SYNC_WRITE_BYTES (ns per MiB, see ASYNC_WRITE_NS_PER_MIB). */
  private readonly largeWrites = new PoolSwitch('TWINFS_MIRROR_POOL_WRITE_US', ASYNC_WRITE_NS_PER_MIB);

  constructor(private readonly dataRoot: string) {}

  /** Creates whose open ran in the pool, since the start. */
  get poolCreates(): number {
    return this.creates.pool;
  }

  /** Writes larger than SYNC_WRITE_BYTES made on the JS thread / in the pool, since the start. */
  get syncLargeWrites(): number {
    return this.largeWrites.sync;
  }

  get poolWrites(): number {
    return this.largeWrites.pool;
  }

  backing(volumePath: string): string {
    return volumePath === '/' ? this.dataRoot : this.dataRoot + volumePath;
  }

  /**
   * Applies one change. Paths whose full mirror path is PATH_MAX or longer are reached through
   * a descriptor of their parent directory (src/posix/long-path.ts), as on the primary.
   */
  async apply(c: Change): Promise<void> {
    const paths = c.op === 'link' || c.op === 'rename' ? [c.path, c.from] : [c.path];
    return underRoot(this.dataRoot, paths, (p, from) => this.applyAt(c, p!, from!));
  }

  private async applyAt(c: Change, p: string, from: string): Promise<void> {
    switch (c.op) {
      case 'write': {
        const fd = this.fd(c.path);
        if (c.data.length <= SYNC_WRITE_BYTES) writeAllSync(fd, c.data, c.offset);
        else if (this.largeWrites.inPool()) await writeAll(fd, c.data, c.offset);
        else {
          const t0 = process.hrtime.bigint();
          writeAllSync(fd, c.data, c.offset);
          this.largeWrites.note((Number(process.hrtime.bigint() - t0) * 1048576) / c.data.length);
        }
        if (c.data.length >= EARLY_WRITEBACK_BYTES) this.writeBacks.written(fd, c.offset, c.data.length);
        return;
      }
      case 'zero':
        // A hole where the mirror's filesystem has them, zeros written where not.
        await zeroRange(this.fd(c.path), c.offset, c.length);
        return;
      case 'truncate': {
        const fd = this.fd(c.path);
        await new Promise<void>((res, rej) => fs.ftruncate(fd, c.size, (e) => (e ? rej(e) : res())));
        return;
      }
      case 'create': {
        // The primary made a new, empty file. A stale one in the mirror (left by a rename that a
        // split held back, or a crash) must not lend it old bytes, nor lose its own: it may be
        // another name of a file that lives on, so it is unlinked, not truncated.
        // Synchronous, as the primary's create is, while that is cheap: one JS step of a few
        // syscalls costs the server far less than a trip through the libuv pool, and the
        // descriptor is kept for the file's first write-back, which comes next (it needed an
        // open and an fstat of its own). But the open's inode allocation is the disk's: ~20 µs
        // on tmpfs, ~300 µs on an ext4 /tmp (11.5% of a mirrored create run's JS thread in a
        // --cpu-prof, issue 12), and the JS thread answers the next file's WRITE only after it.
        // Where the measured open is slow (ASYNC_CREATE_NS) it goes to the pool; the turn
        // awaits it, so no later change runs before it, as for a large write.
        this.forget(c.path, false);
        const flags = fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY;
        let fd: number;
        // Forgotten while the pool's open ran (a resync or reconcile closing the path's
        // descriptors): the file is made whole (owner, mode) as after a synchronous create, and
        // its descriptor closed as that forget would have closed it.
        let forgotten = false;
        if (this.creates.inPool()) {
          const pending = { forgotten: false };
          this.creating.set(c.path, pending);
          try {
            fd = await openNew(p, flags, c.mode & 0o7777);
          } finally {
            this.creating.delete(c.path);
          }
          forgotten = pending.forgotten;
        } else {
          const t0 = process.hrtime.bigint();
          fd = openNewSync(p, flags, c.mode & 0o7777);
          this.creates.note(Number(process.hrtime.bigint() - t0));
        }
        try {
          // What open did not give already: an owner other than the server's (or the parent's
          // group), bits the umask took. chown before chmod: chown clears set-id bits.
          const st = fs.fstatSync(fd);
          if (st.uid !== c.uid || st.gid !== c.gid) fs.fchownSync(fd, c.uid, c.gid);
          if (st.uid !== c.uid || st.gid !== c.gid || (st.mode & 0o7777) !== (c.mode & 0o7777))
            fs.fchmodSync(fd, c.mode & 0o7777);
        } catch (e) {
          fs.closeSync(fd);
          throw e;
        }
        if (forgotten) this.close(fd);
        else this.keep(c.path, fd, 1);
        return;
      }
      // The namespace and metadata changes below are synchronous too (see create): each is one to
      // three syscalls that touch no data, and every change of every file waits in the one queue
      // for the turns before it, so a trip through the libuv pool per syscall (0.1–0.5 ms each on
      // a loaded machine, docs/benchmarks.md) made the queue, not the disk, what a mirrored fsync
      // or write-back waited for. The order of the changes is the queue's, as before.
      case 'mkdir':
        try {
          fs.mkdirSync(p, c.mode & 0o7777);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
        fs.lchownSync(p, c.uid, c.gid);
        fs.chmodSync(p, c.mode & 0o7777);
        return;
      case 'mknod':
        await mknod(p, c.mode, c.dev);
        await fsp.lchown(p, c.uid, c.gid);
        await fsp.chmod(p, c.mode & 0o7777);
        setNewTimes(p, c);
        return;
      case 'symlink':
        fs.symlinkSync(c.target, p);
        fs.lchownSync(p, c.uid, c.gid);
        setNewTimes(p, c);
        return;
      case 'link':
        // The source's cached link count is stale from now on.
        this.forget(c.from, false);
        try {
          fs.linkSync(from, p);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          // A stale entry (the primary's name was free): the new name must share the inode.
          this.forget(c.path, false);
          await fsp.rm(p, { recursive: true, force: true });
          await fsp.link(from, p);
        }
        return;
      case 'rename':
        this.forget(c.from, true);
        this.forget(c.path, true);
        fs.renameSync(from, p);
        // rename(2) of one name of a file onto another does nothing, and both names stay. The
        // primary never reports such a rename (volume-ops.ts), so its source name is gone there;
        // in the mirror the target can already be a link of the source's file: a comparison ran
        // ahead of the queue (it reads the primary, where this rename had happened) and linked
        // the new name to the file's other names. The source name would stay in the mirror, and
        // in every split copy, until a comparison removed it (stress seed 4103). One lstat, of a
        // name that is normally gone.
        if (c.from !== c.path) {
          const left = fs.lstatSync(from, { throwIfNoEntry: false });
          if (left && !left.isDirectory()) {
            const now = fs.lstatSync(p, { throwIfNoEntry: false });
            if (now && now.ino === left.ino && now.dev === left.dev) fs.unlinkSync(from);
          }
        }
        return;
      case 'unlink':
        // Synchronous as the create above: one syscall, not a trip through the libuv pool.
        this.forget(c.path, false);
        fs.unlinkSync(p);
        return;
      case 'rmdir':
        this.forget(c.path, true);
        fs.rmdirSync(p);
        return;
      case 'chmod':
        fs.chmodSync(p, c.mode);
        return;
      case 'chown':
        fs.lchownSync(p, c.uid, c.gid);
        return;
      case 'utimens': {
        // To the ns when the change has them (what the primary got), else from the ms.
        const ns = (exact: string | null | undefined, ms: number | null) =>
          exact != null ? BigInt(exact) : ms === null ? null : msToNs(ms);
        setTimesNs(p, ns(c.atimeNs, c.atime), ns(c.mtimeNs, c.mtime));
        return;
      }
      case 'setxattr':
        setXattr(p, c.name, c.value);
        return;
      case 'removexattr':
        // Already gone is the state wanted: a resync or heal may have copied the primary after
        // this removal, before the change reached the queue.
        removeXattr(p, c.name);
        return;
      case 'fsync': {
        const fd = this.fds.get(c.path);
        if (fd !== undefined)
          await new Promise<void>((res, rej) =>
            (c.datasync ? fs.fdatasync : fs.fsync)(fd, (e) => (e ? rej(e) : res())),
          );
        else {
          const fh = await fsp.open(p, 'r');
          try {
            await (c.datasync ? fh.datasync() : fh.sync());
          } finally {
            await fh.close();
          }
        }
        return;
      }
    }
  }

  /** Early write-backs the mirror's file system refused (see EARLY_WRITEBACK_BYTES): a hint lost. */
  get writeBackErrors(): number {
    return this.writeBacks.counts.refused;
  }

  /** Closes fd, once its early write-back (if one runs) settled. */
  private close(fd: number): void {
    const running = this.writeBacks.forget(fd);
    if (running) void running.finally(() => fs.close(fd, () => undefined));
    else {
      // At once, as the opens are (fd): a close is no trip to the disk, and through the pool it
      // cost two thread wakes for every create, unlink and rename of a file the writer held open.
      try {
        fs.closeSync(fd);
      } catch {
        // As before: nothing to do about a failed close.
      }
    }
  }

  /** Closes cached descriptors of path (and of everything under it when it may be a directory). */
  forget(path: string, subtree: boolean): void {
    if (this.creating.size > 0)
      for (const [p, pending] of this.creating)
        if (p === path || (subtree && p.startsWith(path + '/'))) pending.forgotten = true;
    if (!subtree) {
      // One name: a map look-up (this runs for every create, link and unlink).
      const fd = this.fds.get(path);
      if (fd === undefined) return;
      this.fds.delete(path);
      this.nlinks.delete(path);
      this.close(fd);
      return;
    }
    for (const [p, fd] of this.fds) {
      if (p === path || p.startsWith(path + '/')) {
        this.fds.delete(p);
        this.nlinks.delete(p);
        this.close(fd);
      }
    }
  }

  /** The link count of path's inode when its cached descriptor was opened (undefined: none open). */
  linkCount(path: string): number | undefined {
    return this.nlinks.get(path);
  }

  closeAll(): void {
    for (const fd of this.fds.values()) this.close(fd);
    this.fds.clear();
    this.nlinks.clear();
  }

  /**
   * path's cached descriptor, else opened now: synchronously (an open and an fstat, no data
   * touched), as the changes in applyAt are, instead of two trips through the libuv pool.
   */
  private fd(path: string): number {
    const cached = this.fds.get(path);
    if (cached !== undefined) {
      // Refresh LRU position.
      this.fds.delete(path);
      this.fds.set(path, cached);
      return cached;
    }
    // Inside underRoot: a long path's parent descriptor stays open until the open is done.
    const fd = underRoot(this.dataRoot, [path], (b) => fs.openSync(b, fs.constants.O_WRONLY));
    let nlink = 1;
    try {
      nlink = fs.fstatSync(fd).nlink;
    } catch {
      // As before: unknown, taken as one name.
    }
    this.keep(path, fd, nlink);
    return fd;
  }

  /** Caches fd as path's descriptor (nlink: its inode's link count now), the oldest out. */
  private keep(path: string, fd: number, nlink: number): void {
    this.fds.set(path, fd);
    this.nlinks.set(path, nlink);
    if (this.fds.size > FD_CACHE) {
      const [oldPath, oldFd] = this.fds.entries().next().value as [string, number];
      this.fds.delete(oldPath);
      this.nlinks.delete(oldPath);
      this.close(oldFd);
    }
  }
}

/**
 * A new file: a stale entry in its place (EEXIST: left by a rename a split held back, or a crash)
 * is unlinked and the open tried again. openNew is the same in one trip through the pool.
 */
function openNewSync(p: string, flags: number, mode: number): number {
  try {
    return fs.openSync(p, flags, mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    fs.unlinkSync(p);
    return fs.openSync(p, flags, mode);
  }
}

async function openNew(p: string, flags: number, mode: number): Promise<number> {
  const open = () =>
    new Promise<number>((res, rej) => fs.open(p, flags, mode, (e, fd) => (e ? rej(e) : res(fd))));
  try {
    return await open();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    fs.unlinkSync(p);
    return open();
  }
}

/**
 * A new symlink's or device node's times as the primary made them, when its change has them:
 * nothing but a utimens (which carries its own) moves them later, so the copy is exact at once
 * and no later read of the primary by path is needed (by then the name may be another entry's:
 * stress seed 4 in CI, 2026-12-05, a symlink renamed away and another made under its name
 * before the path read gave the first one the second one's mtime, 8 ms off).
 */
function setNewTimes(p: string, c: { atimeNs?: string; mtimeNs?: string }): void {
  if (c.atimeNs !== undefined && c.mtimeNs !== undefined) setTimesNs(p, BigInt(c.atimeNs), BigInt(c.mtimeNs));
}
