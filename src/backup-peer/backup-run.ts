import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import { DisposableStore } from '../common/lifecycle.js';
import type { PathPatterns } from '../common/path-patterns.js';
import { ControlClient } from '../control/client.js';
import type { BackupReport, PrepareResult, SelectorMsg } from '../control/protocol.js';
import { installBytePaths } from '../posix/byte-paths.js';
import { RepositoryTarget } from '../repository/index.js';
import {
  type BackupEventName,
  type BackupHooks,
  type FreezeHookResult,
  type HookFailurePolicy,
  type PluginSelector,
  pluginSelector,
  runFreezeHooks,
} from './backup-hooks.js';
import {
  carriedTotals,
  copyNamed,
  mayReference,
  type ReferencePlan,
  referencePlan,
  referenceTotals,
} from './carry-by-reference.js';
import { Catalog, type EntryRecord, type SnapshotRecord, type StagedEntries } from './catalog.js';
import { syncCatalogByName } from './catalog-sync.js';
import { type ChangePlan, planFromChanges } from './change-plan.js';
import { EntryCopier } from './entry-copier.js';
import { locateMirror, MirrorReader, type SourceEntry, toVolumePath } from './mirror-source.js';
import { vouchedBy } from './reuse-oracle.js';
import { forEachLimit, forEachLimitAsync } from './safe-tree.js';
import { checkAgainstSource, type SourceCheckResult } from './source-check.js';
import { type BackupControl, describe, SplitLease } from './split-lease.js';
import {
  type BackupTarget,
  emptyTotals,
  type ManifestEntry,
  type SnapshotMeta,
  type SnapshotTotals,
  type SnapshotWriter,
} from './target.js';

export type { BackupEventName, BackupHooks, HookFailurePolicy } from './backup-hooks.js';
export type { BackupControl } from './split-lease.js';

export interface BackupOptions {
  /** The control server's URL (ws://HOST:PORT); recorded in the catalog. */
  server: string;
  token: string;
  target: BackupTarget;
  /** Catalog directory (default: defaultCatalogDir()). */
  catalogDir?: string;
  selector: SelectorMsg;
  /** Lease asked for at prepare and at every renew, ms (default 60000). */
  leaseMs?: number;
  /**
   * The target took no file and no byte for this long while the split is held, ms (default
   * 120000): the run fails with ETWIN_TARGET_HUNG and the split is released at once, so a hung
   * target cannot hold the mirror. The call stuck at the target is left behind.
   */
  targetTimeoutMs?: number;
  /** deviceId → this host's path of that mirror (root or data directory). */
  mirrorMap?: Record<string, string>;
  /** Copy every file, sharing nothing with the previous snapshot. */
  full?: boolean;
  /** Labels recorded with the snapshot (at the target and in the catalog). */
  tags?: string[];
  /**
   * Volume paths left out, with everything below them (backup --exclude, --exclude-file). The
   * patterns are recorded in the snapshot's selector: a parent taken with other patterns holds
   * another set of entries, so no change-driven incremental builds on it.
   */
  exclude?: PathPatterns;
  /**
   * Compare the committed snapshot with the split mirror copy before the split is released
   * (source-check.ts): 'metadata' (cheap) or 'data' (every file read back and hashed). A
   * mismatch fails the run (ETWIN_SOURCE_MISMATCH) and deletes the snapshot.
   */
  checkSource?: 'metadata' | 'data';
  signal?: AbortSignal;
  /** CA (PEM) to trust for wss:// with a private CA. */
  ca?: string | Buffer;
  /** Opens the control channel (default: ControlClient.connect). */
  connect?: (url: string, token: string) => Promise<BackupControl>;
  /**
   * Entries of the sizing walk kept, with their lstats, for the copy to take instead of walking
   * again (default 150,000, about 1 KiB each); past it the copy walks the selection again.
   */
  walkKeep?: number;
  /** Parallel copies (default: min(64, the target's maxConcurrency)). */
  concurrency?: number;
  /** Plugin events and onWillFreeze hooks (the CLI passes its plugin host). */
  hooks?: BackupHooks;
  /** How long onWillFreeze hooks may take, ms (default 10000); before prepare, never in the write stall. */
  freezeHookTimeoutMs?: number;
  onHookFailure?: HookFailurePolicy;
}

export type BackupPhase = 'connect' | 'freeze' | 'prepare' | 'size' | 'copy' | 'commit' | 'done';

export interface BackupProgress {
  phase: BackupPhase;
  snapshotId?: string;
  backupId?: string;
  /**
   * Entries done, of filesTotal: known before the copy starts (the server's item list, or a
   * walk of the split copy in the 'size' phase).
   */
  files: number;
  filesTotal: number;
  /** Bytes of files done (copied or shared), of bytesTotal (known with filesTotal). */
  bytes: number;
  bytesTotal: number;
  copiedBytes: number;
  reusedFiles: number;
  path?: string;
}

export interface BackupResult {
  snapshot: SnapshotRecord;
  stallMs: number;
  backupId: string;
  /** How long the onWillFreeze hooks took, ms (before prepare: not part of stallMs). */
  freezeHookMs: number;
  /** onWillFreeze hooks that failed or timed out; the run went on crash-consistent. */
  hookFailures: Array<{ plugin: string; message: string }>;
  /** Files that looked unchanged and were copied anyway, by reason (EntryCopier.refused). */
  refused: { notVouched: number; flagged: number; atTarget: number };
  /** Why the server vouched for nothing, when it did not (an unclean start, a lost record...). */
  unknownSince?: { since: number; reason: string };
  /** The --check-source result, when asked for. */
  sourceCheck?: SourceCheckResult;
  /**
   * Large files whose holes were not read from the mirror (only zeros there, src/posix/sparse.ts sparseReader),
   * and the bytes of those holes; absent when there were none.
   */
  sparse?: { files: number; holeBytes: number };
  /**
   * Large files the page cache did not hold, read from the mirror with O_DIRECT
   * (src/posix/direct-read.ts), and the bytes read that way; absent when there were none.
   */
  direct?: { files: number; bytes: number };
  /**
   * How the server's change answer drove the run, when it vouched (change-plan.ts): entries
   * carried over from the parent unread, paths looked at in the mirror, subtrees walked, large
   * files stored from their changed ranges and the bytes those read from the mirror.
   */
  changes?: {
    carried: number;
    looked: number;
    walked: number;
    rangedFiles: number;
    rangedMirrorBytes: number;
    /** Built by reference: the target kept the parent's other entries (carry-by-reference.ts). */
    byReference?: boolean;
  };
}

