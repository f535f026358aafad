import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as nodePath from 'node:path';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import { DisposableStore, toDisposable } from '../common/lifecycle.js';
import { addServedMount, removeServedMount } from '../common/served-mounts.js';
import { installBytePaths } from '../posix/byte-paths.js';
import { type ChangeSink, nullSink, type WriteGate } from './change-sink.js';
import { type ExitGuard, startExitGuard } from './exit-guard.js';
import { createFuseHandlers } from './fuse-adapter.js';
import { isHiddenEntry } from './hidden-renames.js';
import { invalidationDelayFromEnv, invalidationTraceFromEnv, KernelNames } from './kernel-names.js';
import { isMountPoint, listMountPoints, preflight } from './mount-checks.js';
import { watchMount } from './mount-watch.js';
import {
  NativeChanges,
  type NativeOpens,
  nativeCreateFromEnv,
  nativeEntriesFromEnv,
  nativeOpenFromEnv,
  nativeRenameFromEnv,
  nativeSetattrFromEnv,
  nativeUnlinkCachedFromEnv,
  nativeUnlinkFromEnv,
  nativeWriteFromEnv,
} from './native-changes.js';
import {
  DEFAULT_LIBFUSE,
  DEFAULT_NATIVE_OPTIONS,
  fuseNativeOptions,
  libfuse3Built,
  libfuseFromEnv,
  type NativeMountOptions,
  nativeAttributesFromEnv,
  nativeNoFlushFromEnv,
} from './native-options.js';
import type { NativeAttributeStats } from './native-stats.js';
import { SpaceAccount } from './space-account.js';
import { type CallerContext, VolumeOps } from './volume-ops.js';
import { VolumePaths } from './volume-paths.js';
import { WriteInhibitor } from './write-inhibitor.js';
import { type CacheStats, DEFAULT_LIMIT_BYTES, WritebackCache } from './writeback-cache.js';
import { spillReserveBytes, WritebackSpill } from './writeback-spill.js';

const require = createRequire(import.meta.url);

export interface TwinFsOptions {
  primary: string;
  mount: string;
  /** Checked for overlap with primary and mount; the mirror driver itself is the sink's business. */
  mirror?: string;
  /** Mount over a non-empty directory. */
  force?: boolean;
  /** Dirty-data limit of the write-back cache, bytes. Default 64 MiB. */
  cacheBytes?: number;
  /** Age at which dirty data is written back, ms. Default 3000. */
  writebackMs?: number;
  writeThrough?: boolean;
  flushOnClose?: boolean;
  /**
   * libfuse3: files created or opened in libfuse's threads with one name skip their FLUSH
   * (FOPEN_NOFLUSH; fuse-native level 30). Default: nativeNoFlushFromEnv (on).
   */
  nativeNoFlush?: boolean;
  /**
   * libfuse3: which opens libfuse's threads answer, and whether their WRITEs are done there before
   * and after JS took the open ('all', fuse-native level 31) or only before ('queued', levels 29
   * and 30). Default: nativeOpenFromEnv ('all').
   */
  nativeOpens?: NativeOpens;
  /** Receives every change after it reached the primary (the mirror driver). */
  sink?: ChangeSink;
  /** Decides when changes may proceed (the freeze). Default: a WriteInhibitor. */
  gate?: WriteGate & Partial<WriteInhibitor>;
  native?: Partial<NativeMountOptions>;
  log?: (msg: string) => void;
  /**
   * Where cached data goes when it cannot be written to the primary at unmount (its disk is
   * full): a journal per volume in this directory, its space reserved at mount, replayed onto
   * the primary before the next mount. Without it such data is lost (tests and embedders only).
   */
  spillDir?: string;
  /** How often to check that the mount is still there, ms (0: never). Default 1000. */
  mountCheckMs?: number;
  /**
   * Reserve the primary's free space (statfs) for accepted writes, so a write the primary could
   * never take fails with ENOSPC at once (space-account.ts). Default true.
   */
  reserveSpace?: boolean;
}

