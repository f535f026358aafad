import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setImmediate as turn } from 'node:timers/promises';
import Datastore from 'nedb-promises';
import { TwinError } from '../common/errors.js';
import { CatalogHead } from './catalog-head.js';
import { isAlive, LockFile } from './catalog-lock.js';
import { applyDelta, type DeltaLine } from './manifest-delta.js';
import { fsyncPath } from './safe-tree.js';
import type { ManifestEntry, SnapshotTotals } from './target.js';

export type SnapshotState = 'running' | 'complete' | 'failed';

/** A snapshot as the catalog records it. */
export interface SnapshotRecord {
  id: string;
  /** Start, ms since the epoch. */
  time: number;
  finishedAt?: number;
  /** The control server's URL. */
  server: string;
  deviceId: string;
  selector: Record<string, unknown>;
  /** The selection in words, for listings ('/' for the volume). */
  paths: string[];
  state: SnapshotState;
  totals: SnapshotTotals;
  /** Target spec (`dir:/backups`): where the data is. */
  target: string;
  /** The snapshot unchanged files were shared with. */
  parentId?: string;
  /**
   * The server's change generation at this snapshot's split (the prepare reply's): the next
   * incremental asks what changed since it.
   */
  generation?: { log: string; generation: number };
  /**
   * The entries are stored as a delta on this snapshot's (entries that differ, and the paths
   * gone); entries() resolves it. Set when most entries were carried over from it.
   */
  entriesBase?: string;
  /** How many deltas lead to a snapshot with all its entries (bounded: MAX_DELTA_CHAIN). */
  entriesDepth?: number;
  /** The peer process that runs (ran) it, to tell abandoned 'running' snapshots. */
  pid: number;
  host: string;
  error?: { code: string; message: string };
  /** Labels given at backup time (--tag). */
  tags?: string[];
}

export interface EntryRecord extends ManifestEntry {
  snapshotId: string;
}

type SnapshotDoc = Omit<SnapshotRecord, 'id'> & { _id: string };

/** A stored copy a check found damaged: the data `path` stored by snapshot `storedIn`. */
/** Entries of a running snapshot written by Catalog.stageEntries, for markComplete. */
export interface StagedEntries {
  id: string;
  /** Written as a delta on this snapshot's entries. */
  delta?: { base: string; depth: number };
}

export interface DamageRecord {
  storedIn: string;
  path: string;
  /** The snapshot whose check found it, when, and what it found. */
  foundBy: string;
  at: number;
  kind: string;
  message: string;
}
type DamageDoc = Omit<DamageRecord, 'storedIn' | 'path'> & { _id: string };

/** The key of a stored copy: the snapshot that stored the data, and the path. */
export function storedCopyKey(storedIn: string, p: string): string {
  return `${storedIn}\0${p}`;
}
type EntryDoc = EntryRecord & { _id?: string; gone?: boolean };

/** Longest chain of deltas before a snapshot's entries are written whole again. */
const MAX_DELTA_CHAIN = 16;

/** Two records of one path say the same (the snapshot that recorded them aside). */
function sameEntry(a: EntryRecord, b: ManifestEntry): boolean {
  const { snapshotId: _, ...x } = a;
  const y = b as ManifestEntry & { snapshotId?: string };
  if (y.snapshotId !== undefined) {
    const { snapshotId: __, ...z } = y;
    return JSON.stringify(x) === JSON.stringify(z);
  }
  return JSON.stringify(x) === JSON.stringify(y);
}

/** Where the catalog lives unless --catalog says otherwise. */
export function defaultCatalogDir(): string {
  if ((process.getuid?.() ?? 1) === 0) return '/var/lib/twinfs/catalog';
  return path.join(
    process.env.XDG_STATE_HOME ?? path.join(os.homedir(), '.local/state'),
    'twinfs',
    'catalog',
  );
}

/**
 * The peer's record of snapshots and their entries (nedb-promises):
 *
 *   DIR/snapshots.db          one document per snapshot
 *   DIR/entries/<id>.db       the entries of one complete snapshot, written once
 *   DIR/lock                  held while the catalog is open
 *
 * Entries live in a datafile per snapshot because nedb keeps a datastore wholly in memory and
 * rewrites it on every load: one shared file would make every open cost all entries of all
 * snapshots. Open the catalog for short transactions: open() takes an exclusive lock that
 * close() releases.
 *
 * Invariant 8 lives here: a snapshot becomes 'complete' only through complete(), which the run
 * calls after the target's commit resolved, and which makes the entries durable before the
 * state change, and the state change durable before it resolves. nedb appends without fsync,
 * so the catalog syncs its datafiles itself at those two points.
 */
/** snapshots.db's identity: a write (an append, nedb's compaction by rename) changes it. */
interface FileStamp {
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
}

async function stampOf(file: string): Promise<FileStamp | undefined> {
  try {
    const st = await fsp.stat(file, { bigint: true });
    return { ino: st.ino, size: st.size, mtimeNs: st.mtimeNs };
  } catch {
    return undefined;
  }
}

const sameStamp = (a: FileStamp | undefined, b: FileStamp | undefined) =>
  !!a && !!b && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs;

/** A loaded snapshots.db, kept between a process's sessions (Catalog.open). */
interface Loaded {
  store: Datastore<SnapshotDoc>;
  /** The file as this process left it at the end of its last session. */
  stamp: FileStamp | undefined;
  /** Its size when it was last loaded (nedb writes it compacted then). */
  compactSize: bigint;
}

/**
 * The snapshots.db a process loaded, by path. nedb loads a datastore by reading and parsing the
 * whole file and writing it back compacted (a temporary file, three fsyncs and a rename), and a
 * backup opens the catalog five times: in a peer daemon, or a command's run, most of the work
 * of a no-change backup's catalog was that. A session (under the catalog's lock) takes the
 * loaded datastore when the file is still exactly as this process left it (inode, size and
 * mtime in ns: another process's append or compaction changes them), and loads it again when it
 * is not, when a session failed, or when appends have grown it past twice its compacted size
 * (so a daemon's file is compacted as before, only not on every open).
 */