/** A warning of a run that goes on (a failed onWillFreeze hook). */
export interface BackupWarning {
  code: string;
  message: string;
  plugin?: string;
}

const DEFAULT_LEASE_MS = 60_000;
/** Progress events for entries done, at most one per this many ms. */
const PROGRESS_MS = 100;
/** Entries of the sizing walk kept for the copy, at most (each with its lstat: ~1 KiB). */
const WALK_KEEP = 150_000;
const DEFAULT_TARGET_TIMEOUT_MS = 120_000;

/** A snapshot id: sortable by time, unique enough, safe as a file name. */
export function newSnapshotId(now = new Date()): string {
  const t = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `${t}-${randomBytes(3).toString('hex')}`;
}

/**
 * One backup run, the peer's half of the backup sequence (ARCHITECTURE.md): prepare (the server
 * splits the pairs), copy from the split mirror to the target, confirm the split held, release
 * it, commit, record. The split is released in every case: right after the last read, or when
 * the run fails.
 *
 * What keeps a snapshot honest (invariant 8): every read happens while the split is provably
 * held — the run stops at once when the split is lost (SplitLease) and confirms it after the last
 * read — and the catalog marks the snapshot complete only after the target's commit resolved.
 */
export class BackupRun {
  private readonly _onDidProgress = new Emitter<BackupProgress>();
  /** Fired on every phase change, and as entries are done (at most every PROGRESS_MS). */
  readonly onDidProgress = this._onDidProgress.event;
  private readonly _onDidWarn = new Emitter<BackupWarning>();
  /** Fired when the run goes on past a problem (a failed onWillFreeze hook). */
  readonly onDidWarn = this._onDidWarn.event;
  /** Plugin events delivered while the run goes on; settled before run() returns. */
  private readonly pendingEvents: Array<Promise<void>> = [];
  private readonly progress: BackupProgress = {
    phase: 'connect',
    files: 0,
    filesTotal: 0,
    bytes: 0,
    bytesTotal: 0,
    copiedBytes: 0,
    reusedFiles: 0,
  };

  /** When entryDone last fired a progress event (ms since the epoch). */
  private lastEntryEvent = 0;

  /** Whether --exclude leaves a volume path out (undefined: nothing is excluded). */
  private readonly excluded: ((volumePath: string) => boolean) | undefined;

  constructor(private readonly opts: BackupOptions) {
    installBytePaths();
    const ex = opts.exclude;
    this.excluded = ex?.patterns.length ? (p) => ex.matches(p) : undefined;
  }

  /** The selection as recorded with the snapshot: with its --exclude patterns. */
  private recordedSelector(): SelectorMsg & { exclude?: string[] } {
    const ex = this.opts.exclude?.patterns;
    return ex?.length ? { ...this.opts.selector, exclude: ex } : this.opts.selector;
  }

