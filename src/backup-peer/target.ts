import { createHash } from 'node:crypto';
import { errnoCode, TwinError, type TwinErrorCode } from '../common/errors.js';
import type { ReadResult } from '../posix/sparse.js';

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

// The contract's types are the public plugin API's (api/twinfs.d.ts, hand-written and
// documented for plugin authors): one definition, used by the peer and by every plugin.
export type {
  BackupTarget,
  EntryMeta,
  EntryType,
  ManifestEntry,
  NodeType,
  ObjectInfo,
  ObjectStore,
  PutResult,
  SnapshotManifest,
  SnapshotMeta,
  SnapshotTotals,
  SnapshotWriter,
  TargetCapabilities,
  TargetSnapshotInfo,
  TargetStat,
} from '../../api/twinfs.js';

import type {
  BackupTarget,
  EntryMeta,
  ManifestEntry,
  ObjectStore,
  PutResult,
  SnapshotTotals,
  SnapshotWriter,
} from '../../api/twinfs.js';

/**
 * Not part of the plugin contract: a writer that reads a small file of the mirror itself (the
 * repository target, in batches on its worker threads, so the peer's JS thread makes no fs
 * call per file). `file.path` is absolute, its parents checked by the peer (SafeTree); the file
 * is opened without following a symlink and must be `file.size` bytes, at most `file.max`, and
 * unchanged while read, or nothing is stored and the outcome says why.
 */
export interface MirrorFileWriter {
  putMirrorFile(
    path: string,
    file: { path: string; size: number; max: number },
    meta: EntryMeta,
    opts?: { signal?: AbortSignal },
  ): Promise<MirrorFilePut>;
}

export type MirrorFilePut =
  /** mtimeMs: the file's as its reader fstat'ed it (Stats.mtimeMs), for the caller to compare. */
  | { kind: 'stored'; result: PutResult; mtimeMs?: number }
  /** Not the expected size, not a regular file, or changed while it was read. */
  | { kind: 'changed'; why: string }
  /** Larger than file.max. */
  | { kind: 'grown'; size: number }
  /** open or read failed with this errno. */
  | { kind: 'failed'; errno: string; message: string };

export function readsMirrorFiles(w: SnapshotWriter): w is SnapshotWriter & MirrorFileWriter {
  return typeof (w as Partial<MirrorFileWriter>).putMirrorFile === 'function';
}

/**
 * Not part of the plugin contract: a writer that reads a large file's bytes straight into
 * buffers of its own (the repository target: into the windows its workers cut, no stream of
 * 1 MiB buffers each copied once more). `read` fills buf[offset, offset + n) with the file's
 * next bytes and answers n, 0 at the end; the caller bounds it at the size it expects. An answer
 * `{ hole: n }` says those n bytes are zeros of a hole of the file, filled in without a read.
 */
export type ReadInto = ((buf: Buffer, offset: number, length: number) => Promise<ReadResult>) & {
  /**
   * Reads at positions, for a target that reads several windows at once: `size` bytes in all,
   * a read answering fewer than asked ends the file there. Given only for a file with no holes.
   */
  at?: { size: number; read(buf: Buffer, offset: number, length: number, position: number): Promise<number> };
};

export interface ReadIntoWriter {
  putFileFrom(
    path: string,
    read: ReadInto,
    meta: EntryMeta,
    opts?: { signal?: AbortSignal },
  ): Promise<PutResult>;
}

export function readsInto(w: SnapshotWriter): w is SnapshotWriter & ReadIntoWriter {
  return typeof (w as Partial<ReadIntoWriter>).putFileFrom === 'function';
}

/** How a target is opened: `create` lets a backup make a repository in an empty dir: location. */
export interface TargetOpenOptions {
  create?: boolean;
}

/**
 * A target type: opens targets from the location part of a spec (`dir:LOCATION`). Types that
 * give an object store (openStore) open as a repository (src/repository).
 */
export interface BackupTargetProvider {
  readonly id: string;
  /** Without options: as a backup opens it (a dir: repository may be created on first use). */
  open(location: string, opts?: TargetOpenOptions): Promise<BackupTarget>;
  openStore?(location: string, opts: { create: boolean }): Promise<ObjectStore>;
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

/** Entries with no content at the target: fifos, devices and sockets (the manifest records them). */
export function isNodeEntry(e: Pick<ManifestEntry, 'type'>): boolean {
  return e.type === 'fifo' || e.type === 'char' || e.type === 'block' || e.type === 'socket';
}
