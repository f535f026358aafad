import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { delay } from '../common/async.js';
import { errnoCode, TwinError } from '../common/errors.js';
import { Emitter, type Event } from '../common/event.js';
import { DisposableStore } from '../common/lifecycle.js';
import { ControlClient, RemoteError } from '../control/client.js';
import type { PrepareResult, SelectorMsg } from '../control/protocol.js';
import { Catalog, type EntryRecord, type SnapshotRecord } from './catalog.js';
import { locateMirror, MirrorReader, type SourceEntry, toVolumePath } from './mirror-source.js';
import { forEachLimit } from './safe-tree.js';
import {
  type BackupTarget,
  type EntryMeta,
  emptyTotals,
  isTargetNotFound,
  isTransient,
  type ManifestEntry,
  type SnapshotTotals,
  type SnapshotWriter,
} from './target.js';

/** What the run needs of the control channel (ControlClient; a fake in unit tests). */
export interface BackupControl {
  prepare(selector: SelectorMsg, opts: { leaseMs?: number }): Promise<PrepareResult>;
  renew(backupId: string, leaseMs?: number): Promise<unknown>;
  release(backupId: string): Promise<unknown>;
  readonly onEvent: Event<{ event: string; data: unknown }>;
  readonly onClose: Event<{ code: number; reason: string }>;
  close(): Promise<void>;
}

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
  /** deviceId → this host's path of that mirror (root or data directory). */
  mirrorMap?: Record<string, string>;
  /** Copy every file, sharing nothing with the previous snapshot. */
  full?: boolean;
  signal?: AbortSignal;
  /** CA (PEM) to trust for wss:// with a private CA. */
  ca?: string | Buffer;
  /** Opens the control channel (default: ControlClient.connect). */
  connect?: (url: string, token: string) => Promise<BackupControl>;
  /** Parallel copies (default: min(4, target's maxConcurrency)). */
  concurrency?: number;
}

export type BackupPhase = 'connect' | 'prepare' | 'copy' | 'commit' | 'done';

export interface BackupProgress {
  phase: BackupPhase;
  snapshotId?: string;
  backupId?: string;
  /** Entries done / known (filesTotal grows while the mirror is walked). */
  files: number;
  filesTotal: number;
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
}

const DEFAULT_LEASE_MS = 60_000;
const RETRY_DELAYS_MS = [200, 1000, 3000];

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
 * splits the pairs), copy from the split mirror to the target, commit, record, release. The
 * split is released in every case: right after the last read, or in `finally` on failure.
 *
 * What keeps a snapshot honest (invariant 8): every read happens while the split is provably
 * held, because the run stops at once when the connection closes or the server announces the
 * split released, and confirms the split with a renew after the last read and before the commit;
 * and the catalog marks the snapshot complete only after the target's commit resolved.
 */
export class BackupRun {
  private readonly _onDidProgress = new Emitter<BackupProgress>();
  readonly onDidProgress = this._onDidProgress.event;
  private readonly progress: BackupProgress = {
    phase: 'connect',
    files: 0,
    filesTotal: 0,
    bytes: 0,
    bytesTotal: 0,
    copiedBytes: 0,
    reusedFiles: 0,
  };

  constructor(private readonly opts: BackupOptions) {}

