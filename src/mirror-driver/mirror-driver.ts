import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Event } from '../common/event.js';
import type { Disposable } from '../common/lifecycle.js';
import type { Change, ChangeSink } from '../fusefs/change-sink.js';
import { installBytePaths } from '../posix/byte-paths.js';
import { BrokenPairs } from './broken-pairs.js';
import { type ChangeAnswer, ChangeRecord, type Generation } from './change-record.js';
import { ChangeRouter } from './change-routing.js';
import { loadVolumeId, type MirrorLayout, mirrorLayout, openDevice } from './device.js';
import { DeviceWatch } from './device-watch.js';
import { MirrorCore, type StateChange } from './driver-core.js';
import type {
  MirrorDriverOptions,
  MirrorStatus,
  PairState,
  ProgressEvent,
  RepairResult,
  ResyncResult,
  SplitInfo,
} from './driver-types.js';
import type { JournalRecord } from './journal.js';
import { LeftBehind } from './left-behind.js';
import { Reconciler } from './reconcile.js';
import { Repairer } from './repair.js';
import { Resyncer } from './resync.js';
import { Splitter } from './split-control.js';
import type { Selector } from './split-tracker.js';
import { MirrorTimes } from './times.js';
import { type VerifyReport, verifyTrees } from './verify.js';

export type * from './driver-types.js';

/**
 * An intent not renewed (beforeChange) nor reported on (apply) for this long is dropped at the
 * next checkpoint: every change to its path that reached the primary was reported and is in the
 * queue's past. A single primary write stalled longer than this (a hung disk) loses its intent.
 */
const INTENT_IDLE_MS = 30_000;
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
 *
 * This class is the facade: lifecycle (open, start, checkpoints, dispose), status and the
 * public API. The work is done by its parts (docs/architecture.md, "The mirror driver"):
 * change-routing.ts (the queue), split-control.ts (splits and tracking), resync.ts,
 * reconcile.ts (tree comparison and relinking), repair.ts (heals, verified repair, recovery),
 * broken-pairs.ts (BROKEN) and times.ts, sharing the state in driver-core.ts.
 */
export class MirrorDriver implements ChangeSink {
  readonly layout: MirrorLayout;
  readonly primary: string;
  private readonly c: MirrorCore;
  private readonly router: ChangeRouter;
  private readonly deviceWatch: DeviceWatch;
  private ready: Promise<void> = Promise.resolve();
  private checkpointQueued = false;
  private changeFile = '';
  private timers: NodeJS.Timeout[] = [];

  /** Pairs changed state (split, resync, resynced, broken, repaired, copy). */
  readonly onDidChangeState: Event<StateChange>;
  readonly onDidSplit: Event<SplitInfo>;
  readonly onDidResync: Event<ResyncResult>;
  readonly onDidBreak: Event<{ path: string; error: string }>;
  readonly onProgress: Event<ProgressEvent>;

