import * as fs from 'node:fs';
import { HandleNodes } from './handle-nodes.js';

/**
 * Exact kernel caching on the libfuse3 path: the names under which the kernel may hold cached
 * attributes and pages of a file with several names, and the invalidation of those names after
 * every change twinfs makes.
 *
 * High-level libfuse gives the kernel one inode per *name*, so after a change through one name
 * of a hard-linked file the kernel's inodes of its other names still hold the old attributes
 * (nlink, mode, owner, size, times) and pages. With attribute/entry timeouts and a page cache
 * kept across opens, twinfs must drop them: `fuse_invalidate_path` per name, sent by a native
 * helper thread (fuse-native's `invalidatePaths`). The op that made the change is answered
 * only once the kernel has processed them, so no caller can see a stale attribute afterwards.
 *
 * A name with a WRITE in flight is never waited for (issue 12's libfuse3 hang): a write(2) that
 * covers part of a page keeps that page locked until its WRITE is answered, and the kernel's
 * invalidation of that name waits for the lock. Two writers through two names of one file, each
 * WRITE answered only after the other name was invalidated, and the one helper thread sending
 * them in order, were a cycle that hung the mount. So a name with WRITEs in flight (known here
 * from `writeStarted`/`writeDone`) is left out of what a change waits for and invalidated, without
 * waiting, once its last WRITE is answered; a reader through that name may see the old pages
 * until then, which is the same moment its own writer's data lands. A WRITE that reaches the
 * kernel's queue but not yet twinfs cannot be known: any wait is bounded (`WAIT_BOUND_MS`), after
 * which the op is answered and the invalidation still goes out when the page is free
 * (`waitsBounded` counts them; it stays 0 unless such a race happened).
 *
 * Invalidations nobody waits for (a write-back behind the kernel: a single-name file's, or a
 * several-name file's that could record nothing, see linkAttrsModeFromEnv; a name whose WRITEs
 * are answered, a listing) go to a lane of their own (`invalidateBehind`: fuse-native's
 * `invalidate`, a second helper thread). They are the ones most likely to find a page locked:
 * a write-back's invalidation of the name a write(2) is coming through waits in the kernel until
 * that WRITE is answered, and that WRITE waits for the other names' invalidation. On one thread
 * that was a cycle that only the bound broke, the WRITE then answered while the other names
 * still had the old size and pages (cause 2 of the two-name fsx finding, docs/reliability.md).
 *
 * A page write-back (mmap pages) is answered without waiting, as it may be a laundering for an
 * invalidation being sent; the close(2) or fsync that wrote the pages back waits for the other
 * names instead (`pageWrittenBack`). Dirty mmap pages the kernel writes back on its own (a
 * mapping kept open past ~30 s, no close, no msync) have no such point: another name shows
 * them once their invalidation is through, as it shows nothing of them before the write-back.
 *
 * Names are learnt where the kernel learns them: getattr (lookups) and readdirplus, plus link.
 * Only names of files with nlink > 1 are kept (a file with one name has one kernel inode, kept
 * exact by the kernel itself from our replies). Stale entries (a name since renamed away by
 * someone else, an unlinked one) only cost an invalidation that finds nothing.
 */
/**
 * Test only: TWINFS_TEST_INVALIDATION_DELAY_MS=N queues every batch of invalidations N ms late,
 * as a helper thread that is slow to run under load does. Tests use it to hold open, for long
 * enough to act in, the window in which another name of a file still has its old pages (the
 * page write-back test in test/fusefs/kernel-cache.test.ts). 0 (the default): no delay.
 */
export function invalidationDelayFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const ms = Number(env.TWINFS_TEST_INVALIDATION_DELAY_MS ?? 0);
  return Number.isFinite(ms) && ms > 0 ? Math.min(ms, 60_000) : 0;
}

/**
 * Test only: TWINFS_TEST_INVALIDATION_TRACE=FILE appends a line per invalidation to FILE. The
 * native lanes write `queued taken returned lane seq waited result path` (µs since the epoch);
 * this wrapper of the waited batches adds `js queued resolved paths` (resolved: when the op
 * waiting for them could go on, the bound aside). Undefined when not set.
 */
