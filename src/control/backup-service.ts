import { randomUUID } from 'node:crypto';
import { promises as fsp, lstatSync } from 'node:fs';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import { covers, type Selector, selectorsOverlap } from '../common/selector.js';
import type { TwinFs } from '../fusefs/filesystem.js';
import { KernelWriteback } from '../fusefs/kernel-writeback.js';
import { VolumePaths } from '../fusefs/volume-paths.js';
import type { Inhibition } from '../fusefs/write-inhibitor.js';
import { walk } from '../mirror-driver/entry-sync.js';
import type { MirrorDriver, ResyncResult } from '../mirror-driver/mirror-driver.js';
import { toPages } from './change-pages.js';
import type {
  BackupReport,
  ChangesMsg,
  GenerationMsg,
  Item,
  PrepareResult,
  SelectorMsg,
} from './protocol.js';

export interface BackupServiceOptions {
  fs: TwinFs;
  mirror?: MirrorDriver;
  /** Longest writes may be held by a prepare, ms (default 1000). */
  maxStallMs?: number;
  defaultLeaseMs?: number;
  /** An operator freeze without thaw ends after this, ms (default 30000). */
  freezeTimeoutMs?: number;
  /** Largest item list a prepare reply carries. */
  maxItems?: number;
  /**
   * Writes back the kernel's dirty pages of the mount (shared writable mmaps) before writes are
   * inhibited. Default: `sync -d -- MOUNT/NAME...` in a child process (fusefs/kernel-writeback.ts).
   */
  kernelWriteback?: Pick<KernelWriteback, 'sync'>;
  /** Longest the kernel write-back before a prepare may take, ms (default 30000). */
  kernelSyncTimeoutMs?: number;
}

interface ActiveBackup {
  backupId: string;
  splitId: string;
  selector: Selector;
  owner: string;
  started: number;
  expiresAt: number;
  timer: NodeJS.Timeout;
  stallMs: number;
  leaseMs: number;
  /** The prepare's change answer, in pages (change-pages.ts); the reply carried the first. */
  changePages?: ChangesMsg[];
}

interface ActiveFreeze {
  freezeId: string;
  selector: Selector;
  owner: string;
  since: number;
  inhibition: Inhibition;
  timer: NodeJS.Timeout;
}

export interface StallStats {
  prepares: number;
  failedPrepares: number;
  /** Longest a failed prepare held writes, ms (the budget plus however late its timer ran). */
  maxFailedHeldMs: number;
  maxStallMs: number;
  lastStallMs: number | null;
  /** The last 100 stalls, ms, oldest first (for percentiles). */
  recentMs: number[];
  /** The kernel write-back before the inhibition (not part of the stall: writes flow). */
  kernelSync: { lastMs: number | null; maxMs: number; failures: number };
  /** How long the last prepare with `since` took to answer what changed, ms (after the split, not in the stall). */
  lastChangesMs?: number;
}

/**
 * The backup sequence on the first server (ARCHITECTURE.md, steps 2–5 and 7): inhibit writes to
 * exactly the selected files, wait for in-flight ones, flush their cached data, split their
 * pairs, lift the inhibition — all within maxStallMs or not at all — then hand out the frozen
 * copies under a lease. Transport-agnostic: the control server calls it.
 */
export class BackupService {
  private readonly backups = new Map<string, ActiveBackup>();
  private readonly freezes = new Map<string, ActiveFreeze>();
  /**
   * Selections of prepares and freezes still on their way (inhibit, drain, flush, split):
   * an overlapping request arriving meanwhile is busy, as it would be a moment later.
   */
  private readonly reserved = new Set<{ kind: 'prepare' | 'freeze'; selector: Selector }>();
  private readonly maxStallMs: number;
  private readonly defaultLeaseMs: number;
  private readonly freezeTimeoutMs: number;
  private readonly maxItems: number;
  private readonly stall: StallStats = {
    prepares: 0,
    failedPrepares: 0,
    maxFailedHeldMs: 0,
    maxStallMs: 0,
    lastStallMs: null,
    recentMs: [],
    kernelSync: { lastMs: null, maxMs: 0, failures: 0 },
  };
  private readonly kernelWriteback: Pick<KernelWriteback, 'sync'>;

