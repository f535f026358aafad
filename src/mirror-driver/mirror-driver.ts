import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import type { Stats } from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { delay, SerialQueue } from '../common/async.js';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import type { Change, ChangeSink } from '../fusefs/change-sink.js';
import { setTimesNs } from '../posix/set-times.js';
import { type ChangeAnswer, ChangeRecord, type Generation } from './change-record.js';
import { loadVolumeId, type MirrorLayout, mirrorLayout, openDevice } from './device.js';
import { DeviceWatch } from './device-watch.js';
import { copyChunk, type SyncOptions, type SyncResult, syncEntry, syncMeta } from './entry-sync.js';
import { Journal, type JournalRecord } from './journal.js';
import { mergeLinkedRanges } from './linked-ranges.js';
import { MirrorWriter } from './mirror-writer.js';
import { covers, coversUnder, type Selector, SplitTracker } from './split-tracker.js';
import { MirrorTrace } from './trace.js';
import { compareOne, type Difference, type VerifyReport, verifyTrees } from './verify.js';

/** Changes that modify an inode's content or metadata (not its names). */
const INODE_OPS = new Set<Change['op']>([
  'write',
  'truncate',
  'chmod',
  'chown',
  'utimens',
  'setxattr',
  'removexattr',
]);

export type PairState = 'PAIR' | 'COPY' | 'SPLIT' | 'RESYNC' | 'BROKEN';

export interface MirrorDriverOptions {
  primary: string;
  mirror: string;
  /**
   * Where the primary's volume id and the driver's journal are kept (default /var/lib/twinfs, or
   * ~/.local/state/twinfs).
   */
  stateDir?: string;
  /** Take over a mirror that belongs to another primary. */
  adopt?: boolean;
  /** Retry broken pairs this often, ms (0: only on repair()). Default 30000. */
  retryBrokenMs?: number;
  /** Checkpoint the journal this often, ms. Default 10000. */
  checkpointMs?: number;
  /** Check that the mirror's filesystem is still there this often, ms (0: never). Default 1000. */
  deviceCheckMs?: number;
  /**
   * Compare the whole mirror with the primary (type, size, mtime, ctime, mode, owner) in the
   * background at every start, copying what differs (state COPY meanwhile). Default true: the
   * primary is a plain directory that may have changed while no server ran. A new mirror, a lost
   * journal or a machine crash always get one.
   */
  reconcileOnStart?: boolean;
  log?: (msg: string) => void;
}

export interface SplitInfo {
  splitId: string;
  selector: Selector;
  since: number;
  trackedBytes: number;
  trackedFiles: number;
  owner?: string;
  /** The change record's generation at the split: what the split copy holds (see ChangeRecord). */
  generation: Generation;
}

export interface ResyncResult {
  splitId: string;
  bytesCopied: number;
  entries: number;
  ms: number;
}

export interface MirrorStatus {
  deviceId: string;
  mirrorRoot: string;
  state: 'COPY' | 'PAIR' | 'DEGRADED';
  splits: SplitInfo[];
  broken: string[];
  /** Why each broken pair broke (errno code and message). */
  brokenReasons: Record<string, string>;
  queueLength: number;
  /** The change record (change-record.ts): generation, floor, whether it vouches now. */
  changes: ReturnType<ChangeRecord['describe']>;
  stats: {
    bytesMirrored: number;
    changesApplied: number;
    changesTracked: number;
    /** Bytes copied by resyncs of splits. */
    resyncBytes: number;
    /** Bytes copied by the initial copy and start-up reconciliation. */
    copyBytes: number;
    /** Bytes rewritten for paths the journal named as possibly different after a crash. */
    recoveryBytes: number;
    repairs: number;
  };
}

export interface RepairResult {
  bytes: number;
  entries: number;
  /** Pairs still BROKEN afterwards, and why. */
  remaining: string[];
  reasons: Record<string, string>;
}

export interface ProgressEvent {
  phase: 'copy' | 'resync' | 'repair' | 'recover';
  entries: number;
  bytes: number;
  done: boolean;
}

const HEAL_CODES = new Set(['ENOENT', 'ENOTDIR']);
/** Errors that say the mirror device as a whole cannot be written. */
const DEVICE_CODES = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EROFS', 'ENODEV', 'ENXIO']);

/**
 * The mirror driver: a ChangeSink that keeps the mirror's data directory identical to the
 * primary, pair by pair (a pair is one file). Changes are applied in the order the primary saw
 * them, through one serial queue; a split is a marker in that queue (O(1), whatever the number
 * of files) after which changes to covered files are tracked instead of applied; resync applies
 * exactly the tracked changes. A mirror error breaks only the pairs it hit; the primary and the
 * application never see it.
 *
 * Start-up work (resyncing splits recorded in the journal, repairing paths it names, the
 * initial copy or reconciliation) runs in the background; status().state is COPY until it is
 * done (whenReady()), and split() refuses meanwhile.
 */
/** Changes that add or remove a directory entry (and so move the directory's times). */
const NAMESPACE_OPS = new Set(['create', 'mknod', 'mkdir', 'symlink', 'link', 'unlink', 'rmdir', 'rename']);

export class MirrorDriver implements ChangeSink {
  readonly layout: MirrorLayout;
  readonly primary: string;
  private readonly queue = new SerialQueue();
  private readonly writer: MirrorWriter;
  private readonly journal: Journal;
  /** Per-path change generations (set in start()). */
  private changes!: ChangeRecord;
  private readonly splits = new Map<string, SplitTracker>();
  private readonly resyncing = new Set<string>();
  private readonly broken = new Set<string>();
  private readonly brokenReasons = new Map<string, string>();
  private readonly deviceWatch: DeviceWatch;
  /** Broken pairs being repaired: live changes reach them again, but they cannot be split yet. */
  private readonly healing = new Set<string>();
  /** Paths with a write intent in the journal, and when it was last renewed. */
  private readonly intents = new Map<string, number>();
  /** Paths the journal named at start that are not repaired yet. */
  private readonly pendingIntents = new Set<string>();
  private readonly pendingTimes = new Set<string>();
  private lastLiveAt = 0;
  /** Rename targets seen by each running (unlocked) reconciliation walk. */
  private readonly walks = new Set<Set<string>>();
  /** The next reconciliation must compare contents (machine crash, lost journal). */
  private deep = false;
  private copying = true;
  private ready: Promise<void> = Promise.resolve();
  private repairing: Promise<RepairResult> | null = null;
  private checkpointQueued = false;
  /**
   * Entries a resync found gone from the primary and left in the mirror for the changes queued
   * behind it (see removeGone), not synced yet: a rename moves them and syncs them where they
   * land, an unlink drops them.
   */
  private readonly unsynced = new Set<string>();
  /** A copy separated a name from the other names of its file (see copyEntry). */
  private relinkWanted = false;
  private readonly abort = new AbortController();
  private readonly trace = new MirrorTrace();
  private timesTimer: NodeJS.Timeout | null = null;
  private changeFile = '';
  private timers: NodeJS.Timeout[] = [];
  private disposed = false;
  private readonly stats = {
    bytesMirrored: 0,
    changesApplied: 0,
    changesTracked: 0,
    resyncBytes: 0,
    copyBytes: 0,
    recoveryBytes: 0,
    repairs: 0,
  };

  private readonly _onDidChangeState = new Emitter<{
    paths: string[] | 'volume';
    state: PairState;
    splitId?: string;
  }>();
  /** Pairs changed state (split, resync, resynced, broken, repaired, copy). */
  readonly onDidChangeState = this._onDidChangeState.event;
  private readonly _onDidSplit = new Emitter<SplitInfo>();
  readonly onDidSplit = this._onDidSplit.event;
  private readonly _onDidResync = new Emitter<ResyncResult>();
  readonly onDidResync = this._onDidResync.event;
  private readonly _onDidBreak = new Emitter<{ path: string; error: string }>();
  readonly onDidBreak = this._onDidBreak.event;
  private readonly _onProgress = new Emitter<ProgressEvent>();
  readonly onProgress = this._onProgress.event;

  private constructor(
    primary: string,
    layout: MirrorLayout,
    readonly deviceId: string,
    private readonly opts: MirrorDriverOptions,
    journalFile: string,
    bootId: string,
  ) {
    this.primary = primary;
    this.layout = layout;
    this.writer = new MirrorWriter(layout.data);
    this.journal = new Journal(journalFile, bootId);
    this.deviceWatch = new DeviceWatch(layout, deviceId);
  }