export function invalidationTraceFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): ((paths: string[], w: Promise<void>) => Promise<void>) | undefined {
  const file = env.TWINFS_TEST_INVALIDATION_TRACE;
  if (!file) return undefined;
  const us = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
  return (paths, w) => {
    const queued = us();
    return w.finally(() => fs.appendFileSync(file, `js ${queued} ${us()} ${paths.join(',')}\n`));
  };
}

/**
 * What a cache write-back of a file with several names known does about those names' kernel
 * inodes (TWINFS_WRITEBACK_LINK_ATTRS; docs/reliability.md, the two-name finding's read side):
 *
 * - `record` (the default): nothing is invalidated, and nothing the kernel caches moves. When
 *   the write-back starts, what getattr answers for ctime, mtime and st_blocks is recorded
 *   (`writeBackStarting`), and getattr keeps answering exactly that (`recordedAttrs`, overlaid by
 *   writes cached while it runs) until the next change of the file through twinfs (`changed`,
 *   which invalidates every name anyway, a write after the write-back included; a direct write)
 *   or a ctime on the primary other than the one the write-back left. ctime stays the time of
 *   the last write (as POSIX has it: a write marks ctime), st_blocks the allocation estimated
 *   while the data was cached (an overwrite of a sparse file's allocated blocks counts them
 *   again; docs/architecture.md, "Write-backs of files with several names"). Size, data, mode, owner and nlink do not move at a
 *   write-back. So every name's kernel attributes stay current without an invalidation, which
 *   the kernel would otherwise process while a GETATTR of that name may be in flight: it drops
 *   such a reply (attr_version), and a read or mmap through a name whose size another name moved
 *   then goes on with the old size (a short read, or SIGBUS).
 * - `invalidate` (the old behaviour, for comparison): every name is invalidated without
 *   waiting; the race above stays.
 * - `keep` (diagnostic only): nothing invalidated, nothing recorded: stat through the other
 *   names shows the old ctime and st_blocks until the next change or the attribute timeout.
 */
export type LinkAttrsMode = 'record' | 'invalidate' | 'keep';

export function linkAttrsModeFromEnv(env: NodeJS.ProcessEnv = process.env): LinkAttrsMode {
  const v = env.TWINFS_WRITEBACK_LINK_ATTRS;
  return v === 'invalidate' || v === 'keep' ? v : 'record';
}

/** The attributes a write-back would move, as getattr answered them (VolumeOps.statOf). */
export interface ShownAttrs {
  ctime: bigint;
  mtime: bigint;
  blocks: number;
}

interface RecordedAttrs {
  shown: ShownAttrs;
  /** The primary's ctime the write-back left; null while the write-back runs. */
  primaryCtime: bigint | null;
}

/** The longest an op waits for its invalidations (see the class comment). */
export const WAIT_BOUND_MS = 2000;

export class KernelNames {
  private readonly byIno = new Map<number, Set<string>>();
  /**
   * Open handles' nodes, and those whose name is gone (HandleNodes): their keys are names of
   * the file like the others here (invalidated by handle, see `send`).
   */
  readonly handles = new HandleNodes();
  private readonly byPath = new Map<string, number>();
  private readonly stats = {
    invalidations: 0,
    waits: 0,
    waitsBounded: 0,
    writeBacksUnseen: 0,
    listings: 0,
    /** Write-backs of files with several names that invalidated none and recorded nothing (`keep`). */
    writeBacksOfLinksKept: 0,
    /** Write-backs of files with several names whose shown attributes were recorded (`record`). */
    writeBacksRecorded: 0,
    /** Of those, write-backs of files whose recorded attributes no one had taken: record dropped. */
    writeBacksRecordedUnseen: 0,
    /** Hidden names removed from files with other names: none of those names invalidated (hiddenNameRemoving). */
    hiddenNamesRemoved: 0,
  };
  /** See linkAttrsModeFromEnv. */
  linkAttrs: LinkAttrsMode = linkAttrsModeFromEnv();
  /** Per inode: the attributes getattr keeps answering after a write-back (`record`). */
  private readonly recorded = new Map<number, RecordedAttrs>();
  /** WRITEs in flight per name, and the names to invalidate once their last one is answered. */
  private readonly writing = new Map<string, number>();
  private readonly afterWrites = new Set<string>();
  /** Per inode: the invalidations after its page write-backs not yet processed (pageWrittenBack). */
  private readonly afterPages = new Map<number, Set<Promise<void>>>();