  /**
   * Backups whose peer may still report progress (report()): prepared ones, kept after release
   * (the peer commits and reports its outcome after the split is released). The last 64.
   */
  private readonly reportable = new Map<string, { owner: string; started: number; outcome?: string }>();

  private readonly _onEvent = new Emitter<{ event: string; data: Record<string, unknown> }>();
  /** frozen, thawed, split, prepare-failed, released, resynced, lease-expired, backup-progress, backup-done. */
  readonly onEvent = this._onEvent.event;

  constructor(private readonly opts: BackupServiceOptions) {
    this.maxStallMs = opts.maxStallMs ?? 1000;
    this.defaultLeaseMs = opts.defaultLeaseMs ?? 60_000;
    this.freezeTimeoutMs = opts.freezeTimeoutMs ?? 30_000;
    this.maxItems = opts.maxItems ?? 5000;
    this.kernelWriteback =
      opts.kernelWriteback ??
      // Demonstration only (docs/reliability.md, "The harness catches what it exists for"):
      // without the write-back of dirty mmap pages the stress harness must fail.
      (process.env.TWINFS_DEMO_SKIP_KERNEL_WRITEBACK === '1'
        ? { sync: async () => ({ ms: 0, names: 0 }) }
        : new KernelWriteback({ mountPoint: opts.fs.mountPoint, timeoutMs: opts.kernelSyncTimeoutMs }));
  }

  async prepare(
    sel: SelectorMsg,
    o: { owner: string; leaseMs?: number; maxStallMs?: number; listItems?: boolean; since?: GenerationMsg },
  ): Promise<PrepareResult> {
    const mirror = this.requireMirror();
    const selector = await this.resolveSelector(sel);
    this.assertFree(selector, o.owner);
    this.assertMirrorReady(mirror, selector);
    const inhibitor = this.requireInhibitor();
    const budget = Math.min(o.maxStallMs ?? this.maxStallMs, this.maxStallMs);
    const reservation = { kind: 'prepare' as const, selector };
    this.reserved.add(reservation);
    try {
      return await this.prepareReserved(mirror, inhibitor, sel, selector, budget, o);
    } catch (err) {
      const e = err as { code?: unknown; message?: unknown; data?: Record<string, unknown> };
      this._onEvent.fire({
        event: 'prepare-failed',
        data: {
          selector,
          code: typeof e?.code === 'string' ? e.code : 'ETWIN_INTERNAL',
          message: String(e?.message ?? err),
          budgetMs: budget,
          ...(typeof e?.data?.heldMs === 'number' ? { heldMs: e.data.heldMs } : {}),
        },
      });
      throw err;
    } finally {
      this.reserved.delete(reservation);
    }
  }

