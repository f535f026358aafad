import * as fs from 'node:fs';

import { Mutex } from '../common/async.js';
import { Emitter } from '../common/event.js';
import { FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate } from '../posix/fallocate.js';
import { msToNs, nsToMs, setFdTimesNs } from '../posix/set-times.js';
import { WriteBackScheduler } from '../posix/write-back.js';
import { type ChangeSink, syncAlongside } from './change-sink.js';
import { errnoError } from './errno.js';
import { type Extent, ExtentMap, overlay } from './extent-map.js';
import { ReadAheadPool, ReadAheadState } from './read-ahead.js';
import type { SpaceAccount } from './space-account.js';
import type { UnwrittenFile } from './writeback-spill.js';

/**
 * lastWriteAt once utimens set the mtime after the last write (FileNode.setMtimeNs): earlier
 * than any time a file can have (as int64 ns, about the year 1678). getattr (statOf,
 * native-attrs.h) shows a positive lastWriteAt as the mtime, whatever the primary's, and
 * otherwise the later of the two: here the primary's, times before 1970 included.
 */
export const TIMES_SET_MS = -9_200_000_000_000;

/**
 * One open (or still dirty) regular file, keyed by inode so every handle and every hard link
 * of it shares the same dirty data. The fd is the cache's own, opened read-write when
 * possible; it follows the inode across renames.
 */
export class FileNode {
  /** Current volume path (updated on rename); used for change reports and the write gate. */
  path: string;
  refs = 0;
  readonly dirty = new ExtentMap();
  /** Extents being written to the primary right now; reads overlay them. */
  flushing: Extent[] | null = null;
  readonly lock = new Mutex();
  firstDirtyAt = 0;
  /** Time of the last write into the cache (ms), reported as mtime until flushed. */
  lastWriteAt = 0;
  /**
   * An mtime set by utimens while data was cached, with no write since (lastWriteAt is then
   * TIMES_SET_MS): already on the primary, and put back there to the ns after the write-back
   * moved it.
   */
  setMtimeNs: bigint | null = null;
  /** A write-back failure not yet reported to the application. */
  error: NodeJS.ErrnoException | null = null;
  retryAt = 0;
  /** Unlinked while dirty: its data has nowhere to go and is dropped. */
  dead = false;
  /**
   * Its last name went (unlinked or renamed over) while it was still open: what is written
   * through the open handles goes to the primary's nameless inode and is not reported to the
   * sink. path names another file now: a report under it would change that file in the mirror.
   */
  nameless = false;
  /** The primary file's size as far as the cache knows (space beyond it must be reserved). */
  primarySize = 0;
  /** Bytes of primary space reserved for this file's dirty data (SpaceAccount). */
  reserved = 0;
  readonly readAhead = new ReadAheadState();

  /** Descriptors the node had before an upgrade: open until the node closes (reads may run on them). */
  readonly retiredFds: number[] = [];

  constructor(
    readonly ino: number,
    path: string,
    /** The descriptor reads, write-backs and syncs use (replaced only by upgrade). */
    public fd: number,
    public writable: boolean,
  ) {
    this.path = path;
  }

  /**
   * Takes a read-write descriptor of the same file in place of a read-only one, which wrote
   * nothing (VolumeOps.nativeOpened): the old one stays open until the node closes, as a read
   * started on it may still be running.
   */
  upgrade(fd: number): void {
    if (this.writable) throw new Error(`upgrade of a writable node (${this.path})`);
    this.retiredFds.push(this.fd);
    this.fd = fd;
    this.writable = true;
  }

  /** Logical end of the file as far as cached data goes (0 when clean). */
  get cachedEnd(): number {
    let end = this.dirty.end;
    if (this.flushing) for (const e of this.flushing) end = Math.max(end, e.off + e.len);
    return end;
  }

  get isDirty(): boolean {
    return !this.dirty.isEmpty || this.flushing !== null;
  }

  /** Bytes held in the cache and not yet on the primary (dirty and being written back). */
  get cachedBytes(): number {
    let bytes = this.dirty.size;
    for (const e of this.flushing ?? []) bytes += e.len;
    return bytes;
  }

  /** The file's content changed (or is about to): read-ahead windows of it are stale. */
  contentChanged(): void {
    this.readAhead.gen++;
  }
}

export interface WritebackCacheOptions {
  /** Dirty-data limit in bytes; writers wait (never fail) beyond it. Default 64 MiB. */
  limitBytes?: number;
  /** Dirty data older than this is flushed. Default 3000 ms. */
  writebackMs?: number;
  /** Background flushing starts above this fraction of the limit. Default 0.5. */
  highWater?: number;
  /** Files flushed in parallel by the background flusher. Default 4. */
  flushConcurrency?: number;
  /**
   * Above this many cached files (each holds a descriptor), closed dirty files are written back
   * early so they can be closed. Default 1024.
   */
  maxNodes?: number;
  /** Bypass the cache: every write goes to the primary before it is acknowledged. */
  writeThrough?: boolean;
  sink: ChangeSink;
  /**
   * Reserve primary space for accepted writes: a write the primary could not take fails with
   * ENOSPC at once instead of being acknowledged (space-account.ts). Default: none.
   */
  space?: SpaceAccount;
  /** Told of every change of what a getattr overlays from the cache (see CachedAttributes). */
  attributes?: CachedAttributes;
  /** Injected for tests. */
  now?: () => number;
  /**
   * Injected for tests: awaited inside truncate after the cache dropped what the truncate cuts
   * and before the primary's ftruncate (orders a read into that window, see truncate).
   */
  beforePrimaryTruncate?: (node: FileNode) => Promise<void>;
}

