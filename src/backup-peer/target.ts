import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { errnoCode, TwinError, type TwinErrorCode } from '../common/errors.js';

/**
 * The backup target contract: where a backup peer puts snapshots. Deliberately small and
 * streaming, after the restic/kopia/rclone backends (see STYLE.md): a snapshot is begun, filled
 * file by file, then committed (durable, all or nothing) or aborted; snapshots can be listed,
 * read back (ranged where the target can) and deleted. The plugin issue turns this interface
 * into the public plugin contract unchanged, so it names no twinfs internals.
 *
 * Paths are volume paths: '/'-separated, starting with '/', never containing '.' or '..'
 * components. A target must still refuse anything else (ETWIN_PATH_ESCAPE): it is the last line
 * of defence for the storage it owns.
 */

/** What a target can do; the peer plans around it. */
export interface TargetCapabilities {
  /** openFile honours {start, end} without reading from the beginning. */
  rangedReads: boolean;
  /** reuseFile shares data with the previous snapshot (hard links, content addressing). */
  dedup: boolean;
  /** A committed snapshot appears at once, whole (no reader ever sees it half-committed). */
  atomicRename: boolean;
  /** How many putFile/reuseFile calls the peer may have in flight on one writer. */
  maxConcurrency: number;
}

/** Metadata kept with every entry. mtime is in milliseconds since the epoch (fractional). */
export interface EntryMeta {
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}

export type EntryType = 'file' | 'dir' | 'symlink';

/** One entry of a snapshot, as the manifest and the catalog record it. */
export interface ManifestEntry extends EntryMeta {
  path: string;
  type: EntryType;
  /** sha256 (hex) of the content, files only. */
  hash?: string;
  /** Symlink target, symlinks only (stored verbatim, never followed). */
  target?: string;
}

/** Describes a snapshot being written; stored in its manifest. */
export interface SnapshotMeta {
  snapshotId: string;
  /** Start time, ms since the epoch. */
  time: number;
  server: string;
  deviceId: string;
  /** The selection that was backed up (the protocol's selector). */
  selector: Record<string, unknown>;
  /** The snapshot reuseFile draws from, if any. */
  parentId?: string;
}

export interface SnapshotTotals {
  files: number;
  dirs: number;
  symlinks: number;
  /** Bytes of all files in the snapshot. */
  bytes: number;
  /** Bytes actually copied in this run (the rest was reused). */
  copiedBytes: number;
  reusedFiles: number;
  /** Entries skipped because the target cannot represent them (fifos, devices, sockets). */
  skipped: number;
}

/** Everything a committed snapshot says about itself. A target stores it durably on commit. */
export interface SnapshotManifest {
  version: 1;
  meta: SnapshotMeta;
  totals: SnapshotTotals;
  entries: ManifestEntry[];
}

export interface PutResult {
  /** sha256 (hex) of the bytes the target stored. */
  hash: string;
  bytes: number;
}

/** Fills one snapshot. Nothing of it is visible to listSnapshots before commit resolves. */
export interface SnapshotWriter {
  readonly snapshotId: string;
  /**
   * Stores a file from a stream. Atomic: the file is never visible half-written, and a failed
   * put leaves nothing behind. Resolves with the hash and length of what was stored.
   */
  putFile(path: string, data: Readable, meta: EntryMeta, opts?: { signal?: AbortSignal }): Promise<PutResult>;
  /**
   * Records an unchanged file by sharing it with an earlier committed snapshot (incremental
   * backups cost only the changes). Rejects with ETWIN_TARGET_NOT_FOUND when the earlier data is
   * gone; the peer then copies the file instead.
   */
  reuseFile(path: string, fromSnapshotId: string, entry: ManifestEntry): Promise<void>;
  putDir(path: string, meta: EntryMeta): Promise<void>;
  putSymlink(path: string, target: string, meta: EntryMeta): Promise<void>;
  /** Makes the snapshot durable (data and manifest synced) and visible; only then resolves. */
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
}

