import { createHash, randomBytes } from 'node:crypto';
import * as os from 'node:os';
import type { ObjectStore } from '../../api/twinfs.js';
import { isAlive } from '../backup-peer/catalog-lock.js';
import { applyDelta, type DeltaLine, isGone } from '../backup-peer/manifest-delta.js';
import {
  isTargetNotFound,
  type ManifestEntry,
  type SnapshotMeta,
  type SnapshotTotals,
} from '../backup-peer/target.js';
import { TwinError } from '../common/errors.js';
import { type ChunkerParams, DEFAULT_CHUNKER } from './chunker.js';
import {
  corrupt,
  type KeyFile,
  newMasterKey,
  openKeyFile,
  RepoKeys,
  readPassphrase,
  wrapMasterKey,
} from './crypto.js';
import {
  BlobTable,
  CACHE_ROW,
  type CacheState,
  indexCacheDir,
  indexCachePath,
  readIndexCache,
  writeIndexCache,
} from './index-cache.js';
import {
  type BlobLocation,
  type BlobRow,
  openBlob,
  openObject,
  PACK_HEADER,
  type PackInfo,
  packKey,
  packObjectName,
  sealObject,
} from './pack.js';

export const FORMAT = 'twinfs-repository';
export const FORMAT_VERSION = 1;

export interface RepoConfig {
  format: typeof FORMAT;
  version: number;
  id: string;
  created: number;
  chunker: ChunkerParams;
  compression: 'zstd';
  encryption: null | { cipher: 'aes-256-gcm'; key: string };
}

/** A snapshot object (docs/repository.md): small, no entries. */
export interface SnapshotObject {
  version: 1;
  meta: SnapshotMeta;
  totals: SnapshotTotals;
  manifest: ManifestRef;
  /**
   * The stamp (indexStamp) of the index objects whose every pack and damage record this
   * snapshot was built against: while the repository's index objects are still exactly those,
   * no copy has been flagged and no pack indexed or repacked since, and the next snapshot may
   * vouch for this one's manifest by the pack sizes its levels record, without the index.
   */
  index?: string;
}

/**
 * Where a snapshot's manifest is: its tree blobs (`entries` lines in them), and, for a snapshot
 * built on an earlier one, that one's manifest (`base`, at most MAX_MANIFEST_DEPTH deep), which
 * the lines change (manifest-delta.ts). `packs`: the packs holding the content these lines name.
 */
export interface ManifestRef {
  blobs: string[];
  entries: number;
  bytes: number;
  base?: ManifestRef;
  packs?: string[];
  /**
   * The size of every pack this level names: those in `packs` and those holding its tree blobs,
   * as the index recorded them when the level was written (what a by-stamp check stats).
   */
  packSizes?: Record<string, number>;
}

/** A set of index object names as one short string (SnapshotObject.index). */
export function indexStamp(names: Iterable<string>): string {
  return createHash('sha256')
    .update([...names].sort().join('\n'))
    .digest('hex')
    .slice(0, 32);
}

/** Longest chain of manifest bases before a manifest is written whole again. */
export const MAX_MANIFEST_DEPTH = 16;

/** How many bases lie under a manifest. */
export function manifestDepth(m: ManifestRef): number {
  let n = 0;
  for (let b = m.base; b; b = b.base) n++;
  return n;
}

/** A manifest line as stored: the committed entry plus, for stored content, its chunks. */
export type StoredEntry = ManifestEntry & { chunks?: string[] };

export interface RepoOpenOptions {
  /** 'if-empty': a store that allows it (dir:) and holds nothing gets a new repository. */
  create?: 'never' | 'if-empty';
  passwordFile?: string;
  /** Told when a repository is created on first use. */
  onNotice?: (message: string) => void;
}

interface IndexObject {
  packs?: PackInfo[];
  damaged?: Array<[id: string, pack: string]>;
}

const LOCK_STALE_MS = 30 * 60_000;
const LOCK_REFRESH_MS = 5 * 60_000;

/**
 * A repository (docs/repository.md) in an object store: config and keys, the index of which
 * blob is in which pack, snapshots and their manifests, locks. Blobs are read verified
 * (authenticated and checked against their id), never trusted.
 */
export class Repository {
  /** id → where it is stored (every copy). */
  private readonly index = new Map<string, BlobLocation[]>();
  /** `${id}@${pack}` of copies a check found bad. */
  private readonly damaged = new Set<string>();
  private readonly loadedIndex = new Set<string>();
  readonly packs = new Map<string, number>();
  private readonly packKeys = new Map<string, Promise<Buffer | null>>();
  private readonly snapshotCache = new Map<string, SnapshotObject>();

  /**
   * Settles when the repository's key file and config are in the store: at once for one
   * opened, later for one this process begun (Repository.begin). Nothing else may be written
   * before it: a store with objects and no config is refused as foreign. Rejects with
   * ETWIN_REPO_CREATE_RACE when another process's config landed first with other keys.
   */
  readonly written: Promise<void>;
  /** Whether `written` is still pending (a repository this process begun). */
  beingWritten: boolean;
  /**
   * Set when this process began a repository and another's config landed first with the same
   * format and no encryption: this process uses that one (its config is this one's now).
   */
  adopted = false;