/**
 * Where the cache keeps a copy of what getattr overlays on the primary's attributes while a
 * file has data the primary does not (the libfuse3 build answers getattr natively from it:
 * native-attrs.h). set is called before a write that adds cached data is acknowledged;
 * onlyMore says that nothing reached the primary since the last call for this inode (it comes
 * from a WRITE). set and clear return whether the kernel may hold attributes of the inode taken
 * since its last WRITE (false: the write-back that follows changes nothing the kernel holds;
 * undefined counts as true).
 */
export interface CachedAttributes {
  set(ino: number, end: number, bytes: number, lastWriteMs: number, onlyMore: boolean): boolean | undefined;
  clear(ino: number): boolean | undefined;
  /** Whether any file has a write-back error not yet reported (close(2) must then ask JS). */
  errorsPending(pending: boolean): void;
}

export interface CacheStats {
  dirtyBytes: number;
  limitBytes: number;
  dirtyFiles: number;
  openFiles: number;
  flushedBytes: number;
  flushes: number;
  throttledWrites: number;
  writeErrors: number;
  /** Reads answered from read-ahead windows (hits), windows filled (prefetches: ahead of the reader), reads done the slow way. */
  readAhead: { hits: number; fills: number; prefetches: number; direct: number; windows: number };
}

/** The default dirty-data limit. */
export const DEFAULT_LIMIT_BYTES = 64 * 1024 * 1024;
const MAX_IOV = 1024;
/** A file with this much dirty data is written back at once (write-behind). */
const EARLY_FLUSH_BYTES = 4 * 1024 * 1024;

/**
 * The write-back cache: writes are copied into per-file extent maps and acknowledged; a
 * flusher writes them to the primary (on fsync, after writebackMs, above the high-water mark,
 * before operations that need it, and on dispose) and reports every written range to the sink.
 */
export class WritebackCache {
  readonly limitBytes: number;
  readonly writebackMs: number;
  readonly writeThrough: boolean;
  private readonly highWaterBytes: number;
  private readonly flushConcurrency: number;
  private readonly maxNodes: number;
  private readonly sink: ChangeSink;
  private readonly space: SpaceAccount | undefined;
  private readonly now: () => number;
  private readonly beforePrimaryTruncate: ((node: FileNode) => Promise<void>) | undefined;
  private readonly attributes: CachedAttributes | undefined;
  private readonly nodes = new Map<number, FileNode>();
  /** Nodes with dirty data, in the order it became dirty (see dirtiedAt). */
  private readonly dirtyOrder = new Set<FileNode>();
  /** Nodes with a write-back error not yet reported (see CachedAttributes.errorsPending). */
  private readonly erred = new Set<FileNode>();
  private readonly readAhead = new ReadAheadPool();
  /**
   * The primary's early write-back of large direct writes (VolumeOps.writeBack), one at a time
   * per file. Here because the cache owns the descriptors: each is closed only once its running
   * write-back settled (maybeClose, dispose).
   */
  readonly earlyWriteBacks = new WriteBackScheduler('per-file');
  private dirtyBytes = 0;
  private activeFlushes = 0;
  private roomWaiters: Array<{ need: number; resolve: () => void }> = [];
  private timer: NodeJS.Timeout | null = null;
  private disposed = false;
  private readonly stats = { flushedBytes: 0, flushes: 0, throttledWrites: 0, writeErrors: 0 };
  private readonly _onDidFailWriteback = new Emitter<{
    path: string;
    ino: number;
    error: NodeJS.ErrnoException;
  }>();
  readonly onDidFailWriteback = this._onDidFailWriteback.event;
  private readonly _onWillWriteBack = new Emitter<{ ino: number; fd: number }>();
  /**
   * Cached data of a file is about to be written back (fired synchronously, before anything of
   * it reaches the primary, while getattr still answers with all of it cached). fd: the cache's
   * descriptor of the file, valid during the call.
   */
  readonly onWillWriteBack = this._onWillWriteBack.event;
  private readonly _onDidWriteBack = new Emitter<{
    path: string;
    ino: number;
    fd: number;
    kernelMayHold: boolean;
  }>();
  /**
   * Cached data of a file reached the primary (its ctime and allocation moved). kernelMayHold:
   * the kernel may hold attributes of it taken since its last WRITE (CachedAttributes); when
   * false, the kernel inode of its name already lacks size, times and blocks. fd: the cache's
   * descriptor of the file, valid during the call.
   */
  readonly onDidWriteBack = this._onDidWriteBack.event;