  async run(): Promise<BackupResult> {
    const o = this.opts;
    const leaseMs = o.leaseMs ?? DEFAULT_LEASE_MS;
    const store = new DisposableStore();
    // Aborted by the caller or by losing the split: in-flight copies stop at once.
    const stop = new AbortController();
    const onAbort = () => stop.abort(new TwinError('ETWIN_ABORTED', 'backup cancelled'));
    if (o.signal?.aborted) onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    store.add({ dispose: () => o.signal?.removeEventListener('abort', onAbort) });
    let writer: SnapshotWriter | undefined;
    let recorded = false;
    /** Committed before the split was released (checkSource): a failure after it must delete it. */
    let committedEarly = false;
    /** The catalog's entries being written beside the commit: settled before a failure is recorded. */
    let staging: Promise<StagedEntries> | undefined;
    // Known from the start: plugins hear of the run (onWillBackup) before anything happens.
    const id = newSnapshotId();
    this.progress.snapshotId = id;
    // The target's lock is taken from now on, beside the catalog's reads and the prepare, for
    // beginSnapshot to take over (RepositoryTarget.reserveLock); released at the end if not.
    if (o.target instanceof RepositoryTarget) {
      const t = o.target;
      t.reserveLock(id);
      store.add({ dispose: () => t.dropReservation(id) });
    }
    const selector = pluginSelector(o.selector);
    const target = o.target.spec;
    // Set while plugins may hold applications quiesced for this run: onDidThaw lets them go.
    let thawOwed = false;
    /** Tells the server how the copy goes (set once the split is prepared). */
    let tellServer: ((r: Pick<BackupReport, 'outcome' | 'error'>) => Promise<void>) | undefined;
    try {
      await o.hooks?.emit('onWillBackup', { snapshotId: id, selector, target });
      this.emit({ phase: 'connect' });
      const control = await (o.connect ?? ((url, token) => defaultConnect(url, token, o.ca)))(
        o.server,
        o.token,
      );
      store.add({ dispose: () => control.close() });
      // The mirror as the hello names it, located (its path resolved, its device.json read, the
      // FUSE mounts looked at) while the catalog is read and the server prepares, not after:
      // prepare's answer names the same mirror unless the server changed in between (then it
      // is located again from the answer).
      const hello = control.hello;
      const located =
        hello?.deviceId && hello.mirrorRoot
          ? {
              deviceId: hello.deviceId,
              mirrorRoot: hello.mirrorRoot,
              mirror: locateMirror({ deviceId: hello.deviceId, mirrorRoot: hello.mirrorRoot }, o.mirrorMap),
            }
          : undefined;
      located?.mirror.catch(() => undefined);
      // Before the split is taken: nothing here should count against the lease. The previous
      // snapshot is chosen before prepare (the server says what changed since its split) and
      // before the freeze hooks (applications they quiesce do not wait for it), in the session
      // that clears the runs of dead peers.
      const prev = await this.previous(control.hello?.deviceId ?? undefined);
      throwIfAborted(stop.signal);
      thawOwed = !!o.hooks;
      const hooks = await this.freezeHooks(selector);
      throwIfAborted(stop.signal);
      this.emit({ phase: 'prepare' });
      const base = prev.base;
      // Built on by reference (carry-by-reference.ts), none of its entries are read but those
      // the answer names.
      const byReference = mayReference(base, prev.hasEntries, !!o.checkSource);
      // Else its entries are read now, before the split is held: reading 100,000 of them blocks
      // this thread for seconds, and a holder that does not answer the server's pings loses its split.
      // From the catalog or, for a row without them (a lost catalog's, another peer's snapshot),
      // from its manifest at the target: the catalog's none taken for its entries made the run an
      // empty snapshot (nothing carried, nothing changed).
      const baseEntries = base && !byReference ? await this.parentEntries(base.id) : undefined;
      // The parent's snapshot object, which carryFrom reads, is read while the server prepares.
      if (byReference && o.target instanceof RepositoryTarget) o.target.prefetchParent(id, base!.id);
      const prep = await control.prepare(o.selector, {
        leaseMs,
        listItems: Boolean(o.selector.paths),
        since: base?.generation,
      });
      // Registered after the connection: disposed (the split released) before it closes.
      const lease = store.add(new SplitLease(control, prep.backupId, leaseMs, (err) => stop.abort(err)));
      this.progress.backupId = prep.backupId;
      tellServer = this.serverReporter(control, prep.backupId, target, store);
      // When prepare answers, the server has held the writes, split the pairs and let writes go
      // again: told in that order, and not waited for — applications paused by onWillFreeze
      // resume on onDidThaw, and the lease is running.
      const backupId = prep.backupId;
      this.deliver('onDidFreeze', { selector, backupId });
      this.deliver('onDidSplit', { selector, backupId, deviceId: prep.deviceId });
      this.deliver('onDidThaw', { selector, backupId, stallMs: prep.stallMs });
      thawOwed = false;

      const mirror =
        located && located.deviceId === prep.deviceId && located.mirrorRoot === prep.mirrorRoot
          ? await located.mirror
          : await locateMirror(prep, o.mirrorMap);
      const reader = new MirrorReader(mirror.data, this.excluded);
      // Checked before anything is recorded: a bad path list is the server's fault, not a run.
      const sources = prep.itemsComplete ? itemsToSources(prep) : undefined;
      recorded = true;
      let sharing = true;
      const parent = await this.beginInCatalog(
        id,
        prep,
        base && baseEntries && { id: base.id, entries: baseEntries },
        !byReference,
      );
      // Only an answer about this very parent's split vouches for anything.
      const sameParent = !!parent && parent.id === base?.id;
      const vouched = sameParent ? vouchedBy(prep.changes) : () => false;
      // By reference: the answer's paths looked at, only their parent entries read.
      let ref: ReferencePlan | undefined;
      if (parent && byReference) {
        ref =
          sameParent && !sources
            ? await referencePlan(
                this.recordedSelector(),
                base!.selector,
                prep.changes,
                {
                  damaged: parent.damaged,
                  // Searched for only when the parent has any (a read of its entry files).
                  linked: async () =>
                    base!.totals.hardLinks
                      ? Catalog.with(o.catalogDir, (c) => c.linkedPaths(parent.id))
                      : new Set<string>(),
                },
                reader,
                this.copyConcurrency(),
              )
            : undefined;
        // --exclude: a named path it leaves out is not looked at (walks skip them already).
        if (ref && this.excluded) ref.dirty = ref.dirty.filter((p) => !this.excluded!(p));
        // The parent's entries at the named paths, and at and below the walked subtrees; with
        // none (nothing changed), no catalog session: it would only lock, look and unlock.
        if (ref && ref.dirty.length + ref.walk.length === 0) parent.entries = new Map();
        else if (ref)
          parent.entries = await Catalog.with(o.catalogDir, async (c) => {
            const at = await c.entriesAt(parent.id, ref!.dirty);
            for (const [p, e] of await c.entriesBelow(parent.id, ref!.walk)) at.set(p, e);
            return at;
          });
        else sharing = await this.loadParent(parent);
      }
      // With the same parent, and an answer that vouches: only what changed is looked at.
      const planned = () =>
        parent && sameParent && sharing && !sources
          ? planFromChanges(
              this.recordedSelector(),
              { selector: base!.selector, entries: parent.entries },
              prep.changes,
            )
          : undefined;
      let plan = ref ? undefined : planned();
      const meta: SnapshotMeta = {
        snapshotId: id,
        time: Date.now(),
        server: o.server,
        deviceId: prep.deviceId,
        selector: this.recordedSelector(),
        parentId: parent?.id,
        // At the target, so that the next incremental finds it without this catalog.
        ...(prep.generation ? { generation: prep.generation } : {}),
        ...(o.tags?.length ? { tags: o.tags } : {}),
      };
      // A walked selection is sized by a walk of the split copy whose entries (lstats
      // included) the copy takes as they are found (one lstat per entry): the copy does not
      // wait for the walk, and its phase begins, with totals that no longer change, when the
      // walk is over. An incremental the change answer drives looks only at what changed.
      const sizing = !sources && !plan && !ref;
      // From here the target may hang (a stalled network filesystem, a stopped server): while the
      // split is held, the watchdog releases it and fails the run; awaits at the target are raced
      // with it.
      const watch = store.add(this.watchTarget(stop, lease, o.targetTimeoutMs ?? DEFAULT_TARGET_TIMEOUT_MS));
      writer = await unlessAborted(o.target.beginSnapshot(meta), stop.signal);
      // A target that cannot keep the parent's entries itself is passed every one of them.
      if (
        ref &&
        !(await unlessAborted(writer.carryFrom?.(parent!.id) ?? Promise.resolve(false), stop.signal))
      ) {
        ref = undefined;
        sharing = await this.loadParent(parent!);
        plan = planned();
      }
      const walk = sizing ? this.sizingWalk(reader, stop.signal) : undefined;
      if (!walk) this.emit({ phase: 'copy' });
      let lastByteEvent = 0;
      const copier = new EntryCopier({
        reader,
        writer,
        parent,
        vouched,
        damaged: parent?.damaged,
        ranges: ref?.ranges ?? plan?.ranges,
        stored: {
          open: (snapshotId, p, range) => o.target.openFile(snapshotId, p, range),
          stat: (snapshotId, p) => o.target.stat(snapshotId, p),
        },
        signal: stop.signal,
        onBytes: (n, copied) => {
          this.progress.bytes += n;
          if (copied) this.progress.copiedBytes += n;
          // Large files report while they stream, a few times a second.
          const now = Date.now();
          if (now - lastByteEvent >= 200) {
            lastByteEvent = now;
            this.emit({});
          }
        },
      });
      const named =
        ref &&
        (await unlessAborted(this.copyByReference(ref, base!.totals, parent!.entries, copier), stop.signal));
      const entries = named
        ? named.entries
        : await unlessAborted(
            plan
              ? this.copyPlanned(plan, reader, copier, stop.signal)
              : this.copyAll(sources, reader, copier, stop.signal, walk),
            stop.signal,
          );

      const totals = named ? carriedTotals(base!.totals, parent!.entries, copier.totals) : copier.totals;
      let sourceCheck: SourceCheckResult | undefined;
      if (o.checkSource) {
        // Committed first, then compared with the split copy, which stays held until then.
        this.emit({ phase: 'commit' });
        await unlessAborted(writer.commit({ version: 1, meta, totals, entries }), stop.signal);
        committedEarly = true;
        sourceCheck = await checkAgainstSource({
          target: o.target,
          snapshotId: id,
          entries,
          reader,
          readData: o.checkSource === 'data',
          signal: stop.signal,
        });
        if (!sourceCheck.ok) {
          await o.target.deleteSnapshot(id).catch(() => undefined);
          const first = sourceCheck.problems[0]!;
          throw new TwinError(
            'ETWIN_SOURCE_MISMATCH',
            `snapshot ${id} differs from the split copy in ${sourceCheck.problems.length} entr${sourceCheck.problems.length === 1 ? 'y' : 'ies'} (first: ${first.path}: ${first.message}); deleted`,
            { snapshotId: id, problems: sourceCheck.problems.slice(0, 20) },
          );
        }
      }

      // The catalog's entries are written from here on (a full backup's are thousands of lines,
      // synced; an unchanged one's a few, behind two fsyncs), while the split is confirmed and
      // released and the target commits: the snapshot is marked complete only once the commit
      // resolved, and a run failed before that removes them (Catalog.fail, after they settled).
      if (!o.checkSource) {
        staging = Catalog.with(o.catalogDir, (c) =>
          named
            ? c.stageOnBase(id, parent!.id, named)
            : c.stageEntries(id, entries, { base: parent && { id: parent.id, entries: parent.entries } }),
        );
        staging.catch(() => undefined);
      }
      // Every read is done: prove the split held all along, then let the server resync.
      await lease.confirm();
      throwIfAborted(stop.signal);
      // The split goes back to the server now, and its resync runs while the target commits:
      // the commit needs the confirmation only (before, it waited for the resync's answer too).
      const releasing = lease.release();
      // A slow commit from here holds nothing.
      watch.dispose();

      if (!o.checkSource) {
        this.emit({ phase: 'commit' });
        const committing = unlessAborted(
          writer.commit({ version: 1, meta, totals, entries, ...(named ? { gone: named.gone } : {}) }),
          stop.signal,
        );
        // Both settled before going on: the failure path's Catalog.fail must come after the
        // entries are written, or it would leave them behind.
        const [commit, stage] = await Promise.allSettled([committing, staging]);
        if (commit.status === 'rejected') throw commit.reason;
        if (stage.status === 'rejected') throw stage.reason;
      }
      // Should recording fail now, the committed data stays at the target as an orphan: the
      // catalog never claims it, and a transient catalog failure must not destroy a good copy.
      // Entries mostly carried over are recorded as a delta on the parent's.
      const staged = await staging;
      const snapshot = await Catalog.with(o.catalogDir, async (c) =>
        staged
          ? c.markComplete(id, totals, staged)
          : named
            ? c.completeOnBase(id, parent!.id, named, totals)
            : c.complete(id, entries, totals, { base: parent && { id: parent.id, entries: parent.entries } }),
      );
      const resynced = await releasing;
      if (resynced !== undefined)
        this.deliver('onDidResync', { backupId, bytesCopied: numberOr(resynced.reply, 'bytesCopied') });
      this.emit({ phase: 'done', reusedFiles: totals.reusedFiles });
      // Not waited for: nothing here needs the server's answer. The report is on the wire before
      // any later message of this connection (its close included): the server has recorded the
      // outcome before it sees the peer go.
      void tellServer({ outcome: 'ok' });
      await o.hooks?.emit('onDidCompleteBackup', { snapshotId: id, totals, target });
      return {
        snapshot,
        stallMs: prep.stallMs,
        backupId,
        freezeHookMs: hooks.ms,
        hookFailures: hooks.failures,
        refused: { ...copier.refused },
        unknownSince: prep.changes?.unknown,
        sourceCheck,
        ...(copier.sparse.files > 0 ? { sparse: { ...copier.sparse } } : {}),
        ...(copier.direct.files > 0 ? { direct: { ...copier.direct } } : {}),
        changes: named
          ? {
              carried: referenceTotals(base!.totals, ref!, parent!.entries).carriedEntries,
              looked: ref!.dirty.length,
              walked: ref!.walk.length,
              rangedFiles: copier.carriedOver.rangedFiles,
              rangedMirrorBytes: copier.carriedOver.rangedMirrorBytes,
              byReference: true,
            }
          : plan && {
              carried: copier.carriedOver.entries,
              looked: plan.dirty.length,
              walked: plan.walk.length,
              rangedFiles: copier.carriedOver.rangedFiles,
              rangedMirrorBytes: copier.carriedOver.rangedMirrorBytes,
            },
      };
    } catch (err) {
      // Once stopped, whatever in-flight work threw is a consequence: report the cause.
      const reason = stop.signal.aborted ? stop.signal.reason : err;
      if (thawOwed) this.deliver('onDidThaw', { selector });
      await tellServer?.({ outcome: 'failed', error: { code: codeOf(reason), message: describe(reason) } });
      // A hung target may never answer these: bounded, the catalog still records the failure.
      await unlessSlow(writer?.abort(), CLEANUP_MS);
      if (committedEarly) await unlessSlow(o.target.deleteSnapshot(id), CLEANUP_MS);
      await staging?.catch(() => undefined);
      if (recorded)
        await Catalog.with(o.catalogDir, (c) =>
          c.fail(id, { code: codeOf(reason), message: describe(reason) }),
        ).catch(() => undefined);
      await o.hooks
        ?.emit('onDidFail', { snapshotId: id, code: codeOf(reason), message: describe(reason) })
        .catch(() => undefined);
      throw reason;
    } finally {
      await store.dispose().catch(() => undefined);
      await Promise.allSettled(this.pendingEvents);
      this._onDidProgress.dispose();
      this._onDidWarn.dispose();
    }
  }