export interface TwinFsStatus {
  primary: string;
  mount: string;
  writeThrough: boolean;
  cache: CacheStats;
  openHandles: number;
  /** The primary's early write-backs of large writes: started, refused (docs/architecture.md). */
  primaryWriteBacks: { started: number; refused: number };
  /** Paths whose security.capability lookups the patched fuse-native answers itself. */
  noCapabilityPaths: number;
  /** Which libfuse serves the mount. */
  libfuse: 2 | 3;
  /**
   * libfuse3: names of multi-link files the kernel may cache, invalidations asked for, and the
   * native queue (queued, processed, sent for a name the kernel had).
   */
  kernelCache?: {
    names: number;
    invalidations: number;
    /** Write-backs of single-name files whose attributes the kernel had not taken since their last WRITE: nothing invalidated. */
    writeBacksUnseen?: number;
    /** Write-backs of files with several names that invalidated none and recorded nothing (TWINFS_WRITEBACK_LINK_ATTRS=keep, diagnostic). */
    writeBacksOfLinksKept?: number;
    /** What a write-back of a file with several names does (KernelNames, linkAttrsModeFromEnv). */
    linkAttrs?: 'record' | 'invalidate' | 'keep';
    /** Write-backs of files with several names after which getattr answers the recorded ctime, mtime and st_blocks (no invalidation). */
    writeBacksRecorded?: number;
    /** Write-backs of files with several names whose attributes no one had taken since the last WRITE (nothing recorded, nothing invalidated). */
    writeBacksRecordedUnseen?: number;
    /** Files whose ctime, mtime and st_blocks getattr answers from a record now. */
    recordedAttrs?: number;
    /** Directories invalidated because libfuse removed a hidden file in them (cached listings). */
    listings?: number;
    /** Hidden names removed from files with other names, none of which was invalidated for it. */
    hiddenNamesRemoved?: number;
    /** Listings the kernel read from twinfs (READDIR/READDIRPLUS; an unchanged directory is listed from the kernel's cache). */
    readdirs?: number;
    /** O_APPEND WRITEs of a file with several names that did not start at its end, moved to it (VolumeOps.appendAt). */
    appendsOffEnd?: number;
    /** Waits answered at the bound (KernelNames.WAIT_BOUND_MS) before their invalidations were through. */
    waitsBounded?: number;
    queued: number;
    done: number;
    sent: number;
    /**
     * Per native lane (waited: invalidations an op waits for; background: the rest): queued,
     * processed, sent for a name the kernel had, slow (the kernel took over 100 ms), the longest.
     */
    lanes?: Record<
      'waited' | 'background',
      { queued: number; done: number; sent: number; slow: number; maxMs: number }
    >;
    /** getattrs answered in libfuse's threads / passed on to JS, inodes with cached attributes, getxattrs answered there. */
    native?: NativeAttributeStats;
    /** Unlinks answered in libfuse's threads (native-changes.ts), passed to JS, JS ops in flight. */
    nativeUnlink?: {
      answered: number;
      fallbacks: number;
      busy: number;
      enabled: boolean;
      creates?: number;
      createFallbacks?: number;
    };
  };
  /** Why the mount is gone while the server still runs (it was unmounted behind its back). */
  mountLost?: string;
}

/** How often a detach waiting for fuse-native's close checks the kernel's mount table (ms). */
const DETACH_POLL_MS = 500;
/** How long after the kernel dropped the mount the close's callback may still take (ms). */
const DETACH_GRACE_MS = 10_000;

/**
 * The first server's filesystem: a FUSE mount of the primary directory with a write-back cache.
 * `TwinFs.mount()` checks everything first and throws a TwinError (nothing mounted) when a
 * check fails; `unmount()` writes every cached byte back before and after detaching.
 */
export class TwinFs {
  readonly cache: WritebackCache;
  readonly inhibitor: WriteInhibitor | undefined;
  readonly paths: VolumePaths;
  private readonly ops: VolumeOps;
  /** libfuse3 path only: the names whose kernel caches are invalidated on change. */
  readonly kernelNames: KernelNames | undefined;
  private readonly libfuse: 2 | 3;
  /** libfuse3: getattr and getxattr answered natively (nativeAttributesFromEnv). */
  private readonly nativeAttributes: boolean;
  private readonly store = new DisposableStore();
  private fuse: any;
  private fuseClass: any;
  private unmounting: Promise<void> | null = null;
  /** Where the unmount is (unmountProgress), for a stop that takes long to say what it waits on. */
  private unmountPhase = '';
  private nativeChangeTarget: Record<string, (...args: any[]) => void> | undefined;
  private nativeChanges:
    | { changes: NativeChanges; handlers: Record<string, (...args: any[]) => void> }
    | undefined;
  private spill: WritebackSpill | undefined;
  private exitGuard: ExitGuard | undefined;
  private mountLost: string | undefined;
  private readonly _onDidLoseMount = new Emitter<{ mount: string; reason: string }>();
  /** The mount was detached by someone else (twinfs unmount, fusermount -u): the server should stop. */
  readonly onDidLoseMount = this._onDidLoseMount.event;