  private async prepareReserved(
    mirror: MirrorDriver,
    inhibitor: NonNullable<TwinFs['inhibitor']>,
    sel: SelectorMsg,
    selector: Selector,
    budget: number,
    o: { owner: string; leaseMs?: number; listItems?: boolean; since?: GenerationMsg },
  ): Promise<PrepareResult> {
    // The kernel's dirty pages of shared writable mmaps reach us only as WRITE requests, when
    // the kernel decides; make it send them now, before the inhibition would hold them (and the
    // child waiting for them with it). Writes keep flowing meanwhile, so this is prepare latency,
    // not stall. Pages dirtied again after it stay in the kernel with no request at all: that
    // window is documented in docs/architecture.md (backup sequence).
    const inos = await this.linkedInodes(selector);
    try {
      await this.syncKernelPages(selector, inos);
    } catch (err) {
      this.stall.failedPrepares++;
      throw err;
    }
    // Write back what is already cached before writes are held (as VSS flushes before it
    // freezes): the stall then covers only what was written since, not the whole backlog.
    const hit = this.selectionMatcher(selector, inos);
    await this.opts.fs.flushWhere(hit).catch(() => undefined);
    await mirror.barrier();
    const t0 = performance.now();
    const inh = inhibitor.inhibit({ ...toInhibitSelector(selector), inos });
    // The budget bounds the hold itself (invariant 2). The timer lifts the inhibition the moment
    // it runs out, not after the failure has travelled up the promise chain; the steps still
    // running stop at their next check instead of splitting (and at once resyncing) for nothing:
    // a failed prepare adds no work that competes with the writers it just let go.
    let heldMs: number | undefined;
    const lift = () => {
      if (heldMs !== undefined) return;
      heldMs = performance.now() - t0;
      inh.release();
    };
    const expired = () => heldMs !== undefined || performance.now() - t0 > budget;
    let splitId: string | undefined;
    let generation: GenerationMsg | undefined;
    const work = (async () => {
      await inh.drained();
      if (expired()) throw stallExceeded(budget);
      await this.opts.fs.flushWhere(hit).catch((err) => {
        throw writebackError(err);
      });
      if (expired()) throw stallExceeded(budget);
      // Exclusive: a live split that keeps entries of this selection frozen (a held rename's
      // source, a name it followed) would hand this backup its old state.
      const s = await mirror.split(selector, o.owner, { exclusive: true });
      splitId = s.splitId;
      generation = s.generation;
    })();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        work,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            lift();
            reject(stallExceeded(budget));
          }, budget);
        }),
      ]);
      lift();
      // A timer that ran late (a busy event loop) must not turn an overrun into a success:
      // every successful prepare held writes for at most the budget, as its stallMs says.
      if (heldMs! > budget) throw stallExceeded(budget, heldMs);
    } catch (err) {
      lift();
      this.stall.failedPrepares++;
      this.stall.maxFailedHeldMs = Math.max(this.stall.maxFailedHeldMs, heldMs!);
      // A split made after all (it was already queued in the mirror) is undone once it lands.
      void work.then(
        () => (splitId ? mirror.resync(splitId).then(() => undefined) : undefined),
        () => undefined,
      );
      throw err;
    } finally {
      clearTimeout(timer);
    }
    const stallMs = heldMs!;
    this.stall.prepares++;
    this.stall.lastStallMs = stallMs;
    this.stall.recentMs.push(stallMs);
    if (this.stall.recentMs.length > 100) this.stall.recentMs.shift();
    this.stall.maxStallMs = Math.max(this.stall.maxStallMs, stallMs);

    const leaseMs = o.leaseMs ?? this.defaultLeaseMs;
    const backupId = `bk-${randomUUID()}`;
    const b: ActiveBackup = {
      backupId,
      splitId: splitId!,
      selector,
      owner: o.owner,
      started: Date.now(),
      expiresAt: Date.now() + leaseMs,
      stallMs,
      leaseMs,
      timer: setTimeout(() => this.expire(backupId), leaseMs),
    };
    b.timer.unref();
    this.backups.set(backupId, b);
    this.reportable.set(backupId, { owner: o.owner, started: b.started });
    if (this.reportable.size > 64) this.reportable.delete(this.reportable.keys().next().value!);
    this._onEvent.fire({ event: 'split', data: { backupId, selector, stallMs } });
    let listed: { items: Item[]; complete: boolean };
    try {
      listed =
        o.listItems === false && !selector.paths
          ? { items: [], complete: false }
          : await this.listItems(mirror, selector);
    } catch (err) {
      // The caller never learns the backupId: nothing may stay split.
      await this.release(backupId).catch(() => undefined);
      throw await listingError(err as NodeJS.ErrnoException, mirror.dataRoot, selector);
    }
    const { items, complete } = listed;
    // Asked after the split: a change the record holds past its generation shows as changed,
    // which costs a copy, never a wrong "unchanged".
    const asked = performance.now();
    const changes = o.since && mirror.changesSince(o.since, (p) => covers(selector, p));
    if (changes) {
      b.changePages = toPages(changes);
      this.stall.lastChangesMs = performance.now() - asked;
    }
    return {
      backupId,
      deviceId: mirror.deviceId,
      mirrorRoot: mirror.dataRoot,
      selector: sel,
      items,
      itemsComplete: complete,
      stallMs,
      leaseMs,
      expiresAt: b.expiresAt,
      generation,
      changes: b.changePages?.[0],
    };
  }

  /** The next page of a prepare's change answer (its `more` cursor). */
  changesPage(backupId: string, owner: string, cursor: string): ChangesMsg {
    const b = this.backup(backupId, owner);
    const page = b.changePages?.[Number(cursor)];
    if (!/^[1-9][0-9]*$/.test(cursor) || !page)
      throw new TwinError(
        'ETWIN_PROTOCOL',
        `no page ${JSON.stringify(cursor)} of the changes of ${backupId}`,
        {
          backupId,
          cursor,
        },
      );
    return page;
  }

  renew(backupId: string, owner: string, leaseMs?: number): { backupId: string; expiresAt: number } {
    const b = this.backup(backupId, owner);
    const ms = leaseMs ?? b.leaseMs;
    b.leaseMs = ms;
    clearTimeout(b.timer);
    b.expiresAt = Date.now() + ms;
    b.timer = setTimeout(() => this.expire(backupId), ms);
    b.timer.unref();
    return { backupId, expiresAt: b.expiresAt };
  }

  async release(backupId: string, owner?: string): Promise<ResyncResult & { backupId: string }> {
    const b = this.backup(backupId, owner);
    clearTimeout(b.timer);
    this.backups.delete(backupId);
    this._onEvent.fire({ event: 'released', data: { backupId } });
    const r = await this.requireMirror().resync(b.splitId);
    this._onEvent.fire({
      event: 'resynced',
      data: { backupId, bytesCopied: r.bytesCopied, entries: r.entries, ms: r.ms },
    });
    return { ...r, backupId };
  }

  /**
   * A peer's report on the copy of a backup it prepared (bytes and entries so far, then its
   * outcome): nothing here depends on it, it is only told on, as backup-progress and
   * backup-done events, to whoever watches (status page, metrics, log). Only the connection
   * that prepared the backup may report on it; after the outcome, nothing more.
   */
  report(backupId: string, owner: string, r: BackupReport): { backupId: string } {
    const b = this.reportable.get(backupId);
    if (!b || b.owner !== owner || b.outcome)
      throw new TwinError(
        'ETWIN_UNKNOWN_BACKUP',
        `no backup ${backupId} of this connection to report on (never prepared here, or its outcome was reported)`,
        { backupId },
      );
    const data = { backupId, ...r, elapsedMs: Date.now() - b.started, owner };
    if (r.outcome) {
      b.outcome = r.outcome;
      this._onEvent.fire({ event: 'backup-done', data });
    } else this._onEvent.fire({ event: 'backup-progress', data });
    return { backupId };
  }

  /** A connection went away: release everything it held. */
  async releaseOwner(owner: string): Promise<void> {
    for (const b of [...this.backups.values()])
      if (b.owner === owner) await this.release(b.backupId).catch(() => undefined);
    for (const f of [...this.freezes.values()])
      if (f.owner === owner) this.thaw(f.freezeId, undefined, 'owner disconnected');
  }

  /** Operator freeze: inhibit and drain writes to the selection and flush them; held until thaw or timeout. */
  async freeze(
    sel: SelectorMsg,
    o: { owner: string; timeoutMs?: number },
  ): Promise<{ freezeId: string; flushedMs: number; timeoutMs: number }> {
    const selector = await this.resolveSelector(sel);
    for (const f of this.freezes.values())
      if (selectorsOverlap(f.selector, selector))
        throw new TwinError('ETWIN_BUSY', `already frozen by ${f.freezeId}`, { freezeId: f.freezeId });
    for (const r of this.reserved)
      if (r.kind === 'freeze' && selectorsOverlap(r.selector, selector))
        throw new TwinError('ETWIN_BUSY', 'an overlapping freeze is being set up');
    const inhibitor = this.requireInhibitor();
    const reservation = { kind: 'freeze' as const, selector };
    this.reserved.add(reservation);
    let inos: number[];
    try {
      inos = await this.linkedInodes(selector);
      // As in prepare: pages written through mmap reach us only once the kernel sends them.
      await this.syncKernelPages(selector, inos);
    } catch (err) {
      this.reserved.delete(reservation);
      throw err;
    }
    const hit = this.selectionMatcher(selector, inos);
    const inhibition = inhibitor.inhibit({ ...toInhibitSelector(selector), inos });
    const t0 = performance.now();
    try {
      await inhibition.drained();
      await this.opts.fs.flushWhere(hit).catch((err) => {
        throw writebackError(err);
      });
    } catch (err) {
      inhibition.release();
      throw err;
    } finally {
      this.reserved.delete(reservation);
    }
    const timeoutMs = o.timeoutMs ?? this.freezeTimeoutMs;
    const freezeId = `fz-${randomUUID()}`;
    const timer = setTimeout(() => this.thaw(freezeId, undefined, 'timeout'), timeoutMs);
    timer.unref();
    this.freezes.set(freezeId, { freezeId, selector, owner: o.owner, since: Date.now(), inhibition, timer });
    this._onEvent.fire({ event: 'frozen', data: { freezeId, selector, timeoutMs } });
    return { freezeId, flushedMs: performance.now() - t0, timeoutMs };
  }

  thaw(freezeId: string, _owner?: string, reason = 'thaw'): { freezeId: string; heldMs: number } {
    const f = this.freezes.get(freezeId);
    if (!f) throw new TwinError('ETWIN_UNKNOWN_FREEZE', `no freeze ${freezeId}`, { freezeId });
    clearTimeout(f.timer);
    this.freezes.delete(freezeId);
    f.inhibition.release();
    const heldMs = Date.now() - f.since;
    this._onEvent.fire({ event: 'thawed', data: { freezeId, reason, heldMs } });
    return { freezeId, heldMs };
  }

  status() {
    return {
      maxStallMs: this.maxStallMs,
      stall: {
        ...this.stall,
        recentMs: [...this.stall.recentMs],
        kernelSync: { ...this.stall.kernelSync },
        inhibitor: this.opts.fs.inhibitor?.getStats() ?? null,
      },
      backups: [...this.backups.values()].map((b) => ({
        backupId: b.backupId,
        selector: b.selector,
        owner: b.owner,
        started: b.started,
        expiresAt: b.expiresAt,
        stallMs: b.stallMs,
      })),
      freezes: [...this.freezes.values()].map((f) => ({
        freezeId: f.freezeId,
        selector: f.selector,
        owner: f.owner,
        since: f.since,
      })),
    };
  }

  async dispose(): Promise<void> {
    for (const f of [...this.freezes.keys()]) this.thaw(f, undefined, 'shutdown');
    for (const b of [...this.backups.keys()]) await this.release(b).catch(() => undefined);
  }

  private expire(backupId: string): void {
    const b = this.backups.get(backupId);
    if (!b) return;
    this._onEvent.fire({ event: 'lease-expired', data: { backupId, owner: b.owner } });
    void this.release(backupId).catch(() => undefined);
  }

  private backup(backupId: string, _owner?: string): ActiveBackup {
    const b = this.backups.get(backupId);
    if (!b)
      throw new TwinError(
        'ETWIN_UNKNOWN_BACKUP',
        `no active backup ${backupId} (released, expired or never prepared)`,
        { backupId },
      );
    return b;
  }

  /**
   * Inodes of selected regular files that have other names: writes through those names must be
   * held too (the gate sees the inode of every data change). Only explicit paths are resolved;
   * inside a subtree a name outside it is not found (docs/architecture.md).
   */
  private async linkedInodes(sel: Selector): Promise<number[]> {
    const out: number[] = [];
    for (const p of sel.paths ?? []) {
      const st = await fsp.lstat(this.opts.fs.paths.backing(p)).catch(() => undefined);
      if (st?.isFile() && st.nlink > 1) out.push(st.ino);
    }
    return out;
  }

  /**
   * Which cached files a selection's flush takes: those whose (current) name it covers, other
   * names of selected inodes, and, for a subtree, any multiply-linked file: the cache keeps one
   * name per inode, possibly one outside the subtree for a file inside it. Flushing one file
   * too many costs a write-back that was due anyway.
   */
  private selectionMatcher(selector: Selector, inos: number[]): (p: string, ino: number) => boolean {
    const fs = this.opts.fs;
    return (p, ino) =>
      covers(selector, p) ||
      inos.includes(ino) ||
      (selector.subtrees !== undefined && isMultiplyLinked(fs.paths.backing(p)));
  }

  /**
   * Runs the kernel write-back for every name open for writing that may show a selected file:
   * names inside the selection, other names of selected inodes, and, for a subtree, any name of
   * a multiply-linked file (it may be a name of a file inside; an fsync too many costs little).
   * A failure refuses the prepare: nothing is inhibited or split yet.
   */
  private async syncKernelPages(selector: Selector, inos: number[]): Promise<void> {
    const k = this.stall.kernelSync;
    const fs = this.opts.fs;
    const hit = this.selectionMatcher(selector, inos);
    const names = () =>
      fs
        .openForWriting()
        .filter((e) => hit(e.path, e.ino))
        .map((e) => ({ path: e.path, ino: e.ino }));
    try {
      const { ms } = await this.kernelWriteback.sync(names);
      k.lastMs = ms;
      k.maxMs = Math.max(k.maxMs, ms);
    } catch (err) {
      k.failures++;
      throw err;
    }
  }

  private requireMirror(): MirrorDriver {
    if (!this.opts.mirror)
      throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror; start it with --mirror DIR');
    return this.opts.mirror;
  }

  private requireInhibitor() {
    const inh = this.opts.fs.inhibitor;
    if (!inh) throw new TwinError('ETWIN_INTERNAL', 'the filesystem has no write inhibitor');
    return inh;
  }

  /**
   * Normalises and checks a selector: every path inside the volume, existing, and reached
   * without a symlink on the way. A selection names files by their real volume paths: the
   * inhibition and the split match changes by path, and the mirror is read without following
   * links. A subtree whose root is not a directory selects just that entry.
   */
  private async resolveSelector(sel: SelectorMsg): Promise<Selector> {
    if (sel.volume) return { volume: true };
    if (sel.subtree !== undefined) {
      const t = normalizePath(sel.subtree);
      if (t === '/') return { volume: true };
      const st = await this.lstatReal(t);
      return st.isDirectory() ? { subtrees: [t] } : { paths: [t] };
    }
    const paths = [...new Set((sel.paths ?? []).map(normalizePath))];
    for (const p of paths) await this.lstatReal(p);
    return { paths };
  }

  /** lstat of a volume path on the primary, refusing paths that pass through a symlink. */
  private async lstatReal(p: string): Promise<import('node:fs').Stats> {
    const parts = p.split('/').filter(Boolean);
    let cur = '';
    let st = await fsp.stat(this.opts.fs.paths.backing('/'));
    for (const name of parts) {
      if (st.isSymbolicLink())
        throw new TwinError(
          'ETWIN_PATH_ESCAPE',
          `${p} goes through the symlink ${cur}; name files by their real path on the volume`,
          { path: p, symlink: cur },
        );
      if (!st.isDirectory())
        throw new TwinError(
          'ETWIN_NOT_FOUND',
          `no such file on the volume: ${p} (${cur} is not a directory)`,
          {
            path: p,
          },
        );
      cur += '/' + name;
      const next = await fsp.lstat(this.opts.fs.paths.backing(cur)).catch(() => undefined);
      if (!next) throw new TwinError('ETWIN_NOT_FOUND', `no such file on the volume: ${p}`, { path: p });
      st = next;
    }
    return st;
  }

  private assertFree(sel: Selector, _owner: string): void {
    for (const r of this.reserved)
      if (r.kind === 'prepare' && selectorsOverlap(r.selector, sel))
        throw new TwinError(
          'ETWIN_BUSY',
          'files in this selection are being prepared for another backup; try again after it is released',
        );
    for (const b of this.backups.values())
      if (selectorsOverlap(b.selector, sel))
        throw new TwinError(
          'ETWIN_BUSY',
          `files in this selection are being backed up by ${b.backupId}; try again after it is released`,
          {
            backupId: b.backupId,
          },
        );
  }

  private assertMirrorReady(mirror: MirrorDriver, sel: Selector): void {
    const st = mirror.status();
    if (st.state === 'COPY')
      throw new TwinError(
        'ETWIN_MIRROR_BROKEN',
        'the mirror is still being copied; try again when it is in sync',
      );
    const hit = st.broken.find(
      (b) =>
        sel.volume || covers(sel, b) || (sel.subtrees ?? []).some((t) => b === '/' || t.startsWith(b + '/')),
    );
    if (hit)
      throw new TwinError('ETWIN_MIRROR_BROKEN', `the mirror pair for ${hit} is BROKEN; run a repair first`, {
        path: hit,
      });
  }

  private async listItems(
    mirror: MirrorDriver,
    sel: Selector,
  ): Promise<{ items: Item[]; complete: boolean }> {
    const items: Item[] = [];
    const root = mirror.dataRoot;
    const add = async (p: string, st?: import('node:fs').Stats) => {
      st ??= await fsp.lstat(root + p);
      items.push({
        path: p,
        mirrorPath: p,
        type: st.isFile()
          ? 'file'
          : st.isDirectory()
            ? 'dir'
            : st.isSymbolicLink()
              ? 'symlink'
              : st.isFIFO()
                ? 'fifo'
                : 'other',
        size: st.size,
        mtime: st.mtimeMs,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        ino: st.ino,
        nlink: st.nlink,
        target: st.isSymbolicLink() ? await fsp.readlink(root + p) : undefined,
      });
    };
    if (sel.paths) {
      for (const p of sel.paths) await add(p);
      return { items, complete: true };
    }
    const top = sel.volume ? '' : sel.subtrees![0]!;
    if (top) await add(top);
    for await (const e of walk(root + top)) {
      if (items.length >= this.maxItems) return { items, complete: false };
      await add(top + e.path, e.stat);
    }
    return { items, complete: true };
  }
}