  constructor(opts: WritebackCacheOptions) {
    this.limitBytes = opts.limitBytes ?? DEFAULT_LIMIT_BYTES;
    this.writebackMs = opts.writebackMs ?? 3000;
    this.highWaterBytes = Math.floor(this.limitBytes * (opts.highWater ?? 0.5));
    this.flushConcurrency = opts.flushConcurrency ?? 4;
    this.maxNodes = opts.maxNodes ?? 1024;
    this.writeThrough = opts.writeThrough ?? false;
    this.sink = opts.sink;
    this.space = opts.space;
    this.now = opts.now ?? Date.now;
    this.beforePrimaryTruncate = opts.beforePrimaryTruncate;
    this.attributes = opts.attributes;
    if (!this.writeThrough) {
      const period = Math.max(50, Math.min(1000, Math.floor(this.writebackMs / 2)));
      this.timer = setInterval(() => this.tick(), period);
      this.timer.unref();
    }
  }

  getStats(): CacheStats {
    let dirtyFiles = 0;
    let openFiles = 0;
    for (const n of this.nodes.values()) {
      if (n.isDirty) dirtyFiles++;
      if (n.refs > 0) openFiles++;
    }
    return {
      dirtyBytes: this.dirtyBytes,
      limitBytes: this.limitBytes,
      dirtyFiles,
      openFiles,
      ...this.stats,
      readAhead: this.readAhead.getStats(),
    };
  }

  get(ino: number): FileNode | undefined {
    return this.nodes.get(ino);
  }

  *allNodes(): IterableIterator<FileNode> {
    yield* this.nodes.values();
  }

  /** Registers a node for an inode the caller has just opened (fd ownership passes to the cache). */
  /** `size`: the file's size from an fstat of fd the caller just made (else fd is fstat'ed). */
  adopt(ino: number, path: string, fd: number, writable: boolean, size?: number): FileNode {
    const existing = this.nodes.get(ino);
    if (existing) {
      closeQuietly(fd);
      existing.refs++;
      existing.path = path;
      existing.nameless = false;
      return existing;
    }
    const node = new FileNode(ino, path, fd, writable);
    if (this.space) node.primarySize = size ?? fs.fstatSync(fd).size;
    node.refs = 1;
    this.nodes.set(ino, node);
    return node;
  }

  /**
   * Bytes a native write put on the primary outside the cache (VolumeOps.nativeWritten): the
   * file's end there. Their space was reserved beforehand (reserveOutside).
   */
  primaryWritten(node: FileNode, off: number, len: number): void {
    node.primarySize = Math.max(node.primarySize, off + len);
  }

  /**
   * The primary's file was truncated to size outside the cache (a native ftruncate of a file
   * whose data the cache holds none of): as truncate's mark, growing makes a hole, not space.
   */
  primaryTruncated(node: FileNode, size: number): void {
    node.primarySize = Math.min(node.primarySize, size);
  }

  /**
   * Reserves n bytes of the primary's free space for writes made outside the cache (native
   * writes), so they cannot take what cached data was promised, when at least `floor` bytes more
   * are free; the count it got (n or 0). undefined: no space account (such writes need no bound).
   */
  reserveOutside(n: number, floor = 0): number | undefined {
    if (!this.space) return undefined;
    // Not once the primary gets near full: there the cache's exact reservations decide.
    if (n <= 0 || this.space.freeBytes < n + floor) return 0;
    return this.space.tryReserve(n) ? n : 0;
  }

  /** Of what reserveOutside gave: bytes written to the primary (landed), and bytes given back. */
  settleOutside(landed: number, unused: number): void {
    this.space?.release(landed + unused, landed);
  }

  /** Drops one reference; a clean, unreferenced node is closed. */
  async unref(node: FileNode): Promise<void> {
    node.refs--;
    await this.maybeClose(node);
  }

  /**
   * Paths of cached nodes change with renames. `from` may be a directory; `fileIno` says it is
   * not (it is that file's inode): then only that file's node can be known by `from`, and the
   * other cached files are not walked (every rename did that, thousands after an untar).
   */
  renamed(from: string, to: string, fileIno?: number): void {
    if (fileIno !== undefined) {
      const n = this.nodes.get(fileIno);
      if (n && n.path === from) n.path = to;
      return;
    }
    for (const n of this.nodes.values()) {
      if (n.path === from) n.path = to;
      else if (n.path.startsWith(from + '/')) n.path = to + n.path.slice(from.length);
    }
  }

  /**
   * Accepts a write. Returns synchronously when there is room (the common case), or a promise
   * when the writer must wait for the flusher. Fails if this file cannot be written back, or
   * (with a SpaceAccount) with ENOSPC when the primary has no room for what it adds.
   */
  write(node: FileNode, off: number, data: Uint8Array): void | Promise<void> {
    if (this.space && !this.reserveFor(node, off, data.length)) {
      // The estimate may be stale (space freed since the last statfs, or data that landed
      // during it counted twice): ask again, then refuse.
      return this.space.refreshSettled().then(() => {
        if (!this.reserveFor(node, off, data.length))
          throw errnoError('ENOSPC', `no space on the primary for ${node.path}`);
        return this.writeReserved(node, off, data);
      });
    }
    return this.writeReserved(node, off, data);
  }