  async run(): Promise<BackupResult> {
    const o = this.opts;
    const leaseMs = o.leaseMs ?? DEFAULT_LEASE_MS;
    const store = new DisposableStore();
    // Aborted by the caller, or by losing the split: in-flight copies stop at once.
    const stop = new AbortController();
    const onAbort = () => stop.abort(new TwinError('ETWIN_ABORTED', 'backup cancelled'));
    if (o.signal?.aborted) onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    store.add({ dispose: () => o.signal?.removeEventListener('abort', onAbort) });

    this.emit({ phase: 'connect' });
    const control = await (o.connect ?? ((url, token) => defaultConnect(url, token, o.ca)))(
      o.server,
      o.token,
    );
    store.add({ dispose: () => control.close() });
    let prep: PrepareResult | undefined;
    let held = false;
    let writer: SnapshotWriter | undefined;
    let snapshotId: string | undefined;
    try {
      this.throwIfStopped(stop.signal);
      this.emit({ phase: 'prepare' });
      prep = await control.prepare(o.selector, { leaseMs });
      held = true;
      const backupId = prep.backupId;
      this.progress.backupId = backupId;
      const lost = (why: string) => {
        if (held && !stop.signal.aborted)
          stop.abort(
            new TwinError(
              'ETWIN_SPLIT_LOST',
              `the server released the split before the copy finished (${why})`,
              { backupId },
            ),
          );
      };
      store.add(control.onClose(() => lost('control connection closed')));
      store.add(
        control.onEvent(({ event, data }) => {
          if (
            (event === 'released' || event === 'lease-expired') &&
            (data as { backupId?: string } | null)?.backupId === backupId
          )
            lost(event);
        }),
      );
      const timer = setInterval(
        () => {
          control.renew(backupId, leaseMs).catch((err) => {
            if (err instanceof RemoteError || (err as TwinError)?.code === 'ETWIN_CONTROL_CLOSED')
              lost(`renew failed: ${describe(err)}`);
          });
        },
        Math.max(500, Math.floor(leaseMs / 3)),
      );
      store.add({ dispose: () => clearInterval(timer) });

      const mirror = await locateMirror(prep, o.mirrorMap);
      const reader = new MirrorReader(mirror.data);
      const sources = prep.itemsComplete ? itemsToSources(prep) : undefined;

      snapshotId = newSnapshotId();
      const id = snapshotId;
      this.progress.snapshotId = id;
      const { parent, parentEntries } = await this.beginInCatalog(id, prep);
      writer = await o.target.beginSnapshot({
        snapshotId: id,
        time: Date.now(),
        server: o.server,
        deviceId: prep.deviceId,
        selector: o.selector,
        parentId: parent?.id,
      });
      this.emit({ phase: 'copy' });

      const entries: ManifestEntry[] = [];
      const totals = emptyTotals();
      const copyOne = (src: SourceEntry) =>
        this.copyEntry(src, reader, writer!, parent, parentEntries, stop.signal, totals).then((e) => {
          if (e) entries.push(e);
          this.progress.files++;
          this.emit({ path: src.path });
        });
      const concurrency = o.concurrency ?? Math.min(4, o.target.capabilities.maxConcurrency);
      if (sources) {
        this.progress.filesTotal = sources.length;
        this.progress.bytesTotal = sources.reduce(
          (n, s) => n + (s.item?.type === 'file' ? s.item.size : 0),
          0,
        );
        await forEachLimit(sources, concurrency, copyOne);
      } else {
        // The reply was cut short: walk the split selection in the mirror, in batches.
        let batch: SourceEntry[] = [];
        for await (const s of reader.walk(o.selector)) {
          this.throwIfStopped(stop.signal);
          this.progress.filesTotal++;
          batch.push(s);
          if (batch.length >= 256) {
            await forEachLimit(batch, concurrency, copyOne);
            batch = [];
          }
        }
        await forEachLimit(batch, concurrency, copyOne);
      }
      this.throwIfStopped(stop.signal);

      // Every read is done: prove the split was held all along, then let the server resync.
      await control.renew(backupId, leaseMs).catch((err) => {
        throw new TwinError(
          'ETWIN_SPLIT_LOST',
          `the split could not be confirmed after the copy: ${describe(err)}`,
          { backupId },
        );
      });
      this.throwIfStopped(stop.signal);
      held = false;
      await control.release(backupId).catch(() => undefined);

      this.emit({ phase: 'commit' });
      entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
      const meta = {
        snapshotId: id,
        time: Date.now(),
        server: o.server,
        deviceId: prep.deviceId,
        selector: o.selector,
        parentId: parent?.id,
      };
      await writer.commit({ version: 1, meta, totals, entries });
      const snapshot = await Catalog.with(o.catalogDir, (c) => c.complete(id, entries, totals));
      this.emit({ phase: 'done' });
      return { snapshot, stallMs: prep.stallMs, backupId };
    } catch (err) {
      // Once stopped, whatever in-flight work threw is a consequence: report the cause.
      const reason = stop.signal.aborted ? stop.signal.reason : err;
      await writer?.abort().catch(() => undefined);
      if (snapshotId) {
        const id = snapshotId;
        await Catalog.with(o.catalogDir, (c) =>
          c.fail(id, { code: codeOf(reason), message: describe(reason) }),
        ).catch(() => undefined);
      }
      throw reason;
    } finally {
      if (held && prep) await control.release(prep.backupId).catch(() => undefined);
      await store.dispose().catch(() => undefined);
      this._onDidProgress.dispose();
    }
  }