  constructor(
    /** Queues invalidations of these names; resolves once the kernel has processed them. */
    private readonly invalidate: (paths: string[]) => Promise<void>,
    /** True while a change to this file would be held (see deferWhile). */
    private readonly held: (path: string, ino: number) => boolean = () => false,
    /**
     * Called when the first invalidation after a page write-back is queued (true) and when the
     * last one is processed (false): while any is, a close(2) must reach the flush handler
     * (which waits for them) rather than be answered in libfuse's thread.
     */
    private readonly onPageWriteBacks: (pending: boolean) => void = () => undefined,
    /**
     * Queues invalidations nobody waits for, on a lane of their own: never ahead of or behind
     * those `invalidate` queues (see the class comment).
     */
    private readonly invalidateBehind: (paths: string[]) => void = (paths) => void invalidate(paths),
  ) {}

  private readonly deferred = new Map<number, string>();

  /** A name and what the kernel was told about it (getattr, readdirplus). */
  observe(path: string, ino: number, nlink: number, isDir: boolean): void {
    if (!isDir && nlink > 1) {
      this.add(path, ino);
      return;
    }
    if (this.byPath.size > 0 && this.byPath.has(path)) this.remove(path);
  }

  add(path: string, ino: number): void {
    const was = this.byPath.get(path);
    if (was === ino) return;
    if (was !== undefined) this.remove(path);
    this.byPath.set(path, ino);
    let names = this.byIno.get(ino);
    if (!names) {
      names = new Set();
      this.byIno.set(ino, names);
    }
    names.add(path);
  }

  remove(path: string): void {
    const ino = this.byPath.get(path);
    if (ino === undefined) return;
    this.byPath.delete(path);
    const names = this.byIno.get(ino);
    names?.delete(path);
    if (names && names.size === 0) {
      this.byIno.delete(ino);
      this.recorded.delete(ino);
    }
  }

  /** `from` may be a directory: names below it move with it. What `to` named is gone. */
  renamed(from: string, to: string): void {
    if (this.byPath.size === 0) return;
    this.remove(to);
    const moved: Array<[string, number]> = [];
    for (const [p, ino] of this.byPath) {
      if (p === from || p.startsWith(`${from}/`)) moved.push([p, ino]);
      else if (p.startsWith(`${to}/`)) moved.push([p, -1]);
    }
    for (const [p, ino] of moved) {
      this.remove(p);
      if (ino >= 0) this.add(to + p.slice(from.length), ino);
    }
  }

  /** Does any name of these inodes hold cached state? (Cheap check before stat calls.) */
  get isEmpty(): boolean {
    return this.byPath.size === 0 && !this.handles.anyGone;
  }

  /**
   * The name a request came through as tracked here: its path, or the key of its handle's node
   * when that has none (libfuse passes no path then).
   */
  nameOf(path: string | undefined, fh: number): string | undefined {
    return path ?? this.handles.keyOf(fh);
  }

  /** What a lane is given for these names: keys of nodes without a path become their handles. */
  private wire(names: string[]): string[] {
    if (!this.handles.anyGone) return names;
    const out: string[] = [];
    for (const n of names) {
      const w = HandleNodes.isKey(n) ? this.handles.wire(n) : n;
      if (w !== undefined) out.push(w);
    }
    return out;
  }

  private sendBehind(names: string[]): void {
    const w = this.wire(names);
    if (w.length > 0) this.invalidateBehind(w);
  }

  namesOf(ino: number): readonly string[] {
    const names = this.byIno.get(ino);
    return names ? [...names] : [];
  }