  private writeReserved(node: FileNode, off: number, data: Uint8Array): void | Promise<void> {
    if (this.dirtyBytes + data.length > this.limitBytes && this.dirtyBytes > 0) {
      if (node.error && node.isDirty) return Promise.reject(node.error);
      this.stats.throttledWrites++;
      return this.waitForRoom(data.length).then(() => this.writeReserved(node, off, data));
    }
    this.accept(node, off, data);
  }

  /**
   * Reads through node's fd and overlays cached data. A file with nothing cached is read
   * through the read-ahead windows, often synchronously (a number). Returns bytes read.
   */
  read(node: FileNode, buf: Buffer, len: number, pos: number): number | Promise<number> {
    if (node.isDirty) return this.readOverlaid(node, buf, len, pos);
    return this.readAhead.read(node.fd, node.readAhead, buf, len, pos, () =>
      this.readOverlaid(node, buf, len, pos),
    );
  }

  private async readOverlaid(node: FileNode, buf: Buffer, len: number, pos: number): Promise<number> {
    const before = this.overlaySources(node);
    const { bytesRead } = await readFd(node.fd, buf, len, pos);
    const after = this.overlaySources(node);
    let end = pos + bytesRead;
    const cachedEnd = Math.max(endOf(before), endOf(after));
    if (cachedEnd > end && bytesRead < len) {
      // Cached data extends the file past the primary's EOF: the gap reads as zeros.
      const newEnd = Math.min(pos + len, cachedEnd);
      buf.fill(0, bytesRead, newEnd - pos);
      end = newEnd;
    }
    if (before.length > 0 || after.length > 0) {
      const view = buf.subarray(0, end - pos);
      overlay(view, pos, before);
      overlay(view, pos, after);
    }
    return end - pos;
  }

  /**
   * Writes node's dirty data to the primary and reports it to the sink. With sync, also makes
   * it durable (fdatasync or fsync) and reports an fsync change. Throws the write-back error.
   */
  flush(node: FileNode, opts: { sync?: 'data' | 'full' } = {}): Promise<void> {
    return node.lock.run(async () => {
      await this.flushLocked(node);
      if (opts.sync) {
        // The sink has every write of the file (flushLocked waited for it): its fsync change
        // runs beside the primary's sync, not after it (syncAlongside).
        await syncAlongside(
          opts.sync === 'data' ? fdatasync(node.fd) : fsync(node.fd),
          node.nameless
            ? null
            : this.sink.apply({ op: 'fsync', path: node.path, datasync: opts.sync === 'data' }),
        );
      }
    });
  }

  /** Reports (once) a write-back error recorded by a background flush. */
  takeError(node: FileNode): NodeJS.ErrnoException | null {
    const err = node.error;
    node.error = null;
    this.noteError(node);
    return err;
  }

  /**
   * utimens has just set node's mtime on the primary to mtimeNs. Cached data keeps it: getattr
   * shows the primary's time from now on, and the write-back puts it back to the ns after its
   * writes moved it, so nothing needs writing back first. A write after this moves mtime as
   * usual. Synchronous: no write-back can interleave.
   */
  timesSet(node: FileNode, mtimeNs: bigint): void {
    if (!node.isDirty) return;
    node.lastWriteAt = TIMES_SET_MS;
    node.setMtimeNs = mtimeNs;
    this.noteAttributes(node, false);
  }

  /** Truncates the cached data and the primary file to size, in that order, under the node lock. */
  truncate(node: FileNode, size: number): Promise<void> {
    return node.lock.run(async () => {
      if (!node.nameless) await this.sink.beforeChange?.(node.path);
      node.contentChanged();
      this.release(node.dirty.truncate(size));
      try {
        if (this.beforePrimaryTruncate) await this.beforePrimaryTruncate(node);
        try {
          await ftruncate(node.fd, size);
        } finally {
          // Again once the primary has the new size: a read-ahead window filled while the
          // ftruncate ran (the file clean, so reads fill windows) holds the bytes it cut, under
          // the generation bumped above, and would answer later reads with them.
          node.contentChanged();
        }
        // The truncate's time replaces the last write's (getattr shows it, and the write-back
        // puts it back) and one utimens set with data still cached (timesSet).
        if (node.isDirty) {
          node.setMtimeNs = null;
          node.lastWriteAt = this.now();
        }
      } finally {
        this.noteAttributes(node, false);
      }
      // Growing a file makes a hole, not allocated space: only shrinking lowers the mark.
      this.settleSpace(node, [], Math.min(node.primarySize, size));
      if (!node.nameless) await this.sink.apply({ op: 'truncate', path: node.path, size });
    });
  }