  private constructor(
    readonly primary: string,
    readonly mountPoint: string,
    private readonly opts: TwinFsOptions,
    space: SpaceAccount | undefined,
  ) {
    installBytePaths();
    const sink = opts.sink ?? nullSink;
    const gate = opts.gate ?? new WriteInhibitor();
    this.inhibitor = gate instanceof WriteInhibitor ? gate : undefined;
    this.paths = new VolumePaths(primary);
    this.libfuse = opts.native?.libfuse ?? libfuseFromEnv();
    if (this.libfuse !== DEFAULT_LIBFUSE && opts.native?.libfuse === undefined && !process.env.TWINFS_FUSE)
      this.log(
        libfuse3Built()
          ? 'serving with libfuse2: libfuse3 needs root or fusermount3 to mount (Debian: apt-get install fuse3)'
          : 'serving with libfuse2: the libfuse3 build of fuse-native is missing (install libfuse3-dev, then node scripts/build-native.mjs)',
      );
    if (this.libfuse === 3) {
      const inhibitor = this.inhibitor;
      const trace = invalidationTraceFromEnv();
      const sendNow = (paths: string[]): Promise<void> =>
        this.fuse?.invalidatePaths(paths) ?? Promise.resolve();
      const send = trace ? (paths: string[]) => trace(paths, sendNow(paths)) : sendNow;
      // The lane nobody waits for (fuse-native's invalidate): see KernelNames. Test only:
      // TWINFS_TEST_INVALIDATION_ONE_LANE=1 queues them on the waited lane, as before there were
      // two (to trace the old order against the new one in one build).
      const sendBehind =
        process.env.TWINFS_TEST_INVALIDATION_ONE_LANE === '1'
          ? (paths: string[]): void => void sendNow(paths)
          : (paths: string[]): void => {
              for (const p of paths) this.fuse?.invalidate(p);
            };
      const delayMs = invalidationDelayFromEnv();
      const later = (f: () => void) => setTimeout(f, delayMs);
      this.kernelNames = new KernelNames(
        delayMs > 0
          ? (paths) => new Promise<void>((resolve) => later(resolve)).then(() => send(paths))
          : send,
        (path, ino) => inhibitor?.isHeld(path, ino) ?? false,
        // A close must reach the flush handler while page write-backs' invalidations are out.
        () => {
          if (this.nativeAttributes) this.updateNativeFlush(this.cache.hasPendingErrors);
        },
        delayMs > 0 ? (paths) => later(() => sendBehind(paths)) : sendBehind,
      );
      if (inhibitor) this.store.add(inhibitor.onDidRelease(() => this.kernelNames?.retryDeferred()));
      // Before a hidden name twinfs drops goes: the handles open on its node (HandleNodes.onNodeGone).
      this.kernelNames.handles.onNodeGone = (nodeId, fhs) => {
        for (const fh of fhs) this.fuse?.learnPathlessHandle(nodeId, fh);
      };
    }
    this.nativeAttributes = this.libfuse === 3 && nativeAttributesFromEnv();
    this.cache = new WritebackCache({
      sink,
      // Bound late: the Fuse instance exists from doMount on (nothing is cached before).
      attributes: this.nativeAttributes
        ? {
            set: (ino, end, bytes, lastWriteMs, onlyMore) =>
              this.fuse?.setCachedAttributes(ino, end, bytes, lastWriteMs, onlyMore),
            clear: (ino) => this.fuse?.setCachedAttributes(ino, -1, 0, 0, false),
            errorsPending: (pending) => this.updateNativeFlush(pending),
          }
        : undefined,
      limitBytes: opts.cacheBytes,
      writebackMs: opts.writebackMs,
      writeThrough: opts.writeThrough,
      space,
    });
    if (space) this.store.add(space);
    this.ops = new VolumeOps({
      paths: this.paths,
      cache: this.cache,
      sink,
      gate,
      flushOnClose: opts.flushOnClose,
      forgetNoCapabilities: () => this.fuseClass?.forgetNoCapabilities?.(),
      kernelNames: this.kernelNames,
      readdirStats: this.libfuse === 3,
      mountPoint: this.mountPoint,
    });
    if (this.kernelNames) {
      const names = this.kernelNames;
      const ops = this.ops;
      // Undefined when the descriptor cannot be stat'ed: then nothing is recorded (invalidated as before).
      const quiet = <T>(f: () => T): T | undefined => {
        try {
          return f();
        } catch {
          return undefined;
        }
      };
      this.store.add(
        this.cache.onWillWriteBack((e) =>
          names.writeBackStarting(e.ino, () => quiet(() => ops.shownAttrs(e.fd))),
        ),
      );
      this.store.add(
        this.cache.onDidWriteBack((e) =>
          names.changedBehind(e.ino, e.path, e.kernelMayHold, () =>
            quiet(() => fs.fstatSync(e.fd, { bigint: true }).ctimeNs),
          ),
        ),
      );
      this.store.add(this.cache.onDidFailWriteback((e) => names.writeBackFailed(e.ino, e.path)));
      const path = process.env.TWINFS_TEST_WRITEBACK_IN_GETATTR;
      if (path) this.writeBackInGetattr(path);
      const hiddenGone = process.env.TWINFS_TEST_HIDDEN_GONE_IN_GETATTR;
      if (hiddenGone) this.hiddenGoneInGetattr(hiddenGone);
      const lanes = process.env.TWINFS_TEST_LANES_IN_GETATTR;
      if (lanes) this.lanesInGetattr(lanes);
    }
  }