  /**
   * Reports the copy's progress to the server (request `report`), at most twice a second and
   * at each phase, for its status page, metrics and log; returns the function that reports
   * the outcome. Best effort: a server that does not know the request (an older one) or a
   * refused report stops the reporting, never the run.
   */
  private serverReporter(
    control: BackupControl,
    backupId: string,
    target: string,
    store: DisposableStore,
  ): (r: Pick<BackupReport, 'outcome' | 'error'>) => Promise<void> {
    let working = typeof control.report === 'function';
    let last = 0;
    let lastPhase: string | undefined;
    const send = async (extra: Pick<BackupReport, 'outcome' | 'error'>) => {
      if (!working) return;
      const p = this.progress;
      const phase = extra.outcome ? 'done' : p.phase === 'commit' || p.phase === 'done' ? p.phase : 'copy';
      await control.report!(backupId, {
        target,
        snapshotId: p.snapshotId,
        phase,
        files: p.files,
        filesTotal: p.filesTotal,
        bytes: p.bytes,
        bytesTotal: p.bytesTotal,
        copiedBytes: p.copiedBytes,
        ...extra,
      }).catch(() => {
        working = false;
      });
    };
    store.add(
      this.onDidProgress((p) => {
        const now = Date.now();
        if (p.phase === lastPhase && now - last < 500) return;
        last = now;
        lastPhase = p.phase;
        void send({});
      }),
    );
    return async (r) => {
      await send(r);
      working = false;
    };
  }