  private constructor(
    readonly store: ObjectStore,
    private _config: RepoConfig,
    readonly keys: RepoKeys,
    written?: (repo: Repository) => Promise<void>,
  ) {
    this.written = written ? written(this) : Promise.resolve();
    this.beingWritten = written !== undefined;
    this.written.then(
      () => (this.beingWritten = false),
      () => undefined,
    );
  }

  get config(): RepoConfig {
    return this._config;
  }

  get spec(): string {
    return this.store.spec;
  }

  /** Creates a repository in an empty store. */
  static async init(
    store: ObjectStore,
    opts: { encrypt?: boolean; passwordFile?: string } = {},
  ): Promise<Repository> {
    const repo = await Repository.begin(store, opts);
    await repo.written;
    return repo;
  }

  /**
   * A new repository in an empty store, usable at once (its keys and config in memory): the
   * master key is random, so blobs can be named and sealed while its key file is made. The key
   * file (scrypt over 32 MiB: ~0.2 s of CPU and ~8,300 page faults on this project's VM, the
   * first backup's to pay where `restic init` is apart from restic's) and then the config are
   * written behind; `written` settles when both are durable, and the caller writes nothing
   * to the store before it.
   *
   * The config is created exclusively (createOnce): two first backups at once into one empty
   * location each drew a master key, and the later config replaced the earlier one, so that
   * every pack, index and snapshot the earlier one sealed was unreadable (reproduced by
   * test/plugins/dir-concurrent-backups.test.ts in its first round). Now the second config is
   * not written: its process adopts the first one when nothing it sealed depends on its own
   * keys (both unencrypted, same chunker), and otherwise fails the snapshot with
   * ETWIN_REPO_CREATE_RACE before any of its objects but its key file (removed again) is stored.
   */
  static async begin(
    store: ObjectStore,
    opts: { encrypt?: boolean; passwordFile?: string } = {},
  ): Promise<Repository> {
    if (await getOrUndefined(store, 'config'))
      throw new TwinError('ETWIN_REPO_EXISTS', `${store.spec} already holds a repository`, {
        target: store.spec,
      });
    // Key files alone are another creator's, before its config, or a dead creator's: nothing
    // names them but a config, and the config is created exclusively.
    if ((await store.list('')).some((o) => !o.name.startsWith('keys/')))
      throw new TwinError(
        'ETWIN_REPO_FOREIGN',
        `${store.spec} is not empty and holds no twinfs repository: refusing to create one among other files`,
        { target: store.spec },
      );
    let keys = RepoKeys.plain();
    let encryption: RepoConfig['encryption'] = null;
    let keyFile: (() => Promise<void>) | undefined;
    let keyName: string | undefined;
    if (opts.encrypt) {
      const pass = await readPassphrase(opts.passwordFile);
      if (!pass)
        throw new TwinError(
          'ETWIN_REPO_PASSWORD',
          'an encrypted repository needs a passphrase: set TWINFS_PASSWORD or TWINFS_PASSWORD_FILE, or give --password-file',
        );
      const master = newMasterKey();
      const name = `keys/${randomBytes(16).toString('hex')}`;
      keyName = name;
      keyFile = async () =>
        store.put(name, Buffer.from(`${JSON.stringify(await wrapMasterKey(master, pass), null, 2)}\n`));
      keys = RepoKeys.fromMaster(master);
      encryption = { cipher: 'aes-256-gcm', key: name };
    }
    const config: RepoConfig = {
      format: FORMAT,
      version: FORMAT_VERSION,
      id: randomBytes(16).toString('hex'),
      created: Date.now(),
      chunker: DEFAULT_CHUNKER,
      compression: 'zstd',
      encryption,
    };
    return new Repository(store, config, keys, async (repo) => {
      await keyFile?.();
      // Last: a store with a config is a repository.
      const theirs = await createOnce(store, 'config', Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
      if (!theirs) return;
      // Nothing but the key file was written (every other object waits for `written`).
      if (keyName) await store.delete(keyName).catch(() => undefined);
      const winner = parseConfig(store, theirs);
      if (sameUnencryptedFormat(winner, config)) {
        // What this process cut and sealed is valid there: unencrypted blob ids are plain
        // SHA-256 of the chunks, cut with the same sizes.
        repo._config = winner;
        repo.adopted = true;
        return;
      }
      throw new TwinError(
        'ETWIN_REPO_CREATE_RACE',
        `another process created the repository at ${store.spec} at the same moment (repository ${winner.id}${winner.encryption ? ', encrypted' : ''}): this backup was sealed with keys of its own, and nothing of it was stored; run it again`,
        { target: store.spec, id: winner.id },
      );
    });
  }

  static async open(store: ObjectStore, opts: RepoOpenOptions = {}): Promise<Repository> {
    for (let attempt = 0; ; attempt++) {
      const at = await configOrEmpty(store);
      if ('config' in at) return Repository.fromConfig(store, at.config, opts);
      if (at.empty && opts.create === 'if-empty' && store.initOnFirstUse) {
        const encrypt = (await readPassphrase(opts.passwordFile)) !== undefined;
        if (!encrypt && store.defaultEncrypted)
          throw new TwinError(
            'ETWIN_REPO_PASSWORD',
            `${store.spec}: a repository here is encrypted by default and needs a passphrase (TWINFS_PASSWORD, TWINFS_PASSWORD_FILE or --password-file); twinfs init --target ${store.spec} --no-encrypt creates an unencrypted one`,
            { target: store.spec },
          );
        let repo: Repository;
        try {
          // Written behind (Repository.begin): the caller's first snapshot starts meanwhile.
          repo = await Repository.begin(store, { encrypt, passwordFile: opts.passwordFile });
        } catch (err) {
          // Another process's config (or key file, then config) landed since the look above:
          // open that one.
          const code = (err as TwinError)?.code;
          if ((code === 'ETWIN_REPO_EXISTS' || code === 'ETWIN_REPO_FOREIGN') && attempt < 3) continue;
          throw err;
        }
        repo.written.then(
          () =>
            opts.onNotice?.(
              repo.adopted
                ? `another process created the repository at ${store.spec} at the same moment (id ${repo.config.id}): this backup went into it`
                : `created a new ${encrypt ? 'encrypted' : 'unencrypted'} repository at ${store.spec} (id ${repo.config.id})`,
            ),
          () => undefined,
        );
        return repo;
      }
      if (at.empty)
        throw new TwinError(
          'ETWIN_REPO_NOT_INITIALISED',
          `no repository at ${store.spec}: create one with twinfs init --target ${store.spec}`,
          { target: store.spec },
        );
      throw new TwinError(
        'ETWIN_REPO_FOREIGN',
        `${store.spec} holds files but no twinfs repository (no config): not touching it`,
        { target: store.spec },
      );
    }
  }

  private static async fromConfig(
    store: ObjectStore,
    raw: Buffer,
    opts: RepoOpenOptions,
  ): Promise<Repository> {
    const config = parseConfig(store, raw);
    if (config.version !== FORMAT_VERSION)
      throw new TwinError(
        'ETWIN_REPO_VERSION',
        `${store.spec}: repository format version ${config.version}, this twinfs reads ${FORMAT_VERSION}`,
        { target: store.spec, version: config.version },
      );
    let keys = RepoKeys.plain();
    if (config.encryption) {
      const pass = await readPassphrase(opts.passwordFile);
      if (!pass)
        throw new TwinError(
          'ETWIN_REPO_PASSWORD',
          `${store.spec} is encrypted: set TWINFS_PASSWORD or TWINFS_PASSWORD_FILE, or give --password-file`,
          { target: store.spec },
        );
      const file = JSON.parse((await store.get(config.encryption.key)).toString('utf8')) as KeyFile;
      keys = await openKeyFile(file, pass);
    }
    // The index is loaded on first need (ensureIndex): listing snapshots, forget and a catalog
    // rebuild read snapshot objects only, and a repository of 1,000 backups has 1,000 index
    // objects.
    return new Repository(store, config, keys);
  }

  // ---- index -----------------------------------------------------------------------------------

  private indexLoad: Promise<void> | undefined;

  /**
   * Loads the index unless it is loaded (what reading a blob or checking one's presence needs).
   * A process that has read nothing of it yet starts from the local index cache when that is
   * still good (index-cache.ts): only the index objects it does not hold are read.
   */
  ensureIndex(): Promise<void> {
    this.indexLoad ??= this.loadIndex(true).catch((err) => {
      this.indexLoad = undefined;
      throw err;
    });
    return this.indexLoad;
  }

  /** Whether this process has read the index objects (ensureIndex or refreshIndex ran). */
  get indexLoaded(): boolean {
    return this.loadedIndex.size > 0 || this.indexLoad !== undefined;
  }

  /** The names of the index objects at the store now (a listing: none of them is read). */
  async indexNames(): Promise<string[]> {
    return this.names('index/');
  }

  /**
   * The names of the objects below a prefix: the store's names-only listing where it has one
   * (ObjectStore.listNames: a directory's needs no lstat per object; with 1,000 snapshots kept
   * the lstats of snapshots/ were ~25 ms of CPU and ~700 page faults of every backup), else
   * list's names.
   */
  async names(prefix: string): Promise<string[]> {
    if (this.store.listNames) return this.store.listNames(prefix);
    return (await this.store.list(prefix)).map((o) => o.name);
  }

  /** The names of the index objects this process has read or written. */
  loadedIndexNames(): string[] {
    return [...this.loadedIndex];
  }

  /** Whether a pack is at the store with exactly this size (a stat; the index is not consulted). */
  async packHasSize(pack: string, size: number): Promise<boolean> {
    try {
      return (await this.store.stat(packObjectName(pack))).size === size;
    } catch (err) {
      if (isTargetNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * Loads index objects written since the last load (by this or another process), from the
   * store: check and prune start here and never take the index from the cache.
   */
  refreshIndex(): Promise<void> {
    return this.loadIndex(false);
  }

  /** How the index was loaded: from the cache (rows, objects) and objects read from the store. */
  readonly indexReport: { cache: CacheState; fromCache: number; cachedRows: number; read: number } = {
    cache: 'off',
    fromCache: 0,
    cachedRows: 0,
    read: 0,
  };
  /** The cache file this process keeps (set when its first index load was allowed the cache). */
  private cacheFile: string | undefined;
  /** The blob rows taken from the cache, looked up in place (never copied into `index`). */
  private table: BlobTable | undefined;
  /** The index objects the cache file holds (as this process last read or wrote it). */
  private cachedNames = new Set<string>();

  private async loadIndex(useCache: boolean): Promise<void> {
    const listed = await this.names('index/');
    if (useCache && this.loadedIndex.size === 0 && !this.cacheFile) await this.adoptCache(listed);
    const names = listed.filter((n) => !this.loadedIndex.has(n));
    await forEach(names, 8, async (name) => {
      const obj = await openObject<IndexObject>(this.keys, await this.store.get(name), name);
      this.mergeIndex(obj);
      this.loadedIndex.add(name);
      this.indexReport.read++;
    });
    await this.saveCache();
  }

  /**
   * Takes the cache's rows when the cache is this repository's, whole, and every index object it
   * holds is still listed (a new one is read besides; one gone, after a prune: the index is read
   * whole). Its packs are still stat'ed against their indexed sizes before a blob is named, as
   * for an index read from the store.
   */
  private async adoptCache(listed: string[]): Promise<void> {
    const dir = indexCacheDir();
    this.cacheFile = dir ? indexCachePath(dir, this.config.id) : undefined;
    if (!this.cacheFile) return;
    const c = await readIndexCache(this.cacheFile, this.config.id, this.keys);
    this.indexReport.cache = c.state;
    if (!('header' in c)) return;
    const present = new Set(listed);
    if (!c.header.names.every((n) => present.has(n))) {
      this.indexReport.cache = 'stale';
      return;
    }
    this.table = c.table;
    for (const [p, size] of c.header.packs) this.packs.set(p, size);
    for (const [id, pack] of c.header.damaged) this.damaged.add(`${id}@${pack}`);
    for (const n of c.header.names) this.loadedIndex.add(n);
    this.cachedNames = new Set(c.header.names);
    this.indexReport.fromCache = c.header.names.length;
    this.indexReport.cachedRows = c.table.size;
  }

  /** Index objects loaded but not in the cache file before it is written again. */
  private static readonly CACHE_SLACK = 8;

  /**
   * Writes the cache of what this process holds of the index, when it has none yet or when
   * CACHE_SLACK index objects or more are not in it: a few small ones (a changed incremental
   * writes one) are read from the store by the next process rather than the cache rewritten.
   */
  private async saveCache(): Promise<void> {
    if (!this.cacheFile || this.loadedIndex.size === 0) return;
    let fresh = 0;
    for (const n of this.loadedIndex) if (!this.cachedNames.has(n)) fresh++;
    if (fresh === 0 || (this.cachedNames.size > 0 && fresh < Repository.CACHE_SLACK)) return;
    const packNames = [...(this.table?.packNames ?? [])];
    const known = new Set(packNames);
    for (const p of this.packs.keys()) if (!known.has(p)) packNames.push(p);
    const extra: Parameters<typeof BlobTable.merge>[1] = [];
    for (const [id, locs] of this.index)
      for (const l of locs) extra.push([id, l.pack, l.type, l.offset, l.length, l.rawLength, l.compressed]);
    for (const p of this.pending)
      for (const [id, type, offset, length, raw, z] of p.blobs)
        extra.push([id, p.name, type, offset, length, raw, z === 1]);
    const rows = BlobTable.merge(this.table, extra, packNames);
    if (!rows) return;
    const names = [...this.loadedIndex].sort();
    const ok = await writeIndexCache(
      this.cacheFile,
      this.keys,
      {
        repo: this.config.id,
        names,
        packs: packNames.map((p) => [p, this.packs.get(p) ?? 0]),
        damaged: [...this.damaged].map((k) => [k.slice(0, k.indexOf('@')), k.slice(k.indexOf('@') + 1)]),
        rows: rows.length / CACHE_ROW,
      },
      rows,
    );
    if (ok) this.cachedNames = new Set(names);
  }

  private mergeIndex(obj: IndexObject): void {
    for (const p of obj.packs ?? []) {
      this.packs.set(p.name, p.size);
      // Written again (a pack's name comes from its content: the same chunks stored again
      // after the old copy was found damaged): checked afresh.
      this.badPacks.delete(p.name);
      this.packChecks.delete(p.name);
      this.pending.push(p);
    }
    this.pendingRows += (obj.packs ?? []).reduce((n, p) => n + p.blobs.length, 0);
    this.lookups = 0;
    for (const [id, pack] of obj.damaged ?? []) this.damaged.add(`${id}@${pack}`);
  }

  /**
   * Packs whose blob rows are not in `index` yet. Building the map is O(blobs) (1 s and more
   * for 100,000 blobs on a loaded machine), and a snapshot of an unchanged volume looks up a
   * handful of blobs (its manifest's tree blobs): the first few lookups scan these rows, and the
   * map is built when more are asked for.
   */
  private pending: PackInfo[] = [];
  private pendingRows = 0;
  private lookups = 0;

  private materialize(): void {
    for (const p of this.pending)
      for (const [id, type, offset, length, rawLength, z] of p.blobs) {
        const loc: BlobLocation = { pack: p.name, type, offset, length, rawLength, compressed: z === 1 };
        const locs = this.index.get(id);
        if (!locs) this.index.set(id, [loc]);
        else if (!locs.some((l) => l.pack === p.name)) locs.push(loc);
      }
    this.pending = [];
    this.pendingRows = 0;
  }

  /** Every indexed copy of a blob (damaged or not), in index order (the cache's rows first). */
  private allCopies(id: string): BlobLocation[] {
    const cached = this.table?.find(id);
    if (!cached?.length) return this.loadedCopies(id);
    const rest = this.loadedCopies(id).filter((l) => !cached.some((c) => c.pack === l.pack));
    return rest.length ? [...cached, ...rest] : cached;
  }

  /** The copies of a blob in the index objects read from the store. */
  private loadedCopies(id: string): BlobLocation[] {
    if (this.pending.length === 0) return this.index.get(id) ?? [];
    // A scan costs what building the map costs per row, minus the allocations: a few of them.
    if (++this.lookups > 32 || this.pendingRows < 1024) {
      this.materialize();
      return this.index.get(id) ?? [];
    }
    const out = [...(this.index.get(id) ?? [])];
    for (const p of this.pending)
      for (const [bid, type, offset, length, rawLength, z] of p.blobs)
        if (bid === id && !out.some((l) => l.pack === p.name))
          out.push({ pack: p.name, type, offset, length, rawLength, compressed: z === 1 });
    return out;
  }

  /**
   * Prune: one index object naming exactly these packs, written before the caller deletes
   * the old ones; the in-memory index becomes just that.
   */
  async replaceIndex(packs: PackInfo[]): Promise<string | undefined> {
    this.table = undefined;
    this.cachedNames = new Set();
    this.index.clear();
    this.pending = [];
    this.pendingRows = 0;
    this.damaged.clear();
    this.packs.clear();
    this.loadedIndex.clear();
    return this.writeIndex({ packs });
  }

  /** Writes an index object (packs just stored, copies found damaged); returns its name. */
  async writeIndex(obj: IndexObject, opts: { cacheLater?: boolean } = {}): Promise<string | undefined> {
    if (!obj.packs?.length && !obj.damaged?.length) return undefined;
    const bytes = await sealObject(this.keys, obj);
    const name = `index/${createHash('sha256').update(bytes).digest('hex')}`;
    await this.store.put(name, bytes);
    this.mergeIndex(obj);
    this.loadedIndex.add(name);
    if (!opts.cacheLater) await this.saveCache();
    return name;
  }

  /**
   * Writes the local index cache now (after writeIndex with cacheLater: a commit writes it
   * beside its snapshot object, not before it). Best effort: a cache that cannot be written is
   * read from the store next time.
   */
  async saveIndexCache(): Promise<void> {
    // Never fails the caller: a commit writes it beside its snapshot object, whose outcome alone counts.
    await this.saveCache().catch(() => undefined);
  }

  /** Packs found missing or of another size than indexed, in this process. */
  private readonly badPacks = new Map<string, 'missing' | 'size'>();
  private readonly packChecks = new Map<string, Promise<boolean>>();

  /** Intact (not flagged, pack not known bad) copies of a blob, the first one preferred. */
  copies(id: string): BlobLocation[] {
    return this.allCopies(id).filter(
      (l) => !this.damaged.has(`${id}@${l.pack}`) && !this.badPacks.has(l.pack),
    );
  }

  locate(id: string): BlobLocation | undefined {
    return this.copies(id)[0];
  }

  /** Forgets the packs' metadata checks that passed (each snapshot checks them afresh). */
  forgetPackChecks(): void {
    this.packChecks.clear();
  }

  /**
   * Whether a pack is at the store with the size the index records (a metadata check, once
   * per pack and snapshot): what reuse and deduplication check before they name a stored copy.
   */
  packIntact(pack: string): Promise<boolean> {
    let c = this.packChecks.get(pack);
    if (!c) {
      c = this.store.stat(packObjectName(pack)).then(
        (st) => {
          const ok = st.size === this.packs.get(pack);
          if (!ok) this.badPacks.set(pack, 'size');
          return ok;
        },
        (err) => {
          if (!isTargetNotFound(err)) {
            this.packChecks.delete(pack);
            throw err;
          }
          this.badPacks.set(pack, 'missing');
          return false;
        },
      );
      this.packChecks.set(pack, c);
    }
    return c;
  }

  /** A copy of the blob whose pack passes the metadata check, if any. */
  async intactCopy(id: string): Promise<BlobLocation | undefined> {
    await this.ensureIndex();
    for (const l of this.copies(id)) if (await this.packIntact(l.pack)) return l;
    return undefined;
  }

  /** Every indexed blob: id → copies. */
  blobs(): ReadonlyMap<string, BlobLocation[]> {
    this.materialize();
    if (this.table) {
      // Into the map, the cache's rows first (as allCopies orders them).
      const loaded = new Map(this.index);
      this.index.clear();
      for (let i = 0; i < this.table.size; i++) {
        const id = this.table.idAt(i);
        const loc = this.table.at(i);
        const locs = this.index.get(id);
        if (!locs) this.index.set(id, [loc]);
        else if (!locs.some((l) => l.pack === loc.pack)) locs.push(loc);
      }
      for (const [id, locs] of loaded) {
        const have = this.index.get(id);
        if (!have) this.index.set(id, locs);
        else for (const l of locs) if (!have.some((h) => h.pack === l.pack)) have.push(l);
      }
      this.table = undefined;
    }
    return this.index;
  }

  /** Packs holding a copy a check flagged, with the blobs flagged in each. */
  damagedPacks(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const k of this.damaged) {
      const at = k.indexOf('@');
      const pack = k.slice(at + 1);
      const ids = out.get(pack);
      if (ids) ids.push(k.slice(0, at));
      else out.set(pack, [k.slice(0, at)]);
    }
    return out;
  }

  isDamaged(id: string, pack: string): boolean {
    return this.damaged.has(`${id}@${pack}`);
  }

  /** A blob's plaintext, verified (authentication, then its id); another copy if one fails. */
  async readBlob(id: string): Promise<Buffer> {
    await this.ensureIndex();
    const locs = this.copies(id);
    const all = this.allCopies(id);
    if (locs.length === 0 && all.length > 0 && all.every((l) => this.badPacks.get(l.pack) === 'missing'))
      throw new TwinError('ETWIN_TARGET_NOT_FOUND', `blob ${id}: its pack is gone from ${this.spec}`, {
        blob: id,
      });
    if (locs.length === 0)
      throw corrupt(
        `blob ${id} is not in the repository index${all.length ? ' (every copy is damaged)' : ''}`,
        {
          blob: id,
        },
      );
    let first: unknown;
    for (const loc of locs) {
      try {
        return await this.readBlobAt(id, loc);
      } catch (err) {
        first ??= err;
      }
    }
    throw first;
  }

  async readBlobAt(id: string, loc: BlobLocation): Promise<Buffer> {
    const key = await this.packKeyOf(loc.pack);
    const body = await this.store.get(packObjectName(loc.pack), {
      start: loc.offset,
      end: loc.offset + loc.length - 1,
    });
    if (body.length !== loc.length)
      throw corrupt(`pack ${loc.pack}: short read of blob ${id}`, { pack: loc.pack });
    return openBlob(this.keys, key, body, loc, id);
  }

  private packKeyOf(pack: string): Promise<Buffer | null> {
    let k = this.packKeys.get(pack);
    if (!k) {
      k = this.store
        .get(packObjectName(pack), { start: 0, end: PACK_HEADER - 1 })
        .then((h) => packKey(this.keys, h, pack));
      k.catch(() => this.packKeys.delete(pack));
      this.packKeys.set(pack, k);
    }
    return k;
  }

  // ---- snapshots -------------------------------------------------------------------------------

  snapshotObjectName(snapshotId: string): string {
    return `snapshots/${this.keys.hideName('snapshot', snapshotId)}`;
  }

  /** Every snapshot, oldest first. */
  async listSnapshots(): Promise<SnapshotObject[]> {
    return this.readSnapshotObjects(await this.snapshotObjectNames());
  }

  /**
   * The names of the snapshot objects at the target: a listing, no object read (a peer that
   * knows most of them by name reads only the others, catalog-sync.ts).
   */
  async snapshotObjectNames(): Promise<string[]> {
    return this.names('snapshots/');
  }

  /** These snapshot objects (names from snapshotObjectNames), oldest first; deleted ones left out. */
  async readSnapshotObjects(names: string[]): Promise<SnapshotObject[]> {
    const out: SnapshotObject[] = [];
    await forEach(names, 16, async (name) => {
      let s = this.snapshotCache.get(name);
      if (!s) {
        const raw = await getOrUndefined(this.store, name);
        if (!raw) return; // deleted meanwhile
        s = await openObject<SnapshotObject>(this.keys, raw, name);
        this.snapshotCache.set(name, s);
      }
      out.push(s);
    });
    return out.sort(
      (a, b) => a.meta.time - b.meta.time || a.meta.snapshotId.localeCompare(b.meta.snapshotId),
    );
  }

  /** undefined when there is no such snapshot. */
  async readSnapshot(snapshotId: string): Promise<SnapshotObject | undefined> {
    const name = this.snapshotObjectName(snapshotId);
    // Read each time (small): another process may have deleted it (forget).
    const raw = await getOrUndefined(this.store, name);
    if (!raw) return undefined;
    const s = await openObject<SnapshotObject>(this.keys, raw, name);
    if (s.meta.snapshotId !== snapshotId)
      throw corrupt(`${name} names snapshot ${s.meta.snapshotId}, not ${snapshotId}`);
    this.snapshotCache.set(name, s);
    return s;
  }

  async writeSnapshot(s: SnapshotObject): Promise<void> {
    const name = this.snapshotObjectName(s.meta.snapshotId);
    await this.store.put(name, await sealObject(this.keys, s));
    this.snapshotCache.set(name, s);
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    const name = this.snapshotObjectName(snapshotId);
    this.snapshotCache.delete(name);
    await this.store.delete(name);
  }

  /** A snapshot's manifest lines (entries with their chunks), a delta resolved on its base. */
  async readManifest(s: SnapshotObject): Promise<StoredEntry[]> {
    return this.resolveManifest(s.manifest, s.meta.snapshotId);
  }

  /**
   * One path's manifest line, found by a text search of each level of the chain, newest first
   * (no parse of every line: a ranged copy asks this of a 100,000-entry manifest while it holds
   * a split). Undefined when the path is not there or gone.
   */
  async manifestLine(m: ManifestRef, p: string): Promise<StoredEntry | undefined> {
    const needle = `"path":${JSON.stringify(p)}`;
    for (let level: ManifestRef | undefined = m; level; level = level.base) {
      const parts: Buffer[] = [];
      for (const id of level.blobs) parts.push(await this.readBlob(id));
      const text = Buffer.concat(parts).toString('utf8');
      let found: DeltaLine<StoredEntry> | undefined;
      for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + needle.length)) {
        const next = text[i + needle.length];
        if (next !== ',' && next !== '}') continue;
        const to = text.indexOf('\n', i);
        const line = JSON.parse(text.slice(text.lastIndexOf('\n', i) + 1, to < 0 ? undefined : to));
        if (line.path === p) found = line as DeltaLine<StoredEntry>;
      }
      if (found) return isGone(found) ? undefined : found;
    }
    return undefined;
  }

  async resolveManifest(m: ManifestRef, snapshotId: string): Promise<StoredEntry[]> {
    const parts: Buffer[] = [];
    for (const id of m.blobs) parts.push(await this.readBlob(id));
    const text = Buffer.concat(parts).toString('utf8');
    const out: Array<DeltaLine<StoredEntry>> = [];
    for (const line of text.split('\n')) if (line) out.push(JSON.parse(line) as DeltaLine<StoredEntry>);
    if (out.length !== m.entries)
      throw corrupt(`snapshot ${snapshotId}: manifest holds ${out.length} entries, ${m.entries} recorded`);
    if (!m.base) return out.filter((l): l is StoredEntry => !isGone(l));
    return applyDelta(await this.resolveManifest(m.base, snapshotId), out);
  }

  // ---- locks -----------------------------------------------------------------------------------

  /**
   * Takes a lock: shared (backups) or exclusive (forget, prune, check). Stale locks (older than
   * 30 minutes, or of a dead process on this host) are removed; a live conflicting one is
   * ETWIN_REPO_LOCKED.
   */
  async lock(exclusive: boolean, what: string): Promise<RepoLock> {
    const mine = { host: os.hostname(), pid: process.pid, time: Date.now(), exclusive, what };
    const name = `locks/${randomBytes(16).toString('hex')}`;
    const conflicts = async (): Promise<LockInfo | undefined> => {
      for (const n of await this.names('locks/')) {
        if (n === name) continue;
        const raw = await getOrUndefined(this.store, n);
        if (!raw) continue;
        let l: LockInfo;
        try {
          l = await openObject<LockInfo>(this.keys, raw, n);
        } catch {
          continue; // not readable with this key: not ours to judge
        }
        const stale = Date.now() - l.time > LOCK_STALE_MS || (l.host === os.hostname() && !isAlive(l.pid));
        if (stale) {
          await this.store.delete(n).catch(() => undefined);
          continue;
        }
        if (exclusive || l.exclusive) return l;
      }
      return undefined;
    };
    const before = await conflicts();
    if (before) throw lockedError(this.spec, before);
    await this.store.put(name, await sealObject(this.keys, mine));
    // Two takers at once both see none before writing: the later check catches it (both may
    // back off; neither goes on with a conflict).
    const after = await conflicts();
    if (after) {
      await this.store.delete(name).catch(() => undefined);
      throw lockedError(this.spec, after);
    }
    const timer = setInterval(() => {
      void sealObject(this.keys, { ...mine, time: Date.now() })
        .then((b) => this.store.put(name, b))
        .catch(() => undefined);
    }, LOCK_REFRESH_MS);
    timer.unref();
    let released = false;
    return {
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(timer);
        await this.store.delete(name).catch(() => undefined);
      },
    };
  }
}