  /**
   * Test only: TWINFS_TEST_LANES_IN_GETATTR=PATH[,PATH...]. A getattr of PATH that reaches JS
   * first waits twice TWINFS_TEST_INVALIDATION_DELAY_MS (what queues every invalidation that
   * late), then (at most 5 s) until both lanes have processed what they were given, then answers:
   * whatever the op before queued is processed while the kernel's GETATTR of PATH is in flight
   * (test/fusefs/append-stale-end.test.ts).
   */
  private lanesInGetattr(list: string): void {
    const ms = 2 * invalidationDelayFromEnv();
    this.getattrWaits(
      list,
      () => new Promise<void>((r) => setTimeout(r, ms)),
      () => this.lanesIdle(),
    );
  }

  /** Test hooks: have both invalidation lanes processed everything they were given? */
  private lanesIdle(): boolean {
    const lanes = this.fuse?.invalidateStats?.().lanes;
    return (
      !lanes || (lanes.waited.done >= lanes.waited.queued && lanes.background.done >= lanes.background.queued)
    );
  }

  /**
   * Test only: TWINFS_TEST_WRITEBACK_IN_GETATTR=PATH[,PATH...]. A getattr of PATH (a lookup, or a GETATTR
   * through a handle) that reaches JS first writes every dirty file back and waits (at most 5 s) until the lane nobody waits for has processed what that queued,
   * then answers: the write-back's invalidation of PATH is processed while the kernel's GETATTR
   * of it is in flight, as it can happen under load but cannot be provoked on purpose
   * (test/fusefs/writeback-getattr.test.ts).
   */
  private writeBackInGetattr(list: string): void {
    this.getattrWaits(
      list,
      () => this.cache.flushAll(),
      () => {
        const lane = this.fuse?.invalidateStats?.().lanes?.background;
        return !lane || lane.done >= lane.queued;
      },
    );
  }

  /**
   * Test only: TWINFS_TEST_HIDDEN_GONE_IN_GETATTR=PATH[,PATH...]. A getattr of PATH that reaches
   * JS first waits (at most 5 s) until libfuse has removed every hidden name (`.fuse_hidden…`)
   * in PATH's directory and both invalidation lanes have processed what they were given, then
   * answers: whatever that removal sends the kernel is processed while the kernel's GETATTR of
   * PATH is in flight, as it can happen when a close(2) of another name's last descriptor is
   * followed by a read (test/fusefs/hidden-gone-getattr.test.ts).
   */
  private hiddenGoneInGetattr(list: string): void {
    this.getattrWaits(
      list,
      async () => undefined,
      (p) =>
        !fs.readdirSync(nodePath.join(this.primary, nodePath.dirname(p))).some(isHiddenEntry) &&
        this.lanesIdle(),
    );
  }

  /**
   * Test only (the three above): a getattr of one of these paths that reaches JS first runs
   * `first`, then waits (at most 5 s, polling every 5 ms) until `ready`, then answers.
   */
  private getattrWaits(list: string, first: () => Promise<void>, ready: (path: string) => boolean): void {
    const ops = this.ops;
    const inner = ops.getattr.bind(ops);
    const paths = new Set(list.split(','));
    ops.getattr = async (p: string) => {
      if (paths.has(p)) {
        await first();
        const until = Date.now() + 5000;
        while (!ready(p) && Date.now() <= until) await new Promise((r) => setTimeout(r, 5));
      }
      return inner(p);
    };
  }