  private constructor(
    primary: string,
    layout: MirrorLayout,
    readonly deviceId: string,
    private readonly opts: MirrorDriverOptions,
    journalFile: string,
    bootId: string,
  ) {
    installBytePaths();
    this.primary = primary;
    this.layout = layout;
    const c = new MirrorCore(primary, layout, journalFile, bootId, opts.log);
    this.c = c;
    this.deviceWatch = new DeviceWatch(layout, deviceId);
    c.broken = new BrokenPairs(c);
    c.times = new MirrorTimes(c);
    c.reconciler = new Reconciler(c);
    c.leftBehind = new LeftBehind(c);
    c.resyncer = new Resyncer(c);
    c.repairer = new Repairer(c, this.deviceWatch);
    c.splitter = new Splitter(c);
    this.router = new ChangeRouter(c);
    this.onDidChangeState = c.onDidChangeState.event;
    this.onDidSplit = c.onDidSplit.event;
    this.onDidResync = c.onDidResync.event;
    this.onDidBreak = c.onDidBreak.event;
    this.onProgress = c.onProgress.event;
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

  /** Shut down (a test may set it to stand for a driver that died without disposing). */
  private get disposed(): boolean {
    return this.c.disposed;
  }

  private set disposed(v: boolean) {
    this.c.disposed = v;
  }

  private async start(created: boolean): Promise<void> {
    const rec = await this.c.journal.read();
    for (const p of rec.broken) this.c.broken.paths.add(p);
    // Splits that survived a restart have no holder any more: they are resynced first. Link
    // counts are not journaled: if a name with tracked data went away (see lostLinks), every
    // tracked file of such a recovered split is copied whole.
    for (const s of rec.splits.values()) {
      if (s.lostLinks) for (const p of s.files.keys()) s.inodeChanged.set(p, 2);
      this.c.splits.set(s.id, s);
    }
    for (const p of rec.intents) this.c.pendingIntents.add(p);
    // Without a record written since this boot, the page cache may have lost mirror writes
    // whose size and mtime look right: compare contents. (A clean shutdown synced the mirror.)
    this.c.deep = rec.deep || (rec.otherBoot && !rec.clean) || (rec.missing && !created);
    this.c.changes = await ChangeRecord.open({
      file: this.changeFile,
      journal: { ...rec, log: rec.changeLog, gen: rec.changeGen },
      log: (m) => this.c.log(m),
    });
    // A new generation that still holds everything recovered, until it is repaired.
    await this.c.journal.checkpoint(() => this.snapshot());
    const retry = this.opts.retryBrokenMs ?? 30_000;
    if (retry > 0)
      this.timers.push(
        setInterval(() => {
          if (this.c.broken.paths.size > 0 && !this.c.copying && !this.c.disposed)
            void this.c.repairer.repair().catch(() => undefined);
        }, retry),
      );
    this.timers.push(setInterval(() => this.queueCheckpoint(), this.opts.checkpointMs ?? 10_000));
    for (const t of this.timers) t.unref();
    await this.deviceWatch.start({
      intervalMs: this.opts.deviceCheckMs ?? 1000,
      onVanished: (reason) =>
        this.c.broken.markBroken('/', Object.assign(new Error(reason), { code: 'ENODEV' })),
    });
    const reconcile = created || this.c.deep || (this.opts.reconcileOnStart ?? true);
    // Next turn: whoever opened the driver subscribes to its events first.
    this.ready = new Promise<void>((r) => setImmediate(r)).then(() =>
      this.startWork(rec.clean, reconcile, created),
    );
  }

  private async startWork(clean: boolean, reconcile: boolean, created: boolean): Promise<void> {
    const signal = this.c.abort.signal;
    this.c.onDidChangeState.fire({ paths: 'volume', state: 'COPY' });
    try {
      if (this.c.splits.size > 0 || this.c.pendingIntents.size > 0 || !clean)
        this.c.log(
          `recovering: ${this.c.splits.size} split(s), ${this.c.pendingIntents.size} path(s) that may differ`,
        );
      for (const s of [...this.c.splits.values()]) {
        await this.c.resyncer
          .resync(s.id)
          .catch((err) => this.c.log(`resync of recorded split ${s.id} failed: ${(err as Error).message}`));
      }
      await this.c.repairer.recoverIntents(signal, reconcile);
      if (this.c.broken.paths.size > 0 && !signal.aborted) await this.c.repairer.repair();
      if (reconcile && !signal.aborted) {
        if (created) this.c.log('new mirror: initial copy');
        else if (this.c.deep) this.c.log('no usable journal: comparing the whole mirror with the primary');
        const r = await this.c.reconciler.reconcileTree('/', 'copy', { deep: this.c.deep, signal });
        this.c.stats.copyBytes += r.bytes;
        if (signal.aborted) this.c.pendingIntents.add('/');
        else {
          // The walk repaired what a whole-volume intent stood for (recoverIntents left it).
          this.c.pendingIntents.delete('/');
          // Every entry of the primary seen: changes made while no server ran are stamped.
          this.c.changes.startWalkDone();
          this.c.links.walkDone();
          if (this.c.deep) {
            this.c.deep = false;
            this.queueCheckpoint();
          }
        }
      }
    } catch (err) {
      if (!signal.aborted) this.c.broken.markBroken('/', err as NodeJS.ErrnoException);
    } finally {
      this.c.copying = false;
      if (!signal.aborted) this.c.onDidChangeState.fire({ paths: 'volume', state: 'PAIR' });
    }
  }

  get dataRoot(): string {
    return this.layout.data;
  }

  /** The in-memory trace's last events (TWINFS_MIRROR_TRACE_RING, trace.ts), as JSON lines. */
  traceRing(): string {
    return this.c.trace.ring();
  }

  /** Resolves when the start-up work (recovery, initial copy or reconciliation) is done. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  // ---- ChangeSink (change-routing.ts) --------------------------------------------------------

  beforeChange(p: string): void | Promise<void> {
    return this.router.beforeChange(p);
  }

  apply(c: Change): Promise<void> {
    return this.router.apply(c);
  }

  applyAlongside(c: Change & { op: 'write' }, primary: Promise<void>): Promise<void> {
    return this.router.applyAlongside(c, primary);
  }

  changesAhead(report: () => void): Promise<Disposable> {
    return this.router.changesAhead(report);
  }

  following(): boolean {
    return this.router.following();
  }

  // ---- split / resync (split-control.ts, resync.ts) -------------------------------------------

  /**
   * Splits the pairs of the selected files atomically: every change reported before this call
   * is on the mirror when it resolves, and every change after it is tracked. Costs O(1) in the
   * number of files. Overlapping splits are allowed (each tracks its own changes). Refused
   * (ETWIN_MIRROR_BROKEN) while the mirror is being copied or recovered, and when a selected
   * pair is broken: the frozen copy would not be what the primary held.
   */
  split(selector: Selector, owner?: string, opts?: { exclusive?: boolean }): Promise<SplitInfo> {
    return this.c.splitter.split(selector, owner, opts);
  }

  /** Applies what changed under a split to the mirror and rejoins its pairs. */
  resync(splitId: string): Promise<ResyncResult> {
    return this.c.resyncer.resync(splitId);
  }

  // ---- repair (repair.ts) ----------------------------------------------------------------------

  /** Full resync of broken pairs (or of everything with all=true). Concurrent calls share one run. */
  repair(opts: { all?: boolean } = {}): Promise<RepairResult> {
    return this.c.repairer.repair(opts);
  }

  // ---- status, verify, lifecycle -------------------------------------------------------------

  /** Resolves when every change reported so far has been applied or tracked (later ones may still be queued). */
  async barrier(): Promise<void> {
    await this.c.queue.push(async () => undefined);
  }

  /** Resolves when every reported change has been applied or tracked (and journaled). */
  async whenIdle(): Promise<void> {
    await this.c.queue.whenIdle();
    await this.c.queue.push(() => this.c.times.syncAll());
    await this.c.journal.flush();
  }

  status(): MirrorStatus {
    return {
      deviceId: this.deviceId,
      mirrorRoot: this.c.layout.data,
      state: this.c.copying
        ? 'COPY'
        : this.c.broken.paths.size + this.c.broken.healing.size > 0
          ? 'DEGRADED'
          : 'PAIR',
      splits: [...this.c.splits.values()].map((s) => this.c.splitInfo(s)),
      // A pair being repaired is not PAIR until the repair has verified it.
      broken: this.c.broken.all(),
      brokenReasons: this.c.broken.reasonsOf(),
      queueLength: this.c.queue.length,
      changes: this.c.changes.describe(),
      stats: { ...this.c.stats },
    };
  }

  /** Compares primary and mirror for every pair in PAIR state. */
  async verify(opts: { content?: boolean; signal?: AbortSignal } = {}): Promise<VerifyReport> {
    // Changes made in libfuse's threads not reported yet: the primary has them, the mirror must.
    this.c.changes.reportAhead?.();
    await this.whenIdle();
    const skip = (p: string) =>
      this.c.broken.isBroken(p) ||
      [...this.c.splits.values()].some(
        (s) => s.covers(p) || [...s.touched].some((t) => p === t || p.startsWith(t + '/')),
      );
    return verifyTrees(this.c.primary, this.c.layout.data, {
      skip,
      content: opts.content,
      signal: opts.signal,
    });
  }

  private queueCheckpoint(): void {
    if (this.c.disposed || this.checkpointQueued) return;
    this.checkpointQueued = true;
    // In the queue: a resync in progress has dropped its split from memory but not yet
    // recorded its release, so a snapshot must not be taken in the middle of one.
    void this.c.queue
      .push(async () => {
        this.checkpointQueued = false;
        if (this.c.disposed) return;
        // In the queue: every change reported so far is applied or tracked. An intent idle since
        // its last report or renewal has nothing on its way (or its change failed).
        const cutoff = Date.now() - INTENT_IDLE_MS;
        for (const [p, t] of this.c.intents) if (t < cutoff) this.c.intents.delete(p);
        await this.c.journal.checkpoint(() => this.snapshot());
      })
      .catch(() => undefined);
  }

  /** The live state, as journal lines. */
  private snapshot(): JournalRecord[] {
    const lines: JournalRecord[] = [];
    for (const s of this.c.splits.values()) {
      lines.push({ t: 'split', s: s.toRecord() });
      for (const c of s.namespace) lines.push({ t: 'ns', id: s.id, c });
      for (const [p, f] of s.files) {
        if (f.cut !== undefined) lines.push({ t: 'tr', id: s.id, p, size: f.cut });
        for (const [a, b] of f.ranges.toArray()) lines.push({ t: 'w', id: s.id, p, a, b });
      }
      for (const p of s.touched) lines.push({ t: 'm', id: s.id, p });
    }
    // Pairs being repaired are still broken: a crash mid-repair must not forget them.
    for (const p of this.c.broken.all()) lines.push({ t: 'broken', p });
    const volume = this.c.aheadHolds > 0 ? ['/'] : [];
    for (const p of new Set([...this.c.intents.keys(), ...this.c.pendingIntents, ...volume]))
      lines.push({ t: 'intent', p });
    if (this.c.deep) lines.push({ t: 'deep', on: true });
    lines.push(this.c.changes.journalLine());
    return lines;
  }

  /**
   * Stops background work (what is left of it is recorded and resumed at the next start),
   * applies everything queued, records a clean shutdown and stops timers. Splits stay recorded.
   */
  async dispose(): Promise<void> {
    if (this.c.disposed) return;
    for (const t of this.timers) clearInterval(t);
    this.deviceWatch.dispose();
    this.c.times.dispose();
    this.c.abort.abort();
    await this.ready.catch(() => undefined);
    await this.c.repairer.running?.catch(() => undefined);
    await this.whenIdle();
    this.c.disposed = true;
    this.c.writer.closeAll();
    // The clean record vouches for the mirror after a reboot too: its data must be on disk.
    await syncFilesystem(this.c.layout.data);
    // Every change reported so far is on the mirror (or tracked): no intent is open.
    this.c.intents.clear();
    // Before the clean line: a crash in between leaves an unclean journal, which ignores it.
    await this.c.changes
      .save()
      .catch((err) => this.c.log(`cannot save the change record: ${(err as Error).message}`));
    await this.c.journal.checkpoint(() => this.snapshot());
    await this.c.journal.close(true);
    await this.c.trace.close();
  }

  /** The pair state of one volume path. */
  stateOf(p: string): PairState {
    if (this.c.broken.isBrokenOrHealing(p)) return 'BROKEN';
    for (const s of this.c.splits.values()) {
      if (s.covers(p)) return this.c.resyncer.resyncing.has(s.id) ? 'RESYNC' : 'SPLIT';
    }
    return this.c.copying ? 'COPY' : 'PAIR';
  }

  /**
   * What changed since a generation, among the paths `within` accepts (ChangeRecord.since).
   * Ask right after a split: its generation bounds what its copy holds.
   */
  changesSince(since: Generation, within?: (p: string) => boolean): ChangeAnswer {
    return this.c.changes.since(since, within);
  }

  getSplit(splitId: string): SplitInfo | undefined {
    const s = this.c.splits.get(splitId);
    return s && this.c.splitInfo(s);
  }

  /** Where a backup peer reads a file's frozen copy. */
  mirrorPathOf(p: string): string {
    return p === '/' ? this.c.layout.data : path.join(this.c.layout.data, p);
  }
}

/** syncfs(2) of the filesystem holding dir (coreutils `sync -f`; Node has no binding). */
function syncFilesystem(dir: string): Promise<void> {
  return new Promise((resolve) => execFile('sync', ['-f', dir], { timeout: 120_000 }, () => resolve()));
}

export function defaultStateDir(): string {
  if ((process.getuid?.() ?? 1) === 0) return '/var/lib/twinfs';
  return path.join(
    process.env.XDG_STATE_HOME ?? path.join(process.env.HOME ?? '/tmp', '.local/state'),
    'twinfs',
  );
}