  /**
   * fallocate(2) of node's primary file, under the node lock (mode: FALLOC_SUPPORTED bits, checked
   * by the caller). The file's cached data is written back first: the primary's call alone then
   * decides the bytes and the size, and its mtime is not put back by a later write-back of data
   * written before it (flushLocked sets the last write's time). A range made zero (PUNCH_HOLE,
   * ZERO_RANGE) goes to the sink as a zero change; a size the call changed, as a truncate after
   * it; an mtime the call moved (ext4 moves it in every mode), as a utimens to the ns. Allocation
   * alone (KEEP_SIZE, or inside the file) changes no byte: the mirror keeps the content and times,
   * not the allocation. Read-ahead windows are dropped whatever the
   * mode: one filled at the old end would answer a read past it short, and the kernel takes a
   * short read as the file's end (its size cut there: a mapped page past it is SIGBUS). When the
   * call fails after zeroing a part, the range's bytes on the primary are reported as writes, so
   * the sink never misses what did happen. Throws the call's errno (or the write-back's).
   */
  fallocate(node: FileNode, mode: number, offset: number, len: number): Promise<void> {
    return node.lock.run(async () => {
      const zeroing = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0;
      await this.flushLocked(node);
      const st = fs.fstatSync(node.fd, { bigint: true });
      const before = Number(st.size);
      const report = !node.nameless;
      if (report) await this.sink.beforeChange?.(node.path);
      node.contentChanged();
      let failure: unknown = null;
      try {
        await fallocate(node.fd, mode, offset, len);
      } catch (err) {
        failure = err;
      } finally {
        // Again once the primary has it: a read-ahead window filled meanwhile holds old bytes.
        node.contentChanged();
        this.noteAttributes(node, false);
      }
      const now = fs.fstatSync(node.fd, { bigint: true });
      const after = Number(now.size);
      const end = Math.min(offset + len, before);
      if (report && zeroing && end > offset) {
        if (failure === null)
          await this.sink.apply({ op: 'zero', path: node.path, offset, length: end - offset });
        else await this.reportPrimaryRange(node, offset, end);
      }
      if (report && after !== before) await this.sink.apply({ op: 'truncate', path: node.path, size: after });
      // ext4 moves mtime in every mode, allocation alone included: the sink gets it to the ns.
      if (report && now.mtimeNs !== st.mtimeNs)
        await this.sink.apply({
          op: 'utimens',
          path: node.path,
          atime: null,
          mtime: nsToMs(now.mtimeNs),
          mtimeNs: String(now.mtimeNs),
        });
      this.settleSpace(node, [], Math.max(node.primarySize, after));
      if (failure !== null) throw failure;
    });
  }

  /** The primary's bytes of [from, to) reported as writes (see fallocate). */
  private async reportPrimaryRange(node: FileNode, from: number, to: number): Promise<void> {
    const piece = 1024 * 1024;
    for (let at = from; at < to; at += piece) {
      const buf = Buffer.allocUnsafe(Math.min(piece, to - at));
      const n = fs.readSync(node.fd, buf, 0, buf.length, at);
      if (n === 0) return;
      await this.sink.apply({ op: 'write', path: node.path, offset: at, data: buf.subarray(0, n) });
    }
  }

  /** The file was unlinked and has no other name: drop its cached data. */
  async discard(node: FileNode): Promise<void> {
    await node.lock.run(async () => {
      node.dead = true;
      this.release(node.dirty.takeAll().reduce((s, e) => s + e.len, 0));
      this.noteAttributes(node, false);
      this.space?.release(node.reserved);
      node.reserved = 0;
    });
    await this.maybeClose(node);
  }

