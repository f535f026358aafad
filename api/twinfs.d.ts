/**
 * The twinfs plugin API, version 1.0.0 — the only surface a plugin may use.
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
 * Activation events: `onStartup` (or `*`), `onTarget:ID` (a backup uses `--target ID:...`),
 * `onCommand:ID`, `onEvent:NAME` (one of the event names below). A plugin whose activate()
 * throws or takes longer than the host's timeout is recorded as failed and disabled; the
 * server and the peer keep running.
 */
declare module 'twinfs' {
  /** Something that holds a resource. */
  export interface Disposable {
    dispose(): void | Promise<void>;
  }

  /** Subscribes a listener; dispose the result to unsubscribe. */
  export type Event<T> = (listener: (e: T) => unknown) => Disposable;

  export interface PluginContext {
    /** The plugin's name (from its manifest). */
    readonly name: string;
    /** The plugin's folder. */
    readonly extensionPath: string;
    /** A folder the plugin may write to (created for it). */
    readonly storagePath: string;
    /** Disposed in reverse order when the plugin is deactivated. */
    readonly subscriptions: Disposable[];
    readonly logger: { info(msg: string): void; warn(msg: string): void; error(msg: string): void };
    /** A small persistent store (JSON). */
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

  export interface TwinfsApi {
    /** The API version ("1.0.0"). */
    readonly version: string;
    /** Registers a backup target type, declared in contributes.backupTargets. */
    registerBackupTarget(id: string, provider: { open(location: string): Promise<BackupTarget> }): Disposable;
    /** Registers a command, declared in contributes.commands; callable from the CLI and the REPL. */
    registerCommand(id: string, handler: (...args: string[]) => unknown): Disposable;
    executeCommand(id: string, ...args: unknown[]): Promise<unknown>;

    /**
     * Before writes to files are inhibited for a backup: call waitUntil(promise) to quiesce an
     * application (checkpoint a database, pause a job). Bounded by its own timeout, never
     * counted in the write stall.
     */
    readonly onWillFreeze: Event<{ selector: Selector; waitUntil(p: Promise<unknown>): void }>;
    readonly onDidFreeze: Event<{ selector: Selector; backupId?: string }>;
    /** Writes flow again (after the split of a backup, or an operator thaw). */
    readonly onDidThaw: Event<{ selector: Selector; backupId?: string; stallMs?: number }>;
    readonly onDidSplit: Event<{ selector: Selector; backupId: string; deviceId: string }>;
    readonly onDidResync: Event<{ backupId: string; bytesCopied?: number }>;
    readonly onWillBackup: Event<{ snapshotId: string; selector: Selector; target: string }>;
    readonly onDidCompleteBackup: Event<{ snapshotId: string; totals: SnapshotTotals; target: string }>;
    readonly onDidFail: Event<{ snapshotId?: string; code: string; message: string }>;

    /** Errors of the target contract; the peer retries transient ones only. */
    readonly errors: {
      notFound(message: string): Error;
      transient(message: string): Error;
      failed(message: string): Error;
      pathEscape(message: string): Error;
      /** Maps a Node fs error: ENOENT/ENOTDIR → notFound, EAGAIN/ECONNRESET/... → transient, else failed. */
      fromFs(err: unknown, what: string): Error;
    };
    /** Checks a volume path ('/a/b', no '.' or '..'); returns its components or throws pathEscape. */
    volumePathParts(path: string): string[];
  }

  export interface Selector {
    paths?: string[];
    subtrees?: string[];
    volume?: boolean;
  }

  // ---- the backup target contract --------------------------------------------------------------

  export interface TargetCapabilities {
    rangedReads: boolean;
    dedup: boolean;
    atomicRename: boolean;
    maxConcurrency: number;
  }

  export interface EntryMeta {
    size: number;
    mode: number;
    uid: number;
    gid: number;
    /** ms since the epoch. */
    mtime: number;
  }

  export type EntryType = 'file' | 'dir' | 'symlink';

  export interface ManifestEntry extends EntryMeta {
    path: string;
    type: EntryType;
    hash?: string;
    target?: string;
  }

  export interface SnapshotMeta {
    snapshotId: string;
    time: number;
    server: string;
    deviceId: string;
    selector: Record<string, unknown>;
    parentId?: string;
  }

  export interface SnapshotTotals {
    files: number;
    dirs: number;
    symlinks: number;
    bytes: number;
    copiedBytes: number;
    reusedFiles: number;
    skipped: number;
  }

  export interface SnapshotManifest {
    version: 1;
    meta: SnapshotMeta;
    totals: SnapshotTotals;
    entries: ManifestEntry[];
  }

  export interface SnapshotWriter {
    readonly snapshotId: string;
    /** Atomic: never visible half-written. Resolves with the sha256 and length stored. */
    putFile(
      path: string,
      data: NodeJS.ReadableStream,
      meta: EntryMeta,
      opts?: { signal?: AbortSignal },
    ): Promise<{ hash: string; bytes: number }>;
    /** Shares an unchanged file with an earlier committed snapshot; notFound if that data is gone. */
    reuseFile(path: string, fromSnapshotId: string, entry: ManifestEntry): Promise<void>;
    putDir(path: string, meta: EntryMeta): Promise<void>;
    putSymlink(path: string, target: string, meta: EntryMeta): Promise<void>;
    /** Durable (data and manifest synced) and visible only when this resolves. */
    commit(manifest: SnapshotManifest): Promise<void>;
    /** Idempotent. */
    abort(): Promise<void>;
  }

  export interface BackupTarget {
    readonly id: string;
    /** `ID:LOCATION`, reopens this target. */
    readonly spec: string;
    readonly capabilities: TargetCapabilities;
    beginSnapshot(meta: SnapshotMeta): Promise<SnapshotWriter>;
    /** Committed snapshots, oldest first. */
    listSnapshots(): Promise<Array<{ snapshotId: string; time: number }>>;
    readManifest(snapshotId: string): Promise<SnapshotManifest>;
    /** `end` inclusive. */
    openFile(snapshotId: string, path: string, range?: { start?: number; end?: number }): Promise<NodeJS.ReadableStream>;
    /** notFound, and nothing else, when absent. */
    stat(snapshotId: string, path: string): Promise<{ type: EntryType; size: number }>;
    /** Idempotent. */
    deleteSnapshot(snapshotId: string): Promise<void>;
    close(): Promise<void>;
  }
}
