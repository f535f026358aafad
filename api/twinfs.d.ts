/**
 * The twinfs plugin API, version 1.1.0 — the only surface a plugin may use. Hand-written and
 * documented in docs/plugins.md; the host (src/plugins) implements it, and the target contract
 * below mirrors src/backup-peer/target.ts field for field.
 *
 * Versions: 1.1.0 added only optional members (a provider's `openStore` and the `ObjectStore`
 * contract under a repository). A plugin written for 1.0.0 (`^1.0.0`) loads unchanged; one that
 * gives an object store declares `^1.1.0`, which an older host refuses with ETWIN_PLUGIN_ENGINE.
 *
 * A plugin is a folder with a package.json manifest and an ES module exporting
 * `activate(context)` (and optionally `deactivate()`):
 *
 * ```json
 * {
 *   "name": "my-target", "version": "1.0.0", "main": "index.js", "type": "module",
 *   "engines": { "twinfs": "^1.0.0" },
 *   "activationEvents": ["onTarget:mine"],
 *   "contributes": {
 *     "backupTargets": [{ "id": "mine", "description": "..." }],
 *     "commands": [{ "command": "mine.hello", "title": "Say hello" }],
 *     "configuration": { "properties": { "level": { "type": "integer", "default": 1 } } }
 *   }
 * }
 * ```
 *
 * ```js
 * // @ts-check
 * /** @param {import('twinfs').PluginContext} context *\/
 * export function activate(context) {
 *   context.subscriptions.push(context.twinfs.registerBackupTarget('mine', { open: async (location) => ... }));
 * }
 * ```
 *
 * Types only: `import('twinfs')` resolves to this file (package.json "exports" → "types", or a
 * tsconfig/jsconfig "paths" entry, see docs/plugins.md); there is no runtime module to import.
 * Everything a plugin calls arrives through `context.twinfs`.
 *
 * Activation events: `onStartup` (or `*`), `onTarget:ID` (a backup uses `--target ID:...`),
 * `onCommand:ID`, `onEvent:NAME` (one of the event names below). A plugin whose activate()
 * throws or takes longer than the host's timeout is recorded as failed and disabled; the
 * server and the peer keep running.
 */
import type { Readable } from 'node:stream';

/** Something that holds a resource. */
export interface Disposable {
  dispose(): void | Promise<void>;
}

/** Subscribes a listener; dispose the result to unsubscribe. */
export type Event<T> = (listener: (e: T) => unknown) => Disposable;

export interface PluginLogger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface PluginContext {
  /** The plugin's name (from its manifest). */
  readonly name: string;
  /** The plugin's folder. */
  readonly extensionPath: string;
  /** A folder the plugin may write to (created for it, kept across runs). */
  readonly storagePath: string;
  /** Disposed in reverse order when the plugin is deactivated (a failing one does not stop the rest). */
  readonly subscriptions: Disposable[];
  readonly logger: PluginLogger;
  /** A small persistent store (one JSON file in storagePath). */
  readonly state: {
    get<T>(key: string, fallback?: T): T | undefined;
    update(key: string, value: unknown): Promise<void>;
    keys(): string[];
  };
  /** Settings, validated against contributes.configuration, defaults filled in. */
  readonly configuration: { get<T>(key: string, fallback?: T): T | undefined };
  /** The API. */
  readonly twinfs: TwinfsApi;
}

/** What a plugin module exports. activate may return the plugin's own API (kept by the host). */
export interface PluginModule {
  activate(context: PluginContext): unknown;
  deactivate?(): unknown;
}

export interface TwinfsApi {
  /** The API version ("1.3.0"). */
  readonly version: string;
  /**
   * Registers a backup target type, declared in contributes.backupTargets. The host wraps the
   * provider: every call is bounded by a timeout and a failure is recorded against the plugin.
   */
  registerBackupTarget(id: string, provider: BackupTargetProviderLike): Disposable;
  /** Registers a command, declared in contributes.commands; callable from the CLI and the REPL. */
  registerCommand(id: string, handler: (...args: string[]) => unknown): Disposable;
  executeCommand(id: string, ...args: unknown[]): Promise<unknown>;

  /**
   * Before writes to files are inhibited for a backup: call waitUntil(promise) to quiesce an
   * application (checkpoint a database, pause a job). Bounded by its own timeout, never
   * counted in the write stall; a failure is reported and the backup goes on
   * crash-consistent or fails, as the operator configured.
   */
  readonly onWillFreeze: Event<WillFreezeEvent>;
  readonly onDidFreeze: Event<{ selector: Selector; backupId?: string }>;
  /** Writes flow again (after the split of a backup, or an operator thaw). Resume what onWillFreeze paused. */
  readonly onDidThaw: Event<{ selector: Selector; backupId?: string; stallMs?: number }>;
  readonly onDidSplit: Event<{ selector: Selector; backupId: string; deviceId: string }>;
  readonly onDidResync: Event<{ backupId: string; bytesCopied?: number }>;
  readonly onWillBackup: Event<{ snapshotId: string; selector: Selector; target: string }>;
  readonly onDidCompleteBackup: Event<{ snapshotId: string; totals: SnapshotTotals; target: string }>;
  readonly onDidFail: Event<{ snapshotId?: string; code: string; message: string }>;

