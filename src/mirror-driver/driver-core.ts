import { promises as fsp } from 'node:fs';
import { SerialQueue } from '../common/async.js';
import { Emitter } from '../common/event.js';
import type { BrokenPairs } from './broken-pairs.js';
import type { ChangeRecord } from './change-record.js';
import type { MirrorLayout } from './device.js';
import type { PairState, ProgressEvent, ResyncResult, SplitInfo } from './driver-types.js';
import { type SyncOptions, type SyncResult, syncEntry } from './entry-sync.js';
import { Journal } from './journal.js';
import type { LeftBehind } from './left-behind.js';
import { LinkIndex } from './link-index.js';
import { MirrorWriter } from './mirror-writer.js';
import type { Reconciler } from './reconcile.js';
import type { Repairer } from './repair.js';
import type { Resyncer } from './resync.js';
import type { Splitter } from './split-control.js';
import type { SplitTracker } from './split-tracker.js';
import type { MirrorTimes } from './times.js';
import { MirrorTrace } from './trace.js';

/** Errors that say the mirror lacks what a change or copy builds on (healed from the primary). */
export const HEAL_CODES = new Set(['ENOENT', 'ENOTDIR']);
/** Errors that say the mirror device as a whole cannot be written. */
export const DEVICE_CODES = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EROFS', 'ENODEV', 'ENXIO']);

export type StateChange = { paths: string[] | 'volume'; state: PairState; splitId?: string };

/**
 * What the parts of the mirror driver share: the one change queue, the mirror writer, the
 * journal, the change record, the live splits, the start-up flags, counters and events, and the
 * few queries every part asks (is a path held by a split). Each part (routing, resync,
 * reconciliation, repair, broken pairs, times) keeps its own state and reaches the others
 * through the fields below, set once by the MirrorDriver facade.
 */
export class MirrorCore {
  /** The one serial queue: every change, and every mirror write of background work, in order. */
  readonly queue = new SerialQueue();
  readonly writer: MirrorWriter;
  readonly journal: Journal;
  /** Per-path change generations (set in start()). */
  changes!: ChangeRecord;
  readonly splits = new Map<string, SplitTracker>();
  /** Paths with a write intent in the journal, and when it was last renewed or reported on. */
  readonly intents = new Map<string, number>();
  /** Paths the journal named at start that are not repaired yet. */
  readonly pendingIntents = new Set<string>();
  /**
   * Holders of ChangeRouter.changesAhead: while any holds, changes may reach the primary before
   * beforeChange, and the journal keeps an intent for the whole volume ('/').
   */
  aheadHolds = 0;
  lastLiveAt = 0;
  /** split() calls whose marker is queued but has not run yet (see ChangeRouter.apply). */
  splitsQueued = 0;
  /** The next reconciliation must compare contents (machine crash, lost journal). */
  deep = false;
  copying = true;
  /**
   * Names whose file's other names must be linked to them again before the queue task ends: a
   * copy separated them from those names (see copyEntry), or a heal copied them alone.
   */
  readonly relinkNames = new Set<string>();
  /**
   * Names that namespace changes still in the queue name (their path, and a rename's or link's
   * source), with how many: the primary has already made those changes, so what it has under
   * such a name (or below it) may be another entry than the mirror's at this point of the queue.
   */
  readonly namesQueued = new Map<string, number>();

  /** Does a namespace change still in the queue name p or a directory above it? */
  nameQueued(p: string): boolean {
    if (this.namesQueued.size === 0) return false;
    for (let q = p; q !== '' && q !== '/'; q = q.slice(0, q.lastIndexOf('/')))
      if (this.namesQueued.has(q)) return true;
    return false;
  }

  /**
   * nameQueued once the changes made in libfuse's threads (native unlinks and creates, which are
   * on the primary before JS reports them) are reported, so they are queued too: a copy from the
   * primary that a heal or a walk is about to make, or that failed with ENOENT, is left to the
   * queue when p is another entry (or none) there because of one of them (docs/reliability.md,
   * "a heal's and a walk's copy of a name unlinked in libfuse's thread"). Left: p is handed to
   * left-behind.ts, compared after the changes that name it.
   */
  leftToQueue(p: string, traceAs?: string): boolean {
    this.changes.reportAhead?.();
    if (!this.nameQueued(p)) return false;
    if (traceAs) this.trace.event(traceAs, { path: p });
    this.leftBehind.add(p, { deep: true });
    return true;
  }

  /** The names of the primary's files with several names (relinking without a volume walk). */
  readonly links = new LinkIndex();
  disposed = false;
  readonly abort = new AbortController();
  readonly trace = new MirrorTrace();
  readonly stats = {
    bytesMirrored: 0,
    changesApplied: 0,
    changesTracked: 0,
    resyncBytes: 0,
    copyBytes: 0,
    recoveryBytes: 0,
    repairs: 0,
    rereadRewrites: 0,
  };

  readonly onDidChangeState = new Emitter<StateChange>();
  readonly onDidSplit = new Emitter<SplitInfo>();
  readonly onDidResync = new Emitter<ResyncResult>();
  readonly onDidBreak = new Emitter<{ path: string; error: string }>();
  readonly onProgress = new Emitter<ProgressEvent>();

  // The parts (set by the MirrorDriver constructor).
  broken!: BrokenPairs;
  times!: MirrorTimes;
  reconciler!: Reconciler;
  resyncer!: Resyncer;
  repairer!: Repairer;
  splitter!: Splitter;
  leftBehind!: LeftBehind;

  constructor(
    readonly primary: string,
    readonly layout: MirrorLayout,
    journalFile: string,
    bootId: string,
    private readonly logTo?: (msg: string) => void,
  ) {
    this.writer = new MirrorWriter(layout.data);
    this.journal = new Journal(journalFile, bootId);
  }

  log(msg: string): void {
    (this.logTo ?? ((m: string) => process.stderr.write(`twinfs mirror: ${m}\n`)))(msg);
  }

  /** Does any split hold p, or anything below it? Such mirror entries must not be replaced. */
  heldUnder(p: string): boolean {
    for (const s of this.splits.values()) if (s.coversUnder(p)) return true;
    return false;
  }

  isHeld(p: string): boolean {
    for (const s of this.splits.values()) if (s.covers(p)) return true;
    return false;
  }

  /** Marks p touched in every split that holds it or something below it (its resync syncs p). */
  touchHolders(p: string): void {
    for (const s of this.splits.values()) if (s.coversUnder(p)) s.touched.add(p);
  }

  /** Creates missing parent directories of p in the mirror, from the primary's. */
  async ensureParents(p: string): Promise<void> {
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
   * (SyncResult.separated): the names must be linked again (Reconciler.relinkVolume) before the
   * task ends.
   */
  async copyEntry(primary: string, mirror: string, opts?: SyncOptions): Promise<SyncResult> {
    const r = await syncEntry(primary, mirror, opts);
    if (r.separated) this.relinkNames.add(mirror.slice(this.layout.data.length));
    return r;
  }

  get relinkWanted(): boolean {
    return this.relinkNames.size > 0;
  }

  /** Copies one entry whole from the primary (parents first), as a fresh copy of it. */
  async copyWhole(p: string, opts?: SyncOptions): Promise<SyncResult> {
    this.writer.forget(p, true);
    await this.ensureParents(p);
    return this.copyEntry(this.primary + p, this.layout.data + p, opts);
  }

  splitInfo(s: SplitTracker): SplitInfo {
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
}