  static async mount(opts: TwinFsOptions): Promise<TwinFs> {
    const real = await preflight(opts);
    const Fuse = loadFuse();
    let spill: WritebackSpill | undefined;
    if (opts.spillDir) {
      // Before mounting: what a previous run could not write back lands first, so no
      // application ever sees the older bytes. A journal that cannot be replayed stops the mount.
      spill = await WritebackSpill.open({
        spillDir: opts.spillDir,
        primary: real.primary,
        reserveBytes: spillReserveBytes(opts.cacheBytes ?? DEFAULT_LIMIT_BYTES),
      });
      await spill.replay(opts.sink ?? nullSink, opts.log ?? defaultLog);
    }
    const space = opts.reserveSpace === false ? undefined : await SpaceAccount.open(real.primary);
    const fs = new TwinFs(real.primary, real.mount, opts, space);
    fs.spill = spill;
    fs.fuseClass = Fuse;
    await fs.doMount(Fuse);
    return fs;
  }

  private async doMount(Fuse: any): Promise<void> {
    // Modes from the kernel already carry the caller's umask; ours must not apply twice.
    process.umask(0);
    const plain = createFuseHandlers(this.ops, {
      context: () => this.fuse?.context as CallerContext | undefined,
      onUnexpectedError: (op, err) => this.log(`${op} failed unexpectedly: ${(err as Error)?.stack ?? err}`),
    });
    const native = {
      ...DEFAULT_NATIVE_OPTIONS,
      nonempty: this.opts.force === true,
      ...this.opts.native,
      libfuse: this.libfuse,
    };
    // libfuse3 with native getattr: unlinks may be answered natively, reported through these.
    const handlers =
      this.nativeAttributes && this.inhibitor && nativeUnlinkFromEnv()
        ? this.nativeChangeHandlers(plain)
        : plain;
    try {
      this.fuse = new Fuse(this.mountPoint, handlers, fuseNativeOptions(native));
    } catch (err) {
      // The libfuse3 build is missing (libfuse3-dev was not installed at npm install).
      throw new TwinError(
        'ETWIN_MOUNT_FAILED',
        `mounting ${this.mountPoint} failed: ${(err as Error).message}`,
        { mount: this.mountPoint },
        { cause: err },
      );
    }
    await new Promise<void>((resolve, reject) =>
      this.fuse.mount((err: Error | null) =>
        err
          ? reject(
              new TwinError(
                'ETWIN_MOUNT_FAILED',
                `mounting ${this.mountPoint} failed: ${err.message}`,
                { mount: this.mountPoint },
                { cause: err },
              ),
            )
          : resolve(),
      ),
    );
    // However this process ends, its connection ends with it (see exit-guard.ts).
    // TWINFS_EXIT_GUARD=0: none (the watchdog's fixture of a fork that cannot exit).
    const minor = (await listMountPoints()).filter((m) => m.mountPoint === this.mountPoint).pop()?.minor;
    if (minor !== undefined && process.env.TWINFS_EXIT_GUARD !== '0') {
      this.exitGuard = startExitGuard(minor, (why) =>
        this.log(
          `no exit guard for ${this.mountPoint}: ${why}; a server stuck on its own mount could not end (mount -t fusectl none /sys/fs/fuse/connections)`,
        ),
      );
    }
    if (this.nativeAttributes) this.enableNativeAttributes();
    if (handlers !== plain) await this.enableNativeChanges();
    addServedMount(this.mountPoint);
    this.store.add(toDisposable(() => removeServedMount(this.mountPoint)));
    this.store.add(
      await watchMount(this.mountPoint, {
        intervalMs: this.opts.mountCheckMs ?? 1000,
        onLost: (reason) => {
          if (this.unmounting) return;
          this.mountLost = reason;
          this.log(reason);
          this._onDidLoseMount.fire({ mount: this.mountPoint, reason });
        },
      }),
    );
    this.store.add(toDisposable(() => this.cache.dispose()));
  }

  /**
   * From now on libfuse's threads answer getattr and getxattr from the primary and the cache's
   * attributes. Requests that reached JS since the mount may have cached data: those attributes
   * are handed over first.
   */
  private enableNativeAttributes(): void {
    for (const node of this.cache.allNodes())
      if (node.isDirty)
        this.fuse.setCachedAttributes(node.ino, node.cachedEnd, node.cachedBytes, node.lastWriteAt, false);
    this.updateNativeFlush(this.cache.hasPendingErrors);
    this.fuse.nativeAttributes(this.paths.root);
  }

  /** The handlers that take the native unlinks' queue first (native-changes.ts). */
  private nativeChangeHandlers(plain: Record<string, (...args: any[]) => void>) {
    const wrapped: Record<string, (...args: any[]) => void> = {};
    for (const name of Object.keys(plain))
      wrapped[name] = (...args: any[]) => {
        const h = this.nativeChanges?.handlers[name] ?? plain[name];
        h(...args);
      };
    this.nativeChangeTarget = plain;
    return wrapped;
  }