  /** Errors of the target contract; the peer retries transient ones only. Each carries a `code`. */
  readonly errors: {
    /** ETWIN_TARGET_NOT_FOUND: no such snapshot or path (stat, openFile, readManifest, reuseFile). */
    notFound(message: string): TargetError;
    /** ETWIN_TARGET_TRANSIENT: may clear by itself (network, throttling); the peer retries. */
    transient(message: string): TargetError;
    /** ETWIN_TARGET_FAILED: permanent. */
    failed(message: string): TargetError;
    /** ETWIN_PATH_ESCAPE: a path that is not a clean volume path. */
    pathEscape(message: string): TargetError;
    /** ETWIN_TARGET_SPEC: a location the target refuses (a relative directory, a bad bucket name). */
    badLocation(message: string): TargetError;
    /** Maps a Node fs error: ENOENT/ENOTDIR → notFound, EAGAIN/ECONNRESET/... → transient, else failed. */
    fromFs(err: unknown, what: string): TargetError;
  };
  /** Checks a volume path ('/a/b', no '.' or '..', no NUL); returns its components or throws pathEscape. */
  volumePathParts(path: string): string[];
}

export interface WillFreezeEvent {
  selector: Selector;
  backupId?: string;
  /** Delays the freeze until the promise settles (or the host's timeout runs out). */
  waitUntil(p: Promise<unknown>): void;
}

export type TargetErrorCode =
  | 'ETWIN_TARGET_NOT_FOUND'
  | 'ETWIN_TARGET_TRANSIENT'
  | 'ETWIN_TARGET_FAILED'
  | 'ETWIN_PATH_ESCAPE'
  | 'ETWIN_TARGET_SPEC';

/** An error from context.twinfs.errors: a literal code and a serialisable payload. */
export interface TargetError extends Error {
  readonly code: TargetErrorCode;
  readonly data: Record<string, unknown>;
}

export interface Selector {
  paths?: string[];
  subtrees?: string[];
  volume?: boolean;
}

// ---- the backup target contract --------------------------------------------------------------

/** What a target can do; the peer plans around it. */
export interface TargetCapabilities {
  /** openFile honours {start, end} without reading from the beginning. */
  rangedReads: boolean;
  /** reuseFile shares data with the previous snapshot (hard links, content addressing). */
  dedup: boolean;
  /** A committed snapshot appears at once, whole. */
  atomicRename: boolean;
  /** How many putFile/reuseFile calls the peer may have in flight on one writer. */
  maxConcurrency: number;
}

/** mtime in ms since the epoch (fractional). */
export interface EntryMeta {
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}

/** What a target stores: files (with content), directories and symlinks. */
export type EntryType = 'file' | 'dir' | 'symlink';

/**
 * Nodes without content that a snapshot records in its manifest only (no target call stores
 * them; restore makes them with mknod): fifos, character and block devices, UNIX sockets.
 */
export type NodeType = 'fifo' | 'char' | 'block' | 'socket';

/**
 * One entry of a snapshot. Fields after `target` came later, for faithful restores;
 * each is optional, and an entry without them restores as before (mtime to the ms, no xattrs,
 * each name of a hard link as its own file).
 */
export interface ManifestEntry extends EntryMeta {
  path: string;
  type: EntryType | NodeType;
  /** sha256 (hex) of the content, files only. */
  hash?: string;
  /** Symlink target, symlinks only (stored verbatim, never followed). */
  target?: string;
  /**
   * Another name of the same file (hard link): the path of the entry of this snapshot that this
   * one shares its inode with (always a `file` entry without linkTo). The data is still readable
   * at this entry's own path (a target links it with putHardLink, or stores it again).
   */
  linkTo?: string;
  /** Device number (st_rdev as stat(2) gives it), char and block devices only. */
  rdev?: number;
  /**
   * Extended attributes (POSIX ACLs included: system.posix_acl_*), as [name, value in base64]
   * pairs sorted by name (pairs, not an object: names contain dots, which some stores refuse
   * as keys).
   */
  xattrs?: Array<[name: string, value: string]>;
  /** Times to the nanosecond, since the epoch, as decimal strings (mtime above is the same, in ms). */
  mtimeNs?: string;
  atimeNs?: string;
  /** Files: the snapshot whose put stored this data (reused entries keep their source's). Set by the peer. */
  storedIn?: string;
  /** Files: the target's stamp of the stored data when it was stored or last reused (PutResult.stamp). */
  stored?: string;
}

