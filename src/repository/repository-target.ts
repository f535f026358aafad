import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ObjectStore } from '../../api/twinfs.js';
import { applyDelta, type DeltaLine } from '../backup-peer/manifest-delta.js';
import {
  type BackupTarget,
  type EntryMeta,
  type ManifestEntry,
  type MirrorFilePut,
  type MirrorFileWriter,
  type PutResult,
  type ReadIntoWriter,
  type SnapshotManifest,
  type SnapshotMeta,
  type SnapshotWriter,
  type TargetSnapshotInfo,
  type TargetStat,
  volumePathParts,
} from '../backup-peer/target.js';
import { Semaphore } from '../common/async.js';
import { TwinError } from '../common/errors.js';
import { BlobWriter } from './blob-writer.js';
import { ContentCutter, type ReadInto } from './content-cutter.js';
import {
  forEach,
  indexStamp,
  MAX_MANIFEST_DEPTH,
  type ManifestRef,
  manifestDepth,
  type RepoLock,
  type Repository,
  type SnapshotObject,
  type StoredEntry,
} from './repository.js';
import { SmallFileReader } from './small-files.js';
import { repoReaders, repoWorkers } from './worker-pool.js';

/** The stamp of stored content (PutResult.stamp): a digest of its chunk ids. */
export function stampOf(chunks: string[]): string {
  return createHash('sha256').update(chunks.join(',')).digest('hex').slice(0, 32);
}

function notFound(message: string): TwinError {
  return new TwinError('ETWIN_TARGET_NOT_FOUND', message);
}

function failed(message: string): TwinError {
  return new TwinError('ETWIN_TARGET_FAILED', message);
}

function checkId(id: string): void {
  if (typeof id !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id) || id.includes('..'))
    throw failed(`bad snapshot id ${JSON.stringify(id)}`);
}

/**
 * The backup target contract on a repository (docs/repository.md): what `dir:` (and every
 * target whose plugin gives an object store) is to the peer. Files are chunked, deduplicated,
 * compressed and (when the repository is) encrypted; a snapshot is its snapshot object,
 * written last.
 */
export class RepositoryTarget implements BackupTarget {
  readonly capabilities = { rangedReads: true, dedup: true, atomicRename: true, maxConcurrency: 64 };
  private readonly manifests = new Map<string, Promise<Map<string, StoredEntry>>>();

  private _repo: Repository | undefined;
  private creating: Promise<Repository> | undefined;

  /**
   * `repo` may be a function that creates the repository: a dir: location opened empty by a
   * backup becomes a repository when the first snapshot begins, not before (a backup that
   * cannot reach its server leaves the location as it was).
   */
  constructor(
    repo: Repository | (() => Promise<Repository>),
    readonly id: string,
    private readonly store: ObjectStore,
  ) {
    if (typeof repo === 'function') this.create = repo;
    else this._repo = repo;
  }
  private readonly create: (() => Promise<Repository>) | undefined;

  /** The repository (throws before a pending one is created: callers check `ready` first). */
  get repo(): Repository {
    if (!this._repo) throw new TwinError('ETWIN_REPO_NOT_INITIALISED', `no repository at ${this.spec} yet`);
    return this._repo;
  }

  get ready(): boolean {
    return this._repo !== undefined;
  }

  private async ensure(): Promise<Repository> {
    if (this._repo) return this._repo;
    this.creating ??= this.create!().then((r) => {
      this._repo = r;
      // A creation that failed (its key file or config could not be written, or another
      // process's config landed first with other keys) is not kept: the next snapshot of a
      // long-lived peer opens the location afresh.
      r.written.catch(() => {
        if (this._repo !== r) return;
        this._repo = undefined;
        this.creating = undefined;
      });
      return r;
    });
    this.creating.catch(() => (this.creating = undefined));
    return this.creating;
  }

  get spec(): string {
    return this.store.spec;
  }