  /**
   * Opens the mirror (creating its device record on first use; refusing one that belongs to
   * another primary), reads the journal, and starts recovery or the initial copy in the
   * background. The returned driver is usable at once; subscribe to its events before the next
   * turn of the event loop to see the first COPY.
   */
  static async open(opts: MirrorDriverOptions): Promise<MirrorDriver> {
    const primary = await fsp.realpath(opts.primary);
    const layout = mirrorLayout(opts.mirror);
    const stateDir = opts.stateDir ?? defaultStateDir();
    const volumeId = await loadVolumeId(stateDir, primary);
    const { record, created } = await openDevice(layout, volumeId, primary, { adopt: opts.adopt });
    const bootId = (
      await fsp.readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown')
    ).trim();
    const journalFile = path.join(stateDir, 'journals', `${record.deviceId}.jsonl`);
    const d = new MirrorDriver(primary, layout, record.deviceId, opts, journalFile, bootId);
    d.changeFile = path.join(stateDir, 'journals', `${record.deviceId}.changes.json`);
    await d.start(created);
    return d;
  }

  private async start(created: boolean): Promise<void> {
    const rec = await this.journal.read();
    for (const p of rec.broken) this.broken.add(p);
    // Splits that survived a restart have no holder any more: they are resynced first. Link
    // counts are not journaled: if a name with tracked data went away (see lostLinks), every
    // tracked file of such a recovered split is copied whole.
    for (const s of rec.splits.values()) {
      if (s.lostLinks) for (const p of s.files.keys()) s.inodeChanged.set(p, 2);
      this.splits.set(s.id, s);
    }
    for (const p of rec.intents) this.pendingIntents.add(p);
    // Without a record written since this boot, the page cache may have lost mirror writes
    // whose size and mtime look right: compare contents. (A clean shutdown synced the mirror.)
    this.deep = rec.deep || (rec.otherBoot && !rec.clean) || (rec.missing && !created);
    this.changes = await ChangeRecord.open({
      file: this.changeFile,
      journal: { ...rec, log: rec.changeLog, gen: rec.changeGen },
      log: (m) => this.log(m),
    });
    // A new generation that still holds everything recovered, until it is repaired.
    await this.journal.checkpoint(() => this.snapshot());
    const retry = this.opts.retryBrokenMs ?? 30_000;
    if (retry > 0)
      this.timers.push(
        setInterval(() => {
          if (this.broken.size > 0 && !this.copying && !this.disposed)
            void this.repair().catch(() => undefined);
        }, retry),
      );
    this.timers.push(setInterval(() => this.queueCheckpoint(), this.opts.checkpointMs ?? 10_000));
    for (const t of this.timers) t.unref();
    await this.deviceWatch.start({
      intervalMs: this.opts.deviceCheckMs ?? 1000,
      onVanished: (reason) => this.markBroken('/', Object.assign(new Error(reason), { code: 'ENODEV' })),
    });
    const reconcile = created || this.deep || (this.opts.reconcileOnStart ?? true);
    // Next turn: whoever opened the driver subscribes to its events first.
    this.ready = new Promise<void>((r) => setImmediate(r)).then(() =>
      this.startWork(rec.clean, reconcile, created),
    );
  }

  private async startWork(clean: boolean, reconcile: boolean, created: boolean): Promise<void> {
    const signal = this.abort.signal;
    this._onDidChangeState.fire({ paths: 'volume', state: 'COPY' });
    try {
      if (this.splits.size > 0 || this.pendingIntents.size > 0 || !clean)
        this.log(
          `recovering: ${this.splits.size} split(s), ${this.pendingIntents.size} path(s) that may differ`,
        );
      for (const s of [...this.splits.values()]) {
        await this.resync(s.id).catch((err) =>
          this.log(`resync of recorded split ${s.id} failed: ${(err as Error).message}`),
        );
      }
      await this.recoverIntents(signal);
      if (this.broken.size > 0 && !signal.aborted) await this.repair();
      if (reconcile && !signal.aborted) {
        if (created) this.log('new mirror: initial copy');
        else if (this.deep) this.log('no usable journal: comparing the whole mirror with the primary');
        const r = await this.reconcileTree('/', 'copy', { deep: this.deep, signal });
        this.stats.copyBytes += r.bytes;
        if (signal.aborted) this.pendingIntents.add('/');
        else {
          // Every entry of the primary seen: changes made while no server ran are stamped.
          this.changes.startWalkDone();
          if (this.deep) {
            this.deep = false;
            this.queueCheckpoint();
          }
        }
      }
    } catch (err) {
      if (!signal.aborted) this.markBroken('/', err as NodeJS.ErrnoException);
    } finally {
      this.copying = false;
      if (!signal.aborted) this._onDidChangeState.fire({ paths: 'volume', state: 'PAIR' });
    }
  }

  /** Repairs the paths the journal named (exactly: compared chunk by chunk, differences rewritten). */
  private async recoverIntents(signal: AbortSignal): Promise<void> {
    let bytes = 0;
    let entries = 0;
    for (const p of [...this.pendingIntents]) {
      if (signal.aborted) return;
      const st = await fsp.lstat(this.primary + (p === '/' ? '' : p)).catch(() => undefined);
      if (st?.isDirectory()) {
        const r = await this.reconcileTree(p, 'recover', { signal });
        bytes += r.bytes;
        entries += r.entries;
      } else {
        bytes += await this.queue.push(async () => {
          if (this.heldUnder(p)) return 0;
          this.writer.forget(p, true);
          await this.ensureParents(p);
          const r = await this.copyEntry(this.primary + p, this.layout.data + p, { compare: true });
          await this.relinkIfWanted(p);
          return r.bytesCopied;
        });
        entries++;
      }
      if (!signal.aborted) this.pendingIntents.delete(p);
    }
    this.stats.recoveryBytes += bytes;
    this._onProgress.fire({ phase: 'recover', entries, bytes, done: true });
  }

  get dataRoot(): string {
    return this.layout.data;
  }

  /** Resolves when the start-up work (recovery, initial copy or reconciliation) is done. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  // ---- ChangeSink -----------------------------------------------------------------------------

  beforeChange(p: string): void | Promise<void> {
    this.changes.stamp(p);
    const known = this.intents.has(p);
    this.intents.set(p, Date.now());
    if (!known) return this.journal.append({ t: 'intent', p }).catch(() => undefined);
  }

  apply(c: Change): Promise<void> {
    if (this.disposed) return Promise.resolve();
    this.lastLiveAt = Date.now();
    this.changes.note(c);
    return this.queue.push(() => this.route(c));
  }

  /**
   * Background work (copy, repair, reconciliation) runs between live changes. An application
   * doing one change after another (rm -r, untar) would wait for a whole background task each
   * time: while changes keep coming, hold back (for up to YIELD_MAX_MS per task).
   */
  private async yieldToLive(): Promise<void> {
    const until = Date.now() + YIELD_MAX_MS;
    while (Date.now() - this.lastLiveAt < YIELD_QUIET_MS && Date.now() < until) await delay(YIELD_QUIET_MS);
  }