  /**
   * Fails the run with ETWIN_TARGET_HUNG and releases its split when neither a file nor a byte
   * reached the target for timeoutMs (checked every second, or every tenth of the timeout).
   */
  private watchTarget(stop: AbortController, lease: SplitLease, timeoutMs: number): { dispose(): void } {
    let mark = '';
    let since = Date.now();
    const timer = setInterval(
      () => {
        const now = `${this.progress.files}/${this.progress.bytes}`;
        if (now !== mark) {
          mark = now;
          since = Date.now();
          return;
        }
        if (Date.now() - since < timeoutMs || stop.signal.aborted) return;
        clearInterval(timer);
        stop.abort(
          new TwinError(
            'ETWIN_TARGET_HUNG',
            `the target ${this.opts.target.spec} took nothing for ${Math.round(timeoutMs / 1000)} s; the split was released and the run abandoned`,
          ),
        );
        void lease.release();
      },
      Math.min(1000, Math.max(50, Math.floor(timeoutMs / 10))),
    );
    return { dispose: () => clearInterval(timer) };
  }

  /** onWillFreeze hooks (see runFreezeHooks); a failure that lets the run go on is a warning. */
  private async freezeHooks(selector: PluginSelector): Promise<FreezeHookResult> {
    const o = this.opts;
    if (!o.hooks) return { ms: 0, failures: [] };
    this.emit({ phase: 'freeze' });
    const r = await runFreezeHooks(o.hooks, selector, {
      timeoutMs: o.freezeHookTimeoutMs,
      policy: o.onHookFailure,
    });
    for (const f of r.failures)
      this._onDidWarn.fire({
        code: 'ETWIN_PLUGIN_FAILED',
        plugin: f.plugin,
        message: `plugin ${f.plugin}: ${f.message}; going on crash-consistent`,
      });
    return r;
  }

  /** Delivers a plugin event without waiting for it (settled before run() returns). */
  private deliver(name: BackupEventName, payload: Record<string, unknown>): void {
    const hooks = this.opts.hooks;
    if (hooks) this.pendingEvents.push(hooks.emit(name, payload).catch(() => undefined));
  }