const loadedStores = new Map<string, Loaded>();

/** The part of nedb's datastore (behind nedb-promises) loadUnlessCompact reaches. */
interface NedbPersistence {
  persistCachedDatabaseAsync(): Promise<void>;
  /** Called by nedb's load with every line of the file, in order (its deserialization hook). */
  beforeDeserialization(line: string): Promise<string>;
  db: { getAllData(): unknown[] };
}

/**
 * nedb's load, without the rewrite it ends with while the file holds fewer lines to drop than
 * documents. nedb's load always writes the datafile anew, compacted (a temporary file, three
 * fsyncs and a rename): in a command, whose process loads snapshots.db once, that was every
 * cold backup's first catalog session. The rewrite only drops superseded lines (an update
 * appends the document again: a backup leaves its row twice, running and complete), deletions
 * and unreadable lines, which every load drops again; the file is rewritten once it holds more
 * of them than documents (plus 16), so it stays within about twice its compacted size, as a
 * process's own sessions keep it (Catalog.open). The lines are counted as nedb's load reads
 * them (its deserialization hook sees each one), not by a read of the file of its own; a file
 * that does not exist yet (no lines) is created as before.
 */
async function loadUnlessCompact(store: Datastore<SnapshotDoc>): Promise<void> {
  let lines = 0;
  const persistence = (store as unknown as { __original: { persistence: NedbPersistence } }).__original
    .persistence;
  const compact = persistence.persistCachedDatabaseAsync;
  const deserialize = persistence.beforeDeserialization;
  persistence.beforeDeserialization = (line: string) => {
    if (line !== '') lines++;
    return deserialize.call(persistence, line);
  };
  persistence.persistCachedDatabaseAsync = function (this: NedbPersistence) {
    return lines > 0 && lines <= 2 * this.db.getAllData().length + 16
      ? Promise.resolve()
      : compact.call(this);
  };
  try {
    await store.load();
  } finally {
    // nedb's own again: the instance's hook, the prototype's compaction (a later compaction,
    // none in this code, would be nedb's own).
    persistence.beforeDeserialization = deserialize;
    delete (persistence as Partial<NedbPersistence>).persistCachedDatabaseAsync;
  }
}

/**
 * snapshots.db loaded by nedb, or this process's copy of it while the file is as it left it
 * (loadedStores).
 */
async function loadStore(file: string): Promise<Loaded> {
  let loaded = loadedStores.get(file);
  const now = await stampOf(file);
  if (!loaded || !sameStamp(loaded.stamp, now) || now!.size > 2n * loaded.compactSize + 65_536n) {
    loadedStores.delete(file);
    const store = Datastore.create({ filename: file }) as unknown as Datastore<SnapshotDoc>;
    await loadUnlessCompact(store);
    const stamp = await stampOf(file);
    loaded = { store, stamp, compactSize: stamp?.size ?? 0n };
    loadedStores.set(file, loaded);
  }
  return loaded;
}

export class Catalog {
  /** snapshots.db loaded (nedb): every row at hand. Undefined while the head answers. */
  private loaded: Loaded | undefined;
  /**
   * The head (catalog-head.ts) while this session answers from it: rows are appended to
   * snapshots.db as nedb appends them, and snapshots.db is loaded (rows()) only for what the
   * head cannot answer.
   */
  private head: CatalogHead<SnapshotDoc> | undefined;
  /** snapshots.db as last synced, or as found at the open (head sessions: close() syncs the rest). */
  private synced: FileStamp | undefined;
  /** snapshots.head described snapshots.db at the open (a full session that wrote nothing keeps it). */
  private readonly headAtOpen: FileStamp | undefined;

  private constructor(
    readonly dir: string,
    private readonly lock: LockFile,
    at: { loaded: Loaded } | { head: CatalogHead<SnapshotDoc>; stamp: FileStamp },
  ) {
    if ('loaded' in at) this.loaded = at.loaded;
    else {
      this.head = at.head;
      this.synced = at.stamp;
      this.headAtOpen = at.stamp;
    }
  }

  private get file(): string {
    return path.join(this.dir, 'snapshots.db');
  }

  private get headFile(): string {
    return path.join(this.dir, 'snapshots.head');
  }