  private async route(c: Change): Promise<void> {
    const inodeOp = INODE_OPS.has(c.op);
    if (inodeOp) await this.followFrozen(c.path);
    const holders: SplitTracker[] = [];
    for (const s of this.splits.values()) {
      if (!s.touches(c)) continue;
      holders.push(s);
      // State and journal line in one synchronous step (see Journal). Not awaited: the write
      // intent, on disk before the primary changed, covers a crash before this line lands.
      s.record(c);
      if (c.op !== 'fsync') void this.journal.append(trackRecord(s.id, c)).catch(() => undefined);
    }
    if (this.trace.on)
      this.trace.change(
        c,
        holders.map((s) => s.id.slice(-8)),
      );
    if (holders.length > 0) {
      if (c.op !== 'fsync') this.stats.changesTracked++;
      if (inodeOp) await this.noteInodeChange(holders, c.path);
      // Unsynced entries moved under the split: its resync syncs them where they land.
      if (c.op === 'rename' && this.unsynced.size > 0)
        for (const q of this.moveUnsynced(c.from, c.path)) for (const s of holders) s.touched.add(q);
      return;
    }
    if ((c.op === 'rename' || c.op === 'link') && this.broken.size > 0)
      this.followBroken(c.from, c.path, c.op === 'rename');
    if (this.isBroken(c.path)) {
      // A rename onto a broken pair is not applied to the mirror, where the old name would then
      // stay with nothing left to remove it (a repair of the new name does not touch it): it is
      // broken too, and a repair makes both names as the primary has them.
      if (c.op === 'rename' && !this.isBroken(c.from))
        this.markBroken(
          c.from,
          Object.assign(new Error(`renamed onto the broken pair ${c.path}`), { code: 'EIO' }),
        );
      return;
    }
    try {
      if (c.op === 'fsync') await this.syncTimes(c.path);
      else if (c.op === 'rename') this.moveTimes(c.from, c.path);
      else if (c.op === 'unlink') this.pendingTimes.delete(c.path);
      await this.writer.apply(c);
      this.stats.changesApplied++;
      if (NAMESPACE_OPS.has(c.op)) this.noteDirTimes(c.path, c.op === 'rename' ? c.from : undefined);
      // A directory renamed under a running walk may have moved where the walk has been to a
      // place it has already left: it gets walked again afterwards.
      if (c.op === 'rename') for (const w of this.walks) w.add(c.path);
      if (this.unsynced.size > 0) {
        if (c.op === 'rename') await this.syncUnsynced(this.moveUnsynced(c.from, c.path));
        else if (c.op === 'unlink' || c.op === 'rmdir') this.moveUnsynced(c.path, null);
      }
      if (c.op === 'write') {
        this.stats.bytesMirrored += c.data.length;
        // An inode with other names may lose this one next (unlink, or libfuse's .fuse_hidden
        // name going on release), and then its times can no longer be read by path: copy them
        // now. The primary still has the name: an unlink waits for the flush, which waits for us.
        if ((this.writer.linkCount(c.path) ?? 1) > 1) {
          this.pendingTimes.add(c.path);
          await this.syncTimes(c.path);
        } else this.noteTimes(c.path);
      } else if (
        c.op === 'truncate' ||
        c.op === 'create' ||
        c.op === 'mknod' ||
        c.op === 'symlink' ||
        c.op === 'mkdir'
      )
        this.noteTimes(c.path);
    } catch (err) {
      await this.onApplyError(c, err as NodeJS.ErrnoException);
    }
  }

  /**
   * A change through another name of a hard-linked file that a split selected by one of its
   * names: in the mirror that name is the frozen copy too, so it must not be written now. The
   * split covers it from here on (its changes are tracked and resynced through the same mirror
   * inode: the names stay one file).
   */
  private async followFrozen(p: string): Promise<void> {
    let any = false;
    for (const s of this.splits.values()) if (s.frozenInos.size > 0 && !s.covers(p)) any = true;
    if (!any) return;
    const st = await fsp.lstat(this.layout.data + p).catch(() => undefined);
    if (!st?.isFile()) return;
    for (const s of this.splits.values()) if (s.frozenInos.has(st.ino)) s.followName(p);
  }

  /**
   * Held changes to an inode: its link count tells the split whether a later unlink of this
   * name could leave other names, unknown to it, with changes to resync (see lostLinks).
   */
  private async noteInodeChange(holders: SplitTracker[], p: string): Promise<void> {
    const todo = holders.filter((s) => !s.inodeChanged.has(p));
    if (todo.length === 0) return;
    const st = await fsp.lstat(this.primary + p).catch(() => undefined);
    // Gone already (its unlink or rename is queued behind): assume it had other names.
    const nlink = st ? (st.isDirectory() ? 1 : st.nlink) : 2;
    for (const s of todo) s.noteInodeChange(p, nlink, st?.ino);
  }

  private async onApplyError(c: Change, err: NodeJS.ErrnoException): Promise<void> {
    const code = err.code ?? '';
    if (
      HEAL_CODES.has(code) ||
      (code === 'EEXIST' && c.op !== 'write') ||
      (code === 'EISDIR' && c.op === 'create')
    ) {
      // The mirror lacks what the change builds on (or already has it): make this path whole
      // from the primary, parents first.
      try {
        await this.healPath(c.path);
        if (c.op === 'rename') await this.healPath(c.from);
        return;
      } catch (e) {
        err = e as NodeJS.ErrnoException;
      }
    }
    this.markBroken(c.path, err);
    if (c.op === 'rename') this.markBroken(c.from, err);
  }

  /** A rename (or link) from a broken pair carries the brokenness to the new name. */
  private followBroken(from: string, to: string, subtree: boolean): void {
    const err = Object.assign(new Error(`moved from the broken pair ${from}`), { code: 'EIO' });
    if (this.isBroken(from)) {
      this.markBroken(to, err);
      return;
    }
    if (!subtree) return;
    for (const b of [...this.broken])
      if (b.startsWith(from + '/')) this.markBroken(to + b.slice(from.length), err);
  }

  private markBroken(p: string, err: NodeJS.ErrnoException): void {
    if (this.broken.has(p)) return;
    this.trace.event('broken', { path: p, code: err.code, msg: err.message });
    this.broken.add(p);
    this.brokenReasons.set(p, `${err.code ?? 'EIO'}: ${err.message}`);
    this.log(`mirror pair broken for ${p}: ${err.code ?? err.message}`);
    void this.journal.append({ t: 'broken', p }).catch(() => undefined);
    this._onDidBreak.fire({ path: p, error: `${err.code ?? 'EIO'}: ${err.message}` });
    this._onDidChangeState.fire({ paths: [p], state: 'BROKEN' });
    void this.breakOtherNames(p).catch(() => undefined);
  }

  /**
   * The other names of a broken file are the same file: a change through any of them reaches
   * the mirror copy that failed, and the primary's content behind each of them moves on with
   * the broken one's. They break too (found by a walk of the primary: only a file's link count
   * is known, not its names).
   */
  private async breakOtherNames(p: string): Promise<void> {
    if (p === '/' || this.disposed) return;
    const st = await lstatOrUndefined(this.primary + p);
    if (!st?.isFile() || st.nlink < 2) return;
    const err = Object.assign(new Error(`another name of the broken file ${p}`), { code: 'EIO' });
    for (const q of await namesOf(this.primary, st)) if (q !== p) this.markBroken(q, err);
  }

  private isBroken(p: string): boolean {
    if (this.broken.size === 0) return false;
    for (const b of this.broken) if (p === b || p.startsWith(b + '/') || b === '/') return true;
    return false;
  }

  /** Does any split hold p, or anything below it? Such mirror entries must not be replaced. */
  private heldUnder(p: string): boolean {
    for (const s of this.splits.values()) if (s.coversUnder(p)) return true;
    return false;
  }

  private isHeld(p: string): boolean {
    for (const s of this.splits.values()) if (s.covers(p)) return true;
    return false;
  }

  /** Creates missing parent directories of p in the mirror, from the primary's. */
  private async ensureParents(p: string): Promise<void> {
    const parts = p.split('/').filter(Boolean);
    let cur = '';
    for (let i = 0; i < parts.length - 1; i++) {
      cur += '/' + parts[i];
      const m = await fsp.lstat(this.layout.data + cur).catch(() => undefined);
      if (m?.isDirectory()) continue;
      if (m && this.heldUnder(cur))
        throw Object.assign(new Error(`${cur} is held by a split`), { code: 'ENOTDIR' });
      this.writer.forget(cur, true);
      await syncEntry(this.primary + cur, this.layout.data + cur);
    }
  }

  /**
   * syncEntry, noting when a name of a file with several names got a file of its own
   * (SyncResult.separated): the names must be linked again (relinkVolume) before the task ends.
   */
  private async copyEntry(primary: string, mirror: string, opts?: SyncOptions): Promise<SyncResult> {
    const r = await syncEntry(primary, mirror, opts);
    if (r.separated) this.relinkWanted = true;
    return r;
  }

  /** Copies path (and any missing parents) from the primary. */
  private async healPath(p: string): Promise<void> {
    if (this.heldUnder(p)) {
      // A frozen copy sits at or below p: leave the mirror alone, the resync will sync p.
      for (const s of this.splits.values()) {
        if (!s.coversUnder(p)) continue;
        s.touched.add(p);
        void this.journal.append({ t: 'm', id: s.id, p }).catch(() => undefined);
      }
      return;
    }
    this.trace.event('heal', { path: p });
    await this.ensureParents(p);
    this.writer.forget(p, true);
    // What the mirror has there is not the file the change was about (or the change would have
    // applied): if it has other names, it is some other file and must not be written into.
    const old = await lstatOrUndefined(this.layout.data + p);
    if (old?.isFile() && old.nlink > 1) await fsp.unlink(this.layout.data + p);
    const r = await this.copyEntry(this.primary + p, this.layout.data + p);
    this.stats.bytesMirrored += r.bytesCopied;
    // A directory the mirror lacked (say, renamed before the initial copy reached it) comes
    // with its contents.
    const st = await lstatOrUndefined(this.primary + p);
    if (st?.isDirectory()) {
      const t = await this.reconcileTree(p, 'repair', { locked: true });
      this.stats.bytesMirrored += t.bytes;
    }
    // A file with other names came as a copy of its own: the mirror would keep two files where
    // the primary has one, and the next write through one name would leave the other behind.
    if (
      this.relinkWanted ||
      (st?.isFile() && st.nlink > 1) ||
      (st?.isDirectory() && (await hasMultiLink(this.primary + p)))
    )
      await this.relinkVolume(p);
  }