export interface RepoLock {
  release(): Promise<void>;
}

interface LockInfo {
  host: string;
  pid: number;
  time: number;
  exclusive: boolean;
  what?: string;
}

function lockedError(spec: string, l: LockInfo): TwinError {
  return new TwinError(
    'ETWIN_REPO_LOCKED',
    `${spec} is locked${l.exclusive ? ' exclusively' : ''} by ${l.what ?? 'a twinfs process'} (pid ${l.pid} on ${l.host}, since ${new Date(l.time).toISOString()})`,
    { target: spec, host: l.host, pid: l.pid },
  );
}

// ---- helpers -------------------------------------------------------------------------------------

function parseConfig(store: ObjectStore, raw: Buffer): RepoConfig {
  let config: RepoConfig;
  try {
    config = JSON.parse(raw.toString('utf8')) as RepoConfig;
  } catch {
    throw new TwinError('ETWIN_REPO_FOREIGN', `${store.spec}: config is not a twinfs repository config`, {
      target: store.spec,
    });
  }
  if (config?.format !== FORMAT)
    throw new TwinError('ETWIN_REPO_FOREIGN', `${store.spec}: config is not a twinfs repository config`, {
      target: store.spec,
    });
  return config;
}

/** Whether what was cut and stored for `mine` is valid in `theirs`: no keys, same format and sizes. */
function sameUnencryptedFormat(theirs: RepoConfig, mine: RepoConfig): boolean {
  return (
    theirs.encryption === null &&
    mine.encryption === null &&
    theirs.version === mine.version &&
    theirs.compression === mine.compression &&
    theirs.chunker.min === mine.chunker.min &&
    theirs.chunker.avg === mine.chunker.avg &&
    theirs.chunker.max === mine.chunker.max
  );
}