export interface BackupTarget {
  /** The target type ('dir', 'tar', 's3' ...). */
  readonly id: string;
  /** The normalised spec that reopens this target (`dir:/backups`); stored in the catalog. */
  readonly spec: string;
  readonly capabilities: TargetCapabilities;
  beginSnapshot(meta: SnapshotMeta): Promise<SnapshotWriter>;
  /** Committed snapshots only, oldest first. */
  listSnapshots(): Promise<TargetSnapshotInfo[]>;
  /** The manifest stored at commit. ETWIN_TARGET_NOT_FOUND when there is no such snapshot. */
  readManifest(snapshotId: string): Promise<SnapshotManifest>;
  /** A file's content; `end` is inclusive (like fs.createReadStream). */
  openFile(snapshotId: string, path: string, range?: { start?: number; end?: number }): Promise<Readable>;
  /** ETWIN_TARGET_NOT_FOUND (and nothing else) when the snapshot or path does not exist. */
  stat(snapshotId: string, path: string): Promise<TargetStat>;
  /** Removes a snapshot, committed or not. Deleting a missing snapshot succeeds. */
  deleteSnapshot(snapshotId: string): Promise<void>;
  close(): Promise<void>;
}

/** A target type: opens targets from the location part of a spec (`dir:LOCATION`). */
export interface BackupTargetProvider {
  readonly id: string;
  open(location: string): Promise<BackupTarget>;
}

// ---- errors ------------------------------------------------------------------------------------

/** errno codes worth a retry: the condition may clear by itself. */
const TRANSIENT_ERRNO = new Set([
  'EAGAIN',
  'EBUSY',
  'EINTR',
  'ETIMEDOUT',
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ENFILE',
  'EMFILE',
]);

/** True for errors a caller may retry (only ETWIN_TARGET_TRANSIENT). */
export function isTransient(err: unknown): boolean {
  return err instanceof TwinError && err.code === 'ETWIN_TARGET_TRANSIENT';
}

export function isTargetNotFound(err: unknown): boolean {
  return err instanceof TwinError && err.code === 'ETWIN_TARGET_NOT_FOUND';
}

/**
 * Maps an fs error raised inside a target to the contract's kinds, at the target's boundary:
 * ENOENT/ENOTDIR → not found, retryable errno → transient, anything else → permanent.
 * TwinErrors pass through unchanged.
 */
export function targetError(err: unknown, what: string, data: Record<string, unknown> = {}): TwinError {
  if (err instanceof TwinError) return err;
  const code = errnoCode(err);
  const msg = `${what}: ${code ?? ''}${code ? ' ' : ''}${(err as Error)?.message ?? String(err)}`;
  let kind: TwinErrorCode = 'ETWIN_TARGET_FAILED';
  if (code === 'ENOENT' || code === 'ENOTDIR') kind = 'ETWIN_TARGET_NOT_FOUND';
  else if (code && TRANSIENT_ERRNO.has(code)) kind = 'ETWIN_TARGET_TRANSIENT';
  return new TwinError(kind, msg, { ...data, errno: code }, { cause: err });
}

// ---- helpers every target may use -----------------------------------------------------------------

/** Checks a volume path is absolute, normalised and free of '..'; returns its components. */
export function volumePathParts(p: string): string[] {
  if (typeof p !== 'string' || !p.startsWith('/') || p.includes('\0'))
    throw new TwinError('ETWIN_PATH_ESCAPE', `not a volume path: ${JSON.stringify(p)}`, { path: p });
  const parts = p.split('/').filter((x) => x !== '');
  if (parts.some((x) => x === '..' || x === '.'))
    throw new TwinError('ETWIN_PATH_ESCAPE', `path ${JSON.stringify(p)} escapes the volume root`, {
      path: p,
    });
  return parts;
}

/** Incremental sha256 + length of a stream passing through. */
export class Digest {
  private readonly h = createHash('sha256');
  bytes = 0;
  update(chunk: Buffer): void {
    this.h.update(chunk);
    this.bytes += chunk.length;
  }
  result(): PutResult {
    return { hash: this.h.digest('hex'), bytes: this.bytes };
  }
}

/** An empty set of totals. */
export function emptyTotals(): SnapshotTotals {
  return { files: 0, dirs: 0, symlinks: 0, bytes: 0, copiedBytes: 0, reusedFiles: 0, skipped: 0 };
}