  /** Flushes every dirty file (in parallel, bounded). Throws an AggregateError of failures. */
  async flushAll(opts: { sync?: boolean } = {}): Promise<void> {
    const errors: unknown[] = [];
    const nodes = [...this.nodes.values()].filter((n) => n.isDirty || opts.sync);
    // Each held until its turn is over: a node whose last handle is released meanwhile (or
    // whose write-back ends with no handle left) would otherwise be closed before the sync of
    // its descriptor, which then failed with EBADF, or synced whatever file got that number.
    for (const n of nodes) n.refs++;
    let i = 0;
    const worker = async () => {
      while (i < nodes.length) {
        const n = nodes[i++]!;
        try {
          await this.flush(n, opts.sync ? { sync: 'data' } : {});
        } catch (err) {
          errors.push(err);
        } finally {
          await this.unref(n);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.flushConcurrency, nodes.length) }, worker));
    if (errors.length > 0)
      throw new AggregateError(errors, `${errors.length} file(s) could not be written back`);
  }

  /**
   * Takes the cached data that is not on the primary (after a failed write-back) out of the
   * cache, for the spill journal: the cache holds it no more. Each file is taken under its
   * lock, so no write-back of it is running. Unlinked files are left out: their data has
   * nowhere to go.
   */
  async takeUnwritten(): Promise<UnwrittenFile[]> {
    const out: UnwrittenFile[] = [];
    for (const n of [...this.nodes.values()]) {
      // A file with no name left (an unlink reported, its discard still queued) has no path to
      // write its data to at the next start.
      if (n.dead || n.nameless || !n.isDirty) continue;
      await n.lock.run(async () => {
        if (n.dead || n.dirty.isEmpty) return;
        const taken = n.dirty.takeAll();
        this.noteAttributes(n, false);
        this.release(taken.reduce((s, e) => s + e.len, 0));
        this.space?.release(n.reserved);
        n.reserved = 0;
        const extents = taken.map((e) => ({ off: e.off, data: e.buf.subarray(0, e.len) }));
        out.push({
          path: n.path,
          ino: n.ino,
          ...(n.setMtimeNs !== null ? { mtime: 0, mtimeNs: String(n.setMtimeNs) } : { mtime: n.lastWriteAt }),
          extents,
          error: n.error?.code,
        });
        n.error = null;
        this.noteError(n);
        n.firstDirtyAt = 0;
      });
    }
    return out;
  }

  /** Flushes everything and closes every fd. The cache is unusable afterwards. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    if (this.timer) clearInterval(this.timer);
    let failure: unknown;
    try {
      await this.flushAll({ sync: true });
    } catch (err) {
      failure = err;
    }
    await this.earlyWriteBacks.forgetAll();
    for (const n of this.nodes.values()) for (const fd of [n.fd, ...n.retiredFds]) closeQuietly(fd);
    this.nodes.clear();
    this.dirtyOrder.clear();
    for (const w of this.roomWaiters.splice(0)) w.resolve();
    if (failure) throw failure;
  }

  private accept(node: FileNode, off: number, data: Uint8Array): void {
    node.contentChanged();
    const delta = node.dirty.write(off, data);
    this.dirtyBytes += delta;
    const now = this.now();
    if (node.firstDirtyAt === 0) this.dirtiedAt(node, now);
    node.lastWriteAt = now;
    node.setMtimeNs = null;
    this.noteAttributes(node, true);
    if (this.dirtyBytes > this.highWaterBytes) this.kick();
    // Write-behind: a file that has piled up this much is being streamed; its data is best
    // written while still warm in the CPU cache, not copied out cold at the high-water mark.
    else if (
      node.dirty.size >= EARLY_FLUSH_BYTES &&
      node.flushing === null &&
      node.retryAt <= now &&
      this.activeFlushes < this.flushConcurrency &&
      !this.disposed
    )
      this.background(node);
  }

  /** Keeps the copy of a node's cached attributes (options.attributes) in step. */
  private noteAttributes(node: FileNode, onlyMore: boolean): boolean {
    const attrs = this.attributes;
    if (!attrs) return true;
    const held = node.isDirty
      ? attrs.set(node.ino, node.cachedEnd, node.cachedBytes, node.lastWriteAt, onlyMore)
      : attrs.clear(node.ino);
    return held !== false;
  }

  /** Is a write-back error waiting to be reported anywhere? */
  get hasPendingErrors(): boolean {
    return this.erred.size > 0;
  }

  private noteError(node: FileNode): void {
    const had = this.erred.size > 0;
    if (node.error) this.erred.add(node);
    else this.erred.delete(node);
    if (had !== this.erred.size > 0) this.attributes?.errorsPending(!had);
  }

  private overlaySources(node: FileNode): Extent[] {
    const f = node.flushing;
    const d = node.dirty.all();
    if (!f) return d.length ? [...d] : [];
    return d.length ? [...f, ...d] : f;
  }

  private async flushLocked(node: FileNode): Promise<void> {
    if (node.dead || node.dirty.isEmpty) return;
    this._onWillWriteBack.fire({ ino: node.ino, fd: node.fd });
    const taken = node.dirty.takeAll();
    const bytes = taken.reduce((s, e) => s + e.len, 0);
    node.flushing = taken;
    node.contentChanged();
    node.firstDirtyAt = node.dirty.isEmpty ? 0 : node.firstDirtyAt;
    try {
      if (!node.nameless) await this.sink.beforeChange?.(node.path);
      // The sink's copies overlap with the next primary writes; all must finish before the
      // flush counts as done. Reports go out in primary order.
      const reported: Promise<void>[] = [];
      for (const run of runs(taken)) {
        await writeRun(node.fd, run);
        if (!node.nameless)
          for (const e of run)
            reported.push(
              this.sink.apply({
                op: 'write',
                path: node.path,
                offset: e.off,
                data: e.buf.subarray(0, e.len),
              }),
            );
      }
      // The primary's mtime is now the flush time; applications saw the time of their last
      // write (getattr reports it while data is cached), or the one utimens set since, so put
      // that back, and tell the sink.
      const mtime = node.lastWriteAt;
      const setNs = node.setMtimeNs;
      if (setNs !== null) {
        setFdTimesNs(node.fd, null, setNs);
        if (!node.nameless)
          reported.push(
            this.sink.apply({
              op: 'utimens',
              path: node.path,
              atime: null,
              mtime: nsToMs(setNs),
              mtimeNs: String(setNs),
            }),
          );
      } else if (mtime > 0) {
        setFdTimesNs(node.fd, null, msToNs(mtime));
        if (!node.nameless)
          reported.push(this.sink.apply({ op: 'utimens', path: node.path, atime: null, mtime }));
      }
      await Promise.all(reported);
      this.settleSpace(node, taken, node.primarySize);
      this.stats.flushedBytes += bytes;
      this.stats.flushes++;
      node.flushing = null;
      const kernelMayHold = this.noteAttributes(node, false);
      this.release(bytes);
      // After the attributes settled: what the kernel asks once told is the final answer.
      this._onDidWriteBack.fire({ path: node.path, ino: node.ino, fd: node.fd, kernelMayHold });
    } catch (err) {
      // Keep the data: it goes back under anything written since, and stays until it can be
      // written or the file is gone. The error reaches the application on fsync or close.
      node.flushing = null;
      // dirtyBytes still counts the taken bytes and everything written since; merged, the
      // overlap between the two is counted once.
      const before = bytes + node.dirty.size;
      node.dirty.restoreUnder(taken);
      this.noteAttributes(node, false);
      this.release(before - node.dirty.size);
      if (node.firstDirtyAt === 0) this.dirtiedAt(node, this.now());
      node.error = err as NodeJS.ErrnoException;
      this.noteError(node);
      node.retryAt = this.now() + Math.max(200, this.writebackMs);
      this.stats.writeErrors++;
      this._onDidFailWriteback.fire({ path: node.path, ino: node.ino, error: node.error });
      throw err;
    }
  }

  /**
   * Reserves primary space for the bytes of a write at off that are beyond the primary file's
   * end and not already dirty (so reserved). False when the primary does not have them.
   */
  private reserveFor(node: FileNode, off: number, len: number): boolean {
    const start = Math.max(off, node.primarySize);
    const end = off + len;
    if (end <= start) return true;
    let need = end - start;
    if (start < node.dirty.end)
      for (const e of node.dirty.overlapping(start, end - start))
        need -= Math.min(end, e.off + e.len) - Math.max(start, e.off);
    if (need <= 0) return true;
    if (!this.space!.tryReserve(need)) return false;
    node.reserved += need;
    return true;
  }

  /**
   * After taken extents landed (or the file was truncated to mark): the file's end on the
   * primary moved; what is still dirty beyond it keeps its reservation, the rest is given back.
   */
  private settleSpace(node: FileNode, taken: readonly Extent[], mark: number): void {
    if (!this.space) return;
    let landed = 0;
    let end = mark;
    for (const e of taken) {
      const from = Math.max(e.off, mark);
      const to = e.off + e.len;
      if (to > from) landed += to - from;
      end = Math.max(end, to);
    }
    node.primarySize = end;
    let still = 0;
    for (const e of node.dirty.overlapping(end, Number.MAX_SAFE_INTEGER - end))
      still += e.off + e.len - Math.max(end, e.off);
    const keep = Math.min(node.reserved, still);
    this.space.release(node.reserved - keep, landed);
    node.reserved = keep;
  }

  private release(bytes: number): void {
    if (bytes <= 0) return;
    this.dirtyBytes -= bytes;
    if (this.roomWaiters.length === 0) return;
    const still: typeof this.roomWaiters = [];
    for (const w of this.roomWaiters) {
      if (this.dirtyBytes + w.need <= this.limitBytes || this.dirtyBytes === 0) w.resolve();
      else still.push(w);
    }
    this.roomWaiters = still;
  }

  private waitForRoom(need: number): Promise<void> {
    const p = new Promise<void>((resolve) => this.roomWaiters.push({ need, resolve }));
    this.kick();
    return p;
  }

  /** Starts background flushes of the oldest dirty files while above the high-water mark. */
  private kick(): void {
    if (this.disposed) return;
    while (
      this.activeFlushes < this.flushConcurrency &&
      (this.dirtyBytes > this.highWaterBytes ||
        this.roomWaiters.length > 0 ||
        this.nodes.size > this.maxNodes)
    ) {
      const eligible = (n: FileNode) => n.flushing === null && !n.dirty.isEmpty && n.retryAt <= this.now();
      const node =
        (this.nodes.size > this.maxNodes ? this.pickOldest((n) => n.refs === 0 && eligible(n)) : undefined) ??
        this.pickOldest(eligible);
      if (!node) return;
      this.background(node);
    }
  }

  private tick(): void {
    const now = this.now();
    for (const n of this.dirtyOrder) {
      if (this.activeFlushes >= this.flushConcurrency) break;
      if (!this.stillDirty(n)) continue;
      // In the order they became dirty: the rest are younger still.
      if (now - n.firstDirtyAt < this.writebackMs) break;
      if (n.flushing === null && n.retryAt <= now) this.background(n);
    }
    this.kick();
  }

  /**
   * The node's data became dirty at `at` (it held none the primary lacked): it goes to the end
   * of the flusher's queue, which so stays in firstDirtyAt order (tick and pickOldest walk
   * only the dirty files, oldest first, instead of every cached file per flush).
   */
  private dirtiedAt(node: FileNode, at: number): void {
    node.firstDirtyAt = at;
    this.dirtyOrder.delete(node);
    this.dirtyOrder.add(node);
  }

  /**
   * Keeps a queued node that still has data to write back; drops it from the queue if not. A
   * dropped node is marked clean for the queue (firstDirtyAt 0), so that its next cached write
   * queues it again, whatever emptied it: left non-zero (a truncate that cut all its cached data),
   * the file's later writes were never written back in the background, and once they filled the
   * cache every writer waited for room for good (bench/handle-diff.py with --cache-mb 1).
   */
  private stillDirty(n: FileNode): boolean {
    if (!n.dirty.isEmpty && !n.dead && n.firstDirtyAt !== 0 && this.nodes.get(n.ino) === n) return true;
    this.dirtyOrder.delete(n);
    n.firstDirtyAt = 0;
    return false;
  }

  private background(node: FileNode): void {
    this.activeFlushes++;
    // Mark it so kick() does not pick the same node twice before the lock is taken.
    node.retryAt = Number.POSITIVE_INFINITY;
    this.flush(node)
      .then(
        () => {
          node.retryAt = 0;
        },
        () => undefined /* recorded on the node; retryAt set by flushLocked */,
      )
      .finally(() => {
        this.activeFlushes--;
        if (node.retryAt === Number.POSITIVE_INFINITY) node.retryAt = 0;
        void this.maybeClose(node);
        // Keep draining: the next aged file starts as soon as a flush slot is free.
        this.tick();
      });
  }

  /** The oldest dirty node that pred accepts (pred only ever accepts nodes with dirty data). */
  private pickOldest(pred: (n: FileNode) => boolean): FileNode | undefined {
    for (const n of this.dirtyOrder) if (this.stillDirty(n) && pred(n)) return n;
    return undefined;
  }

  private async maybeClose(node: FileNode): Promise<void> {
    if (node.refs > 0 || node.isDirty || this.nodes.get(node.ino) !== node) return;
    this.nodes.delete(node.ino);
    if (this.erred.delete(node) && this.erred.size === 0) this.attributes?.errorsPending(false);
    this.readAhead.drop(node.readAhead);
    // Its early write-back settled first: the descriptor's number must not name another file
    // while sync_file_range runs.
    const running = this.earlyWriteBacks.forget(node.fd);
    if (running) await running;
    await closeFd(node.fd);
    for (const fd of node.retiredFds) await closeFd(fd);
  }
}