  /**
   * The walk of the split copy that sizes a walked selection (a walk of names and lstats, no
   * data read), started beside the copy: the copy takes its entries as they are found (each
   * with its lstat: the tree is not walked and lstat'ed a second time) and the 'copy' phase
   * begins when the walk is over, with totals that stay fixed from then on (until then the
   * 'size' phase's totals grow). Past WALK_KEEP entries found and not yet taken (memory: ~1 KiB
   * each) the walk only counts, and the copy walks on from there itself. The split copy does
   * not change meanwhile, and what is read is checked against the walk's lstat (size and
   * mtime, EntryCopier).
   */
  private sizingWalk(reader: MirrorReader, signal: AbortSignal): SizingWalk {
    let lastEvent = 0;
    this.emit({ phase: 'size', files: 0, filesTotal: 0, bytes: 0, bytesTotal: 0 });
    return new SizingWalk(
      // Every entry of a directory before its subdirectories' (a large file is found early).
      () => reader.walk(this.opts.selector, { dirsLast: true }),
      this.opts.walkKeep ?? WALK_KEEP,
      signal,
      (files, bytes, done) => {
        if (done) return this.emit({ phase: 'copy', filesTotal: files, bytesTotal: bytes });
        // The totals found so far are kept on every entry, told at most every 200 ms: an event
        // of the copy (entryDone) in between carries them too, so no event shows more done
        // than found.
        this.progress.filesTotal = files;
        this.progress.bytesTotal = bytes;
        const now = Date.now();
        if (now - lastEvent >= 200) {
          lastEvent = now;
          this.emit({});
        }
      },
    );
  }

  /**
   * How many entries are copied at once: the option, else at most 64 and what the target takes.
   * Many at once so that small files' reads overlap, and so that the repository target's
   * batches of small files (read in its workers, small-files.ts) fill (a target bounds its own
   * memory: the repository streams only a few large files at a time).
   */
  private copyConcurrency(): number {
    return this.opts.concurrency ?? Math.min(64, this.opts.target.capabilities.maxConcurrency);
  }

  /**
   * One entry done: counted, and the progress told at most every PROGRESS_MS (an event per
   * entry was a copy of the progress object per file, and more in every listener: the CLI's
   * JSON lines and the server's reports keep a few a second anyway). Every phase change tells
   * the counters as they are.
   */
  private entryDone(copier: EntryCopier, p: string): void {
    this.progress.files++;
    this.progress.reusedFiles = copier.totals.reusedFiles;
    this.progress.path = p;
    const now = Date.now();
    if (now - this.lastEntryEvent < PROGRESS_MS) return;
    this.lastEntryEvent = now;
    this.emit({});
  }