  private async relinkIfWanted(cause: string): Promise<void> {
    if (this.relinkWanted) await this.relinkVolume(cause);
  }

  /**
   * Links the names of files with several names again after one was copied alone: the other
   * names can be anywhere, so the volume is compared. Now, inside the task that healed it: until
   * then the copies are separate files, and a change applied to one of them in between (an
   * xattr through the healed name, a write through another) would be on one copy only, and the
   * comparison, which keeps the first name it finds equal by size, mtime and ctime, could keep
   * the other.
   */
  private async relinkVolume(cause: string): Promise<void> {
    this.log(`${cause}: a file with several names was copied alone; comparing the volume to link its names`);
    this.trace.event('relink', { cause });
    this.relinkWanted = false;
    try {
      const r = await this.reconcileTree('/', 'repair', { locked: true });
      this.stats.bytesMirrored += r.bytes;
    } catch (err) {
      this.markBroken('/', err as NodeJS.ErrnoException);
    }
  }

  /**
   * Entries a resync found gone from the primary. Their removal may already be on its way in the
   * queue (the primary runs ahead of it) as a rename: removing them now would make that rename
   * fail and heal its target as a fresh copy (a hard link lost). Run after what was queued
   * during the resync: whatever is still gone from the primary then is removed.
   */
  private async removeGone(paths: string[]): Promise<void> {
    const left = paths.filter((p) => this.unsynced.delete(p));
    this.trace.event('removeGone', { left });
    const back: string[] = [];
    for (const p of left) {
      if (this.heldUnder(p)) {
        for (const s of this.splits.values()) if (s.coversUnder(p)) s.touched.add(p);
        continue;
      }
      if (await lstatOrUndefined(this.primary + p)) {
        back.push(p);
        continue;
      }
      this.writer.forget(p, true);
      await fsp
        .rm(this.layout.data + p, { recursive: true, force: true })
        .catch((err) => this.markBroken(p, err as NodeJS.ErrnoException));
      this.noteDirTimes(p);
    }
    await this.syncUnsynced(back);
  }

  /** Moves unsynced entries at or below from to below to (null: drops them); returns their new paths. */
  private moveUnsynced(from: string, to: string | null): string[] {
    const moved: string[] = [];
    for (const p of [...this.unsynced]) {
      if (p !== from && !p.startsWith(from + '/')) continue;
      this.unsynced.delete(p);
      if (to !== null) moved.push(to + p.slice(from.length));
    }
    return moved.sort();
  }