  /**
   * Unlinks and creates answered in libfuse's threads from now on (native-changes.ts). They reach
   * the primary before the sink's beforeChange: a sink that has one must first take them on
   * (ChangeSink.changesAhead: its write intent for the whole volume is on disk before the first),
   * or creates stay with JS. Until this returns every op reaches JS.
   */
  private async enableNativeChanges(): Promise<void> {
    if (!this.inhibitor || !this.nativeChangeTarget || typeof this.fuse.nativeUnlink !== 'function') return;
    const sink = this.opts.sink ?? nullSink;
    // Added before the NativeChanges below: the store disposes in reverse, so the sink's hold
    // ends only after the last native change was reported.
    const ahead = await sink.changesAhead?.(() => this.nativeChanges?.changes.drain());
    if (ahead) this.store.add(ahead);
    const creates = nativeCreateFromEnv() && (sink.beforeChange === undefined || ahead !== undefined);
    const changes = new NativeChanges(
      this.fuse,
      this.ops,
      this.inhibitor,
      (m) => this.log(m),
      nativeUnlinkCachedFromEnv(),
      creates,
      // Only of files created natively. The sink makes its copy of a native write from the bytes
      // queued with it; their room on the primary is reserved as the cache's is.
      creates &&
        nativeWriteFromEnv() && {
          carry: sink !== nullSink,
          space: {
            reserve: (n, floor) => this.cache.reserveOutside(n, floor),
            settle: (landed, unused) => this.cache.settleOutside(landed, unused),
          },
        },
      // chmod and utimens by path: after the fact like creates, under the same hold.
      creates && nativeSetattrFromEnv(),
      // Renames of files: likewise.
      creates && nativeRenameFromEnv(),
      // mkdir, symlink and rmdir: likewise.
      creates && nativeEntriesFromEnv(),
      sink.following?.bind(sink),
      // Opens of existing files, their reads and releases: no change to report, the handle only.
      creates ? (this.opts.nativeOpens ?? nativeOpenFromEnv()) : false,
    );
    // Off while an open handle's node has no path (HandleNodes.onAnyGone).
    const handles = this.kernelNames?.handles;
    if (handles) {
      let release: (() => void) | undefined = handles.anyGone ? changes.hold() : undefined;
      handles.onAnyGone = (any) => {
        if (any) release ??= changes.hold();
        else {
          release?.();
          release = undefined;
        }
      };
      this.store.add({ dispose: () => (handles.onAnyGone = undefined) });
    }
    this.nativeChanges = { changes, handlers: changes.wrap(this.nativeChangeTarget) };
    // Disposed at unmount after the cache's last write-back: the queue is reported first.
    this.store.add(changes);
  }

  /**
   * Tells libfuse's threads whether a FLUSH may be answered there, and whether the files they
   * create or open with one name may skip it altogether (nativeNoFlushFromEnv).
   */
  private updateNativeFlush(errorsPending: boolean): void {
    const native = this.flushIsNative(errorsPending);
    this.fuse?.setNativeFlush(native, native && (this.opts.nativeNoFlush ?? nativeNoFlushFromEnv()));
  }

  /** A flush (close(2)) has nothing to do in JS: no write-back on close, no error to report. */
  private flushIsNative(errorsPending: boolean): boolean {
    return (
      this.opts.flushOnClose !== true && !errorsPending && this.kernelNames?.pageWriteBacksPending !== true
    );
  }

  status(): TwinFsStatus {
    return {
      primary: this.primary,
      mount: this.mountPoint,
      writeThrough: this.cache.writeThrough,
      cache: this.cache.getStats(),
      openHandles: this.ops.openHandles,
      primaryWriteBacks: { ...this.ops.primaryWriteBacks },
      noCapabilityPaths: this.fuseClass?.noCapabilityCount?.() ?? 0,
      libfuse: this.libfuse,
      ...(this.kernelNames ? { kernelCache: this.kernelCacheStatus(this.kernelNames) } : {}),
      ...(this.mountLost ? { mountLost: this.mountLost } : {}),
    };
  }