  static async open(dir = defaultCatalogDir(), opts: { lockTimeoutMs?: number } = {}): Promise<Catalog> {
    const abs = path.resolve(dir);
    try {
      await fsp.mkdir(abs, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new TwinError(
        'ETWIN_CATALOG',
        `cannot create the catalog directory ${abs}: ${(err as Error).message}`,
        { dir: abs },
      );
    }
    const lock = await LockFile.acquire(path.join(abs, 'lock'), { timeoutMs: opts.lockTimeoutMs });
    const file = path.join(abs, 'snapshots.db');
    try {
      // The head when it describes the file as it is: snapshots.db is not loaded.
      const now = await stampOf(file);
      const head = now && (await CatalogHead.read<SnapshotDoc>(path.join(abs, 'snapshots.head'), now));
      if (head) return new Catalog(abs, lock, { head, stamp: now });
      const loaded = await loadStore(file);
      await fsp.mkdir(path.join(abs, 'entries'), { recursive: true, mode: 0o700 });
      return new Catalog(abs, lock, { loaded });
    } catch (err) {
      loadedStores.delete(file);
      await lock.release();
      throw new TwinError(
        'ETWIN_CATALOG',
        `cannot load the catalog in ${abs}: ${(err as Error).message}`,
        { dir: abs },
        { cause: err },
      );
    }
  }

  /** Opens the catalog, runs fn, closes it (also on failure). */
  static async with<T>(
    dir: string | undefined,
    fn: (c: Catalog) => Promise<T>,
    opts?: { lockTimeoutMs?: number },
  ): Promise<T> {
    const c = await Catalog.open(dir, opts);
    let ok = false;
    try {
      const r = await fn(c);
      ok = true;
      return r;
    } finally {
      await c.close(ok);
    }
  }

  /**
   * Ends the session: what it wrote to snapshots.db is synced (before, the next session's load
   * synced it, rewriting the file), the head written for the file as it is now, then the lock
   * released. After a failed session (ok false) the next one loads the file again: nedb may hold
   * changes its file did not take.
   */
  async close(ok = true): Promise<void> {
    try {
      const file = this.file;
      const now = await stampOf(file);
      const loaded = this.loaded;
      if (!loaded) {
        if (!sameStamp(this.synced, now)) {
          if (ok) await this.sync(file);
          else await this.sync(file).catch(() => undefined);
        }
        // A head not written leaves the one of the file as it was: the next session loads it.
        if (ok && now && !sameStamp(this.headAtOpen, now))
          await this.head!.write(this.headFile, now).catch(() => undefined);
      } else if (ok && loadedStores.get(file) === loaded) {
        if (!sameStamp(loaded.stamp, now)) await this.sync(file);
        loaded.stamp = now;
        if (now && !sameStamp(this.headAtOpen, now))
          await CatalogHead.of(await loaded.store.find({}))
            .write(this.headFile, now)
            .catch(() => undefined);
      } else {
        if (!sameStamp(loaded.stamp, now)) await this.sync(file).catch(() => undefined);
        loadedStores.delete(file);
      }
    } finally {
      await this.lock.release();
    }
  }

  /**
   * Every row at hand: snapshots.db loaded (this process's copy when the file is as it left it),
   * for what the head cannot answer. What this session appended is synced first, as the close
   * would have (a load may rewrite the file).
   */
  private async rows(): Promise<Datastore<SnapshotDoc>> {
    if (this.loaded) return this.loaded.store;
    const now = await stampOf(this.file);
    if (!sameStamp(this.synced, now)) await this.sync(this.file);
    this.loaded = await loadStore(this.file);
    await fsp.mkdir(path.join(this.dir, 'entries'), { recursive: true, mode: 0o700 });
    this.head = undefined;
    return this.loaded.store;
  }

  /** A row by id: from the head when it holds it (a copy), else from snapshots.db. */
  private async doc(id: string): Promise<SnapshotDoc | undefined> {
    const d = this.head?.row(id);
    if (d) return structuredClone(d);
    return (await (await this.rows()).findOne({ _id: id })) ?? undefined;
  }

  /**
   * Writes a row, whole, as nedb writes an insert or an update (a JSON line appended to
   * snapshots.db), while the head answers; the head takes it, or the file is loaded when the head
   * can no longer answer.
   */
  private async putRow(doc: SnapshotDoc): Promise<void> {
    await fsp.appendFile(this.file, `${JSON.stringify(doc)}\n`).catch((err) => {
      throw new TwinError(
        'ETWIN_CATALOG',
        `cannot write the catalog (${this.file}): ${(err as Error).message}`,
        {
          dir: this.dir,
        },
      );
    });
    if (!this.head!.put(doc)) await this.rows();
  }

  /** Sets (and unsets) fields of a row. */
  private async setFields(id: string, set: Partial<SnapshotDoc>, unset: string[] = []): Promise<void> {
    const d = this.head?.row(id);
    if (d) {
      const next = { ...structuredClone(d), ...set } as Record<string, unknown>;
      for (const k of unset) delete next[k];
      return this.putRow(next as SnapshotDoc);
    }
    await (await this.rows()).update(
      { _id: id },
      { $set: set, ...(unset.length ? { $unset: Object.fromEntries(unset.map((k) => [k, true])) } : {}) },
    );
  }

  /** Records a snapshot that starts now, as 'running', owned by this process. */
  async begin(
    rec: Omit<SnapshotRecord, 'state' | 'pid' | 'host' | 'totals'> & { totals: SnapshotTotals },
  ): Promise<SnapshotRecord> {
    const { id, ...rest } = rec;
    const doc: SnapshotDoc = { ...rest, _id: id, state: 'running', pid: process.pid, host: os.hostname() };
    // An id the head knows is inserted by nedb, which refuses a second row of an id.
    if (this.head && !this.head.row(id)) await this.putRow(doc);
    else await (await this.rows()).insert(doc);
    return toRecord(doc);
  }

  /**
   * Marks a snapshot complete with its entries. Call only after the target's commit resolved.
   * Entries reach the disk before the state does: a crash in between leaves a 'running'
   * snapshot (cleaned up as abandoned), never a complete one without entries.
   */
  async complete(
    id: string,
    entries: ManifestEntry[],
    totals: SnapshotTotals,
    opts: { base?: { id: string; entries: ReadonlyMap<string, EntryRecord> } } = {},
  ): Promise<SnapshotRecord> {
    if (!(await this.doc(id)))
      throw new TwinError('ETWIN_UNKNOWN_SNAPSHOT', `no snapshot ${id} in the catalog`, { snapshotId: id });
    const staged = await this.stage(id, entries, opts.base);
    return this.markRecorded(id, totals, staged.delta);
  }

  /**
   * The first half of complete(): writes a running snapshot's entries (durable), leaving it
   * running. A backup does this while its target commits, and marks the snapshot complete
   * (markComplete) only once the commit resolved; a run that fails after it is failed as any
   * other, which removes the entries written here (fail).
   */
  async stageEntries(
    id: string,
    entries: ManifestEntry[],
    opts: { base?: { id: string; entries: ReadonlyMap<string, EntryRecord> } } = {},
  ): Promise<StagedEntries> {
    await this.running(id);
    return this.stage(id, entries, opts.base);
  }

  /** Throws unless the snapshot is in the catalog and running (its entries may be staged). */
  private async running(id: string): Promise<void> {
    const d = await this.doc(id);
    if (!d)
      throw new TwinError('ETWIN_UNKNOWN_SNAPSHOT', `no snapshot ${id} in the catalog`, { snapshotId: id });
    if (d.state !== 'running')
      throw new TwinError(
        'ETWIN_CATALOG',
        `snapshot ${id} is ${d.state}, not running: its entries are not written`,
        {
          snapshotId: id,
        },
      );
  }

  private async stage(
    id: string,
    entries: ManifestEntry[],
    base: { id: string; entries: ReadonlyMap<string, EntryRecord> } | undefined,
  ): Promise<StagedEntries> {
    // Most entries as the parent recorded them: a reference to its entries plus the delta.
    const delta = await this.deltaOn(base, entries);
    await this.writeEntries(id, delta ? delta.docs : entries);
    return { id, ...(delta ? { delta: { base: delta.base, depth: delta.depth } } : {}) };
  }

  /** The second half of complete(): the snapshot whose entries stageEntries wrote is complete. */
  async markComplete(id: string, totals: SnapshotTotals, staged: StagedEntries): Promise<SnapshotRecord> {
    const d = await this.doc(id);
    if (staged.id !== id || d?.state !== 'running')
      throw new TwinError('ETWIN_CATALOG', `snapshot ${id} is not running with the entries staged for it`, {
        snapshotId: id,
      });
    return this.markRecorded(id, totals, staged.delta);
  }

  /**
   * Marks a snapshot complete that the run built on `base` by reference (its target kept the
   * base's other entries): its entries are base's changed by `delta`, recorded as that delta
   * without reading base's. A chain at its bound is written whole instead (read once).
   */
  async completeOnBase(
    id: string,
    base: string,
    delta: { entries: ManifestEntry[]; gone: string[] },
    totals: SnapshotTotals,
  ): Promise<SnapshotRecord> {
    return this.markComplete(id, totals, await this.stageOnBase(id, base, delta));
  }

  /**
   * The first half of completeOnBase, as stageEntries is complete()'s: writes the entries of a
   * running snapshot built on `base` by reference (durable), leaving it running. A backup does
   * this while its target commits (before, an unchanged incremental wrote them after the commit:
   * two more fsyncs in a row on its way out).
   */
  async stageOnBase(
    id: string,
    base: string,
    delta: { entries: ManifestEntry[]; gone: string[] },
  ): Promise<StagedEntries> {
    await this.running(id);
    const b = await this.doc(base);
    const docs: EntryDoc[] = [
      ...(delta.entries as EntryDoc[]),
      ...delta.gone.map((p) => ({ path: p, gone: true }) as unknown as EntryDoc),
    ];
    // Nothing changed on a base that is itself a delta: this snapshot's entries are base's own
    // delta on base's base, copied (small), so a run of unchanged snapshots never deepens the
    // chain nor reaches its bound (where the whole list is written again).
    if (b?.state === 'complete' && docs.length === 0 && b.entriesBase && b.entriesDepth) {
      await this.writeEntries(id, await this.ownEntries(base));
      return { id, delta: { base: b.entriesBase, depth: b.entriesDepth } };
    }
    const depth = (b?.entriesDepth ?? 0) + 1;
    if (b?.state === 'complete' && depth <= MAX_DELTA_CHAIN) {
      await this.writeEntries(id, docs);
      return { id, delta: { base, depth } };
    }
    await this.writeEntries(id, applyDelta(await this.entries(base), docs as Array<DeltaLine<EntryRecord>>));
    return { id };
  }

  /** A snapshot's own entry file, written and synced with its directory. */
  private async writeEntries(id: string, entries: ManifestEntry[]): Promise<void> {
    const file = this.entriesFile(id);
    await writeEntryFile(file, entries, id).catch((err) => {
      throw new TwinError(
        'ETWIN_CATALOG',
        `cannot write the catalog's entries (${file}): ${(err as Error).message}`,
        { dir: this.dir },
      );
    });
    await this.sync(path.dirname(file));
  }

  /** Marks a snapshot whose entries are written complete (its entries a delta on base, or its own). */
  private async markRecorded(
    id: string,
    totals: SnapshotTotals,
    delta?: { base: string; depth: number },
  ): Promise<SnapshotRecord> {
    await this.setFields(
      id,
      {
        state: 'complete',
        totals,
        finishedAt: Date.now(),
        ...(delta ? { entriesBase: delta.base, entriesDepth: delta.depth } : {}),
      },
      ['error'],
    );
    const file = this.file;
    await this.sync(file);
    // Synced as it is now: close() syncs it again only if something changes it after this
    // (a second fsync of an unchanged file was the last thing every backup waited for).
    const now = await stampOf(file);
    if (this.loaded) this.loaded.stamp = now;
    else this.synced = now;
    return (await this.get(id))!;
  }

  /** The delta of entries on base's, when worth it (under half of them differ, chain bounded). */
  private async deltaOn(
    base: { id: string; entries: ReadonlyMap<string, EntryRecord> } | undefined,
    entries: ManifestEntry[],
  ): Promise<{ base: string; depth: number; docs: EntryDoc[] } | undefined> {
    if (!base) return undefined;
    const b = await this.doc(base.id);
    if (b?.state !== 'complete') return undefined;
    const depth = (b.entriesDepth ?? 0) + 1;
    if (depth > MAX_DELTA_CHAIN) return undefined;
    const docs: EntryDoc[] = [];
    const seen = new Set<string>();
    for (const e of entries) {
      seen.add(e.path);
      const prev = base.entries.get(e.path);
      if (!prev || !sameEntry(prev, e)) docs.push(e as EntryDoc);
      if (docs.length * 2 > entries.length + 16) return undefined;
    }
    for (const p of base.entries.keys())
      if (!seen.has(p)) docs.push({ path: p, gone: true } as unknown as EntryDoc);
    if (docs.length * 2 > entries.length + 16) return undefined;
    return { base: base.id, depth, docs };
  }

  /**
   * Records complete snapshots found at a target (catalog rebuild): a row each, no entries
   * (they stay in the manifests at the target). Rows already complete are left alone.
   */
  async adopt(recs: SnapshotRecord[]): Promise<number> {
    if (recs.length === 0) return 0;
    const store = await this.rows();
    const have = new Set((await store.find({ state: 'complete' })).map((d) => d._id));
    const docs = recs
      .filter((r) => !have.has(r.id))
      .map(({ id, ...rest }) => ({ ...rest, _id: id }) as SnapshotDoc);
    if (docs.length === 0) return 0;
    await store.remove({ _id: { $in: docs.map((d) => d._id) } }, { multi: true });
    await store.insert(docs);
    await this.sync(path.join(this.dir, 'snapshots.db'));
    return docs.length;
  }

  /** Whether the entries of a snapshot are cached here (rebuilt rows have none). */
  async hasEntries(id: string): Promise<boolean> {
    return (await fsp.stat(this.entriesFile(id)).catch(() => undefined)) !== undefined;
  }

  async fail(id: string, error: { code: string; message: string }): Promise<void> {
    await this.setFields(id, { state: 'failed', error, finishedAt: Date.now() });
    await this.sync(path.join(this.dir, 'snapshots.db'));
    await rmEntries(this.entriesFile(id));
  }

  async get(id: string): Promise<SnapshotRecord | undefined> {
    const d = await this.doc(id);
    return d ? toRecord(d) : undefined;
  }

  /**
   * Resolves what a user typed: a full id, a unique prefix of one, or 'latest' (the newest
   * complete snapshot).
   */
  async resolve(ref: string): Promise<SnapshotRecord> {
    const all = await this.list();
    if (ref === 'latest') {
      const c = all.filter((s) => s.state === 'complete').pop();
      if (!c)
        throw new TwinError('ETWIN_UNKNOWN_SNAPSHOT', 'the catalog holds no complete snapshot', { ref });
      return c;
    }
    const exact = all.find((s) => s.id === ref);
    if (exact) return exact;
    const hits = all.filter((s) => s.id.startsWith(ref));
    if (hits.length === 1) return hits[0]!;
    throw new TwinError(
      'ETWIN_UNKNOWN_SNAPSHOT',
      hits.length > 1
        ? `snapshot "${ref}" is ambiguous (${hits.length} match)`
        : `no snapshot "${ref}" in the catalog ${this.dir}`,
      { ref },
    );
  }

  /** Snapshots, oldest first. */
  async list(
    filter: Partial<Pick<SnapshotRecord, 'state' | 'deviceId' | 'target'>> = {},
  ): Promise<SnapshotRecord[]> {
    // Running rows: the head holds them all.
    const keys = Object.keys(filter);
    if (this.head && keys.length === 1 && filter.state === 'running')
      return this.head.running().map((d) => toRecord(structuredClone(d)));
    const docs = await (await this.rows()).find({ ...filter }).sort({ time: 1 });
    return docs.map(toRecord).sort((a, b) => a.time - b.time || a.id.localeCompare(b.id));
  }

  /** The newest complete snapshot of a device at a target: what an incremental run builds on. */
  async latestComplete(deviceId: string, target: string): Promise<SnapshotRecord | undefined> {
    if (this.head) {
      const d = this.head.latest(deviceId, target);
      return d && toRecord(structuredClone(d));
    }
    return (await this.list({ deviceId, target, state: 'complete' })).pop();
  }

  /** The ids of the complete snapshots at a target (what a backup checks its listing against). */
  async completeIds(target: string): Promise<string[]> {
    if (this.head) return this.head.completeIds(target);
    return (await this.list({ target, state: 'complete' })).map((s) => s.id);
  }

  /** A snapshot's entries, sorted by path (parents before children); a delta resolved on its base. */
  async entries(snapshotId: string): Promise<EntryRecord[]> {
    const doc = await this.doc(snapshotId);
    const own = await this.ownEntries(snapshotId);
    if (!doc?.entriesBase) return applyDelta([], own);
    const base = (await this.entries(doc.entriesBase)).map((e) => ({ ...e, snapshotId }));
    return applyDelta(base, own);
  }

  /**
   * The entries at these paths of a snapshot (a delta resolved on its base), found in the
   * entry files without loading them: what an incremental built by reference needs of its
   * parent (the few paths the server's change answer names).
   */
  async entriesAt(snapshotId: string, paths: Iterable<string>): Promise<Map<string, EntryRecord>> {
    const out = new Map<string, EntryRecord>();
    const want = new Set(paths);
    for (let id: string | undefined = snapshotId; id && want.size > 0; ) {
      const found = await findEntries(this.entriesFile(id), want);
      for (const [p, e] of found) {
        want.delete(p);
        if (!e.gone) out.set(p, { ...e, snapshotId });
      }
      id = (await this.doc(id))?.entriesBase;
    }
    return out;
  }

  /**
   * The entries of a snapshot at and below these directories, found by a text search of its
   * entry files (a renamed directory's old content) and resolved like entriesAt.
   */
  async entriesBelow(snapshotId: string, dirs: string[]): Promise<Map<string, EntryRecord>> {
    const named = new Set<string>(dirs);
    for (let id: string | undefined = snapshotId; id && dirs.length > 0; ) {
      for (const p of await findBelow(this.entriesFile(id), dirs)) named.add(p);
      id = (await this.doc(id))?.entriesBase;
    }
    return this.entriesAt(snapshotId, named);
  }

  /**
   * Every name of a snapshot that is a hard link (linkTo) or the target of one, found by a text
   * search of its entry files and resolved like entriesAt.
   */
  async linkedPaths(snapshotId: string): Promise<Set<string>> {
    const named = new Set<string>();
    for (let id: string | undefined = snapshotId; id; ) {
      for (const e of await findLinks(this.entriesFile(id))) named.add(e.path).add(e.linkTo);
      id = (await this.doc(id))?.entriesBase;
    }
    const out = new Set<string>();
    for (const e of (await this.entriesAt(snapshotId, named)).values())
      if (e.linkTo) out.add(e.path).add(e.linkTo);
    return out;
  }

  /**
   * A snapshot's own entry file, read as nedb loads a datafile (one document a line, the last
   * line of an _id wins, a $$deleted line removes it, index lines are skipped, up to a tenth of
   * the lines may be unreadable) but without nedb's load, which writes the whole file anew and
   * syncs it: a read of the catalog (the parent's delta an unchanged incremental copies, a
   * restore's listing) wrote nothing before nedb was used here either.
   */
  private async ownEntries(snapshotId: string): Promise<Array<EntryRecord & { gone?: boolean }>> {
    const file = this.entriesFile(snapshotId);
    const text = await readEntryFile(file);
    const byId = new Map<unknown, EntryRecord & { gone?: boolean }>();
    let lines = 0;
    let bad = 0;
    for (let from = 0; from < text.length; ) {
      let to = text.indexOf('\n', from);
      if (to < 0) to = text.length;
      if (to > from) {
        lines++;
        let doc: (EntryDoc & { $$deleted?: boolean }) | undefined;
        try {
          doc = JSON.parse(text.slice(from, to));
        } catch {
          bad++;
        }
        if (doc?.$$deleted) byId.delete(doc._id);
        else if (doc && doc._id !== undefined) {
          const { _id, ...e } = doc;
          byId.set(_id, e as EntryRecord & { gone?: boolean });
        }
        if (lines % 20_000 === 0) await turn();
      }
      from = to + 1;
    }
    if (bad > lines / 10)
      throw new TwinError(
        'ETWIN_CATALOG',
        `the catalog's entries (${file}): ${bad} of ${lines} lines unreadable`,
        {
          dir: this.dir,
        },
      );
    return [...byId.values()];
  }

  /**
   * Records stored copies a check found damaged. No later snapshot shares them: the next backup
   * stores those files again (EntryCopier).
   */
  async flagDamaged(found: DamageRecord[]): Promise<void> {
    if (found.length === 0) return;
    const store = await this.damageStore();
    for (const d of found) {
      const { storedIn, path: p, ...rest } = d;
      await store.update(
        { _id: storedCopyKey(storedIn, p) },
        { _id: storedCopyKey(storedIn, p), ...rest },
        { upsert: true },
      );
    }
    await this.sync(path.join(this.dir, 'damage.db'));
  }

  /** Keys (storedCopyKey) of every stored copy a check flagged. */
  async damaged(): Promise<Set<string>> {
    if (!(await fsp.stat(path.join(this.dir, 'damage.db')).catch(() => undefined))) return new Set();
    return new Set((await (await this.damageStore()).find({})).map((d) => d._id));
  }

  /** Removes a snapshot and its entries from the catalog (not its data: see forget). */
  async remove(id: string): Promise<void> {
    // Snapshots whose entries are a delta on this one get all their entries first.
    const rows = await this.rows();
    for (const child of await rows.find({ entriesBase: id })) {
      const all = await this.entries(child._id);
      const file = this.entriesFile(child._id);
      const tmp = `${file}.whole`;
      await fsp.rm(tmp, { force: true });
      const store = Datastore.create({ filename: tmp }) as unknown as Datastore<EntryDoc>;
      await store.load();
      for (let i = 0; i < all.length; i += 5000) await store.insert(all.slice(i, i + 5000));
      await this.sync(tmp);
      // Its path index is of the file replaced (the index checks the inode, too).
      await fsp.rm(`${file}.idx`, { force: true });
      await fsp.rename(tmp, file);
      await this.sync(path.dirname(file));
      await rows.update({ _id: child._id }, { $unset: { entriesBase: true, entriesDepth: true } });
      await this.sync(path.join(this.dir, 'snapshots.db'));
      // Deltas on this child are now deltas on a whole list.
      await rows.update({ entriesBase: child._id }, { $set: { entriesDepth: 1 } }, { multi: true });
    }
    await rows.remove({ _id: id }, { multi: false });
    await this.sync(path.join(this.dir, 'snapshots.db'));
    await rmEntries(this.entriesFile(id));
  }

  /** A 'running' snapshot whose process is gone (killed, crashed): it will never complete. */
  isAbandoned(s: SnapshotRecord): boolean {
    return s.state === 'running' && s.host === os.hostname() && !isAlive(s.pid);
  }

  private entriesFile(id: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id) || id.includes('..'))
      throw new TwinError('ETWIN_CATALOG', `bad snapshot id ${JSON.stringify(id)}`, { snapshotId: id });
    return path.join(this.dir, 'entries', `${id}.db`);
  }

  private async damageStore(): Promise<Datastore<DamageDoc>> {
    const store = Datastore.create({
      filename: path.join(this.dir, 'damage.db'),
    }) as unknown as Datastore<DamageDoc>;
    await store.load();
    return store;
  }

  private async sync(file: string): Promise<void> {
    await fsyncPath(file).catch((err) => {
      throw new TwinError('ETWIN_CATALOG', `cannot sync the catalog (${file}): ${(err as Error).message}`, {
        dir: this.dir,
      });
    });
  }
}