  /**
   * Starts taking the shared lock the writer of snapshotId will hold, for beginSnapshot to take
   * over: a backup asks for it when it starts, so that the lock's listings and its durable put
   * (two fsyncs in a row at a `dir:` target: 12 and 49 ms under load in one trace, ~2 ms quiet)
   * run while the catalog is read and the server prepares, not after prepare answered with the
   * split held. Held a few tens of ms longer than before, never shorter. Nothing when no
   * repository is there yet (the first backup creates it in beginSnapshot). A reservation not
   * taken over is released by dropReservation (the run's end) or close.
   */
  reserveLock(snapshotId: string): void {
    if (!this.ready || this.reserved) return;
    const lock = this.repo.lock(false, `backup ${snapshotId}`);
    lock.catch(() => undefined);
    this.reserved = { snapshotId, lock };
  }

  /** Releases the lock reserved for snapshotId unless its writer took it over. */
  async dropReservation(snapshotId: string): Promise<void> {
    const r = this.reserved;
    if (r?.snapshotId !== snapshotId) return;
    this.reserved = undefined;
    await (await r.lock.catch(() => undefined))?.release();
  }

  private reserved: { snapshotId: string; lock: Promise<RepoLock> } | undefined;

  /**
   * Reads the snapshot object the writer of snapshotId will build on (carryFrom) while the server
   * prepares, not after its answer: once the lock reserved for snapshotId is held, so that no
   * forget or prune (exclusive locks) can delete it between this read and the writer's use,
   * which takes over that same lock. Nothing without a reservation; a reservation that failed
   * leaves carryFrom to read it, as before.
   */
  prefetchParent(snapshotId: string, parentId: string): void {
    const r = this.reserved;
    if (!this.ready || r?.snapshotId !== snapshotId) return;
    const object = r.lock.then(async () => ({ s: await this.repo.readSnapshot(parentId) }));
    object.catch(() => undefined);
    this.prefetched = { snapshotId, parentId, object };
  }

  /** The parent's object read by prefetchParent for this writer, once (undefined: read it now). */
  async takePrefetched(
    snapshotId: string,
    parentId: string,
  ): Promise<{ s: SnapshotObject | undefined } | undefined> {
    const p = this.prefetched;
    if (p?.snapshotId !== snapshotId || p.parentId !== parentId) return undefined;
    this.prefetched = undefined;
    return p.object.catch(() => undefined);
  }

  private prefetched:
    | { snapshotId: string; parentId: string; object: Promise<{ s: SnapshotObject | undefined }> }
    | undefined;

  /**
   * The lock reserved for this snapshot, or one taken now. A reservation that failed (another
   * process's exclusive lock: a prune) is tried again here, where the lock was always taken: a
   * conflict is judged as late as before.
   */
  private async takeLock(snapshotId: string): Promise<RepoLock> {
    const r = this.reserved;
    if (r?.snapshotId === snapshotId) {
      this.reserved = undefined;
      const lock = await r.lock.catch(() => undefined);
      if (lock) return lock;
    }
    return this.repo.lock(false, `backup ${snapshotId}`);
  }

  async beginSnapshot(meta: SnapshotMeta): Promise<SnapshotWriter> {
    checkId(meta.snapshotId);
    await this.ensure();
    if (await this.repo.readSnapshot(meta.snapshotId)) {
      await this.dropReservation(meta.snapshotId);
      throw failed(`snapshot ${meta.snapshotId} already exists at ${this.spec}`);
    }
    if (this.repo.beingWritten) {
      // A repository this process is creating (its key's scrypt, ~0.2 s of CPU): nobody else
      // can use it before its config is written, so its lock is taken right after that, and
      // the writer's packs wait for the lock (the store sees key, config, lock, packs, as
      // before), while the files are read, cut and sealed from now on. (No reservation was
      // made for it: reserveLock does nothing before a repository is there.)
      const lock = this.repo.written.then(() => this.repo.lock(false, `backup ${meta.snapshotId}`));
      lock.catch(() => undefined);
      return new RepositoryWriter(this, meta.snapshotId, lock);
    }
    const lock = await this.takeLock(meta.snapshotId);
    try {
      // Packs other processes indexed since the open are deduplicated against too, and every
      // pack is checked afresh: one damaged since the last snapshot of a long-lived peer must
      // not be named again. A process that has not read the index yet reads it whole on first
      // need (ensureIndex), and an unchanged snapshot vouched for by stamp never does.
      if (this.repo.indexLoaded) await this.repo.refreshIndex();
      this.repo.forgetPackChecks();
    } catch (err) {
      await lock.release();
      throw err;
    }
    return new RepositoryWriter(this, meta.snapshotId, Promise.resolve(lock));
  }