function normalizePath(p: string): string {
  try {
    return VolumePaths.normalize(p);
  } catch (err) {
    throw new TwinError('ETWIN_PATH_ESCAPE', (err as Error).message, { path: p });
  }
}

/** Turns write-back failures (an errno error or an AggregateError of them) into ETWIN_WRITEBACK. */
function stallExceeded(budget: number, heldMs?: number): TwinError {
  return new TwinError(
    'ETWIN_STALL_EXCEEDED',
    `could not drain, flush and split within the maximum stall of ${budget} ms${
      heldMs === undefined ? '' : ` (writes were held ${heldMs.toFixed(2)} ms)`
    }; writes resumed and nothing stays split`,
    { maxStallMs: budget, ...(heldMs === undefined ? {} : { heldMs }) },
  );
}

export function writebackError(err: unknown): TwinError {
  if (err instanceof TwinError) return err;
  const errors = err instanceof AggregateError ? err.errors : [err];
  const codes = [...new Set(errors.map((e) => (e as NodeJS.ErrnoException)?.code ?? 'EIO'))];
  return new TwinError(
    'ETWIN_WRITEBACK',
    `cached data of the selection could not be written to the primary (${codes.join(', ')})`,
    { errno: codes },
    { cause: err },
  );
}

function isMultiplyLinked(backing: string): boolean {
  try {
    return lstatSync(backing).nlink > 1;
  } catch {
    return false;
  }
}