export interface SnapshotMeta {
  snapshotId: string;
  /** Start time, ms since the epoch. */
  time: number;
  server: string;
  deviceId: string;
  selector: Record<string, unknown>;
  /** The snapshot reuseFile draws from, if any. */
  parentId?: string;
  /**
   * The server's change generation at this snapshot's split (what the next incremental asks
   * "changed since" about). Kept at the target so that a lost catalog loses nothing.
   */
  generation?: { log: string; generation: number };
  /** Labels given at backup time (`--tag`), used by forget's --keep-tag and by filters. */
  tags?: string[];
}

export interface SnapshotTotals {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  copiedBytes: number;
  reusedFiles: number;
  /** Entries not recorded at all (fifos, devices and sockets were, before they were recorded as `nodes`). */
  skipped: number;
  /** Fifos, devices and sockets recorded in the manifest. */
  nodes?: number;
  /** Names recorded as hard links of another entry (linkTo). */
  hardLinks?: number;
}

/** Everything a committed snapshot says about itself; a target stores it durably on commit. */
export interface SnapshotManifest {
  version: 1;
  meta: SnapshotMeta;
  totals: SnapshotTotals;
  entries: ManifestEntry[];
  /**
   * Only in a commit after carryFrom resolved true: the base's paths that are not in this
   * snapshot. `entries` are then only the new and changed ones (every other entry of the base
   * stays as it is).
   */
  gone?: string[];
}

export interface PutResult {
  /** sha256 (hex) of the bytes stored. */
  hash: string;
  bytes: number;
  /**
   * Optional: an opaque fingerprint of the stored copy as the target sees it (a directory
   * target: size, mtime and inode). The peer keeps it in the manifest and passes it back to
   * reuseFile, which must refuse (notFound) a copy whose stamp changed since: it was damaged or
   * replaced at the target. stat() returns the current one for a cheap metadata check.
   */
  stamp?: string;
}

/** Fills one snapshot. Nothing of it is visible to listSnapshots before commit resolves. */
export interface SnapshotWriter {
  readonly snapshotId: string;
  /** Atomic: never visible half-written; a failed put leaves nothing. Resolves with the sha256 and length stored. */
  putFile(path: string, data: Readable, meta: EntryMeta, opts?: { signal?: AbortSignal }): Promise<PutResult>;
  /**
   * Optional: the same as putFile for a file whose whole content is in memory (the peer uses it
   * for files up to 1 MiB). Most files of a tree are small, and a stream per file costs more
   * than the copy; a target that can store a buffer at once should implement this.
   */
  putSmallFile?(path: string, data: Buffer, meta: EntryMeta, opts?: { signal?: AbortSignal }): Promise<PutResult>;
  /**
   * Shares an unchanged file with an earlier committed snapshot; notFound if that data is gone,
   * or (a target that gives stamps) if its stamp is not entry.stored any more. May resolve with
   * the shared copy's current stamp.
   */
  reuseFile(path: string, fromSnapshotId: string, entry: ManifestEntry): Promise<void | { stamp?: string }>;
  putDir(path: string, meta: EntryMeta): Promise<void>;
  putSymlink(path: string, target: string, meta: EntryMeta): Promise<void>;
  /**
   * Optional: stores `path` as another name of `existingPath`, a file already put (or reused)
   * in this snapshot, sharing its data (a hard link). Without it the peer stores the data again
   * with putFile; either way openFile(path) reads it, and the manifest's `linkTo` tells restore.
   */
  putHardLink?(path: string, existingPath: string, meta: EntryMeta): Promise<void>;
  /**
   * Optional: builds this snapshot on an earlier committed one without the peer passing its
   * unchanged entries (an incremental of an unchanged or little changed volume). True when the
   * target will keep every entry of `fromSnapshotId` that the commit does not name again or
   * list in `gone`, and has checked that snapshot's stored data is there; false, and the peer
   * passes every entry (reuseFile) as without it.
   */
  carryFrom?(fromSnapshotId: string): Promise<boolean>;
  /** Durable (data and manifest synced) and visible only when this resolves. */
  commit(manifest: SnapshotManifest): Promise<void>;
  /** Drops everything written so far. Idempotent; safe after a failed commit. */
  abort(): Promise<void>;
}

export interface TargetSnapshotInfo {
  snapshotId: string;
  time: number;
}