  /** Clears abandoned runs, finds the parent snapshot, records this one as running. */
  private async beginInCatalog(
    id: string,
    prep: PrepareResult,
  ): Promise<{ parent?: SnapshotRecord; parentEntries: Map<string, EntryRecord> }> {
    const o = this.opts;
    return Catalog.with(o.catalogDir, async (c) => {
      for (const s of await c.list({ state: 'running' })) {
        if (!c.isAbandoned(s)) continue;
        await c.fail(s.id, { code: 'ETWIN_ABORTED', message: `peer process ${s.pid} died during the run` });
        if (s.target === o.target.spec) await o.target.deleteSnapshot(s.id).catch(() => undefined);
      }
      const parent = o.full ? undefined : await c.latestComplete(prep.deviceId, o.target.spec);
      const parentEntries = new Map<string, EntryRecord>();
      if (parent) for (const e of await c.entries(parent.id)) parentEntries.set(e.path, e);
      await c.begin({
        id,
        time: Date.now(),
        server: o.server,
        deviceId: prep.deviceId,
        selector: o.selector,
        paths: describeSelector(o.selector),
        totals: emptyTotals(),
        target: o.target.spec,
        parentId: parent?.id,
      });
      return { parent, parentEntries };
    });
  }

  private async copyEntry(
    src: SourceEntry,
    reader: MirrorReader,
    writer: SnapshotWriter,
    parent: SnapshotRecord | undefined,
    parentEntries: Map<string, EntryRecord>,
    signal: AbortSignal,
    totals: SnapshotTotals,
  ): Promise<ManifestEntry | undefined> {
    this.throwIfStopped(signal);
    let st: Stats;
    try {
      st = await reader.lstat(src.mirrorPath);
    } catch (err) {
      throw mirrorError(err, src);
    }
    const meta = metaOf(st);
    const type = st.isDirectory()
      ? 'dir'
      : st.isSymbolicLink()
        ? 'symlink'
        : st.isFile()
          ? 'file'
          : undefined;
    const announced = src.item?.type;
    if (
      announced &&
      (type ? announced !== type : announced === 'file' || announced === 'dir' || announced === 'symlink')
    )
      throw new TwinError(
        'ETWIN_MIRROR_CHANGED',
        `${src.path}: the server announced a ${announced}, the mirror holds a ${type ?? 'special file'}`,
        { path: src.path },
      );
    if (type === 'dir') {
      await writer.putDir(src.path, meta);
      totals.dirs++;
      return { path: src.path, type, ...meta, size: 0 };
    }
    if (type === 'symlink') {
      const target = await reader.readlink(src.mirrorPath);
      await writer.putSymlink(src.path, target, meta);
      totals.symlinks++;
      return { path: src.path, type, ...meta, target };
    }
    if (type !== 'file') {
      totals.skipped++;
      return undefined;
    }
    if (src.item && src.item.size !== st.size)
      throw new TwinError(
        'ETWIN_MIRROR_CHANGED',
        `${src.path}: the server announced ${src.item.size} bytes, the mirror holds ${st.size}`,
        {
          path: src.path,
        },
      );
    totals.files++;
    totals.bytes += st.size;
    const prev = parentEntries.get(src.path);
    if (parent && prev && unchanged(prev, meta)) {
      try {
        await writer.reuseFile(src.path, parent.id, prev);
        totals.reusedFiles++;
        this.progress.reusedFiles++;
        this.progress.bytes += st.size;
        return { path: src.path, type, ...meta, hash: prev.hash };
      } catch (err) {
        // The parent's data is gone (or was never there): copy instead.
        if (!isTargetNotFound(err)) throw err;
      }
    }
    const hash = await this.copyFile(src, reader, writer, meta, signal);
    totals.copiedBytes += st.size;
    return { path: src.path, type, ...meta, hash };
  }