  private kernelCacheStatus(k: KernelNames): NonNullable<TwinFsStatus['kernelCache']> {
    const {
      names,
      invalidations,
      waitsBounded,
      writeBacksUnseen,
      writeBacksOfLinksKept,
      writeBacksRecorded,
      writeBacksRecordedUnseen,
      recordedAttrs,
      listings,
      hiddenNamesRemoved,
    } = k.getStats();
    return {
      names,
      invalidations,
      waitsBounded,
      writeBacksUnseen,
      ...(k.linkAttrs === 'keep' ? { writeBacksOfLinksKept } : {}),
      linkAttrs: k.linkAttrs,
      writeBacksRecorded,
      writeBacksRecordedUnseen,
      recordedAttrs,
      listings,
      hiddenNamesRemoved,
      readdirs: this.ops.readdirs,
      appendsOffEnd: this.ops.appendsOffEnd,
      ...(this.fuse?.invalidateStats?.() ?? { queued: 0, done: 0, sent: 0 }),
      ...(this.nativeAttributes ? { native: this.fuse?.nativeAttributeStats?.() } : {}),
      ...(this.nativeChanges ? { nativeUnlink: this.nativeChanges.changes.stats() } : {}),
    };
  }

  /** Writes back the cached data of the files whose current volume path matches. */
  async flushWhere(match: (volumePath: string, ino: number) => boolean): Promise<void> {
    const nodes = [...this.cache.allNodes()].filter((n) => n.isDirty && match(n.path, n.ino));
    await Promise.all(nodes.map((n) => this.cache.flush(n)));
  }

  /**
   * Volume paths under which a file is open for writing, with its inode: the only names whose
   * kernel inodes can hold dirty pages of a shared writable mapping (open-names.ts).
   */
  openForWriting(): Array<{ path: string; ino: number }> {
    return this.ops.openNames.list();
  }

  /**
   * Writes back all cached data (and makes it durable with sync). Creates, writes and unlinks
   * done natively are reported first: their bytes are on the primary, and once this resolves
   * the sink has them too.
   */
  flushAll(opts: { sync?: boolean } = {}): Promise<void> {
    this.nativeChanges?.changes.drain();
    return this.cache.flushAll(opts);
  }

  /**
   * Writes everything back, detaches the mount, then writes back whatever arrived meanwhile and
   * closes every file. A busy mount (open files) is detached lazily: handlers may still run for
   * those files until they are closed, so the cache drains once more after detaching.
   */
  unmount(): Promise<void> {
    this.unmounting ??= this.doUnmount();
    return this.unmounting;
  }

  /**
   * What the unmount is waiting on, with the cache's dirty files and bytes and the files still
   * open: what a stop that takes long says (serve.ts). Empty before the unmount starts.
   */
  unmountProgress(): string {
    if (!this.unmounting) return '';
    const c = this.cache.getStats();
    let phase = this.unmountPhase;
    if (phase.startsWith('detaching')) {
      // What fuse-native's close is doing: fusermount's child, then the native side; nothing
      // while its close is queued (nanoresource: behind an open or a close in progress).
      const f = this.fuse;
      phase += `: ${f.closeState || 'not started'} (opened ${f.opened}, closing ${f.closing}, closed ${f.closed})`;
    }
    return `${phase}; ${c.dirtyFiles} file(s) with ${c.dirtyBytes} byte(s) not written back, ${c.openFiles} open`;
  }