  /** Copies the items of the reply, or (cut short) what a walk of the selection finds. */
  private async copyAll(
    sources: SourceEntry[] | undefined,
    reader: MirrorReader,
    copier: EntryCopier,
    signal: AbortSignal,
    walk?: SizingWalk,
  ): Promise<ManifestEntry[]> {
    const entries: ManifestEntry[] = [];
    const concurrency = this.copyConcurrency();
    const copyOne = async (src: SourceEntry) => {
      const e = await copier.copy(src);
      if (e) entries.push(e);
      this.entryDone(copier, src.path);
    };
    if (sources) {
      sources = sources.filter((s) => !this.excluded?.(s.path));
      this.progress.filesTotal = sources.length;
      this.progress.bytesTotal = sources.reduce((n, s) => n + (s.item?.type === 'file' ? s.item.size : 0), 0);
      await forEachLimit(sources, concurrency, copyOne);
    } else if (walk) {
      // The sizing walk's entries and lstats, as it finds them (the totals come from it too).
      try {
        await forEachLimitAsync(walk.entries(), concurrency, async (s) => {
          throwIfAborted(signal);
          await copyOne(s);
        });
      } finally {
        walk.stop();
      }
    } else {
      // Copies start as the walk finds entries and the walk goes on while they run (no batch
      // waits for its slowest file before the walk resumes). No sizing walk: the totals grow.
      await forEachLimitAsync(reader.walk(this.opts.selector), concurrency, async (s) => {
        throwIfAborted(signal);
        // The split copy does not change; a total short of what is copied would be a bug, but
        // the progress must still not claim more than 100%.
        if (this.progress.files >= this.progress.filesTotal) this.progress.filesTotal++;
        await copyOne(s);
      });
    }
    throwIfAborted(signal);
    return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /**
   * An incremental built by reference: the carried entries counted at once (the totals come
   * from the parent's and the answer's paths, no walk), the named paths copied.
   */
  private async copyByReference(
    ref: ReferencePlan,
    parentTotals: SnapshotTotals,
    prev: Map<string, EntryRecord>,
    copier: EntryCopier,
  ): Promise<{ entries: ManifestEntry[]; gone: string[] }> {
    const t = referenceTotals(parentTotals, ref, prev);
    this.progress.filesTotal = t.entries;
    this.progress.bytesTotal = t.bytes;
    this.emit({ files: t.carriedEntries, bytes: t.carriedBytes, reusedFiles: 0 });
    return copyNamed(ref, prev, copier, this.copyConcurrency(), (p) => this.entryDone(copier, p));
  }

  /**
   * Copies what the change plan names: the parent's vouched entries carried over unread, the
   * changed paths looked at (those gone from the mirror are gone from the snapshot), the
   * subtrees the answer could not itemise walked. A carried entry whose stored copy cannot be
   * shared is looked at like a changed one.
   */
  private async copyPlanned(
    plan: ChangePlan,
    reader: MirrorReader,
    copier: EntryCopier,
    signal: AbortSignal,
  ): Promise<ManifestEntry[]> {
    const entries: ManifestEntry[] = [];
    const concurrency = this.copyConcurrency();
    const done = (p: string) => this.entryDone(copier, p);
    const look = async (p: string) => {
      const stat = await reader.lstatNs(p).catch((err) => {
        if ((err as NodeJS.ErrnoException)?.code === 'ENOENT') return undefined;
        throw err;
      });
      if (!stat) return;
      // Changed files were not counted up front (no sizing walk): their bytes join the total now.
      if (stat.isFile()) this.progress.bytesTotal += Number(stat.size);
      const e = await copier.copy({ path: p, mirrorPath: p, stat });
      if (e) entries.push(e);
    };
    const carried = plan.carried.filter((e) => !this.excluded?.(e.path));
    const dirty = plan.dirty.filter((p) => !this.excluded?.(p));
    this.progress.filesTotal = carried.length + dirty.length;
    this.progress.bytesTotal = carried.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0);
    await forEachLimit(carried, this.opts.target.capabilities.maxConcurrency, async (prev) => {
      const e = await copier.carry(prev);
      if (e === 'look') await look(prev.path);
      else entries.push(e);
      done(prev.path);
    });
    await forEachLimit(dirty, concurrency, async (p) => {
      await look(p);
      done(p);
    });
    for (const w of plan.walk)
      await forEachLimitAsync(reader.walk({ subtree: w }), concurrency, async (s) => {
        throwIfAborted(signal);
        this.progress.filesTotal++;
        if (s.stat?.isFile()) this.progress.bytesTotal += Number(s.stat.size);
        const e = await copier.copy(s);
        if (e) entries.push(e);
        done(s.path);
      });
    throwIfAborted(signal);
    return entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /**
   * The snapshot an incremental run builds on, as far as it is known before prepare (none for a
   * --full run), in the catalog session that marks runs abandoned by dead peers failed; what
   * those left at this target is deleted after it (outside the catalog lock: removing a large
   * partial tree takes a while). A repository target is read first: the catalog is a cache of
   * it, and a lost or stale one must not turn the run into a full one, nor build on a snapshot
   * the target lost; an abandoned run's object the listing still names is not adopted.
   */
  private async previous(
    deviceId: string | undefined,
  ): Promise<{ base: SnapshotRecord | undefined; hasEntries: boolean }> {
    const o = this.opts;
    const abandoned: string[] = [];
    const clear = async (c: Catalog) => {
      const dead = (await c.list({ state: 'running' })).filter((s) => c.isAbandoned(s));
      for (const s of dead)
        await c.fail(s.id, { code: 'ETWIN_ABORTED', message: `peer process ${s.pid} died during the run` });
      const ids = dead.filter((s) => s.target === o.target.spec).map((s) => s.id);
      abandoned.push(...ids);
      return ids;
    };
    // With whether the catalog holds its entries (a by-reference run reads a few of them), in
    // the same opening of the catalog as the sync.
    const pick = async (c: Catalog) => {
      if (o.full) return { base: undefined, hasEntries: false };
      const base = deviceId
        ? await c.latestComplete(deviceId, o.target.spec)
        : (await c.list({ target: o.target.spec, state: 'complete' })).pop();
      return { base, hasEntries: !!base && (await c.hasEntries(base.id)) };
    };
    const prev =
      o.target instanceof RepositoryTarget && !o.full
        ? await syncCatalogByName(o.catalogDir, o.target, pick, { skip: clear })
        : await Catalog.with(o.catalogDir, async (c) => {
            await clear(c);
            return pick(c);
          });
    for (const id of abandoned) await o.target.deleteSnapshot(id).catch(() => undefined);
    return prev;
  }

  /**
   * Finds the parent snapshot (the newest complete one of this device at this target) and the
   * stored copies checks flagged, records this run as running.
   */
  private async beginInCatalog(
    id: string,
    prep: PrepareResult,
    read?: { id: string; entries: Map<string, EntryRecord> },
    load = true,
  ): Promise<{ id: string; entries: Map<string, EntryRecord>; damaged: Set<string> } | undefined> {
    const o = this.opts;
    const p = await Catalog.with(o.catalogDir, async (c) => {
      const parent = o.full ? undefined : await c.latestComplete(prep.deviceId, o.target.spec);
      await c.begin({
        id,
        time: Date.now(),
        server: o.server,
        deviceId: prep.deviceId,
        selector: this.recordedSelector(),
        paths: describeSelector(o.selector),
        totals: emptyTotals(),
        target: o.target.spec,
        parentId: parent?.id,
        generation: prep.generation,
        ...(o.tags?.length ? { tags: o.tags } : {}),
      });
      if (!parent) return undefined;
      return { id: parent.id, damaged: await c.damaged() };
    });
    if (!p) return undefined;
    // Not loaded: the caller reads what it needs (carry-by-reference.ts).
    if (!load) return { ...p, entries: new Map() };
    const entries = read?.id === p.id ? read.entries : await this.parentEntries(p.id);
    return entries && { ...p, entries };
  }

  /**
   * Reads every entry of the parent into it; false (and none) when they are not to be had: the
   * run then shares nothing and copies every file.
   */
  private async loadParent(parent: { id: string; entries: Map<string, EntryRecord> }): Promise<boolean> {
    const all = await this.parentEntries(parent.id);
    parent.entries = all ?? new Map();
    return all !== undefined;
  }

  /**
   * Every entry of the parent by path: from the catalog, or (rows rebuilt from the target hold
   * no entries) from its manifest at the target; undefined when neither has them.
   */
  private async parentEntries(parentId: string): Promise<Map<string, EntryRecord> | undefined> {
    const o = this.opts;
    const own = await Catalog.with(
      o.catalogDir,
      async (c) => new Map((await c.entries(parentId)).map((e) => [e.path, e])),
    );
    if (own.size > 0) return own;
    const m = await o.target.readManifest(parentId).catch(() => undefined);
    return m && new Map(m.entries.map((e) => [e.path, { ...e, snapshotId: parentId }]));
  }

  private emit(p: Partial<BackupProgress>): void {
    Object.assign(this.progress, p);
    this._onDidProgress.fire({ ...this.progress });
  }
}

async function defaultConnect(url: string, token: string, ca?: string | Buffer): Promise<BackupControl> {
  return ControlClient.connect(url, { token, ca, client: `twinfs-peer/${process.pid}` });
}

/** The reply's items as sources: paths re-checked (ETWIN_PATH_ESCAPE), duplicates dropped. */
function itemsToSources(prep: PrepareResult): SourceEntry[] {
  const byPath = new Map<string, SourceEntry>();
  for (const item of prep.items) {
    const p = toVolumePath(item.path);
    if (!byPath.has(p)) byPath.set(p, { path: p, mirrorPath: toVolumePath(item.mirrorPath), item });
  }
  return [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export function describeSelector(sel: SelectorMsg): string[] {
  if (sel.volume) return ['/'];
  if (sel.subtree !== undefined) return [sel.subtree];
  return sel.paths ?? [];
}

/** How long cleanup at a target (abort, delete) may take after a failure, ms. */
const CLEANUP_MS = 5000;

/** p, or the signal's reason as soon as it is aborted (p is left running). */
function unlessAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** Waits for p (ignoring its failure) at most ms. */
async function unlessSlow(p: Promise<unknown> | undefined, ms: number): Promise<void> {
  if (!p) return;
  let t: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise<void>((r) => (t = setTimeout(r, ms)))]);
  clearTimeout(t);
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw signal.reason;
}

function numberOr(o: unknown, key: string): number | undefined {
  const v = (o as Record<string, unknown> | null)?.[key];
  return typeof v === 'number' ? v : undefined;
}

function codeOf(err: unknown): string {
  const c = (err as { code?: unknown })?.code;
  return typeof c === 'string' ? c : 'ETWIN_INTERNAL';
}

/**
 * Regular files of at least this many bytes found by the sizing walk are copied before the
 * entries queued ahead of them (SizingWalk): a large file's read, cut and hashes are one file's
 * work in order on the repository's workers, started late it runs alone at the end of the copy.
 */
export const LARGE_FIRST_BYTES = 8 * 1024 * 1024;

/**
 * A walk of the split copy run beside the copy that takes its entries (BackupRun.sizingWalk):
 * it counts the files and bytes of everything it finds and queues the entries for the copy,
 * at most `keep` of them not yet taken; past that it only counts, and entries() walks on
 * itself from the last entry queued (the walk's order is fixed: names sorted, a directory's
 * entries before its subdirectories', and the split copy does not change; the entry it
 * resumes after is checked by its path).
 *
 * A large file (LARGE_FIRST_BYTES, a single name) whose directory the copy has taken already
 * is handed out before the entries queued ahead of it: its work overlaps the small files'
 * instead of following it. Every other entry comes in the walk's order, so a directory is
 * still always handed out before what it holds.
 */
export class SizingWalk {
  private readonly queue: SourceEntry[] = [];
  private head = 0;
  /** Large files handed out before the queue, in the order found. */
  private readonly first: SourceEntry[] = [];
  /** Directories handed out (a large file below one may go first). */
  private readonly takenDirs = new Set<string>();
  /** Entries queued in all, and the path of the last one. */
  private queued = 0;
  private lastQueued: string | undefined;
  private full = false;
  private done = false;
  private stopped = false;
  private error: unknown;
  private wake: (() => void) | undefined;
  readonly finished: Promise<void>;

