import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { SerialQueue } from '../common/async.js';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import type { Change, ChangeSink } from '../fusefs/change-sink.js';
import { loadVolumeId, type MirrorLayout, mirrorLayout, openDevice } from './device.js';
import { syncEntry, walk } from './entry-sync.js';
import { Journal } from './journal.js';
import { MirrorWriter } from './mirror-writer.js';
import { covers, coversUnder, type Selector, SplitTracker, touches } from './split-tracker.js';
import { type VerifyReport, verifyTrees } from './verify.js';

export type PairState = 'PAIR' | 'COPY' | 'SPLIT' | 'RESYNC' | 'BROKEN';

export interface MirrorDriverOptions {
  primary: string;
  mirror: string;
  /** Where the primary's volume id is kept (default /var/lib/twinfs, or ~/.local/state/twinfs). */
  stateDir?: string;
  /** Take over a mirror that belongs to another primary. */
  adopt?: boolean;
  /** Retry broken pairs this often, ms (0: only on repair()). Default 30000. */
  retryBrokenMs?: number;
  /** Checkpoint the journal this often, ms. Default 10000. */
  checkpointMs?: number;
  log?: (msg: string) => void;
}

export interface SplitInfo {
  splitId: string;
  selector: Selector;
  since: number;
  trackedBytes: number;
  trackedFiles: number;
  owner?: string;
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
  queueLength: number;
  stats: {
    bytesMirrored: number;
    changesApplied: number;
    changesTracked: number;
    resyncBytes: number;
    repairs: number;
  };
}

export interface ProgressEvent {
  phase: 'copy' | 'resync' | 'repair' | 'recover';
  entries: number;
  bytes: number;
  done: boolean;
}

const TRANSIENT_OR_MISSING = new Set(['ENOENT', 'ENOTDIR']);

/**
 * The mirror driver: a ChangeSink that keeps the mirror's data directory identical to the
 * primary, pair by pair (a pair is one file). Changes are applied in the order the primary saw
 * them, through one serial queue; a split is a marker in that queue (O(1), whatever the number
 * of files) after which changes to covered files are tracked instead of applied; resync applies
 * exactly the tracked changes. A mirror error breaks only the pairs it hit; the primary and the
 * application never see it.
 */
export class MirrorDriver implements ChangeSink {
  readonly layout: MirrorLayout;
  readonly primary: string;
  private readonly queue = new SerialQueue();
  private readonly writer: MirrorWriter;
  private readonly journal: Journal;
  private readonly splits = new Map<string, SplitTracker>();
  private readonly resyncing = new Set<string>();
  private readonly broken = new Set<string>();
  private readonly intents = new Map<string, number>();
  private readonly pendingTimes = new Set<string>();
  private copying = false;
  private timesTimer: NodeJS.Timeout | null = null;
  private timers: NodeJS.Timeout[] = [];
  private disposed = false;
  private readonly stats = {
    bytesMirrored: 0,
    changesApplied: 0,
    changesTracked: 0,
    resyncBytes: 0,
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
    bootId: string,
  ) {
    this.primary = primary;
    this.layout = layout;
    this.writer = new MirrorWriter(layout.data);
    this.journal = new Journal(layout.state, bootId);
  }