export interface TargetStat {
  type: EntryType;
  size: number;
  /** Files, targets that give stamps (PutResult.stamp): the stored copy's current stamp. */
  stamp?: string;
}

export interface BackupTarget {
  /** The target type ('dir', 'tar', 's3' ...). */
  readonly id: string;
  /** `ID:LOCATION`, reopens this target; stored in the catalog. */
  readonly spec: string;
  readonly capabilities: TargetCapabilities;
  beginSnapshot(meta: SnapshotMeta): Promise<SnapshotWriter>;
  /** Committed snapshots only, oldest first. */
  listSnapshots(): Promise<TargetSnapshotInfo[]>;
  /** notFound when there is no such committed snapshot. */
  readManifest(snapshotId: string): Promise<SnapshotManifest>;
  /** A file's content; `end` is inclusive (like fs.createReadStream). */
  openFile(snapshotId: string, path: string, range?: { start?: number; end?: number }): Promise<Readable>;
  /** notFound, and nothing else, when the snapshot or path does not exist. */
  stat(snapshotId: string, path: string): Promise<TargetStat>;
  /** Removes a snapshot, committed or not. Deleting a missing snapshot succeeds. */
  deleteSnapshot(snapshotId: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * What registerBackupTarget takes: opens targets from the location part of a spec
 * (`mine:LOCATION`). A provider gives either whole targets (`open`) or an object store
 * (`openStore`), on which the host keeps a repository (docs/repository.md: chunked,
 * deduplicated, compressed, optionally encrypted); a provider with both is opened as a store.
 */
export interface BackupTargetProviderLike {
  open?(location: string): Promise<BackupTarget>;
  /** Since API 1.1.0. */
  openStore?(location: string, opts: { create: boolean }): Promise<ObjectStore>;
}

// ---- object stores (the storage under a repository) -------------------------------------------

export interface ObjectInfo {
  /** '/'-separated, relative ('data/ab/ab12...', 'config'). */
  name: string;
  size: number;
}

/**
 * A flat set of named objects: what a repository is stored in (a directory, a bucket). Names
 * are made of [A-Za-z0-9_.-] components joined by '/'. Errors come from context.twinfs.errors
 * (notFound for a missing object, transient where a retry may help).
 */
export interface ObjectStore {
  /** `ID:LOCATION`, as the user gives it. */
  readonly spec: string;
  /** Whether the host may create a repository in an empty store without `twinfs init`. */
  readonly initOnFirstUse: boolean;
  /**
   * Since API 1.1.0. Whether a repository created in this store is encrypted unless the
   * operator says otherwise (`twinfs init --no-encrypt`): stores others can read (a bucket).
   * Such a repository is not created without a passphrase.
   */
  readonly defaultEncrypted?: boolean;
  /** Stores the whole object atomically and durably (all or nothing); replaces one of that name. */
  put(name: string, data: Buffer): Promise<void>;
  /**
   * Since API 1.3.0, optional. Stores the whole object as put does, but only if there is no object
   * of that name: of two calls at once (two processes, two hosts) exactly one stores its object and
   * answers true; the other writes nothing and answers false. A repository's config is created
   * with it, so that two first backups into one empty location cannot both create a repository
   * (the later config would orphan every pack sealed with the earlier one's keys). A store
   * without it gets a put and a read-back, which catches an overwrite only when it lands first.
   */
  putNew?(name: string, data: Buffer): Promise<boolean>;
  /** The object's bytes (a range: `end` inclusive). notFound when there is none. */
  get(name: string, range?: { start: number; end: number }): Promise<Buffer>;
  /** notFound when there is none. */
  stat(name: string): Promise<ObjectInfo>;
  /** Every object whose name starts with prefix, in no particular order. */
  list(prefix: string): Promise<ObjectInfo[]>;
  /**
   * Since API 1.3.0, optional. The names `list` gives, without their sizes: for a store that
   * learns an object's size by a call per object (a directory: an lstat each), so that listings
   * that want names only (the snapshots, the index objects and the locks of a repository: every
   * backup lists them) cost no call per object. Undefined: the host takes list's names.
   */
  listNames?(prefix: string): Promise<string[]>;
  /** Deleting a missing object succeeds. */
  delete(name: string): Promise<void>;
  /**
   * Since API 1.2.0, optional. Writes begun at the store but never finished, which it keeps
   * (and bills) without listing them as objects: an S3 multipart upload whose writer died.
   * Counts them and their stored bytes; with `abort`, removes them. `prune` calls it under the
   * repository's exclusive lock, so no live writer of this repository has one in progress.
   * Undefined when the store cannot list them (an emulator without the call).
   */
  incompleteWrites?(o: { abort: boolean }): Promise<{ count: number; bytes: number } | undefined>;
  close(): Promise<void>;
}