  constructor(
    private readonly walk: () => AsyncIterable<SourceEntry>,
    private readonly keep: number,
    private readonly signal: AbortSignal,
    private readonly onCount: (files: number, bytes: number, done: boolean) => void,
  ) {
    this.finished = this.run();
    this.finished.catch(() => undefined);
  }

  private async run(): Promise<void> {
    let files = 0;
    let bytes = 0;
    try {
      for await (const s of this.walk()) {
        throwIfAborted(this.signal);
        if (this.stopped) return;
        files++;
        if (s.stat?.isFile()) bytes += Number(s.stat.size);
        if (!this.full && this.queue.length - this.head + this.first.length >= this.keep) this.full = true;
        if (!this.full) {
          if (this.goesFirst(s)) this.first.push(s);
          else this.queue.push(s);
          this.queued++;
          this.lastQueued = s.path;
          this.signalMore();
        }
        this.onCount(files, bytes, false);
      }
      this.onCount(files, bytes, true);
    } catch (err) {
      this.error = err;
      throw err;
    } finally {
      this.done = true;
      this.signalMore();
    }
  }

  private signalMore(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Ends the walk early (the copy failed): it stops at its next entry. */
  stop(): void {
    this.stopped = true;
  }

  private goesFirst(s: SourceEntry): boolean {
    const st = s.stat;
    if (!st?.isFile() || st.size < BigInt(LARGE_FIRST_BYTES) || st.nlink > 1n) return false;
    return this.takenDirs.has(path.posix.dirname(s.path));
  }

  /**
   * Every entry of the walk: the queued ones in its order (large files whose directory was
   * handed out already first), then (past `keep`) a walk of the rest.
   */
  async *entries(): AsyncGenerator<SourceEntry> {
    for (;;) {
      if (this.first.length > 0) {
        yield this.first.shift()!;
        continue;
      }
      if (this.head < this.queue.length) {
        const s = this.queue[this.head]!;
        if (s.stat?.isDirectory()) this.takenDirs.add(s.path);
        this.queue[this.head++] = undefined as unknown as SourceEntry;
        // The taken part of the queue is let go now and then.
        if (this.head >= 4096 && this.head * 2 >= this.queue.length) {
          this.queue.splice(0, this.head);
          this.head = 0;
        }
        yield s;
        continue;
      }
      if (this.error !== undefined) throw this.error;
      if (this.full) break;
      if (this.done) return;
      await new Promise<void>((r) => {
        this.wake = r;
      });
    }
    // Past `keep`: the rest of the walk, after the last entry queued.
    let n = 0;
    for await (const s of this.walk()) {
      if (++n < this.queued) continue;
      if (n === this.queued) {
        if (s.path !== this.lastQueued)
          throw new TwinError(
            'ETWIN_MIRROR_CHANGED',
            `the split copy changed during the backup: its walk found ${s.path} where it had found ${this.lastQueued}`,
            { path: s.path },
          );
        continue;
      }
      yield s;
    }
    await this.finished;
  }
}