/** Lines of an entry file written per write(2) (a batch of rows, not one call per row). */
const ENTRY_LINES_PER_WRITE = 4096;

/**
 * Writes a snapshot's entry file whole, in nedb's datafile format (one JSON document a line,
 * each with an _id), and syncs it: what nedb's insert writes, without its per-document work
 * (a deep copy, the _id index, a check of every key; 3 % of a full backup's JS thread at
 * 12,000 entries). The rows are ManifestEntry objects: plain JSON, no dates, no key that starts
 * with '$' or holds a '.', which nedb would refuse. Replaces a file left by an earlier attempt.
 */
async function writeEntryFile(
  file: string,
  entries: readonly ManifestEntry[],
  snapshotId: string,
): Promise<void> {
  const fh = await fsp.open(file, 'w');
  // Where each record's line is (pathIndex: bytes from the start, bytes).
  const at = new Float64Array(entries.length);
  const len = new Uint32Array(entries.length);
  try {
    let pos = 0;
    for (let i = 0; i < entries.length; i += ENTRY_LINES_PER_WRITE) {
      let text = '';
      const end = Math.min(entries.length, i + ENTRY_LINES_PER_WRITE);
      for (let j = i; j < end; j++) {
        const line = `${JSON.stringify({ ...entries[j], snapshotId, _id: j.toString(36) })}\n`;
        at[j] = pos;
        len[j] = Buffer.byteLength(line);
        pos += len[j]!;
        text += line;
      }
      await fh.writeFile(text);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await writePathIndex(file, entries, at, len);
}

/**
 * The path index of an entry file (`<file>.idx`): for each record, the FNV-1a hash of its path,
 * where its line starts and its length, sorted by hash, so that a few paths are found without
 * reading the whole file (a 100,000-record file is ~25 MB; its index 1.6 MB). Bound to the file
 * it was written for (its inode, size and mtime) and checked by a digest: anything else, and the
 * file is searched as text. Written after the file, not synced: a crash leaves none or a torn
 * one, which the check refuses.
 *
 * "TWEI" | version (u32) | digest (32: SHA-256 of the rest) | ino, size, mtimeMs (f64 each) |
 * count (u32) | rows: hash (u32), offset (f64), length (u32).
 */
const PATH_INDEX_MAGIC = 'TWEI';
const PATH_INDEX_HEAD = 4 + 4 + 32 + 24 + 4;
const PATH_INDEX_ROW = 16;

function pathHash(p: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < p.length; i++) h = Math.imul(h ^ p.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

async function writePathIndex(
  file: string,
  entries: readonly ManifestEntry[],
  at: Float64Array,
  len: Uint32Array,
): Promise<void> {
  const n = entries.length;
  // Sorted by hash, then by position (a typed-array sort of hash × 2^21 + record number).
  if (n >= 2 ** 21) return;
  const keys = new Float64Array(n);
  for (let j = 0; j < n; j++) keys[j] = pathHash(entries[j]!.path) * 2 ** 21 + j;
  keys.sort();
  const buf = Buffer.alloc(PATH_INDEX_HEAD + n * PATH_INDEX_ROW);
  const st = await fsp.stat(file);
  buf.write(PATH_INDEX_MAGIC, 0, 'latin1');
  buf.writeUInt32BE(1, 4);
  buf.writeDoubleBE(st.ino, 40);
  buf.writeDoubleBE(st.size, 48);
  buf.writeDoubleBE(st.mtimeMs, 56);
  buf.writeUInt32BE(n, 64);
  for (let k = 0; k < n; k++) {
    const j = keys[k]! % 2 ** 21;
    const o = PATH_INDEX_HEAD + k * PATH_INDEX_ROW;
    buf.writeUInt32BE(Math.floor(keys[k]! / 2 ** 21), o);
    buf.writeDoubleBE(at[j]!, o + 4);
    buf.writeUInt32BE(len[j]!, o + 12);
  }
  createHash('sha256').update(buf.subarray(40)).digest().copy(buf, 8);
  await fsp.writeFile(`${file}.idx`, buf).catch(() => undefined);
}

/**
 * The records of these paths found through the entry file's path index: undefined when there is
 * none that is good for the file as it is (the caller searches the text).
 */
async function findByPathIndex(
  file: string,
  paths: ReadonlySet<string>,
): Promise<Map<string, EntryRecord & { gone?: boolean }> | undefined> {
  const idx = await fsp.readFile(`${file}.idx`).catch(() => undefined);
  if (!idx || idx.length < PATH_INDEX_HEAD || idx.toString('latin1', 0, 4) !== PATH_INDEX_MAGIC)
    return undefined;
  const n = idx.readUInt32BE(64);
  if (
    idx.readUInt32BE(4) !== 1 ||
    idx.length !== PATH_INDEX_HEAD + n * PATH_INDEX_ROW ||
    !createHash('sha256').update(idx.subarray(40)).digest().equals(idx.subarray(8, 40))
  )
    return undefined;
  const fh = await fsp.open(file, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const st = await fh.stat();
    if (
      st.ino !== idx.readDoubleBE(40) ||
      st.size !== idx.readDoubleBE(48) ||
      st.mtimeMs !== idx.readDoubleBE(56)
    )
      return undefined;
    const out = new Map<string, EntryRecord & { gone?: boolean }>();
    for (const p of paths) {
      const h = pathHash(p);
      let lo = 0;
      let hi = n;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (idx.readUInt32BE(PATH_INDEX_HEAD + mid * PATH_INDEX_ROW) < h) lo = mid + 1;
        else hi = mid;
      }
      // Every record of this hash, in file order: the last of the path wins.
      for (let k = lo; k < n && idx.readUInt32BE(PATH_INDEX_HEAD + k * PATH_INDEX_ROW) === h; k++) {
        const o = PATH_INDEX_HEAD + k * PATH_INDEX_ROW;
        const length = idx.readUInt32BE(o + 12);
        const line = Buffer.alloc(length);
        const { bytesRead } = await fh.read(line, 0, length, idx.readDoubleBE(o + 4));
        if (bytesRead !== length) return undefined;
        let doc: EntryDoc & { $$deleted?: boolean };
        try {
          doc = JSON.parse(line.toString('utf8')) as EntryDoc & { $$deleted?: boolean };
        } catch {
          return undefined;
        }
        if (doc.path !== p || doc.$$deleted) continue;
        const { _id, ...e } = doc;
        out.set(p, e);
      }
    }
    return out;
  } finally {
    await fh.close();
  }
}

/** The records in an entry file that name a linkTo (by a text search, as findEntries). */
async function findLinks(file: string): Promise<Array<{ path: string; linkTo: string }>> {
  const text = await readEntryFile(file);
  const out: Array<{ path: string; linkTo: string }> = [];
  let at = 0;
  for (;;) {
    const i = text.indexOf('"linkTo":', at);
    if (i < 0) break;
    const from = text.lastIndexOf('\n', i) + 1;
    const to = text.indexOf('\n', i);
    const doc = JSON.parse(text.slice(from, to < 0 ? undefined : to)) as EntryDoc & { $$deleted?: boolean };
    if (typeof doc.linkTo === 'string' && typeof doc.path === 'string' && !doc.$$deleted)
      out.push({ path: doc.path, linkTo: doc.linkTo });
    if (to < 0) break;
    at = to;
    if (out.length % 256 === 0) await turn();
  }
  return out;
}

/** The paths of the records in an entry file below these directories (by a text search). */
async function findBelow(file: string, dirs: string[]): Promise<string[]> {
  const text = await readEntryFile(file);
  const out: string[] = [];
  for (const d of dirs) {
    await turn();
    // The JSON string of "D/..." up to its open end.
    const needle = `"path":${JSON.stringify(`${d}/`).slice(0, -1)}`;
    for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + needle.length)) {
      const from = text.lastIndexOf('\n', i) + 1;
      const to = text.indexOf('\n', i);
      const doc = JSON.parse(text.slice(from, to < 0 ? undefined : to)) as EntryDoc;
      if (typeof doc.path === 'string' && doc.path.startsWith(`${d}/`)) out.push(doc.path);
    }
  }
  return out;
}