  /** Syncs entries a resync could not (they had moved on the primary) where they are now. */
  private async syncUnsynced(paths: string[]): Promise<void> {
    for (const p of paths) {
      if (this.heldUnder(p)) {
        for (const s of this.splits.values()) if (s.coversUnder(p)) s.touched.add(p);
        continue;
      }
      try {
        this.writer.forget(p, true);
        await this.ensureParents(p);
        const r = await this.copyEntry(this.primary + p, this.layout.data + p, { compare: true });
        this.stats.resyncBytes += r.bytesCopied;
      } catch (err) {
        // Moved on again: the change that did it is queued and carries on from there.
        if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? ''))
          this.markBroken(p, err as NodeJS.ErrnoException);
      }
    }
    await this.relinkIfWanted('entries moved during a resync');
  }

  /**
   * Adding or removing an entry moves the mirror directory's mtime (and the driver's own copies,
   * removals and replays do too): the primary's times are copied back with the other pending
   * times (200 ms later, and before any split). A directory a split holds keeps its frozen
   * times; that split's resync notes it again.
   */
  private noteDirTimes(...paths: Array<string | undefined>): void {
    for (const p of paths) {
      if (p === undefined || p === '/') continue;
      const dir = path.posix.dirname(p);
      if (!this.isHeld(dir)) this.noteTimes(dir);
    }
  }

  private noteTimes(p: string): void {
    this.pendingTimes.add(p);
    if (!this.timesTimer) {
      this.timesTimer = setTimeout(() => {
        this.timesTimer = null;
        void this.queue.push(() => this.syncAllTimes());
      }, 200);
      this.timesTimer.unref();
    }
  }

  /** The primary entry's times onto its mirror copy, to the ns (gone from either: nothing to do). */
  private async copyTimes(p: string): Promise<void> {
    if (this.isHeld(p)) return;
    const st = await fsp.lstat(this.primary + (p === '/' ? '' : p), { bigint: true }).catch(() => undefined);
    if (!st) return;
    try {
      setTimesNs(this.layout.data + (p === '/' ? '' : p), st.atimeNs, st.mtimeNs);
    } catch {
      // Gone from the mirror meanwhile: the change that removed it is queued.
    }
  }

  /** Data writes move the mirror's mtime; copy the primary's so the pair matches. */
  private async syncTimes(p: string): Promise<void> {
    if (!this.pendingTimes.delete(p)) return;
    const st = await fsp.lstat(this.primary + p, { bigint: true }).catch(() => undefined);
    if (st) {
      try {
        setTimesNs(this.layout.data + p, st.atimeNs, st.mtimeNs);
      } catch {
        // Gone from the mirror too (or not yet there): the change that made it is queued.
      }
    }
    // Gone from the primary: it was renamed (or unlinked) and the change is still on its way
    // to this queue. Keep it pending so the rename moves it (the unlink drops it).
    else if (this.pendingTimes.size < 100_000) this.pendingTimes.add(p);
  }

  /** Pending mtime copies are keyed by path: they follow renames. */
  private moveTimes(from: string, to: string): void {
    for (const q of [...this.pendingTimes]) {
      if (q === to || q.startsWith(to + '/')) this.pendingTimes.delete(q);
      if (q !== from && !q.startsWith(from + '/')) continue;
      this.pendingTimes.delete(q);
      this.pendingTimes.add(to + q.slice(from.length));
    }
  }

  private async syncAllTimes(): Promise<void> {
    for (const p of [...this.pendingTimes]) await this.syncTimes(p);
  }

  // ---- split / resync ---------------------------------------------------------------------------

  /**
   * Splits the pairs of the selected files atomically: every change reported before this call
   * is on the mirror when it resolves, and every change after it is tracked. Costs O(1) in the
   * number of files. Overlapping splits are allowed (each tracks its own changes). Refused
   * (ETWIN_MIRROR_BROKEN) while the mirror is being copied or recovered, and when a selected
   * pair is broken: the frozen copy would not be what the primary held.
   */
  split(selector: Selector, owner?: string): Promise<SplitInfo> {
    const sel = normalizeSelector(selector);
    return this.queue.push(async () => {
      if (this.disposed) throw new TwinError('ETWIN_DISPOSED', 'the mirror driver is shut down');
      if (this.copying)
        throw new TwinError(
          'ETWIN_MIRROR_BROKEN',
          'the mirror is still being copied or recovered; try again when it is in sync',
        );
      const hit = [...this.broken, ...this.healing].find((b) => covers(sel, b) || coversUnder(sel, b));
      if (hit)
        throw new TwinError('ETWIN_MIRROR_BROKEN', `the mirror pair for ${hit} is BROKEN; repair it first`, {
          path: hit,
        });
      await this.syncAllTimes();
      const s = new SplitTracker(`split-${randomUUID()}`, sel, Date.now(), owner);
      // Explicitly selected files with other names (O(selected paths), not O(volume)).
      for (const p of sel.paths ?? []) {
        const st = await fsp.lstat(this.layout.data + p).catch(() => undefined);
        if (st?.isFile() && st.nlink > 1) s.frozenInos.set(st.ino, p);
      }
      this.splits.set(s.id, s);
      this.trace.event('split', { id: s.id.slice(-8), sel });
      s.generation = this.changes.generation;
      try {
        void this.journal.append(this.changes.journalLine()).catch(() => undefined);
        await this.journal.append({ t: 'split', s: s.toRecord() });
      } catch (err) {
        this.splits.delete(s.id);
        throw new TwinError(
          'ETWIN_MIRROR_BROKEN',
          `cannot record the split: ${(err as Error).message}`,
          {},
          { cause: err },
        );
      }
      const info = this.splitInfo(s);
      this._onDidSplit.fire(info);
      this._onDidChangeState.fire({
        paths: sel.volume ? 'volume' : [...(sel.paths ?? []), ...(sel.subtrees ?? [])],
        state: 'SPLIT',
        splitId: s.id,
      });
      return info;
    });
  }

  /** Applies what changed under a split to the mirror and rejoins its pairs. */
  resync(splitId: string): Promise<ResyncResult> {
    const s = this.splits.get(splitId);
    if (!s) return Promise.reject(new TwinError('ETWIN_UNKNOWN_SPLIT', `no split ${splitId}`, { splitId }));
    if (this.resyncing.has(splitId))
      return Promise.reject(
        new TwinError('ETWIN_SPLIT_CONFLICT', `split ${splitId} is already resyncing`, { splitId }),
      );
    this.resyncing.add(splitId);
    this._onDidChangeState.fire({
      paths: s.selector.volume ? 'volume' : [...s.touched],
      state: 'RESYNC',
      splitId,
    });
    // Demonstration only (docs/reliability.md, "The harness catches what it exists for"): a
    // resync that does not wait its turn in the change queue must make the stress harness fail.
    if (process.env.TWINFS_DEMO_UNORDERED_RESYNC === '1')
      return this.resyncLocked(s).finally(() => this.resyncing.delete(splitId));
    return this.queue.push(() => this.resyncLocked(s)).finally(() => this.resyncing.delete(splitId));
  }

  private async resyncLocked(s: SplitTracker): Promise<ResyncResult> {
    const started = Date.now();
    this.splits.delete(s.id);
    this.trace.event('resync', { id: s.id.slice(-8), lostLinks: s.lostLinks, files: s.files.size });
    // Other splits that still hold some of these paths keep them frozen: those paths are
    // resynced when the last holder lets go (their changes are tracked there too).
    const stillHeld = (p: string) => this.heldUnder(p);
    let bytes = 0;
    let entries = 0;
    const trees = new Set<string>();
    for (const c of s.namespace) {
      if (stillHeld(c.path) || ((c.op === 'rename' || c.op === 'link') && stillHeld(c.from))) continue;
      try {
        await this.writer.apply(c);
      } catch (err) {
        // The final state is reconciled below; a rename that could not be replayed needs its
        // subtrees compared.
        if (c.op !== 'rename') continue;
        const code = (err as NodeJS.ErrnoException).code;
        if (
          (code === 'ENOTEMPTY' || code === 'EEXIST') &&
          (await this.mergeInto(c.from, c.path).catch(() => false))
        ) {
          trees.add(c.path);
          continue;
        }
        trees.add(c.path);
        trees.add(c.from);
      }
    }
    const paths = [...new Set([...s.touched, ...s.files.keys()])].sort();
    // Names whose inode lost another name with tracked ranges (lostLinks) are copied whole.
    const primaryInos = new Map<string, number | undefined>();
    if (s.lostLinks)
      for (const p of s.files.keys()) primaryInos.set(p, (await lstatOrUndefined(this.primary + p))?.ino);
    const tracked = await mergeLinkedRanges(
      s.files,
      paths,
      async (p) => {
        const st = stillHeld(p) ? undefined : await lstatOrUndefined(this.layout.data + p);
        return st?.isFile() && st.nlink > 1 ? st.ino : undefined;
      },
      s.lostLinks ? (p) => s.copiesWhole(p, primaryInos.get(p)) : undefined,
    );
    const gone: string[] = [];
    for (const p of paths) {
      if (stillHeld(p)) continue;
      if (!(await lstatOrUndefined(this.primary + p))) {
        gone.push(p);
        this.unsynced.add(p);
        // Its changes go with it; if its file has other names, they are owed them (below).
        s.nameGone(p);
        continue;
      }
      const f = tracked.get(p);
      if (this.trace.on)
        this.trace.event('resync-entry', { path: p, ranges: f ? f.ranges.toArray() : 'whole', cut: f?.cut });
      try {
        this.writer.forget(p, true);
        await this.ensureParents(p);
        const r = await this.copyEntry(this.primary + p, this.layout.data + p, {
          ranges: f?.ranges,
          cut: f?.cut,
        });
        bytes += r.bytesCopied;
        entries++;
      } catch (err) {
        if (HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) trees.add(path.posix.dirname(p));
        else this.markBroken(p, err as NodeJS.ErrnoException);
      }
    }
    // A changed file lost a name while it had others: they are found by comparing everything;
    // so are the other names of a name that got a file of its own (copyEntry).
    if (s.lostLinks || this.relinkWanted) trees.add('/');
    // The other names of an inode that lost a changed name are not known here, and what changed
    // may not show in size, mtime or ctime (the replayed unlink just moved the mirror's ctime past
    // the primary's): primary files of such inodes that changed since the split are compared in
    // full, metadata included.
    const deep = s.lostLinks
      ? (st: Stats) =>
          // (A second of margin: file times come from the kernel's coarse clock.)
          st.isFile() && st.ctimeMs >= s.since - 1000 && (s.lostUnknown || s.lostInos.has(st.ino))
      : undefined;
    for (const t of outermost(trees)) {
      try {
        const r = await this.reconcileTree(t, 'resync', { locked: true, deep });
        bytes += r.bytes;
        entries += r.entries;
      } catch (err) {
        this.markBroken(t, err as NodeJS.ErrnoException);
      }
    }
    this.stats.resyncBytes += bytes;
    // Replayed and copied entries moved their directories' times (the split's own directories included).
    for (const c of s.namespace) this.noteDirTimes(c.path, c.op === 'rename' ? c.from : undefined);
    this.noteDirTimes(...paths);
    this.trace.event('resynced', { id: s.id.slice(-8), gone, trees: outermost(trees) });
    if (gone.length > 0)
      void this.queue
        .push(() => this.removeGone(gone))
        .catch((err) => this.markBroken('/', err as NodeJS.ErrnoException));
    await this.journal.append({ t: 'released', id: s.id }).catch(() => undefined);
    const result = { splitId: s.id, bytesCopied: bytes, entries, ms: Date.now() - started };
    this._onDidResync.fire(result);
    this._onDidChangeState.fire({
      paths: s.selector.volume ? 'volume' : paths,
      state: 'PAIR',
      splitId: s.id,
    });
    return result;
  }

  /**
   * Replays a directory rename whose target the mirror already has (files under the new name
   * were mirrored while the rename was held back): moves in whatever the target lacks, keeps
   * what it has (made from the primary later), drops the rest of the source.
   */
  private async mergeInto(from: string, to: string): Promise<boolean> {
    const src = this.layout.data + from;
    const dst = this.layout.data + to;
    const [a, b] = await Promise.all([
      fsp.lstat(src).catch(() => undefined),
      fsp.lstat(dst).catch(() => undefined),
    ]);
    if (!a?.isDirectory() || !b?.isDirectory()) return false;
    this.writer.forget(from, true);
    for (const name of await fsp.readdir(src)) {
      const d = await fsp.lstat(`${dst}/${name}`).catch(() => undefined);
      if (!d) await fsp.rename(`${src}/${name}`, `${dst}/${name}`);
      else if (d.isDirectory()) await this.mergeInto(`${from}/${name}`, `${to}/${name}`);
    }
    await fsp.rm(src, { recursive: true, force: true });
    return true;
  }

  /**
   * What changed since a generation, among the paths `within` accepts (ChangeRecord.since).
   * Ask right after a split: its generation bounds what its copy holds.
   */
  changesSince(since: Generation, within?: (p: string) => boolean): ChangeAnswer {
    return this.changes.since(since, within);
  }

  getSplit(splitId: string): SplitInfo | undefined {
    const s = this.splits.get(splitId);
    return s && this.splitInfo(s);
  }

  /** The pair state of one volume path. */
  stateOf(p: string): PairState {
    if (this.isBroken(p) || [...this.healing].some((h) => h === '/' || p === h || p.startsWith(h + '/')))
      return 'BROKEN';
    for (const s of this.splits.values()) {
      if (s.covers(p)) return this.resyncing.has(s.id) ? 'RESYNC' : 'SPLIT';
    }
    return this.copying ? 'COPY' : 'PAIR';
  }

  /** Where a backup peer reads a file's frozen copy. */
  mirrorPathOf(p: string): string {
    return p === '/' ? this.layout.data : path.join(this.layout.data, p);
  }

  // ---- copy, repair, recovery -------------------------------------------------------------------

  /** Full resync of broken pairs (or of everything with all=true). Concurrent calls share one run. */
  repair(opts: { all?: boolean } = {}): Promise<RepairResult> {
    this.repairing ??= this.doRepair(opts).finally(() => {
      this.repairing = null;
    });
    return this.repairing;
  }

  private async doRepair(opts: { all?: boolean }): Promise<RepairResult> {
    if (!(await this.deviceWatch.accept())) {
      // Never copy into the directory a vanished mirror left behind (the wrong disk).
      const reason = (await this.deviceWatch.check()) ?? 'the mirror device is not there';
      this.markBroken('/', Object.assign(new Error(reason), { code: 'ENODEV' }));
      return { bytes: 0, entries: 0, remaining: [...this.broken], reasons: this.reasonsOf() };
    }
    const targets = opts.all ? ['/'] : outermost(this.broken);
    let bytes = 0;
    let entries = 0;
    for (const t of targets) {
      const cleared = [...this.broken].filter((b) => t === '/' || b === t || b.startsWith(t + '/'));
      for (const b of cleared) this.broken.delete(b);
      this.healing.add(t);
      try {
        const st = await fsp.lstat(this.primary + (t === '/' ? '' : t)).catch(() => undefined);
        if (st && !st.isDirectory()) {
          // A file the mirror failed to follow: its copy may be torn anywhere; copy it whole.
          bytes += await this.queue.push(async () => {
            if (this.heldUnder(t)) return 0;
            this.writer.forget(t, true);
            await this.ensureParents(t);
            const r = await this.copyEntry(this.primary + t, this.layout.data + t);
            await this.relinkIfWanted(t);
            return r.bytesCopied;
          });
          entries++;
        } else {
          const r = await this.reconcileTree(t, 'repair', { signal: this.abort.signal });
          bytes += r.bytes;
          entries += r.entries;
        }
        // Copying is not proof: the pair is PAIR again only where a comparison says so.
        for (const d of await this.verifyRepaired(t))
          this.markBroken(
            d.path || '/',
            Object.assign(new Error(`the mirror still differs after the repair (${d.kind})`), {
              code: 'EVERIFY',
            }),
          );
      } catch (err) {
        this.markBroken(t, err as NodeJS.ErrnoException);
      } finally {
        this.healing.delete(t);
      }
      if (!this.isBroken(t) && ![...this.broken].some((b) => t === '/' || b.startsWith(t + '/'))) {
        this.stats.repairs++;
        for (const b of cleared) void this.journal.append({ t: 'repaired', p: b }).catch(() => undefined);
        this._onDidChangeState.fire({ paths: [t], state: 'PAIR' });
      }
    }
    return { bytes, entries, remaining: [...this.broken], reasons: this.reasonsOf() };
  }

  /**
   * Compares a repaired subtree (or file) with the primary, content included. Entries that
   * differ — live changes in flight, or a copy that did not take — are synced and compared once
   * more inside the change queue, where no live change interleaves (for a large file that holds
   * live changes back for one read of both copies, only when the first comparison differed);
   * what still differs is returned (and stays BROKEN). Entries a split holds are left alone.
   */
  private async verifyRepaired(t: string): Promise<Difference[]> {
    const base = t === '/' ? '' : t;
    // First without holding live changes back (a large file's comparison takes a while); only
    // what differs is compared again inside the queue.
    const suspects: string[] = [];
    if ((await compareOne(this.primary, this.layout.data, base).catch(() => [null])).length > 0)
      suspects.push(base);
    if ((await lstatOrUndefined(this.primary + base))?.isDirectory()) {
      const r = await verifyTrees(this.primary + base, this.layout.data + base, {
        skip: (rel) => this.isHeld(base + rel),
        content: true,
        signal: this.abort.signal,
      });
      suspects.push(...r.differences.map((d) => base + d.path));
    }
    const still: Difference[] = [];
    for (const p of new Set(suspects)) {
      if (this.isBroken(p || '/')) continue; // the copy already failed here, with its reason
      const diffs = await this.queue
        .push(async () => {
          if (p !== '' && this.heldUnder(p)) return [];
          if ((await compareOne(this.primary, this.layout.data, p)).length === 0) return [];
          if (p !== '') {
            this.writer.forget(p, true);
            await this.ensureParents(p);
            await this.copyEntry(this.primary + p, this.layout.data + p);
            await this.relinkIfWanted(p);
          } else await syncMeta(this.primary, this.layout.data);
          return compareOne(this.primary, this.layout.data, p);
        })
        .catch((err) => {
          this.markBroken(p || '/', err as NodeJS.ErrnoException);
          return [];
        });
      still.push(...diffs);
    }
    return still;
  }

  /**
   * Makes the mirror's subtree at p equal to the primary's: entries whose type, size, mode,
   * owner or mtime differ are copied, entries whose ctime is newer on the primary are compared
   * (metadata, and contents chunk by chunk), extras are removed, hard links are kept, and
   * nothing a split holds is touched.
   *
   * Directory by directory: both listings are read, then the entries are synced in batches,
   * each batch one task in the change queue (so live changes interleave in the right order) and
   * parallel inside it (no live change can run meanwhile). locked: the caller already runs in
   * the queue.
   */
  private async reconcileTree(
    p: string,
    phase: ProgressEvent['phase'],
    o: { locked?: boolean; deep?: Deep; signal?: AbortSignal } = {},
  ): Promise<{ bytes: number; entries: number }> {
    if (o.locked) return this.walkTree(p, phase, o);
    const renamed = new Set<string>();
    this.walks.add(renamed);
    try {
      const total = await this.walkTree(p, phase, o);
      for (let round = 0; renamed.size > 0 && round < 10 && !o.signal?.aborted; round++) {
        const again = outermost(renamed).filter((t) => t === p || t.startsWith(p === '/' ? '/' : p + '/'));
        renamed.clear();
        for (const t of again) {
          const r = await this.walkTree(t, phase, o);
          total.bytes += r.bytes;
          total.entries += r.entries;
        }
      }
      return total;
    } finally {
      this.walks.delete(renamed);
    }
  }

  private async walkTree(
    p: string,
    phase: ProgressEvent['phase'],
    o: { locked?: boolean; deep?: Deep; signal?: AbortSignal },
  ): Promise<{ bytes: number; entries: number }> {
    // A name separated from the other names of its file (copyEntry) is linked to them again in
    // the same queue task: a live change in between would reach one of the copies only.
    const run = async <T>(f: () => Promise<T>): Promise<T> => {
      if (o.locked) return f();
      await this.yieldToLive();
      return this.queue.push(async () => {
        const r = await f();
        await this.relinkIfWanted(p);
        return r;
      });
    };
    let bytes = 0;
    let entries = 0;
    const links = new Map<number, string>();
    const report = (done: boolean) => this._onProgress.fire({ phase, entries, bytes, done });
    const base = p === '/' ? '' : p;
    bytes += await run(async () =>
      this.syncQuick(p, await lstatOrUndefined(this.primary + base), links, o.deep),
    );
    const dirs = [base];
    let reported = 0;
    while (dirs.length > 0) {
      if (o.signal?.aborted) return { bytes, entries };
      const dir = dirs.pop()!;
      let names: string[];
      try {
        names = (await fsp.readdir(this.primary + dir)).sort();
      } catch {
        continue; // gone or not a directory any more: its own change says what became of it
      }
      const have = await fsp.readdir(this.layout.data + dir).catch(() => [] as string[]);
      const wanted = new Set(names);
      const extras = have.filter((n) => !wanted.has(n));
      const stats = await mapLimit(names, PARALLEL, (n) => lstatOrUndefined(`${this.primary}${dir}/${n}`));
      const items = names.map((name, i) => ({ path: `${dir}/${name}`, st: stats[i] }));
      for (const it of items) if (it.st) this.changes.notePrimary(it.path, it.st);
      // Small tasks: a live change waits for at most one of them.
      const large = items.filter((it) => it.st?.isFile() && it.st.nlink === 1 && it.st.size > LARGE_FILE);
      const small = items.filter((it) => !large.includes(it));
      for (let i = 0; i < small.length; ) {
        if (o.signal?.aborted) return { bytes, entries };
        let j = i;
        for (let size = 0; j < small.length && j - i < BATCH && size <= BATCH_BYTES; j++)
          size += small[j]!.st?.size ?? 0;
        const batch = small.slice(i, j);
        i = j;
        bytes += await run(() => this.syncBatch(batch, links, o.deep));
      }
      for (const it of large) {
        if (o.signal?.aborted) return { bytes, entries };
        bytes += await this.syncLargeFile(it.path, it.st!, run, o.deep);
      }
      if (extras.length > 0) await run(() => this.removeExtras(dir, extras));
      // Making and removing the names above moved the mirror directory's times (and reading
      // the primary's may have moved its atime): copy them again, now that it is complete.
      await run(() => this.copyTimes(dir === '' ? '/' : dir));
      entries += items.length;
      if (entries - reported >= 1000) {
        reported = entries;
        report(false);
      }
      for (const it of [...items].reverse()) if (it.st?.isDirectory()) dirs.push(it.path);
    }
    report(true);
    // Inside one task (locked): a walk of the volume has linked the names it separated; a walk of
    // a subtree cannot see names outside it.
    if (o.locked) {
      if (p === '/') this.relinkWanted = false;
      else await this.relinkIfWanted(p);
    }
    return { bytes, entries };
  }

  /**
   * A big file, chunk by chunk, each chunk one queue task (a whole-file copy would hold live
   * changes back for as long as it takes). Each chunk reads the primary as it is when the task
   * runs, so live writes in between are never undone; the last task fixes size and metadata.
   */
  private async syncLargeFile(
    p: string,
    listed: Stats,
    run: <T>(f: () => Promise<T>) => Promise<T>,
    deep?: Deep,
  ): Promise<number> {
    const mp = this.layout.data + p;
    const plan = await run(async () => {
      if (this.isHeld(p)) return undefined;
      const [pst, mst] = await Promise.all([lstatOrUndefined(this.primary + p), lstatOrUndefined(mp)]);
      if (!pst?.isFile() || pst.nlink > 1) return { fallback: true as const, pst };
      // A mirror file with other names is another file (see syncEntry): replaced, not written.
      if (mst?.isFile() && mst.nlink === 1) {
        const sameData = mst.size === pst.size && Math.abs(mst.mtimeMs - pst.mtimeMs) < 1;
        if (sameData && sameMeta(pst, mst) && pst.ctimeMs <= mst.ctimeMs && !isDeep(deep, pst))
          return undefined;
        this.writer.forget(p, true);
        return { compare: sameData, size: pst.size };
      }
      this.writer.forget(p, true);
      if (mst) await fsp.rm(mp, { recursive: true, force: true });
      await this.ensureParents(p);
      await fsp.writeFile(mp, '', { mode: 0o600 });
      return { compare: false, size: pst.size };
    });
    if (!plan) return 0;
    if ('fallback' in plan)
      return run(async () =>
        this.syncQuick(p, (await lstatOrUndefined(this.primary + p)) ?? listed, new Map(), deep),
      );
    let bytes = 0;
    for (let off = 0; ; off += LARGE_CHUNK) {
      const r = await run(async () => {
        if (this.isHeld(p)) return undefined;
        return copyChunk(this.primary + p, mp, off, LARGE_CHUNK, plan.compare).catch((err) => {
          if (HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) return undefined; // gone meanwhile
          throw err;
        });
      });
      if (!r) return bytes;
      bytes += r.copied;
      if (r.eof) break;
    }
    await run(async () => {
      if (this.isHeld(p)) return;
      const pst = await lstatOrUndefined(this.primary + p);
      if (!pst?.isFile()) return;
      await fsp.truncate(mp, pst.size);
      await syncMeta(this.primary + p, mp, pst);
    });
    return bytes;
  }

  /** One batch of entries of a directory: plain ones in parallel, directories and hard links in order. */
  private async syncBatch(
    items: Array<{ path: string; st: Stats | undefined }>,
    links: Map<number, string>,
    deep?: Deep,
  ): Promise<number> {
    const serial = items.filter(
      (it) => it.st && (it.st.isDirectory() || (it.st.isFile() && it.st.nlink > 1)),
    );
    const plain = items.filter((it) => it.st && !serial.includes(it));
    let bytes = 0;
    for (const it of serial) bytes += await this.syncOne(it.path, it.st, links, deep);
    const r = await mapLimit(plain, PARALLEL, (it) => this.syncOne(it.path, it.st, links, deep));
    for (const b of r) bytes += b;
    return bytes;
  }

  /**
   * syncQuick, with an entry that cannot be copied marked broken (the rest goes on); a failure
   * of the mirror device itself ends the walk (its root is then marked broken by the caller).
   */
  private async syncOne(
    p: string,
    pst: Stats | undefined,
    links: Map<number, string>,
    deep?: Deep,
  ): Promise<number> {
    try {
      return await this.syncQuick(p, pst, links, deep);
    } catch (err) {
      if (DEVICE_CODES.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      this.markBroken(p, err as NodeJS.ErrnoException);
      return 0;
    }
  }

  private async removeExtras(dir: string, names: string[]): Promise<void> {
    await mapLimit(names, PARALLEL, async (name) => {
      const vp = `${dir}/${name}`;
      // Made since the listing (and already mirrored by its own change)?
      if (this.heldUnder(vp) || (await lstatOrUndefined(this.primary + vp))) return;
      this.writer.forget(vp, true);
      await fsp.rm(this.layout.data + vp, { recursive: true, force: true });
    });
  }

  /**
   * Syncs one entry unless it provably matches. pst may be a little old (listed before this
   * task ran): a change since is either on the mirror already (which then differs from pst, so
   * the entry is synced from the primary as it is now) or queued behind this task.
   */
  private async syncQuick(
    p: string,
    pst: Stats | undefined,
    links: Map<number, string>,
    deep?: Deep,
  ): Promise<number> {
    const mp = p === '/' ? this.layout.data : this.layout.data + p;
    if (p !== '/' && this.isHeld(p)) return 0;
    const mst = await lstatOrUndefined(mp);
    if (!pst) {
      if (p === '/' || !mst || this.heldUnder(p)) return 0;
      this.writer.forget(p, true);
      await fsp.rm(mp, { recursive: true, force: true });
      return 0;
    }
    const sameType = !!mst && (mst.mode & 0o170000) === (pst.mode & 0o170000);
    if (mst && !sameType && this.heldUnder(p)) return 0;
    if (p === '/') {
      if (!mst) await fsp.mkdir(mp, { recursive: true });
      if (!mst || !sameMeta(pst, mst) || pst.ctimeMs > mst.ctimeMs) await syncMeta(this.primary, mp, pst);
      return 0;
    }
    if (pst.isFile() && pst.nlink > 1) {
      const first = links.get(pst.ino);
      if (first) {
        const firstM = await lstatOrUndefined(this.layout.data + first);
        if (firstM && (!mst || mst.ino !== firstM.ino)) {
          this.writer.forget(p, false);
          await fsp.rm(mp, { recursive: true, force: true });
          await this.ensureParents(p);
          await fsp.link(this.layout.data + first, mp);
        }
        return 0;
      }
      links.set(pst.ino, p);
    }
    const sameData =
      sameType && (pst.isDirectory() || (mst!.size === pst.size && Math.abs(mst!.mtimeMs - pst.mtimeMs) < 1));
    const newer = !!mst && pst.ctimeMs > mst.ctimeMs;
    if (sameData && sameMeta(pst, mst!) && !newer && !(isDeep(deep, pst) && pst.isFile())) return 0;
    this.writer.forget(p, true);
    // Same size and mtime: probably equal, so compare rather than copy.
    const opts = { compare: sameData, mirrorStat: mst ?? null, separate: true };
    try {
      return (await this.copyEntry(this.primary + p, mp, opts)).bytesCopied;
    } catch (err) {
      // The parent is normally there (directories are synced before their entries).
      if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      await this.ensureParents(p);
      return (await this.copyEntry(this.primary + p, mp, { compare: sameData, separate: true })).bytesCopied;
    }
  }

  // ---- status, verify, lifecycle -------------------------------------------------------------

  status(): MirrorStatus {
    return {
      deviceId: this.deviceId,
      mirrorRoot: this.layout.data,
      state: this.copying ? 'COPY' : this.broken.size + this.healing.size > 0 ? 'DEGRADED' : 'PAIR',
      splits: [...this.splits.values()].map((s) => this.splitInfo(s)),
      // A pair being repaired is not PAIR until the repair has verified it.
      broken: [...new Set([...this.broken, ...this.healing])],
      brokenReasons: this.reasonsOf(),
      queueLength: this.queue.length,
      changes: this.changes.describe(),
      stats: { ...this.stats },
    };
  }

  private reasonsOf(): Record<string, string> {
    return Object.fromEntries([...this.broken].map((b) => [b, this.brokenReasons.get(b) ?? 'unknown']));
  }

  /** Resolves when every change reported so far has been applied or tracked (later ones may still be queued). */
  async barrier(): Promise<void> {
    await this.queue.push(async () => undefined);
  }

  /** Resolves when every reported change has been applied or tracked (and journaled). */
  async whenIdle(): Promise<void> {
    await this.queue.whenIdle();
    await this.queue.push(() => this.syncAllTimes());
    await this.journal.flush();
  }

  /** Compares primary and mirror for every pair in PAIR state. */
  async verify(opts: { content?: boolean; signal?: AbortSignal } = {}): Promise<VerifyReport> {
    await this.whenIdle();
    const skip = (p: string) =>
      this.isBroken(p) ||
      [...this.splits.values()].some(
        (s) => s.covers(p) || [...s.touched].some((t) => p === t || p.startsWith(t + '/')),
      );
    return verifyTrees(this.primary, this.layout.data, { skip, content: opts.content, signal: opts.signal });
  }

  private queueCheckpoint(): void {
    if (this.disposed || this.checkpointQueued) return;
    this.checkpointQueued = true;
    // In the queue: a resync in progress has dropped its split from memory but not yet
    // recorded its release, so a snapshot must not be taken in the middle of one.
    void this.queue
      .push(async () => {
        this.checkpointQueued = false;
        if (this.disposed) return;
        const cutoff = Date.now() - 30_000;
        for (const [p, t] of this.intents) if (t < cutoff) this.intents.delete(p);
        await this.journal.checkpoint(() => this.snapshot());
      })
      .catch(() => undefined);
  }

  /** The live state, as journal lines. */
  private snapshot(): JournalRecord[] {
    const lines: JournalRecord[] = [];
    for (const s of this.splits.values()) {
      lines.push({ t: 'split', s: s.toRecord() });
      for (const c of s.namespace) lines.push({ t: 'ns', id: s.id, c });
      for (const [p, f] of s.files) {
        if (f.cut !== undefined) lines.push({ t: 'tr', id: s.id, p, size: f.cut });
        for (const [a, b] of f.ranges.toArray()) lines.push({ t: 'w', id: s.id, p, a, b });
      }
      for (const p of s.touched) lines.push({ t: 'm', id: s.id, p });
    }
    // Pairs being repaired are still broken: a crash mid-repair must not forget them.
    for (const p of new Set([...this.broken, ...this.healing])) lines.push({ t: 'broken', p });
    for (const p of new Set([...this.intents.keys(), ...this.pendingIntents])) lines.push({ t: 'intent', p });
    if (this.deep) lines.push({ t: 'deep', on: true });
    lines.push(this.changes.journalLine());
    return lines;
  }

  /**
   * Stops background work (what is left of it is recorded and resumed at the next start),
   * applies everything queued, records a clean shutdown and stops timers. Splits stay recorded.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    for (const t of this.timers) clearInterval(t);
    this.deviceWatch.dispose();
    if (this.timesTimer) clearTimeout(this.timesTimer);
    this.abort.abort();
    await this.ready.catch(() => undefined);
    await this.repairing?.catch(() => undefined);
    await this.whenIdle();
    this.disposed = true;
    this.writer.closeAll();
    // The clean record vouches for the mirror after a reboot too: its data must be on disk.
    await syncFilesystem(this.layout.data);
    // Every change reported so far is on the mirror (or tracked): no intent is open.
    this.intents.clear();
    // Before the clean line: a crash in between leaves an unclean journal, which ignores it.
    await this.changes
      .save()
      .catch((err) => this.log(`cannot save the change record: ${(err as Error).message}`));
    await this.journal.checkpoint(() => this.snapshot());
    await this.journal.close(true);
    await this.trace.close();
  }

  private splitInfo(s: SplitTracker): SplitInfo {
    return {
      splitId: s.id,
      selector: s.selector,
      since: s.since,
      trackedBytes: s.trackedBytes,
      trackedFiles: s.files.size,
      owner: s.owner,
      generation: s.generation ?? this.changes.generation,
    };
  }

  private log(msg: string): void {
    (this.opts.log ?? ((m: string) => process.stderr.write(`twinfs mirror: ${m}\n`)))(msg);
  }
}

/** syncfs(2) of the filesystem holding dir (coreutils `sync -f`; Node has no binding). */
function syncFilesystem(dir: string): Promise<void> {
  return new Promise((resolve) => execFile('sync', ['-f', dir], { timeout: 120_000 }, () => resolve()));
}

/** Entries synced in parallel inside one queue task, and entries per task. */
const PARALLEL = 16;
/** Background tasks wait for this long a pause in live changes, but no longer than YIELD_MAX_MS. */
const YIELD_QUIET_MS = 5;
const YIELD_MAX_MS = 100;
const BATCH = 64;
const BATCH_BYTES = 8 * 1024 * 1024;
/** Files above this size are reconciled chunk by chunk, LARGE_CHUNK bytes per queue task. */
const LARGE_FILE = 8 * 1024 * 1024;
const LARGE_CHUNK = 8 * 1024 * 1024;

/**
 * A comparison that reads contents (and copies metadata) instead of trusting size, mtime and
 * ctime: everywhere (true), or for the entries a predicate picks.
 */
type Deep = boolean | ((st: Stats) => boolean);

function isDeep(deep: Deep | undefined, st: Stats): boolean {
  return typeof deep === 'function' ? deep(st) : !!deep;
}

/** The volume paths of a file's names (a walk of the primary that stops once it has them all). */
async function namesOf(root: string, file: Stats): Promise<string[]> {
  const out: string[] = [];
  const dirs = [''];
  while (dirs.length > 0 && out.length < file.nlink) {
    const dir = dirs.pop()!;
    const names = await fsp.readdir(root + dir).catch(() => [] as string[]);
    for (const n of names) {
      const st = await lstatOrUndefined(`${root}${dir}/${n}`);
      if (st?.isDirectory()) dirs.push(`${dir}/${n}`);
      else if (st?.ino === file.ino && st.dev === file.dev) out.push(`${dir}/${n}`);
    }
  }
  return out;
}

/** Is there a regular file with several names at or below dir (no symlinks followed)? */
async function hasMultiLink(dir: string): Promise<boolean> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const st = await lstatOrUndefined(`${dir}/${n}`);
    if (st?.isFile() && st.nlink > 1) return true;
    if (st?.isDirectory() && (await hasMultiLink(`${dir}/${n}`))) return true;
  }
  return false;
}