/**
 * Stores an object unless one of that name is there; undefined when this one is the object there
 * now, else the bytes of the one that is. Through the store's putNew where it has one (dir:
 * link(2), s3: If-None-Match), then read back in every case: a store that ignored the condition
 * (or has no putNew) may have let another creator replace it, and a retried conditional PUT whose
 * first attempt landed answers "exists" for this very object (equal bytes: a config holds a
 * random id). A condition that stored nothing and left nothing (S3's 409 for two conditional
 * writes at once) is tried again. A read-back that is a strict prefix of these bytes is read
 * again (a store whose PUT answers before the bytes are readable whole), and after that is
 * ETWIN_TARGET_FAILED, never another creator's object.
 */
export async function createOnce(
  store: ObjectStore,
  name: string,
  bytes: Buffer,
): Promise<Buffer | undefined> {
  for (let attempt = 0; ; attempt++) {
    if (store.putNew) await store.putNew(name, bytes);
    else await store.put(name, bytes);
    let now = await getOrUndefined(store, name);
    // A strict prefix of these bytes (empty too) is this write not yet readable whole: a store
    // that answers a PUT before its bytes are all written (s3rver's putObject ends its write
    // stream without waiting for it) shows the rest a moment later. Read again; never taken
    // for another creator's object (a config holds a random id, so theirs is no prefix of it).
    for (let look = 0; now && cutShort(now, bytes); look++) {
      if (look >= 4)
        throw new TwinError(
          'ETWIN_TARGET_FAILED',
          `${store.spec}: ${name} was stored, but reads back cut short`,
          {
            target: store.spec,
          },
        );
      await new Promise((r) => setTimeout(r, 50 * (look + 1)));
      now = await getOrUndefined(store, name);
    }
    if (now?.equals(bytes)) return undefined;
    if (now) return now;
    if (attempt >= 4)
      throw new TwinError('ETWIN_TARGET_FAILED', `${store.spec}: ${name} was stored, but is not there`, {
        target: store.spec,
      });
    await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
  }
}