/** An entry file and its path index. */
async function rmEntries(file: string): Promise<void> {
  await fsp.rm(`${file}.idx`, { force: true });
  await fsp.rm(file, { force: true });
}

async function readEntryFile(file: string): Promise<string> {
  return fsp.readFile(file, 'utf8').catch((err) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  });
}

/**
 * The records of these paths in an entry file (nedb's one JSON document a line), by a text
 * search for each path rather than a parse of every line; the last record of a path wins.
 */
async function findEntries(
  file: string,
  paths: ReadonlySet<string>,
): Promise<Map<string, EntryRecord & { gone?: boolean }>> {
  // A few paths: through the file's path index (a 25 MB file is not read for 10 of its records).
  if (paths.size <= PATH_INDEX_MAX) {
    const found = await findByPathIndex(file, paths);
    if (found) return found;
  }
  const out = new Map<string, EntryRecord & { gone?: boolean }>();
  const text = await readEntryFile(file);
  const take = (i: number, p: string) => {
    const from = text.lastIndexOf('\n', i) + 1;
    const to = text.indexOf('\n', i);
    const doc = JSON.parse(text.slice(from, to < 0 ? undefined : to)) as EntryDoc & { $$deleted?: boolean };
    if (doc.path !== p || doc.$$deleted) return;
    const { _id, ...e } = doc;
    out.set(p, e);
  };
  if (paths.size > ONE_SEARCH_EACH) {
    // Many paths: one pass over the records' path fields (a search per path costs a scan of the
    // whole file each: 10 paths in 100,000 records were 0.3 s of CPU).
    const want = new Map([...paths].map((p) => [JSON.stringify(p), p]));
    let n = 0;
    for (let i = text.indexOf(PATH_FIELD); i >= 0; i = text.indexOf(PATH_FIELD, i + PATH_FIELD.length)) {
      if (++n % 20_000 === 0) await turn();
      const start = i + PATH_FIELD.length;
      if (text[start] !== '"') continue;
      const end = jsonStringEnd(text, start);
      if (end < 0) break;
      const next = text[end];
      if (next !== ',' && next !== '}') continue;
      const p = want.get(text.slice(start, end));
      if (p !== undefined) take(i, p);
    }
    return out;
  }
  for (const p of paths) {
    // A search of a large file is milliseconds of CPU, many on a loaded machine: the loop turns
    // between them, and a split holder keeps answering the server's pings.
    await turn();
    const needle = `${PATH_FIELD}${JSON.stringify(p)}`;
    for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + needle.length)) {
      const next = text[i + needle.length];
      if (next !== ',' && next !== '}') continue;
      take(i, p);
    }
  }
  return out;
}

const PATH_FIELD = '"path":';
/** Up to this many paths are looked up through the path index (each a read of its line). */
const PATH_INDEX_MAX = 1000;
/** Up to this many paths are searched for one by one; more in one pass over every record. */
const ONE_SEARCH_EACH = 3;

/** The index just past the JSON string that opens at `start` (a quote), or -1. */
function jsonStringEnd(text: string, start: number): number {
  for (let q = text.indexOf('"', start + 1); q >= 0; q = text.indexOf('"', q + 1)) {
    let slashes = 0;
    while (text[q - 1 - slashes] === '\\') slashes++;
    if (slashes % 2 === 0) return q + 1;
  }
  return -1;
}

function toRecord(d: SnapshotDoc): SnapshotRecord {
  const { _id, ...rest } = d;
  return { id: _id, ...rest } as SnapshotRecord;
}