function endOf(exts: readonly Extent[]): number {
  let end = 0;
  for (const e of exts) end = Math.max(end, e.off + e.len);
  return end;
}

/** Groups sorted extents into runs of adjacent ones, each written with one writev. */
function* runs(exts: Extent[]): Generator<Extent[]> {
  let run: Extent[] = [];
  for (const e of exts) {
    const last = run[run.length - 1];
    if (last && (last.off + last.len !== e.off || run.length >= MAX_IOV)) {
      yield run;
      run = [];
    }
    run.push(e);
  }
  if (run.length) yield run;
}

function writeRun(fd: number, run: Extent[]): Promise<void> {
  const bufs = run.map((e) => e.buf.subarray(0, e.len));
  const total = run.reduce((s, e) => s + e.len, 0);
  return writevAll(fd, bufs, run[0]!.off, total);
}

async function writevAll(fd: number, bufs: Buffer[], pos: number, total: number): Promise<void> {
  let written = await new Promise<number>((res, rej) =>
    fs.writev(fd, bufs, pos, (err, n) => (err ? rej(err) : res(n))),
  );
  while (written < total) {
    // Short write: continue with what is left (rare; a full disk reports ENOSPC next round).
    const rest = Buffer.concat(bufs).subarray(written);
    const n = await new Promise<number>((res, rej) =>
      fs.write(fd, rest, 0, rest.length, pos + written, (err, w) => (err ? rej(err) : res(w))),
    );
    if (n === 0) throw Object.assign(new Error('short write'), { code: 'EIO', errno: -5 });
    written += n;
  }
}

function readFd(fd: number, buf: Buffer, len: number, pos: number): Promise<{ bytesRead: number }> {
  return new Promise((res, rej) =>
    fs.read(fd, buf, 0, len, pos, (err, bytesRead) => (err ? rej(err) : res({ bytesRead }))),
  );
}

const fdatasync = (fd: number) =>
  new Promise<void>((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res())));
const fsync = (fd: number) => new Promise<void>((res, rej) => fs.fsync(fd, (e) => (e ? rej(e) : res())));
const ftruncate = (fd: number, len: number) =>
  new Promise<void>((res, rej) => fs.ftruncate(fd, len, (e) => (e ? rej(e) : res())));
const closeFd = (fd: number) => new Promise<void>((res) => fs.close(fd, () => res()));
function closeQuietly(fd: number): void {
  fs.close(fd, () => undefined);
}