/** Whether `got` is a strict prefix of `full` (an empty buffer is). */
function cutShort(got: Buffer, full: Buffer): boolean {
  return got.length < full.length && full.subarray(0, got.length).equals(got);
}

/** How long a look at a store holding only key files waits for the config their creator writes next. */
export const CREATING_WAIT_MS = 15_000;

/**
 * The config, or whether the store is empty enough for a new repository. Key files and nothing
 * else are another process's first backup between its key file and its config (the scrypt and
 * two fsyncs apart: 0.2-1 s here) or one that died there: the config is waited for, then the
 * store counts as empty (a dead creator's key file is named by no config). Seeing the config
 * appear in the listing sends the look round again (it landed between the two reads).
 */
export async function configOrEmpty(
  store: ObjectStore,
  waitMs = CREATING_WAIT_MS,
): Promise<{ config: Buffer } | { empty: boolean }> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const raw = await getOrUndefined(store, 'config');
    if (raw) return { config: raw };
    const listed = await store.list('');
    if (listed.some((o) => o.name === 'config') && Date.now() < deadline) continue;
    if (listed.length === 0) return { empty: true };
    if (!listed.every((o) => o.name.startsWith('keys/'))) return { empty: false };
    if (Date.now() >= deadline) return { empty: true };
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function getOrUndefined(store: ObjectStore, name: string): Promise<Buffer | undefined> {
  try {
    return await store.get(name);
  } catch (err) {
    if (isTargetNotFound(err)) return undefined;
    throw err;
  }
}

export async function forEach<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (i < items.length) await fn(items[i++]!);
    }),
  );
}

export type { BlobRow };