  /** Streams one split copy into the target; retries transient target failures. */
  private async copyFile(
    src: SourceEntry,
    reader: MirrorReader,
    writer: SnapshotWriter,
    meta: EntryMeta,
    signal: AbortSignal,
  ): Promise<string> {
    for (let attempt = 0; ; attempt++) {
      let opened: Awaited<ReturnType<MirrorReader['open']>>;
      try {
        opened = await reader.open(src.mirrorPath);
      } catch (err) {
        throw mirrorError(err, src);
      }
      const { fh, stat } = opened;
      let counted = 0;
      try {
        const stream = fh.createReadStream({ start: 0, highWaterMark: 1 << 20, autoClose: false });
        stream.on('data', (chunk) => {
          counted += chunk.length;
          this.progress.bytes += chunk.length;
          this.progress.copiedBytes += chunk.length;
        });
        const r = await writer.putFile(src.path, stream, meta, { signal });
        const after = await fh.stat();
        if (r.bytes !== stat.size || after.size !== stat.size || after.mtimeMs !== stat.mtimeMs)
          throw new TwinError(
            'ETWIN_MIRROR_CHANGED',
            `${src.path}: the split mirror copy changed while it was copied (${stat.size} → ${after.size} bytes, ${r.bytes} stored)`,
            { path: src.path },
          );
        return r.hash;
      } catch (err) {
        this.progress.bytes -= counted;
        this.progress.copiedBytes -= counted;
        const wait = RETRY_DELAYS_MS[attempt];
        if (!isTransient(err) || wait === undefined || signal.aborted) throw err;
        await delay(wait, signal);
      } finally {
        await fh.close().catch(() => undefined);
      }
    }
  }

  private throwIfStopped(signal: AbortSignal): void {
    if (signal.aborted) throw signal.reason;
  }

  private emit(p: Partial<BackupProgress>): void {
    Object.assign(this.progress, p);
    this._onDidProgress.fire({ ...this.progress });
  }
}

async function defaultConnect(url: string, token: string, ca?: string | Buffer): Promise<BackupControl> {
  return ControlClient.connect(url, { token, ca, client: `twinfs-peer/${process.pid}` });
}

/** The prepare reply's items as sources, paths re-checked, duplicates dropped. */
function itemsToSources(prep: PrepareResult): SourceEntry[] {
  const seen = new Set<string>();
  const out: SourceEntry[] = [];
  for (const item of prep.items) {
    const p = toVolumePath(item.path);
    if (seen.has(p)) continue;
    seen.add(p);
    out.push({ path: p, mirrorPath: toVolumePath(item.mirrorPath), item });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function metaOf(st: Stats): EntryMeta {
  return {
    size: st.isFile() ? st.size : 0,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    mtime: st.mtimeMs,
  };
}

/** Unchanged for an incremental run: same size, mtime, mode and owner (the data may be shared). */
function unchanged(prev: EntryRecord, meta: EntryMeta): boolean {
  return (
    prev.type === 'file' &&
    prev.hash !== undefined &&
    prev.size === meta.size &&
    prev.mtime === meta.mtime &&
    prev.mode === meta.mode &&
    prev.uid === meta.uid &&
    prev.gid === meta.gid
  );
}

function mirrorError(err: unknown, src: SourceEntry): unknown {
  if (err instanceof TwinError) return err;
  const code = errnoCode(err);
  if (code === 'ENOENT' || code === 'ELOOP')
    return new TwinError(
      'ETWIN_MIRROR_CHANGED',
      `${src.path}: ${code === 'ELOOP' ? 'the mirror holds a symlink where the server announced a file' : 'missing from the split mirror'}`,
      { path: src.path },
    );
  return new TwinError(
    'ETWIN_MIRROR_UNREADABLE',
    `${src.path}: cannot read the split copy (${code ?? (err as Error).message})`,
    {
      path: src.path,
      errno: code,
    },
  );
}

export function describeSelector(sel: SelectorMsg): string[] {
  if (sel.volume) return ['/'];
  if (sel.subtree !== undefined) return [sel.subtree];
  return sel.paths ?? [];
}

function codeOf(err: unknown): string {
  const c = (err as { code?: unknown })?.code;
  return typeof c === 'string' ? c : 'ETWIN_INTERNAL';
}

function describe(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e?.code ? `${e.code}: ${e.message}` : String(e?.message ?? err);
}