  async listSnapshots(): Promise<TargetSnapshotInfo[]> {
    if (!this.ready) return [];
    return (await this.repo.listSnapshots()).map((s) => ({
      snapshotId: s.meta.snapshotId,
      time: s.meta.time,
    }));
  }

  async snapshotObject(snapshotId: string): Promise<SnapshotObject> {
    checkId(snapshotId);
    if (!this.ready) throw notFound(`no snapshot ${snapshotId} at ${this.spec}`);
    const s = await this.repo.readSnapshot(snapshotId);
    if (!s) throw notFound(`no snapshot ${snapshotId} at ${this.spec}`);
    return s;
  }

  async readManifest(snapshotId: string): Promise<SnapshotManifest> {
    const s = await this.snapshotObject(snapshotId);
    const entries = (await this.repo.readManifest(s)).map(({ chunks: _c, ...e }) => e as ManifestEntry);
    return { version: 1, meta: s.meta, totals: s.totals, entries };
  }

  /** A snapshot's entries by path, with their chunks (cached: snapshots never change). */
  entriesOf(snapshotId: string): Promise<Map<string, StoredEntry>> {
    let m = this.manifests.get(snapshotId);
    if (!m) {
      m = this.snapshotObject(snapshotId).then(
        async (s) => new Map((await this.repo.readManifest(s)).map((e) => [e.path, e])),
      );
      m.catch(() => this.manifests.delete(snapshotId));
      this.manifests.set(snapshotId, m);
      if (this.manifests.size > 4) this.manifests.delete(this.manifests.keys().next().value!);
    }
    return m;
  }

  private async entry(snapshotId: string, p: string): Promise<StoredEntry> {
    volumePathParts(p);
    // Loaded already (reuse), or one line searched for (a ranged read of a large file).
    const e = this.manifests.has(snapshotId)
      ? (await this.entriesOf(snapshotId)).get(p)
      : await this.repo.manifestLine((await this.snapshotObject(snapshotId)).manifest, p);
    if (!e) throw notFound(`${p} is not in snapshot ${snapshotId}`);
    return e;
  }

  async openFile(
    snapshotId: string,
    p: string,
    range: { start?: number; end?: number } = {},
  ): Promise<Readable> {
    const e = await this.entry(snapshotId, p);
    if (e.type !== 'file' || !e.chunks) throw notFound(`${p} is not a stored file in snapshot ${snapshotId}`);
    const start = range.start ?? 0;
    const end = Math.min(range.end ?? e.size - 1, e.size - 1);
    return Readable.from(this.readRange(e.chunks, start, end), { objectMode: false });
  }

  /**
   * The bytes [start, end] of content made of these chunks, verified chunk by chunk. A chunk
   * that repeats the one before (a sparse image's holes: one chunk of zeros, thousands of times)
   * is read, decompressed and verified once; the same bytes are yielded again (never written to).
   */
  async *readRange(chunks: string[], start: number, end: number): AsyncGenerator<Buffer> {
    await this.repo.ensureIndex();
    let pos = 0;
    let lastId: string | undefined;
    let last: Buffer | undefined;
    for (const id of chunks) {
      if (pos > end) return;
      const loc = this.repo.locate(id);
      const len = loc?.rawLength;
      if (len !== undefined && pos + len <= start) {
        pos += len;
        continue;
      }
      const data = id === lastId && last ? last : await this.repo.readBlob(id);
      lastId = id;
      last = data;
      const from = Math.max(0, start - pos);
      const to = Math.min(data.length, end - pos + 1);
      if (to > from) yield data.subarray(from, to);
      pos += data.length;
    }
  }