  /**
   * Opens the mirror (creating its device record on first use; refusing one that belongs to
   * another primary), reads the journal, and starts recovery or the initial copy in the
   * background. The returned driver is usable at once.
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
    const d = new MirrorDriver(primary, layout, record.deviceId, opts, bootId);
    await d.start(created);
    return d;
  }

  private async start(created: boolean): Promise<void> {
    const rec = await this.journal.read();
    await this.journal.checkpoint([], rec.broken, []);
    for (const p of rec.broken) this.broken.add(p);
    // Splits that survived a restart have no holder any more: resync them now.
    for (const s of rec.splits.values()) this.splits.set(s.id, s);
    const needFullCopy = created || rec.missing || rec.otherBoot;
    if (needFullCopy) {
      this.log(
        created ? 'new mirror: initial copy' : 'no usable journal: verify and repair the whole mirror',
      );
      void this.initialCopy();
    } else if (!rec.clean || rec.splits.size > 0 || rec.intents.size > 0) {
      this.log(`recovering: ${rec.splits.size} split(s), ${rec.intents.size} path(s) that may differ`);
      void this.recover(rec.intents);
    }
    const retry = this.opts.retryBrokenMs ?? 30_000;
    if (retry > 0)
      this.timers.push(
        setInterval(() => this.broken.size > 0 && void this.repair().catch(() => undefined), retry),
      );
    this.timers.push(
      setInterval(() => void this.checkpoint().catch(() => undefined), this.opts.checkpointMs ?? 10_000),
    );
    for (const t of this.timers) t.unref();
  }

  get dataRoot(): string {
    return this.layout.data;
  }

  // ---- ChangeSink -----------------------------------------------------------------------------

  beforeChange(p: string): void | Promise<void> {
    const known = this.intents.has(p);
    this.intents.set(p, Date.now());
    if (!known) return this.journal.append({ t: 'intent', p }).catch(() => undefined);
  }

  apply(c: Change): Promise<void> {
    if (this.disposed) return Promise.resolve();
    return this.queue.push(() => this.route(c));
  }

  private async route(c: Change): Promise<void> {
    const held = [...this.splits.values()].filter((s) => touches(s.selector, c));
    if (held.length > 0) {
      for (const s of held) {
        s.record(c);
        if (c.op !== 'fsync') await this.journal.append(trackRecord(s.id, c)).catch(() => undefined);
      }
      if (c.op !== 'fsync') this.stats.changesTracked++;
      return;
    }
    if (this.isBroken(c.path)) return;
    try {
      await this.writer.apply(c);
      this.stats.changesApplied++;
      if (c.op === 'write') {
        this.stats.bytesMirrored += c.data.length;
        this.noteTimes(c.path);
      } else if (c.op === 'truncate' || c.op === 'create' || c.op === 'mknod' || c.op === 'symlink')
        this.noteTimes(c.path);
      else if (c.op === 'fsync') await this.syncTimes(c.path);
    } catch (err) {
      await this.onApplyError(c, err as NodeJS.ErrnoException);
    }
  }

  private async onApplyError(c: Change, err: NodeJS.ErrnoException): Promise<void> {
    if (TRANSIENT_OR_MISSING.has(err.code ?? '') || (err.code === 'EEXIST' && c.op !== 'write')) {
      // The mirror lacks what the change builds on (or already has it): make this path whole
      // from the primary, parents first.
      try {
        await this.healPath(c.op === 'rename' ? c.path : c.path);
        if (c.op === 'rename') await this.healPath(c.from);
        return;
      } catch (e) {
        err = e as NodeJS.ErrnoException;
      }
    }
    this.markBroken(c.path, err);
    if (c.op === 'rename' || c.op === 'link') this.markBroken(c.from, err);
  }

  private markBroken(p: string, err: NodeJS.ErrnoException): void {
    if (this.broken.has(p)) return;
    this.broken.add(p);
    this.log(`mirror pair broken for ${p}: ${err.code ?? err.message}`);
    void this.journal.append({ t: 'broken', p }).catch(() => undefined);
    this._onDidBreak.fire({ path: p, error: `${err.code ?? 'EIO'}: ${err.message}` });
    this._onDidChangeState.fire({ paths: [p], state: 'BROKEN' });
  }

  private isBroken(p: string): boolean {
    if (this.broken.size === 0) return false;
    for (const b of this.broken) if (p === b || p.startsWith(b + '/') || b === '/') return true;
    return false;
  }

  /** Copies path (and any missing parents) from the primary. */
  private async healPath(p: string): Promise<void> {
    const parts = p.split('/').filter(Boolean);
    let cur = '';
    for (let i = 0; i < parts.length - 1; i++) {
      cur += '/' + parts[i];
      const m = await fsp.lstat(this.layout.data + cur).catch(() => undefined);
      if (!m) await syncEntry(this.primary + cur, this.layout.data + cur);
    }
    this.writer.forget(p, true);
    const r = await syncEntry(this.primary + p, this.layout.data + p);
    this.stats.bytesMirrored += r.bytesCopied;
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

  /** Data writes move the mirror's mtime; copy the primary's so the pair matches. */
  private async syncTimes(p: string): Promise<void> {
    if (!this.pendingTimes.delete(p)) return;
    const st = await fsp.lstat(this.primary + p).catch(() => undefined);
    if (st)
      await fsp.lutimes(this.layout.data + p, st.atimeMs / 1000, st.mtimeMs / 1000).catch(() => undefined);
  }

  private async syncAllTimes(): Promise<void> {
    for (const p of [...this.pendingTimes]) await this.syncTimes(p);
  }

  // ---- split / resync ---------------------------------------------------------------------------

  /**
   * Splits the pairs of the selected files atomically: every change reported before this call
   * is on the mirror when it resolves, and every change after it is tracked. Costs O(1) in the
   * number of files. Overlapping splits are allowed (each tracks its own changes).
   */
  split(selector: Selector, owner?: string): Promise<SplitInfo> {
    const sel = normalizeSelector(selector);
    return this.queue.push(async () => {
      await this.syncAllTimes();
      const s = new SplitTracker(`split-${randomUUID()}`, sel, Date.now(), owner);
      await this.journal.append({ t: 'split', s: s.toRecord() });
      this.splits.set(s.id, s);
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
    return this.queue.push(() => this.resyncLocked(s)).finally(() => this.resyncing.delete(splitId));
  }

  private async resyncLocked(s: SplitTracker): Promise<ResyncResult> {
    const started = Date.now();
    this.splits.delete(s.id);
    // Other splits that still hold some of these paths keep them frozen: those paths are
    // resynced when the last holder lets go (their changes are tracked there too).
    const stillHeld = (p: string) =>
      [...this.splits.values()].some((o) => covers(o.selector, p) || coversUnder(o.selector, p));
    let bytes = 0;
    let entries = 0;
    const failedTrees = new Set<string>();
    for (const c of s.namespace) {
      if (stillHeld(c.path) || (c.op === 'rename' && stillHeld(c.from))) continue;
      try {
        await this.writer.apply(c);
      } catch {
        // The final state is reconciled below; a failed rename needs its subtrees compared.
        if (c.op === 'rename') {
          failedTrees.add(c.path);
          failedTrees.add(c.from);
        }
      }
    }
    const touched = [...s.touched].sort();
    for (const p of touched) {
      if (stillHeld(p)) continue;
      const f = s.files.get(p);
      try {
        this.writer.forget(p, true);
        const r = await syncEntry(this.primary + p, this.layout.data + p, f?.ranges);
        bytes += r.bytesCopied;
        entries++;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') failedTrees.add(p);
        else this.markBroken(p, err as NodeJS.ErrnoException);
      }
    }
    for (const t of failedTrees) {
      const r = await this.reconcileTreeLocked(t);
      bytes += r.bytes;
      entries += r.entries;
    }
    this.stats.resyncBytes += bytes;
    await this.journal.append({ t: 'released', id: s.id });
    const result = { splitId: s.id, bytesCopied: bytes, entries, ms: Date.now() - started };
    this._onDidResync.fire(result);
    this._onDidChangeState.fire({
      paths: s.selector.volume ? 'volume' : touched,
      state: 'PAIR',
      splitId: s.id,
    });
    return result;
  }

  getSplit(splitId: string): SplitInfo | undefined {
    const s = this.splits.get(splitId);
    return s && this.splitInfo(s);
  }

  /** The pair state of one volume path. */
  stateOf(p: string): PairState {
    if (this.isBroken(p)) return 'BROKEN';
    for (const s of this.splits.values()) {
      if (covers(s.selector, p)) return this.resyncing.has(s.id) ? 'RESYNC' : 'SPLIT';
    }
    return this.copying ? 'COPY' : 'PAIR';
  }

  /** Where a backup peer reads a file's frozen copy. */
  mirrorPathOf(p: string): string {
    return p === '/' ? this.layout.data : path.join(this.layout.data, p);
  }

  // ---- copy, repair, recovery -------------------------------------------------------------------

  /** Full resync of broken pairs (or of everything with all=true). */
  async repair(
    opts: { all?: boolean } = {},
  ): Promise<{ bytes: number; entries: number; remaining: string[] }> {
    const targets = opts.all ? ['/'] : [...this.broken];
    let bytes = 0;
    let entries = 0;
    for (const t of targets) {
      this.broken.delete(t);
      const r = await this.reconcileTree(t, 'repair').catch((err) => {
        this.markBroken(t, err);
        return { bytes: 0, entries: 0 };
      });
      bytes += r.bytes;
      entries += r.entries;
      if (!this.broken.has(t)) {
        this.stats.repairs++;
        await this.journal.append({ t: 'repaired', p: t }).catch(() => undefined);
        this._onDidChangeState.fire({ paths: [t], state: 'PAIR' });
      }
    }
    return { bytes, entries, remaining: [...this.broken] };
  }

  private async initialCopy(): Promise<void> {
    this.copying = true;
    this._onDidChangeState.fire({ paths: 'volume', state: 'COPY' });
    try {
      await this.reconcileTree('/', 'copy');
    } catch (err) {
      this.markBroken('/', err as NodeJS.ErrnoException);
    } finally {
      this.copying = false;
      this._onDidChangeState.fire({ paths: 'volume', state: 'PAIR' });
    }
  }

  private async recover(intents: Set<string>): Promise<void> {
    let bytes = 0;
    let entries = 0;
    for (const s of [...this.splits.values()]) {
      const r = await this.resync(s.id).catch(() => undefined);
      if (r) {
        bytes += r.bytesCopied;
        entries += r.entries;
      }
    }
    for (const p of intents) {
      const r = await this.queue
        .push(async () => {
          this.writer.forget(p, true);
          const st = await fsp.lstat(this.primary + p).catch(() => undefined);
          if (st?.isDirectory()) return this.reconcileTreeLocked(p);
          const parent = path.posix.dirname(p);
          if (parent !== '/' && !(await fsp.lstat(this.layout.data + parent).catch(() => undefined)))
            return this.reconcileTreeLocked(parent);
          const x = await syncEntry(this.primary + p, this.layout.data + p);
          return { bytes: x.bytesCopied, entries: 1 };
        })
        .catch(() => ({ bytes: 0, entries: 0 }));
      bytes += r.bytes;
      entries += r.entries;
    }
    this._onProgress.fire({ phase: 'recover', entries, bytes, done: true });
  }

  /**
   * Makes the mirror's subtree at p equal to the primary's: entries whose type, size, mode,
   * owner or mtime differ are copied whole, extras are removed, hard links are kept. Each entry
   * is one task in the change queue, so live changes interleave in the right order.
   */
  private async reconcileTree(
    p: string,
    phase: 'copy' | 'repair',
  ): Promise<{ bytes: number; entries: number }> {
    let bytes = 0;
    let entries = 0;
    const links = new Map<number, string>();
    const report = (done: boolean) => this._onProgress.fire({ phase, entries, bytes, done });
    const top = await fsp.lstat(this.primary + p).catch(() => undefined);
    await this.queue.push(async () => {
      const r = await this.syncQuick(p, top, links);
      bytes += r;
    });
    if (top?.isDirectory()) {
      for await (const e of walk(this.primary + (p === '/' ? '' : p))) {
        const vp = (p === '/' ? '' : p) + e.path;
        bytes += await this.queue.push(() => this.syncQuick(vp, e.stat, links));
        entries++;
        if (entries % 1000 === 0) report(false);
      }
      await this.queue.push(() => this.removeExtras(p));
    }
    report(true);
    return { bytes, entries };
  }

  private async reconcileTreeLocked(p: string): Promise<{ bytes: number; entries: number }> {
    let bytes = 0;
    let entries = 0;
    const links = new Map<number, string>();
    const top = await fsp.lstat(this.primary + p).catch(() => undefined);
    bytes += await this.syncQuick(p, top, links);
    if (top?.isDirectory()) {
      for await (const e of walk(this.primary + (p === '/' ? '' : p))) {
        bytes += await this.syncQuick((p === '/' ? '' : p) + e.path, e.stat, links);
        entries++;
      }
      await this.removeExtras(p);
    }
    return { bytes, entries };
  }

  private async syncQuick(
    p: string,
    pst: import('node:fs').Stats | undefined,
    links: Map<number, string>,
  ): Promise<number> {
    const mp = p === '/' ? this.layout.data : this.layout.data + p;
    if (p !== '/' && [...this.splits.values()].some((s) => covers(s.selector, p))) return 0;
    this.writer.forget(p, false);
    if (!pst) {
      await fsp.rm(mp, { recursive: true, force: true });
      return 0;
    }
    const mst = await fsp.lstat(mp).catch(() => undefined);
    if (pst.isFile() && pst.nlink > 1) {
      const first = links.get(pst.ino);
      if (first) {
        const firstM = await fsp.lstat(this.layout.data + first).catch(() => undefined);
        if (firstM && (!mst || mst.ino !== firstM.ino)) {
          await fsp.rm(mp, { force: true });
          await fsp.link(this.layout.data + first, mp);
        }
        return 0;
      }
      links.set(pst.ino, p);
    }
    if (
      mst &&
      (mst.mode & 0o170000) === (pst.mode & 0o170000) &&
      (pst.isDirectory() || (mst.size === pst.size && Math.abs(mst.mtimeMs - pst.mtimeMs) < 1)) &&
      mst.mode === pst.mode &&
      mst.uid === pst.uid &&
      mst.gid === pst.gid
    )
      return 0;
    if (p === '/') {
      await fsp.chmod(mp, pst.mode & 0o7777);
      await fsp.lchown(mp, pst.uid, pst.gid);
      return 0;
    }
    const sameFile =
      mst && pst.isFile() && mst.isFile() && mst.size === pst.size && Math.abs(mst.mtimeMs - pst.mtimeMs) < 1;
    const r = await syncEntry(
      this.primary + p,
      mp,
      sameFile ? new (await import('./range-set.js')).RangeSet() : undefined,
    );
    return r.bytesCopied;
  }

  private async removeExtras(p: string): Promise<void> {
    const base = p === '/' ? '' : p;
    const extras: string[] = [];
    for await (const e of walk(this.layout.data + base)) {
      const vp = base + e.path;
      if (extras.some((x) => vp.startsWith(x + '/'))) continue;
      if ([...this.splits.values()].some((s) => covers(s.selector, vp))) continue;
      if (!(await fsp.lstat(this.primary + vp).catch(() => undefined))) extras.push(vp);
    }
    for (const x of extras) {
      this.writer.forget(x, true);
      await fsp.rm(this.layout.data + x, { recursive: true, force: true });
    }
  }

  // ---- status, verify, lifecycle -------------------------------------------------------------

  status(): MirrorStatus {
    return {
      deviceId: this.deviceId,
      mirrorRoot: this.layout.data,
      state: this.copying ? 'COPY' : this.broken.size > 0 ? 'DEGRADED' : 'PAIR',
      splits: [...this.splits.values()].map((s) => this.splitInfo(s)),
      broken: [...this.broken],
      queueLength: this.queue.length,
      stats: { ...this.stats },
    };
  }

  /** Resolves when every reported change has been applied or tracked. */
  async whenIdle(): Promise<void> {
    await this.queue.whenIdle();
    await this.queue.push(() => this.syncAllTimes());
  }

  /** Compares primary and mirror for every pair in PAIR state. */
  async verify(opts: { content?: boolean; signal?: AbortSignal } = {}): Promise<VerifyReport> {
    await this.whenIdle();
    const skip = (p: string) =>
      this.isBroken(p) ||
      [...this.splits.values()].some(
        (s) => covers(s.selector, p) || [...s.touched].some((t) => p === t || p.startsWith(t + '/')),
      );
    return verifyTrees(this.primary, this.layout.data, { skip, content: opts.content, signal: opts.signal });
  }

  private async checkpoint(): Promise<void> {
    if (this.disposed || this.queue.length > 0) return;
    const cutoff = Date.now() - 30_000;
    for (const [p, t] of this.intents) if (t < cutoff) this.intents.delete(p);
    await this.journal.checkpoint(this.splits.values(), this.broken, this.intents.keys());
  }

  /** Applies everything queued, records a clean shutdown and stops timers. Splits stay recorded. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    for (const t of this.timers) clearInterval(t);
    if (this.timesTimer) clearTimeout(this.timesTimer);
    await this.whenIdle();
    this.disposed = true;
    this.writer.closeAll();
    await this.journal.checkpoint(this.splits.values(), this.broken, []);
    await this.journal.close(true);
  }

  private splitInfo(s: SplitTracker): SplitInfo {
    return {
      splitId: s.id,
      selector: s.selector,
      since: s.since,
      trackedBytes: s.trackedBytes,
      trackedFiles: s.files.size,
      owner: s.owner,
    };
  }

  private log(msg: string): void {
    (this.opts.log ?? ((m: string) => process.stderr.write(`twinfs mirror: ${m}\n`)))(msg);
  }
}

function trackRecord(id: string, c: Change) {
  switch (c.op) {
    case 'write':
      return { t: 'w' as const, id, p: c.path, a: c.offset, b: c.offset + c.data.length };
    case 'truncate':
      return { t: 'tr' as const, id, p: c.path, size: c.size };
    case 'chmod':
    case 'chown':
    case 'utimens':
    case 'setxattr':
    case 'removexattr':
    case 'fsync':
      return { t: 'm' as const, id, p: c.path };
    default:
      return { t: 'ns' as const, id, c };
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