  /**
   * The files with these inodes changed: invalidate their names (but `except`, a name whose
   * kernel inode the change went through and which the kernel keeps exact itself: a WRITE
   * holds that inode's pages locked until it is answered, so it must not wait for them).
   */
  changed(inos: Iterable<number>, except?: string, cachedWrite = false): Promise<void> | undefined {
    if (this.byIno.size === 0 && !this.handles.anyGone) return undefined;
    const paths: string[] = [];
    for (const ino of inos) {
      // A cached write while the write-back runs overlays the recorded attributes
      // (VolumeOps.statOf). Any other change, or a write after the write-back, drops them: the
      // change invalidates every name, so from then on getattr answers the primary's (plus the
      // cached writes), and what the record held (st_blocks as estimated while cached) is gone.
      if (this.recorded.size > 0 && (!cachedWrite || this.recorded.get(ino)?.primaryCtime !== null))
        this.recorded.delete(ino);
      const names = this.byIno.get(ino);
      const gone = this.handles.anyGone ? this.handles.keysOf(ino) : [];
      if (!names && gone.length === 0) continue;
      for (const p of names ? [...names, ...gone] : gone) {
        if (p === except) continue;
        if (this.writing.has(p)) this.afterWrites.add(p);
        else paths.push(p);
      }
    }
    const wired = this.wire(paths);
    if (wired.length === 0) return undefined;
    this.stats.invalidations += wired.length;
    this.stats.waits++;
    return this.bounded(this.invalidate(wired));
  }

  /** A WRITE through this name reached twinfs; `writeDone` when it is answered. */
  writeStarted(path: string): void {
    this.writing.set(path, (this.writing.get(path) ?? 0) + 1);
  }

  writeDone(path: string): void {
    const n = (this.writing.get(path) ?? 1) - 1;
    if (n > 0) {
      this.writing.set(path, n);
      return;
    }
    this.writing.delete(path);
    if (this.afterWrites.delete(path)) {
      this.stats.invalidations++;
      this.sendBehind([path]);
    }
  }

  /**
   * A page write-back (a WRITE with the write-page flag: pages of a shared mmap, or of a name
   * the kernel launders) through `path` changed the file. Its other names are invalidated as
   * after any WRITE, but the WRITE is answered without waiting: it may be the kernel laundering
   * a dirty page for an invalidation the helper thread is sending right now, which an
   * invalidation queued behind it would never let finish. What makes a program's mmap writes
   * reach twinfs is a close(2) (the kernel writes the file's dirty pages back, then sends FLUSH)
   * or an fsync/msync(MS_SYNC) (then FSYNC), never a laundering: those wait instead
   * (pageWriteBacksSettled), so once close or msync returned no other name shows the old pages
   * (the two-name fsx finding, docs/reliability.md).
   */
  pageWrittenBack(ino: number, path: string | undefined): void {
    const w = this.changed([ino], path, true);
    if (w === undefined) return;
    let pending = this.afterPages.get(ino);
    const first = this.afterPages.size === 0;
    if (!pending) {
      pending = new Set();
      this.afterPages.set(ino, pending);
    }
    const set = pending;
    const p: Promise<void> = w.then(
      () => this.pageSettled(ino, set, p),
      () => this.pageSettled(ino, set, p),
    );
    set.add(p);
    // After the entry is in: the callback asks pageWriteBacksPending.
    if (first) this.onPageWriteBacks(true);
  }

  private pageSettled(ino: number, set: Set<Promise<void>>, p: Promise<void>): void {
    set.delete(p);
    if (set.size > 0 || this.afterPages.get(ino) !== set) return;
    this.afterPages.delete(ino);
    if (this.afterPages.size === 0) this.onPageWriteBacks(false);
  }

  /** Is an invalidation after a page write-back of any file queued or being sent? */
  get pageWriteBacksPending(): boolean {
    return this.afterPages.size > 0;
  }

  /**
   * Resolves once the invalidations after the page write-backs of this file so far have been
   * processed (each bounded like any wait); undefined when none is pending.
   */
  pageWriteBacksSettled(ino: number): Promise<void> | undefined {
    const pending = this.afterPages.get(ino);
    if (!pending) return undefined;
    return Promise.all(pending).then(() => undefined);
  }