/** @internal */
function toInhibitSelector(sel: Selector) {
  return { paths: sel.paths, subtrees: sel.subtrees, volume: sel.volume };
}

/**
 * Why a split copy could not be listed. A selected file or subtree the copy lacks (the mirror's
 * root being there) was gone at the split instant: renamed or removed after the prepare looked
 * it up and before the split; the selection names nothing, as it would a moment later. Anything
 * else is the mirror's failure.
 */
async function listingError(e: NodeJS.ErrnoException, root: string, sel: Selector): Promise<TwinError> {
  const p =
    typeof e.path === 'string' && e.path.startsWith(`${root}/`) ? e.path.slice(root.length) : undefined;
  const selected = p !== undefined && [...(sel.paths ?? []), ...(sel.subtrees ?? [])].includes(p);
  const rootThere = await fsp.stat(root).then(
    (st) => st.isDirectory(),
    () => false,
  );
  // e.path names the path as the listing gave it, non-UTF-8 bytes included (byte-paths.ts).
  if (selected && rootThere && (e.code === 'ENOENT' || e.code === 'ENOTDIR'))
    return new TwinError('ETWIN_NOT_FOUND', `no such file on the volume at the split instant: ${p}`, {
      path: p,
    });
  return new TwinError(
    'ETWIN_MIRROR_BROKEN',
    `the mirror's copy of the selection cannot be listed (${e.code ?? e.message}${p !== undefined ? ` at ${p}` : ''}); run a repair`,
    { errno: e.code, path: e.path },
  );
}