function lstatOrUndefined(p: string): Promise<Stats | undefined> {
  return fsp.lstat(p).catch(() => undefined);
}

/** Maps with at most `limit` calls in flight; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function sameMeta(a: Stats, b: Stats): boolean {
  return a.mode === b.mode && a.uid === b.uid && a.gid === b.gid;
}

/** The paths of a set that are not below another one of it. */
function outermost(paths: Iterable<string>): string[] {
  const sorted = [...new Set(paths)].sort();
  const out: string[] = [];
  for (const p of sorted) {
    if (out.some((q) => q === '/' || p === q || p.startsWith(q + '/'))) continue;
    out.push(p);
  }
  return out;
}

function trackRecord(id: string, c: Change): JournalRecord {
  switch (c.op) {
    case 'write':
      return { t: 'w', id, p: c.path, a: c.offset, b: c.offset + c.data.length };
    case 'truncate':
      return { t: 'tr', id, p: c.path, size: c.size };
    case 'chmod':
    case 'chown':
    case 'utimens':
    case 'setxattr':
    case 'removexattr':
    case 'fsync':
      return { t: 'm', id, p: c.path };
    default:
      return { t: 'ns', id, c };
  }
}

function normalizeSelector(sel: Selector): Selector {
  const norm = (p: string) =>
    '/' +
    p
      .split('/')
      .filter((x) => x && x !== '.')
      .join('/');
  return {
    volume: sel.volume || undefined,
    paths: sel.paths?.map(norm),
    subtrees: sel.subtrees?.map(norm),
  };
}

export function defaultStateDir(): string {
  if ((process.getuid?.() ?? 1) === 0) return '/var/lib/twinfs';
  return path.join(
    process.env.XDG_STATE_HOME ?? path.join(process.env.HOME ?? '/tmp', '.local/state'),
    'twinfs',
  );
}