  private bounded(w: Promise<void>): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.stats.waitsBounded++;
        resolve();
      }, WAIT_BOUND_MS);
      timer.unref();
    });
    return Promise.race([w, bound]).finally(() => clearTimeout(timer));
  }

  /**
   * A file changed with no request of the kernel's behind it (its cached data was written back:
   * the primary's ctime and blocks moved). A file with several names whose write-back recorded
   * what getattr showed (`record`, writeBackStarting): nothing moved for the kernel, nothing is
   * invalidated; primaryCtime gives the primary's ctime the write-back left, which the record
   * holds for. Otherwise: invalidate every name, the one it is known by too, without waiting.
   * While a change to it would be held, its kernel inodes may have a WRITE held with pages
   * locked, which the invalidation would wait for: it is sent after release.
   */
  changedBehind(
    ino: number,
    path: string,
    kernelMayHold = true,
    primaryCtime: () => bigint | undefined = () => undefined,
  ): void {
    const rec = this.recorded.get(ino);
    if (rec !== undefined && rec.primaryCtime === null) {
      if (!kernelMayHold) {
        // No attributes of it were answered since its last WRITE: no name holds the recorded
        // ones, and its next getattr may answer the primary's.
        this.recorded.delete(ino);
        this.stats.writeBacksRecordedUnseen++;
        return;
      }
      const c = primaryCtime();
      if (c !== undefined) {
        rec.primaryCtime = c;
        this.stats.writeBacksRecorded++;
        return;
      }
      this.recorded.delete(ino);
    }
    // One kernel inode (no other name known), which has asked for no attributes since its last
    // WRITE made the kernel drop size, times and blocks: it holds nothing the write-back moved
    // (its pages hold the same data), and its next stat asks twinfs anyway.
    const gone = this.handles.anyGone ? this.handles.keysOf(ino) : [];
    if (!kernelMayHold && !this.byIno.has(ino) && gone.length === 0) {
      this.stats.writeBacksUnseen++;
      return;
    }
    if (this.linkAttrs === 'keep' && this.byIno.has(ino)) {
      this.stats.writeBacksOfLinksKept++;
      return;
    }
    if (this.held(path, ino)) {
      this.deferred.set(ino, path);
      return;
    }
    const names = new Set(this.byIno.get(ino) ?? []);
    names.add(path);
    for (const k of gone) names.add(k);
    const now: string[] = [];
    for (const p of names) {
      if (this.writing.has(p)) this.afterWrites.add(p);
      else now.push(p);
    }
    this.stats.invalidations += now.length;
    if (now.length > 0) this.sendBehind(now);
  }

  /**
   * A hidden name of this file is about to go (libfuse's unlink of `.fuse_hidden…` at its last
   * close, or one asked for by name): no name of it is invalidated. Nothing any name shows moves:
   * nlink is answered without hidden names (HiddenLinks), size, data, mode and times stay; only
   * the primary's ctime does, which is recorded as after a write-back (`record`): getattr keeps
   * answering the ctime shown before (recordedAttrs) until the next change through twinfs.
   *
   * No invalidation, because nothing orders this one against the program's next request: the
   * removal runs after close(2) returned (RELEASE is sent behind it), and an invalidation the
   * kernel processes while a GETATTR of the same inode is in flight makes it drop that reply
   * (attr_version). A read past the size the inode had cached then goes on with that old size:
   * a short read through a descriptor of another name of the file (docs/reliability.md, "Handles
   * held open across operations", item 6).
   *
   * `primary`: the primary's own ctime, mtime and st_blocks just before (getattr overlays cached
   * writes on a record as on those). Returns what to call once the name is gone, with the
   * primary's ctime then; undefined when
   * the file is left with one name (JavaScript no longer answers its getattr alone: the libfuse3
   * build answers a file with one name natively, from the primary, so the record would not hold
   * everywhere; that one name's kernel inode shows the new ctime once it asks again).
   */
  hiddenNameRemoving(ino: number, primary: ShownAttrs): (ctimeAfter: bigint | undefined) => void {
    this.stats.hiddenNamesRemoved++;
    const none = () => undefined;
    if (this.linkAttrs !== 'record' || !this.byIno.has(ino)) return none;
    const rec = this.recorded.get(ino);
    // A write-back runs: its end records the primary's ctime then (changedBehind).
    if (rec !== undefined && rec.primaryCtime === null) return none;
    // Changed on the primary behind twinfs since: the primary's attributes are shown again.
    if (rec !== undefined && rec.primaryCtime !== primary.ctime) this.recorded.delete(ino);
    if (!this.recorded.has(ino)) this.recorded.set(ino, { shown: primary, primaryCtime: null });
    return (ctimeAfter) => {
      const r = this.recorded.get(ino);
      if (r === undefined || r.primaryCtime !== null) return;
      if (ctimeAfter === undefined) this.recorded.delete(ino);
      else r.primaryCtime = ctimeAfter;
    };
  }

  /**
   * A directory's entries changed with no request of the kernel's behind it (libfuse removed a
   * hidden file at its last close): the kernel may list it from its cache (cache_readdir), so its
   * inode is invalidated, without waiting (the kernel drops the cached listing and attributes).
   */
  listingChangedBehind(dir: string): void {
    this.stats.invalidations++;
    this.stats.listings++;
    this.invalidateBehind([dir]);
  }

  /**
   * A write-back of this file is about to move the primary's ctime, mtime and st_blocks
   * (`record`, a file with several names known): from now on getattr answers what `shown`
   * gives now (what it answered so far), see linkAttrsModeFromEnv.
   */
  writeBackStarting(ino: number, shown: () => ShownAttrs | undefined): void {
    if (this.linkAttrs !== 'record' || !this.byIno.has(ino)) return;
    const s = shown();
    if (s === undefined) this.recorded.delete(ino);
    else this.recorded.set(ino, { shown: s, primaryCtime: null });
  }

  /**
   * The write-back of this file failed (part of it may be on the primary): the recorded
   * attributes are dropped and its names invalidated, as a write-back without a record.
   */
  writeBackFailed(ino: number, path: string): void {
    if (!this.recorded.delete(ino)) return;
    this.changedBehind(ino, path);
  }

  /** A change of the file that getattr shows from the primary (a direct write): no record. */
  forgetRecorded(ino: number): void {
    if (this.recorded.size > 0) this.recorded.delete(ino);
  }

  /**
   * What getattr answers for ctime, mtime and st_blocks of this file instead of the primary's
   * (whose ctime is `primaryCtime`), before cached writes are overlaid; undefined: the primary's.
   */
  recordedAttrs(ino: number, primaryCtime: bigint): ShownAttrs | undefined {
    if (this.recorded.size === 0) return undefined;
    const r = this.recorded.get(ino);
    if (r === undefined) return undefined;
    if (r.primaryCtime === null || r.primaryCtime === primaryCtime) return r.shown;
    // Changed on the primary behind twinfs: its attributes are the primary's again.
    this.recorded.delete(ino);
    return undefined;
  }

  /** Sends what changedBehind deferred (after an inhibition was released). */
  retryDeferred(): void {
    const all = [...this.deferred];
    this.deferred.clear();
    for (const [ino, path] of all) this.changedBehind(ino, path);
  }

  getStats(): {
    names: number;
    invalidations: number;
    waits: number;
    waitsBounded: number;
    writeBacksUnseen: number;
    /** Directories invalidated because their entries changed behind the kernel (listingChangedBehind). */
    listings: number;
    writeBacksOfLinksKept: number;
    writeBacksRecorded: number;
    writeBacksRecordedUnseen: number;
    /** Hidden names removed without invalidating the file's other names (hiddenNameRemoving). */
    hiddenNamesRemoved: number;
    /** Files whose attributes getattr answers from a record (`record`). */
    recordedAttrs: number;
  } {
    return { names: this.byPath.size, ...this.stats, recordedAttrs: this.recorded.size };
  }
}