  async stat(snapshotId: string, p: string): Promise<TargetStat> {
    volumePathParts(p);
    if (p === '/') {
      await this.snapshotObject(snapshotId);
      return { type: 'dir', size: 0 };
    }
    const e = await this.entry(snapshotId, p);
    if (e.type === 'file') {
      if (!e.chunks) throw notFound(`${p} has no stored content in snapshot ${snapshotId}`);
      // The stamp of what is there now: a chunk whose every copy is gone, flagged or in a
      // pack of another size than stored changes it (a cheap metadata check).
      const lost: string[] = [];
      for (const id of e.chunks) if (!(await this.repo.intactCopy(id))) lost.push(id);
      const stamp = stampOf(e.chunks);
      return { type: 'file', size: e.size, stamp: lost.length ? `${stamp}-damaged:${lost.length}` : stamp };
    }
    if (e.type === 'dir' || e.type === 'symlink') return { type: e.type, size: 0 };
    throw notFound(`${p} is a ${e.type} (no content) in snapshot ${snapshotId}`);
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    checkId(snapshotId);
    this.manifests.delete(snapshotId);
    if (this.ready) await this.repo.deleteSnapshot(snapshotId);
  }

  async close(): Promise<void> {
    this.manifests.clear();
    if (this.reserved) await this.dropReservation(this.reserved.snapshotId);
    await this.store.close();
  }
}

interface Content {
  chunks: string[];
  hash: string;
  size: number;
}

/** Fills one snapshot of a repository; the snapshot object is written last, by commit. */
class RepositoryWriter implements SnapshotWriter, MirrorFileWriter, ReadIntoWriter {
  private readonly blobs: BlobWriter;
  private readonly cutter: ContentCutter;
  private readonly smallFiles: SmallFileReader;
  private readonly streams: Semaphore;
  /** Paths written, with what they are ('file' paths with their content). */
  private readonly paths = new Map<string, 'dir' | 'symlink' | 'file'>();
  private readonly content = new Map<string, Content>();
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';
  private inflight = 0;
  /** The manifest this snapshot is built on (carryFrom). */
  private base: ManifestRef | undefined;
  /** The index objects the base was vouched for by (carryFrom by stamp): none of them read. */
  private stampedIndex: string[] | undefined;
  /** Index objects this writer wrote. */
  private readonly ownIndex: string[] = [];

  /**
   * @param lock the snapshot's lock, taken (or, in a repository being created, taken once its
   *   config is written: no pack is written before it)
   */
  constructor(
    private readonly target: RepositoryTarget,
    readonly snapshotId: string,
    private readonly lock: Promise<RepoLock>,
  ) {
    this.repo = target.repo;
    this.blobs = new BlobWriter(target.repo, repoWorkers(), lock);
    this.cutter = new ContentCutter(target.repo, repoWorkers(), repoReaders());
    this.smallFiles = new SmallFileReader(target.repo);
    this.streams = new Semaphore(repoWorkers().size);
  }

  /**
   * The repository this snapshot is written to, held here: the target forgets one whose creation
   * failed, and this writer's commit and abort must still meet that failure, not "no repository".
   */
  private readonly repo: Repository;

  /** Checks a new path: clean, not written yet, not below a symlink or a file of this snapshot. */
  private claim(p: string, kind: 'dir' | 'symlink' | 'file'): void {
    const parts = volumePathParts(p);
    if (parts.length === 0) {
      if (kind === 'dir') return;
      throw new TwinError('ETWIN_PATH_ESCAPE', 'the volume root is a directory');
    }
    for (let i = 1; i < parts.length; i++) {
      const above = `/${parts.slice(0, i).join('/')}`;
      const t = this.paths.get(above);
      if (t === 'symlink' || t === 'file')
        throw new TwinError('ETWIN_PATH_ESCAPE', `${p} lies below ${above}, a ${t} of this snapshot`, {
          path: p,
        });
    }
    if (this.paths.has(p) && !(kind === 'dir' && this.paths.get(p) === 'dir'))
      throw failed(`${p} was already stored in snapshot ${this.snapshotId}`);
  }

