import type { BigIntStats, Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { delay } from '../common/async.js';
import { errnoCode, TwinError } from '../common/errors.js';
import { directReads } from '../posix/direct-read.js';
import { sparseReader } from '../posix/sparse.js';
import { type EntryRecord, storedCopyKey } from './catalog.js';
import type { MirrorReader, SourceEntry } from './mirror-source.js';
import { piecesOf, piecesStream, RANGED_MIN_BYTES } from './ranged-copy.js';
import {
  type EntryMeta,
  emptyTotals,
  isTargetNotFound,
  isTransient,
  type ManifestEntry,
  type MirrorFileWriter,
  type PutResult,
  type ReadInto,
  readsInto,
  readsMirrorFiles,
  type SnapshotWriter,
  type TargetStat,
} from './target.js';

const RETRY_DELAYS_MS = [200, 1000, 3000];
/** Files up to this size are read whole, in one read(2), instead of through a read stream. */
const SMALL_FILE = 1 << 20;
/** A mirror-file writer's `why` for a path that is not a regular file (blob-worker.ts). */
const NOT_REGULAR = 'not a regular file';

export interface CopierOptions {
  reader: MirrorReader;
  writer: SnapshotWriter;
  /** The snapshot unchanged files are shared with, and its entries by path. */
  parent?: { id: string; entries: Map<string, EntryRecord> };
  /**
   * Whether the server vouches that a file did not change since the parent's split (its change
   * record, see reuse-oracle.ts). A file is shared with the parent only then: the same size and
   * mtime prove nothing (a write through a shared mmap, a tool that restores mtimes).
   */
  vouched?: (path: string) => boolean;
  /** Stored copies a check flagged (storedCopyKey): never shared, stored again. */
  damaged?: ReadonlySet<string>;
  signal: AbortSignal;
  /** Bytes done: `copied` when read from the mirror, else reused. Negative after a failed attempt. */
  onBytes?: (n: number, copied: boolean) => void;
  /**
   * Changed files whose data changed only in these ranges since the parent's split (the
   * server's change answer): a large one is stored from the parent's copy plus those ranges,
   * read from the mirror alone (ranged-copy.ts).
   */
  ranges?: ReadonlyMap<string, Array<[number, number]>>;
  /** The target's ranged read and stat of committed snapshots (for the parent's copy). */
  stored?: {
    open(snapshotId: string, path: string, range: { start: number; end: number }): Promise<Readable>;
    stat(snapshotId: string, path: string): Promise<TargetStat>;
  };
}

/**
 * Copies one entry at a time from the split mirror into a snapshot writer, and keeps the
 * totals. The mirror copy's own lstat is the metadata of record (the split froze it); what the
 * server announced is checked against it, and a file that changes while it is read fails the run
 * rather than landing torn in a snapshot.
 */
export class EntryCopier {
  readonly totals = emptyTotals();
  /** The first name copied of each multiply-linked inode (dev:ino), for its other names. */
  private readonly inodes = new Map<string, Promise<ManifestEntry>>();
  /** Files that looked unchanged but were copied: not vouched for, flagged by a check, changed at the target. */
  readonly refused = { notVouched: 0, flagged: 0, atTarget: 0 };
  /** Entries carried over from the parent unread, and large files stored from their changed ranges. */
  readonly carriedOver = { entries: 0, rangedFiles: 0, rangedMirrorBytes: 0 };
  /** Large files read around their holes (sparseReader), and the bytes of holes not read. */
  readonly sparse = { files: 0, holeBytes: 0 };
  /** Large files read with O_DIRECT (posix/direct-read.ts) and the bytes read that way. */
  readonly direct = { files: 0, bytes: 0 };
  /** Paths carry() could not share: copied from the mirror, not offered for sharing again. */
  private readonly unshareable = new Set<string>();

  constructor(private readonly o: CopierOptions) {}

  async copy(src: SourceEntry): Promise<ManifestEntry | undefined> {
    const { reader, writer, signal } = this.o;
    if (signal.aborted) throw signal.reason;
    let st: BigIntStats;
    let extra: EntryExtras;
    try {
      st = src.stat ?? (await reader.lstatNs(src.mirrorPath));
      const known = reader.xattrsKnown(src.mirrorPath);
      extra = extrasOf(st, known === 'unknown' ? await reader.xattrs(src.mirrorPath) : known);
    } catch (err) {
      throw mirrorError(err, src);
    }
    const meta = metaOf(st);
    const type = typeOf(st);
    const announced = src.item?.type;
    if (
      announced &&
      announced !==
        (type === 'file' || type === 'dir' || type === 'symlink' || type === 'fifo' ? type : 'other')
    )
      throw new TwinError(
        'ETWIN_MIRROR_CHANGED',
        `${src.path}: the server announced a ${announced}, the mirror holds a ${type ?? 'special file'}`,
        { path: src.path },
      );
    switch (type) {
      case 'dir':
        await writer.putDir(src.path, meta);
        this.totals.dirs++;
        return { path: src.path, type, ...meta, ...extra };
      case 'symlink': {
        const target = await reader.readlink(src.mirrorPath);
        await writer.putSymlink(src.path, target, meta);
        this.totals.symlinks++;
        return { path: src.path, type, ...meta, ...extra, target };
      }
      case 'file':
        return st.nlink > 1n
          ? this.copyLinked(src, st, meta, extra)
          : { ...(await this.copyRegular(src, meta)), ...extra };
      case undefined:
        this.totals.skipped++;
        return undefined;
      default:
        // Fifos, devices, sockets: no content, recorded in the manifest alone; restore makes them.
        this.totals.nodes = (this.totals.nodes ?? 0) + 1;
        return {
          path: src.path,
          type,
          ...meta,
          ...extra,
          ...(type === 'char' || type === 'block' ? { rdev: Number(st.rdev) } : {}),
        };
    }
  }

  /**
   * A file with more than one name. The first name of an inode met in this run is copied as any
   * file; every later one waits for it and becomes a hard link of it (linkTo), stored with the
   * target's putHardLink when it has one, else as a copy of the data. Names are copied in
   * parallel: the map entry is set before the first await, so exactly one name leads.
   */
  private async copyLinked(
    src: SourceEntry,
    st: BigIntStats,
    meta: EntryMeta,
    extra: EntryExtras,
  ): Promise<ManifestEntry> {
    const key = `${st.dev}:${st.ino}`;
    const leading = this.inodes.get(key);
    if (!leading) {
      const copied = this.copyRegular(src, meta).then((e) => ({ ...e, ...extra }));
      this.inodes.set(key, copied);
      return copied;
    }
    const first = await leading;
    if (first.size !== meta.size)
      throw changedError(src, meta, `${first.size} (another name of the same file)`);
    this.totals.files++;
    this.totals.hardLinks = (this.totals.hardLinks ?? 0) + 1;
    let hash = first.hash;
    if (this.o.writer.putHardLink) await this.o.writer.putHardLink(src.path, first.path, meta);
    else {
      hash = (await this.streamFile(src, meta)).hash;
      this.totals.copiedBytes += meta.size;
      if (hash !== first.hash) throw changedError(src, meta, 'other content than its other name');
    }
    return { path: src.path, type: 'file', ...meta, hash, ...extra, linkTo: first.path };
  }

  private async copyRegular(src: SourceEntry, meta: EntryMeta): Promise<ManifestEntry> {
    if (src.item && src.item.size !== meta.size)
      throw new TwinError(
        'ETWIN_MIRROR_CHANGED',
        `${src.path}: the server announced ${src.item.size} bytes, the mirror holds ${meta.size}`,
        { path: src.path },
      );
    this.totals.files++;
    this.totals.bytes += meta.size;
    // Asked only where they may apply (a full backup has neither: no promise each).
    if (this.o.parent?.entries.has(src.path)) {
      const reused = await this.reuse(src, meta);
      if (reused) return reused;
    }
    if (this.o.ranges?.has(src.path)) {
      const ranged = await this.copyRanged(src, meta);
      if (ranged) return ranged;
    }
    const r = await this.streamFile(src, meta);
    this.totals.copiedBytes += meta.size;
    const storedIn = this.o.writer.snapshotId;
    return { path: src.path, type: 'file', ...meta, hash: r.hash, storedIn, stored: r.stamp };
  }

  /**
   * Shares the parent's stored copy when, and only when, the server vouches the file did not
   * change since the parent's split, no check flagged that copy, and the target finds it as it
   * was stored (reuseFile refuses a copy whose stamp changed). Invariant 9.
   */
  private async reuse(src: SourceEntry, meta: EntryMeta): Promise<ManifestEntry | undefined> {
    const parent = this.o.parent;
    const prev = parent?.entries.get(src.path);
    if (!parent || !prev || !unchanged(prev, meta) || this.unshareable.has(src.path)) return undefined;
    if (!this.o.vouched?.(src.path)) {
      this.refused.notVouched++;
      return undefined;
    }
    const storedIn = prev.storedIn ?? parent.id;
    if (this.o.damaged?.has(storedCopyKey(storedIn, src.path))) {
      this.refused.flagged++;
      return undefined;
    }
    try {
      const r = (await this.o.writer.reuseFile(src.path, parent.id, prev)) as { stamp?: string } | undefined;
      this.totals.reusedFiles++;
      this.o.onBytes?.(meta.size, false);
      const stored = r?.stamp ?? prev.stored;
      return { path: src.path, type: 'file', ...meta, hash: prev.hash, storedIn, stored };
    } catch (err) {
      // The parent's data is gone, or no longer what was stored: copy instead.
      if (!isTargetNotFound(err)) throw err;
      this.refused.atTarget++;
      return undefined;
    }
  }

  /**
   * A parent entry the server vouches for, carried over without reading its split copy: the
   * manifest entry as recorded, the stored copy shared (reuseFile). 'look' when it cannot be
   * (the stored copy was flagged, or is gone or changed at the target): then the caller copies
   * it from the mirror like a changed file.
   */
  async carry(prev: EntryRecord): Promise<ManifestEntry | 'look'> {
    const { writer, parent, signal } = this.o;
    if (signal.aborted) throw signal.reason;
    const { snapshotId: _, ...e } = prev;
    const meta: EntryMeta = { size: e.size, mode: e.mode, uid: e.uid, gid: e.gid, mtime: e.mtime };
    switch (e.type) {
      case 'dir':
        await writer.putDir(e.path, meta);
        this.totals.dirs++;
        break;
      case 'symlink':
        await writer.putSymlink(e.path, e.target ?? '', meta);
        this.totals.symlinks++;
        break;
      case 'file': {
        if (!parent || e.hash === undefined || e.linkTo) {
          this.unshareable.add(e.path);
          return 'look';
        }
        const storedIn = e.storedIn ?? parent.id;
        if (this.o.damaged?.has(storedCopyKey(storedIn, e.path))) {
          this.refused.flagged++;
          this.unshareable.add(e.path);
          return 'look';
        }
        try {
          const r = (await writer.reuseFile(e.path, parent.id, prev)) as { stamp?: string } | undefined;
          e.storedIn = storedIn;
          e.stored = r?.stamp ?? e.stored;
        } catch (err) {
          if (!isTargetNotFound(err)) throw err;
          this.refused.atTarget++;
          this.unshareable.add(e.path);
          return 'look';
        }
        this.totals.files++;
        this.totals.bytes += e.size;
        this.totals.reusedFiles++;
        this.o.onBytes?.(e.size, false);
        break;
      }
      default:
        this.totals.nodes = (this.totals.nodes ?? 0) + 1;
    }
    this.carriedOver.entries++;
    return e;
  }

  /**
   * A large changed file whose changed ranges the server named: the parent's stored copy with
   * those ranges (and any growth) read from the mirror, through putFile. Undefined when that
   * does not apply (no ranges, small, no intact parent copy, mostly changed).
   */
  private async copyRanged(src: SourceEntry, meta: EntryMeta): Promise<ManifestEntry | undefined> {
    const { reader, writer, parent, stored, signal, onBytes } = this.o;
    const changed = this.o.ranges?.get(src.path);
    const prev = parent?.entries.get(src.path);
    if (!changed || !stored || !parent || meta.size < RANGED_MIN_BYTES) return undefined;
    if (prev?.type !== 'file' || prev.hash === undefined || prev.stored === undefined || prev.linkTo)
      return undefined;
    if (this.o.damaged?.has(storedCopyKey(prev.storedIn ?? parent.id, src.path))) return undefined;
    const pieces = piecesOf(meta.size, prev.size, changed);
    if (!pieces) return undefined;
    // The parent's copy as it was stored (its stamp), or nothing to build on.
    const st = await stored.stat(parent.id, src.path).catch(() => undefined);
    if (st?.type !== 'file' || st.size !== prev.size || st.stamp !== prev.stored) return undefined;
    const { fh, stat } = await openSource(reader, src);
    let fromMirror = 0;
    let counted = 0;
    try {
      const source = piecesStream(
        pieces,
        fh,
        (start, end) => stored.open(parent.id, src.path, { start, end }),
        (n) => {
          fromMirror += n;
        },
      );
      const counting = async function* () {
        for await (const chunk of source) {
          counted += chunk.length;
          onBytes?.(chunk.length, false);
          yield chunk;
        }
      };
      const r = await writer.putFile(src.path, Readable.from(counting(), { objectMode: false }), meta, {
        signal,
      });
      checkUnchanged(src, meta, stat, await fh.stat());
      checkStored(src, counted, r.bytes, stat.size);
      this.totals.copiedBytes += fromMirror;
      this.carriedOver.rangedFiles++;
      this.carriedOver.rangedMirrorBytes += fromMirror;
      const storedIn = writer.snapshotId;
      return { path: src.path, type: 'file', ...meta, hash: r.hash, storedIn, stored: r.stamp };
    } catch (err) {
      onBytes?.(-counted, false);
      throw err;
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  /** Copies one split copy into the target; retries transient target failures. */
  private async streamFile(src: SourceEntry, meta: EntryMeta): Promise<PutResult> {
    const { writer, signal } = this.o;
    for (let attempt = 0; ; attempt++) {
      try {
        return meta.size <= SMALL_FILE && writer.putSmallFile
          ? await this.putSmall(src, meta)
          : await this.putStreamed(src, meta);
      } catch (err) {
        const wait = RETRY_DELAYS_MS[attempt];
        if (!isTransient(err) || wait === undefined || signal.aborted) throw err;
        await delay(wait, signal);
      }
    }
  }

  /** One attempt through putFile: the content as a stream. */
  private async putStreamed(src: SourceEntry, meta: EntryMeta): Promise<PutResult> {
    const { reader, writer, signal, onBytes } = this.o;
    const { fh, stat } = await openSource(reader, src);
    let counted = 0;
    let closeAlso: (() => Promise<void>) | undefined;
    try {
      if (stat.size > SMALL_FILE && readsInto(writer)) {
        // Read straight into the target's buffers, up to the size fstat gave; a sparse file's
        // holes are not read (src/posix/sparse.ts, sparseReader).
        const size = stat.size;
        // A large file the page cache does not hold is read with O_DIRECT (posix/direct-read.ts).
        const source = await directReads(fh, size);
        closeAlso = source.close;
        const sparse = stat.blocks * 512 < size;
        const reader = sparseReader(fh.fd, size, sparse, source.read);
        let holeBytes = 0;
        const count = (n: number) => {
          counted += n;
          onBytes?.(n, true);
          return n;
        };
        const read: ReadInto = async (buf: Buffer, offset: number, length: number) => {
          const r = await reader.next(buf, offset, length);
          if (typeof r !== 'number') holeBytes += r.hole;
          count(typeof r === 'number' ? r : r.hole);
          return r;
        };
        // Read with O_DIRECT and no holes: several windows at once (content-cutter.ts, READS).
        if (source.direct && !sparse)
          read.at = { size, read: async (...a) => count(await source.read(...a)) };
        const r = await writer.putFileFrom(src.path, read, meta, { signal });
        checkUnchanged(src, meta, stat, await fh.stat());
        checkStored(src, counted, r.bytes, stat.size);
        if (source.direct) {
          this.direct.files++;
          this.direct.bytes += source.directBytes;
        }
        if (holeBytes > 0) {
          this.sparse.files++;
          this.sparse.holeBytes += holeBytes;
        }
        return r;
      }
      // A small file in one read into a buffer of its size; a large one as a stream of 1 MiB
      // chunks that stops at the size fstat gave (a file that grew or shrank meanwhile is
      // caught below). Without the bound every file cost a 1 MiB buffer and an extra read.
      const source: AsyncIterable<Buffer> | Iterable<Buffer> =
        stat.size === 0
          ? []
          : stat.size <= SMALL_FILE
            ? [await readWhole(fh, stat.size)]
            : fh.createReadStream({
                start: 0,
                end: stat.size - 1,
                highWaterMark: 1 << 20,
                autoClose: false,
              });
      // Counts as the target consumes (a 'data' listener would race the target's reader).
      const counting = async function* () {
        for await (const chunk of source) {
          counted += (chunk as Buffer).length;
          onBytes?.((chunk as Buffer).length, true);
          yield chunk as Buffer;
        }
      };
      const r = await writer.putFile(src.path, Readable.from(counting(), { objectMode: false }), meta, {
        signal,
      });
      checkUnchanged(src, meta, stat, await fh.stat());
      checkStored(src, counted, r.bytes, stat.size);
      return r;
    } catch (err) {
      onBytes?.(-counted, true);
      throw err;
    } finally {
      await closeAlso?.();
      await fh.close().catch(() => undefined);
    }
  }

  /**
   * One attempt through putSmallFile. Most files of a tree are small: read whole (one read
   * into a buffer of its size) and handed to the target in one call (no stream, no pipeline
   * per file).
   */
  private async putSmall(src: SourceEntry, meta: EntryMeta): Promise<PutResult> {
    const { reader, writer, signal, onBytes } = this.o;
    if (readsMirrorFiles(writer)) return this.putMirrorFile(src, meta, writer);
    let read: Awaited<ReturnType<MirrorReader['readSmall']>>;
    try {
      read = await reader.readSmall(src.mirrorPath, SMALL_FILE);
    } catch (err) {
      throw mirrorError(err, src);
    }
    // Undefined: the copy grew past the small-file size since it was listed.
    if (!read) throw changedError(src, meta, 'more than 1 MiB');
    const { stat, after, data } = read;
    checkUnchanged(src, meta, stat, after);
    onBytes?.(data.length, true);
    try {
      const r = await writer.putSmallFile!(src.path, data, meta, { signal });
      checkStored(src, data.length, r.bytes, stat.size);
      return r;
    } catch (err) {
      onBytes?.(-data.length, true);
      throw err;
    }
  }

  /**
   * One attempt through a writer that reads the split copy itself (the repository target, in
   * batches on its worker threads): the same checks as putSmall, made where the file is read.
   */
  private async putMirrorFile(
    src: SourceEntry,
    meta: EntryMeta,
    writer: SnapshotWriter & MirrorFileWriter,
  ): Promise<PutResult> {
    const { reader, signal, onBytes } = this.o;
    let file = reader.resolveKnown(src.mirrorPath);
    if (file === undefined)
      try {
        file = await reader.resolve(src.mirrorPath);
      } catch (err) {
        throw mirrorError(err, src);
      }
    const r = await writer.putMirrorFile(src.path, { path: file, size: meta.size, max: SMALL_FILE }, meta, {
      signal,
    });
    switch (r.kind) {
      case 'failed':
        throw mirrorError(Object.assign(new Error(r.message), { code: r.errno }), src);
      case 'grown':
        throw changedError(src, meta, 'more than 1 MiB');
      case 'changed':
        if (r.why === NOT_REGULAR)
          throw new TwinError(
            'ETWIN_MIRROR_CHANGED',
            `${src.mirrorPath} in the mirror is not a regular file`,
            {
              path: src.path,
            },
          );
        throw changedError(src, meta, r.why);
    }
    checkStored(src, r.result.bytes, r.result.bytes, meta.size);
    // The walk's lstat is what the manifest records: the file read must still be that one.
    if (r.mtimeMs !== undefined && r.mtimeMs !== meta.mtime)
      throw changedError(src, meta, `mtime ${r.mtimeMs}, not ${meta.mtime}`);
    onBytes?.(r.result.bytes, true);
    return r.result;
  }
}

/**
 * The split copy must not change while it is copied, nor since the lstat the manifest records
 * (meta: the walk's, which may be a while before the read).
 */
function checkUnchanged(src: SourceEntry, meta: EntryMeta, stat: Stats, after: Stats): void {
  if (after.size !== stat.size || after.mtimeMs !== stat.mtimeMs || stat.size !== meta.size)
    throw changedError(src, meta, after.size);
  if (stat.mtimeMs !== meta.mtime) throw changedError(src, meta, `mtime ${stat.mtimeMs}, not ${meta.mtime}`);
}

function changedError(src: SourceEntry, meta: EntryMeta, now: number | string): TwinError {
  return new TwinError(
    'ETWIN_MIRROR_CHANGED',
    `${src.path}: the split mirror copy changed while it was copied (${meta.size} bytes → ${typeof now === 'number' ? `${now} bytes` : now}); the split is not holding`,
    { path: src.path },
  );
}

function checkStored(src: SourceEntry, counted: number, stored: number, size: number): void {
  if (stored !== size || counted !== size)
    throw new TwinError(
      'ETWIN_TARGET_FAILED',
      `${src.path}: ${counted} bytes read, ${stored} stored, the file has ${size}`,
      {
        path: src.path,
      },
    );
}

/** Reads up to size bytes from offset 0 (fewer if the file shrank: the caller checks the count). */
async function readWhole(fh: FileHandle, size: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(size);
  let off = 0;
  while (off < size) {
    const { bytesRead } = await fh.read(buf, off, size - off, off);
    if (bytesRead === 0) break;
    off += bytesRead;
  }
  return off === size ? buf : buf.subarray(0, off);
}

function metaOf(st: BigIntStats): EntryMeta {
  return {
    size: st.isFile() ? Number(st.size) : 0,
    mode: Number(st.mode) & 0o7777,
    uid: Number(st.uid),
    gid: Number(st.gid),
    // As Node computes Stats.mtimeMs, so that entries of older snapshots compare equal.
    mtime: Number(st.mtimeNs / 1_000_000_000n) * 1e3 + Number(st.mtimeNs % 1_000_000_000n) / 1e6,
  };
}

/** What a manifest records beyond EntryMeta for a faithful restore. */
type EntryExtras = Pick<ManifestEntry, 'mtimeNs' | 'atimeNs' | 'xattrs'>;

/** The extras of an entry with these xattrs (MirrorReader.xattrs). */
function extrasOf(st: BigIntStats, xattrs: Array<[string, string]> | undefined): EntryExtras {
  return { mtimeNs: String(st.mtimeNs), atimeNs: String(st.atimeNs), ...(xattrs ? { xattrs } : {}) };
}

function typeOf(st: BigIntStats): ManifestEntry['type'] | undefined {
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFile()) return 'file';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isSocket()) return 'socket';
  return undefined;
}

/**
 * Unchanged for an incremental run: same size, mtime, mode and owner. Owner and mode count
 * because a shared file (a hard link) shares them too.
 */
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

/** Opens an entry's split copy; a failure names the entry (mirrorError). */
async function openSource(
  reader: MirrorReader,
  src: SourceEntry,
): Promise<Awaited<ReturnType<MirrorReader['open']>>> {
  try {
    return await reader.open(src.mirrorPath);
  } catch (err) {
    throw mirrorError(err, src);
  }
}