  private async doUnmount(): Promise<void> {
    const errors: unknown[] = [];
    // Unlinks done natively first: the data of a file they removed is dropped, not written back
    // (nor spilled under a path that no longer names it).
    this.nativeChanges?.changes.drain();
    this.unmountPhase = 'writing back before detaching';
    // A failure here is retried after detaching (and then spilled): not reported twice.
    await this.cache.flushAll().catch(() => undefined);
    this.unmountPhase = 'detaching the mount';
    try {
      let called = false;
      const detached = new Promise<void>((resolve, reject) =>
        this.fuse.unmount((err: Error | null) => {
          called = true;
          return err ? reject(err) : resolve();
        }),
      );
      await Promise.race([detached, this.detachedWithoutCallback(() => called)]);
    } catch (err) {
      // Already detached by someone else: fusermount fails, and the goal holds.
      if (!this.mountLost || (await isMountPoint(this.mountPoint)).mounted)
        errors.push(
          new TwinError(
            'ETWIN_UNMOUNT_FAILED',
            `unmounting ${this.mountPoint} failed: ${(err as Error).message}`,
          ),
        );
    }
    let spilled = false;
    this.nativeChanges?.changes.drain();
    this.unmountPhase = 'writing back after detaching';
    try {
      await this.cache.flushAll();
    } catch (err) {
      // Acknowledged data that cannot reach the primary is never dropped (invariant 10): it goes
      // to the spill journal, which the next start writes back before mounting.
      errors.push(await this.spillUnwritten(err));
      spilled = true;
    }
    this.unmountPhase = "closing (the cache's last write-back and sync, the FUSE connection)";
    try {
      await this.store.dispose();
    } catch (err) {
      errors.push(err);
    }
    this.unmountPhase = 'checking the mount is gone';
    if (!spilled) await this.spill?.removeIfEmpty().catch(() => undefined);
    if ((await isMountPoint(this.mountPoint)).mounted)
      errors.push(new TwinError('ETWIN_UNMOUNT_FAILED', `${this.mountPoint} is still mounted`));
    else this.retireExitGuard();
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, 'unmount finished with errors');
  }

  /**
   * Resolves when the kernel has dropped the mount and fuse-native's close has still not called
   * back DETACH_GRACE_MS later (said in the log, with where its close was): the detach is done,
   * and what the unmount does next needs nothing from that callback. A stop hung there for good
   * in 1 of 41 handle-diff seeds (2026-12-07): the mount gone, fusermount's child gone, the
   * callback never called. The cause found later (fuse-native level 28: a libfuse worker
   * cancelled inside libuv's signal handler lost the child's SIGCHLD) is fixed; this stays for a
   * callback that waits on fusermount's output held by a process it left behind
   * (test/cli/shutdown-steps.test.ts). Returns at once when `called` says it came.
   */
  private async detachedWithoutCallback(called: () => boolean): Promise<void> {
    let goneAt = 0;
    while (!called()) {
      await new Promise((r) => setTimeout(r, DETACH_POLL_MS));
      if (called()) return;
      if ((await isMountPoint(this.mountPoint)).mounted) {
        goneAt = 0;
        continue;
      }
      if (goneAt === 0) goneAt = Date.now();
      else if (Date.now() - goneAt >= DETACH_GRACE_MS) {
        this.log(
          `the unmount of ${this.mountPoint} did not call back ${DETACH_GRACE_MS / 1000} s after the kernel dropped the mount (${this.fuse.closeState || 'its close not started'}); going on without it`,
        );
        return;
      }
    }
  }

  /**
   * The guard stays while the connection lives: a lazily detached mount with open files is still
   * served (and can still leave a thread waiting on it at exit). Checked once a second.
   */
  private retireExitGuard(): void {
    const guard = this.exitGuard;
    if (!guard) return;
    const check = () => {
      if (!guard.connectionEnded()) return false;
      guard.dispose();
      clearInterval(timer);
      return true;
    };
    const timer = setInterval(check, 1000);
    timer.unref();
    check();
  }

  /** Moves what the cache could not write back into the spill journal; returns the error to report. */
  private async spillUnwritten(cause: unknown): Promise<TwinError> {
    const files = await this.cache.takeUnwritten();
    if (files.length === 0)
      return new TwinError(
        'ETWIN_WRITEBACK',
        `write-back failed at unmount: ${firstCode(cause)}`,
        {},
        { cause },
      );
    const bytes = files.reduce((s, f) => s + f.extents.reduce((t, e) => t + e.data.length, 0), 0);
    const why = [...new Set(files.map((f) => f.error).filter(Boolean))].join(', ') || firstCode(cause);
    const data = { primary: this.primary, files: files.map((f) => f.path), bytes };
    if (!this.spill)
      return new TwinError(
        'ETWIN_WRITEBACK',
        `${bytes} byte(s) of ${files.length} file(s) could not be written to ${this.primary} (${why}) and are lost: no spill directory`,
        data,
        { cause },
      );
    try {
      await this.spill.write(files);
    } catch (err) {
      return new TwinError(
        'ETWIN_WRITEBACK',
        `${bytes} byte(s) of ${files.length} file(s) could not be written to ${this.primary} (${why}) nor to the spill journal ${this.spill.file} (${(err as Error).message}): lost`,
        data,
        { cause: err },
      );
    }
    return new TwinError(
      'ETWIN_WRITEBACK_SPILLED',
      `${bytes} byte(s) of ${files.length} file(s) could not be written to ${this.primary} (${why}); they are kept in ${this.spill.file} and written back when the server next starts`,
      { ...data, journal: this.spill.file },
      { cause },
    );
  }

  private log(msg: string): void {
    (this.opts.log ?? defaultLog)(msg);
  }
}

function defaultLog(msg: string): void {
  process.stderr.write(`twinfs: ${msg}\n`);
}

function firstCode(err: unknown): string {
  if (err instanceof AggregateError) return firstCode(err.errors[0]);
  return (err as NodeJS.ErrnoException)?.code ?? String((err as Error)?.message ?? err);
}

function loadFuse(): any {
  try {
    return require('fuse-native');
  } catch (err) {
    throw new TwinError(
      'ETWIN_FUSE_UNAVAILABLE',
      `FUSE is not available: ${(err as Error).message}. Install Debian's libfuse2 and fuse (scripts/setup.sh does).`,
      {},
      { cause: err },
    );
  }
}