  private async op<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.state !== 'open') throw failed(`${what}: snapshot ${this.snapshotId} is ${this.state}`);
    this.inflight++;
    try {
      return await fn();
    } finally {
      this.inflight--;
    }
  }

  putFile(
    p: string,
    data: Readable,
    _meta: EntryMeta,
    opts: { signal?: AbortSignal } = {},
  ): Promise<PutResult> {
    return this.putContent(p, data, opts);
  }

  private putContent(
    p: string,
    data: Readable | ReadInto,
    opts: { signal?: AbortSignal },
  ): Promise<PutResult> {
    const destroy = () => {
      if (typeof data !== 'function') data.destroy();
    };
    return this.op(`put ${p}`, async () => {
      try {
        this.claim(p, 'file');
      } catch (err) {
        destroy();
        throw err;
      }
      // Claimed while it streams: a second put of the path fails instead of racing.
      this.paths.set(p, 'file');
      try {
        // A few large files at a time (each holds a few windows of memory); small ones go on.
        return await this.streams.run(async () => {
          const chunks: string[] = [];
          const { hash, size } = await this.cutter.stream(
            data,
            async (blobs) => {
              await this.blobs.add(blobs, 'data');
              for (const b of blobs) chunks.push(b.id);
            },
            opts.signal,
            () => failed(`put ${p} cancelled`),
          );
          return this.record(p, { chunks, hash, size });
        });
      } catch (err) {
        this.paths.delete(p);
        destroy();
        throw err instanceof TwinError ? err : failed(`put ${p}: ${(err as Error)?.message ?? err}`);
      }
    });
  }

  /** A large file read straight into the cutter's windows (ReadIntoWriter, target.ts). */
  putFileFrom(
    p: string,
    read: ReadInto,
    _meta: EntryMeta,
    opts: { signal?: AbortSignal } = {},
  ): Promise<PutResult> {
    return this.putContent(p, read, opts);
  }

  putSmallFile(
    p: string,
    data: Buffer,
    _meta: EntryMeta,
    opts: { signal?: AbortSignal } = {},
  ): Promise<PutResult> {
    return this.op(`put ${p}`, async () => {
      this.claim(p, 'file');
      if (opts.signal?.aborted) throw failed(`put ${p} cancelled`);
      this.paths.set(p, 'file');
      try {
        const { hash, blobs } = await this.cutter.whole(data);
        await this.blobs.add(blobs, 'data');
        return this.record(p, { chunks: blobs.map((b) => b.id), hash, size: data.length });
      } catch (err) {
        this.paths.delete(p);
        throw err;
      }
    });
  }

  /**
   * A small file of the mirror, read, hashed and cut in a worker with others of its batch
   * (small-files.ts); its chunks are stored only when it was read whole and unchanged.
   */
  putMirrorFile(
    p: string,
    file: { path: string; size: number; max: number },
    _meta: EntryMeta,
    opts: { signal?: AbortSignal } = {},
  ): Promise<MirrorFilePut> {
    return this.op(`put ${p}`, async () => {
      this.claim(p, 'file');
      if (opts.signal?.aborted) throw failed(`put ${p} cancelled`);
      this.paths.set(p, 'file');
      try {
        const r = await this.smallFiles.read(file.path, file.size, file.max);
        if (r.kind !== 'read') {
          this.paths.delete(p);
          return r;
        }
        try {
          await this.blobs.add(r.blobs, 'data');
        } finally {
          // Copied into a pack batch (or dropped with a failed writer): the batch's buffer
          // may be read into again.
          r.release();
        }
        return {
          kind: 'stored',
          result: this.record(p, { chunks: r.blobs.map((b) => b.id), hash: r.hash, size: r.size }),
          mtimeMs: r.mtimeMs,
        };
      } catch (err) {
        this.paths.delete(p);
        throw err;
      }
    });
  }

  private record(p: string, c: Content): PutResult {
    this.content.set(p, c);
    return { hash: c.hash, bytes: c.size, stamp: stampOf(c.chunks) };
  }

  /**
   * Carries an unchanged file over from an earlier snapshot: its chunks, when the entry the
   * peer passes is the one stored there (same hash, same stamp) and every chunk is still
   * present and unflagged. Nothing is read or written.
   */
  reuseFile(p: string, fromSnapshotId: string, entry: ManifestEntry): Promise<{ stamp: string }> {
    return this.op(`reuse ${p}`, async () => {
      volumePathParts(p);
      checkId(fromSnapshotId);
      const prev = (await this.target.entriesOf(fromSnapshotId)).get(p);
      if (prev?.type !== 'file' || !prev.chunks)
        throw notFound(`${p} is not a stored file of snapshot ${fromSnapshotId}`);
      const stamp = stampOf(prev.chunks);
      if (
        prev.hash !== entry.hash ||
        prev.size !== entry.size ||
        entry.stored === undefined ||
        entry.stored !== stamp
      )
        throw notFound(`${p} in ${fromSnapshotId} is not the copy the entry describes`);
      let missing: string | undefined;
      for (const id of prev.chunks) if (!(await this.blobs.has(id)) && (missing = id)) break;
      if (missing)
        throw notFound(`${p} in ${fromSnapshotId}: chunk ${missing.slice(0, 12)} is missing or damaged`);
      this.claim(p, 'file');
      this.paths.set(p, 'file');
      this.record(p, { chunks: prev.chunks, hash: prev.hash ?? '', size: prev.size });
      return { stamp };
    });
  }

  /**
   * Builds this snapshot on a committed one: its entries stay unless the committed manifest
   * names them again or lists them as gone; nothing per entry is read. Only when the base is
   * intact as far as metadata tells: every pack holding its manifest and the content it names
   * is present with its indexed size, and every blob a check flagged in one of them has an
   * intact copy elsewhere. Otherwise false, and the peer passes every entry.
   */
  carryFrom(fromSnapshotId: string): Promise<boolean> {
    return this.op(`carry from ${fromSnapshotId}`, async () => {
      checkId(fromSnapshotId);
      // Read during the prepare under the lock this writer took over (prefetchParent), or now.
      const pre = await this.target.takePrefetched(this.snapshotId, fromSnapshotId);
      const s = pre ? pre.s : await this.repo.readSnapshot(fromSnapshotId);
      if (!s) return false;
      if (await this.vouchedByStamp(s)) {
        this.base = s.manifest;
        return true;
      }
      await this.repo.ensureIndex();
      const flagged = this.repo.damagedPacks();
      const packs = new Set<string>();
      for (let m: ManifestRef | undefined = s.manifest; m; m = m.base) {
        // Written before manifests named their packs: nothing to vouch with.
        if (!m.packs) return false;
        for (const id of m.blobs) if (!(await this.blobs.has(id))) return false;
        for (const p of m.packs) packs.add(p);
      }
      for (const p of packs) {
        if (!(await this.repo.packIntact(p))) return false;
        // A flagged copy is never read: the chain may name its blob only if another copy is
        // intact (stored again since), which reads then take, as reuseFile asks of each chunk.
        for (const id of flagged.get(p) ?? []) if (!(await this.repo.intactCopy(id))) return false;
      }
      this.base = s.manifest;
      return true;
    });
  }

  /**
   * The check of carryFrom without the index (docs/repository.md, "Unchanged without the
   * index"): the base recorded the stamp of the index objects it was built against, and they are
   * still exactly those (a listing: no pack indexed, no copy flagged, nothing repacked since),
   * and every pack its chain names is at the store with the size the chain records (a stat
   * each). False sends carryFrom to the index.
   */
  private async vouchedByStamp(s: SnapshotObject): Promise<boolean> {
    if (!s.index) return false;
    const sizes = new Map<string, number>();
    for (let m: ManifestRef | undefined = s.manifest; m; m = m.base) {
      if (!m.packs || !m.packSizes) return false;
      for (const p of m.packs) if (m.packSizes[p] === undefined) return false;
      for (const [p, n] of Object.entries(m.packSizes)) sizes.set(p, n);
    }
    const names = await this.repo.indexNames();
    if (indexStamp(names) !== s.index) return false;
    let intact = true;
    await forEach([...sizes], 8, async ([p, n]) => {
      if (intact && !(await this.repo.packHasSize(p, n))) intact = false;
    });
    if (!intact) return false;
    this.stampedIndex = names;
    return true;
  }

  /** The stamp of the index objects this snapshot was built against (SnapshotObject.index). */
  private indexStampNow(): string | undefined {
    if (this.stampedIndex) return indexStamp([...this.stampedIndex, ...this.ownIndex]);
    return this.repo.indexLoaded ? indexStamp(this.repo.loadedIndexNames()) : undefined;
  }

  putHardLink(p: string, existingPath: string, _meta: EntryMeta): Promise<void> {
    return this.op(`link ${p}`, async () => {
      const c = this.content.get(existingPath);
      if (!c) throw failed(`link ${p}: ${existingPath} is not a file of this snapshot`);
      this.claim(p, 'file');
      this.paths.set(p, 'file');
      this.content.set(p, c);
    });
  }

  putDir(p: string, _meta: EntryMeta): Promise<void> {
    return this.op(`mkdir ${p}`, async () => {
      this.claim(p, 'dir');
      this.paths.set(p, 'dir');
    });
  }

  putSymlink(p: string, _target: string, _meta: EntryMeta): Promise<void> {
    return this.op(`symlink ${p}`, async () => {
      this.claim(p, 'symlink');
      this.paths.set(p, 'symlink');
    });
  }

  /**
   * Durable, in order: the data packs, the manifest's tree blobs, the index naming all of
   * them, then the snapshot object (docs/repository.md, commit order).
   */
  async commit(manifest: SnapshotManifest): Promise<void> {
    if (this.state !== 'open') throw failed(`snapshot ${this.snapshotId} is ${this.state}`);
    if (this.inflight > 0)
      throw failed(`commit of ${this.snapshotId} while ${this.inflight} puts are in flight`);
    if (manifest.meta.snapshotId !== this.snapshotId) throw failed('manifest names another snapshot');
    this.state = 'committing';
    try {
      let rows: Array<DeltaLine<StoredEntry>> = manifest.entries.map((e) => {
        const c = e.type === 'file' ? this.content.get(e.path) : undefined;
        return c ? { ...e, chunks: c.chunks } : e;
      });
      let base = this.base;
      if (base) for (const p of manifest.gone ?? []) rows.push({ path: p, gone: true });
      // Nothing changed on the base: this snapshot's manifest is the base's very manifest (its
      // tree blobs, its chain), already vouched for by carryFrom. No tree blob, no index object
      // and no deeper chain: a run of unchanged snapshots costs a snapshot object each.
      if (base && rows.length === 0 && this.content.size === 0) {
        const lock = await this.lock;
        await this.blobs.discard();
        const index = this.indexStampNow();
        await this.repo.writeSnapshot({
          version: 1,
          meta: manifest.meta,
          totals: manifest.totals,
          manifest: base,
          ...(index ? { index } : {}),
        });
        this.state = 'committed';
        await lock.release();
        return;
      }
      // The data batch still being filled is sealed and written (its fsync included) while the
      // manifest is built beside it: the two wait for each other only before the index.
      const dataPacks = this.blobs.flush();
      dataPacks.catch(() => undefined);
      // Whatever is written now is looked up in the index.
      await this.repo.ensureIndex();
      // A chain grown to its bound is written whole again (read once here, not per backup).
      if (base && manifestDepth(base) + 1 > MAX_MANIFEST_DEPTH) {
        rows = applyDelta(await this.repo.resolveManifest(base, this.snapshotId), rows);
        base = undefined;
      }
      const text = Buffer.from(rows.length ? `${rows.map((r) => JSON.stringify(r)).join('\n')}\n` : '');
      // Tree blobs in packs of their own (as restic keeps them): listing and reading manifests
      // never fetches file data, and damage to a data pack leaves the manifests readable.
      const trees = new BlobWriter(this.repo, repoWorkers(), this.lock);
      // The data writer adds nothing more (its flush started): its spare batches are reused.
      trees.adoptSpares(this.blobs);
      const tree = await trees.addContent(text, 'tree');
      // Both settled before going on: a failure leaves no write of either running behind it.
      const [data, treePacks] = await bothSettled(dataPacks, trees.flush());
      const packs = [...data, ...treePacks];
      // Taken long ago, except in a repository still being created (a backup of a few files
      // can get here before its key file is written): nothing is indexed without it.
      await this.lock;
      // The index object is durable before the snapshot names what it indexes (commit order);
      // the local index cache is not part of it and is written beside the snapshot object.
      const written = await this.repo.writeIndex({ packs }, { cacheLater: true });
      if (written) this.ownIndex.push(written);
      const named = this.packsOf(rows);
      const packSizes = this.sizesOf([...named, ...this.packsOfBlobs(tree)]);
      const index = this.indexStampNow();
      await Promise.all([
        this.repo.writeSnapshot({
          version: 1,
          meta: manifest.meta,
          totals: manifest.totals,
          manifest: {
            blobs: tree,
            entries: rows.length,
            bytes: text.length,
            packs: named,
            ...(packSizes ? { packSizes } : {}),
            ...(base ? { base } : {}),
          },
          ...(index ? { index } : {}),
        }),
        written ? this.repo.saveIndexCache() : undefined,
      ]);
      this.state = 'committed';
    } catch (err) {
      this.state = 'open';
      throw err instanceof TwinError
        ? err
        : failed(`commit of snapshot ${this.snapshotId}: ${(err as Error)?.message}`);
    }
    await (await this.lock).release();
  }

  /** The packs holding the content these lines name (after the index names this writer's). */
  private packsOf(rows: Array<DeltaLine<StoredEntry>>): string[] {
    const packs = new Set<string>();
    for (const r of rows)
      for (const id of (r as StoredEntry).chunks ?? []) {
        const pack = this.repo.locate(id)?.pack;
        if (pack) packs.add(pack);
      }
    return [...packs];
  }

  /** The packs holding these blobs. */
  private packsOfBlobs(ids: string[]): string[] {
    const packs = new Set<string>();
    for (const id of ids) {
      const pack = this.repo.locate(id)?.pack;
      if (pack) packs.add(pack);
    }
    return [...packs];
  }

  /** The indexed size of each pack, or undefined when one is not indexed. */
  private sizesOf(packs: string[]): Record<string, number> | undefined {
    const out: Record<string, number> = {};
    for (const p of packs) {
      const n = this.repo.packs.get(p);
      if (n === undefined) return undefined;
      out[p] = n;
    }
    return out;
  }

  async abort(): Promise<void> {
    if (this.state === 'committed' || this.state === 'aborted') return;
    this.state = 'aborted';
    await this.blobs.discard();
    // A lock that could not be taken (a repository whose creation failed) holds nothing.
    await (await this.lock.catch(() => undefined))?.release();
  }
}

/** Both values, once both promises settled; the first failure (in argument order) otherwise. */
async function bothSettled<A, B>(a: Promise<A>, b: Promise<B>): Promise<[A, B]> {
  const [x, y] = await Promise.allSettled([a, b]);
  if (x.status === 'rejected') throw x.reason;
  if (y.status === 'rejected') throw y.reason;
  return [x.value, y.value];
}
