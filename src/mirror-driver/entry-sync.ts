import { createHash } from 'node:crypto';
import type * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { isNoXattrSupport, removeXattr } from '../common/xattrs.js';
import { zeroRange } from '../posix/fallocate.js';
import { mknod } from '../posix/mknod.js';
import { msToNs, setTimesNs } from '../posix/set-times.js';
import { dataSpans, holesBetween, holeThrough, sparseReader, zeros } from '../posix/sparse.js';
import { listXattrs, readXattrs, setXattr } from '../posix/xattr.js';
import type { RangeSet } from './range-set.js';

const CHUNK = 1 << 20;

export interface SyncResult {
  bytesCopied: number;
  /**
   * The mirror name was one of several names of a file and got a file of its own, while the
   * primary's file has other names: those are separate files in the mirror until the names are
   * linked again (the caller compares the volume).
   */
  separated?: boolean;
  /**
   * The primary's entry was gone, or another file than opts.ino, when the copy began: nothing
   * was done to the mirror.
   */
  moved?: boolean;
}

export interface SyncOptions {
  /** Copy only these ranges of a file whose mirror copy exists (a split's tracked writes). */
  ranges?: RangeSet;
  /** Truncate the mirror copy to this size before copying ranges (see TrackedFile.cut). */
  cut?: number;
  /** Compare the contents chunk by chunk and write only the chunks that differ. */
  compare?: boolean;
  /** The mirror entry's lstat, just read by the caller (null: it does not exist). */
  mirrorStat?: fs.Stats | null;
  /**
   * A comparison's copy (the primary's entry may be another file than the mirror's, see below):
   * a mirror file whose link count is not the primary's gets a file of its own. Not for a
   * resync's tracked ranges: those belong in the mirror's file as it is, whatever names a queued
   * link or unlink is about to give or take (written into a copy of its own, they were lost
   * when the names were linked again).
   */
  separate?: boolean;
  /**
   * A mirror file with other names gets a file of its own whatever the link counts (see
   * Resyncer.syncUnsynced): the caller cannot tell which file it is.
   */
  alone?: boolean;
  /**
   * The primary inode the caller means (a resync's tracked changes are for that file): if the
   * primary's entry is gone or another file by the time the copy begins (its unlink or rename is
   * queued behind the caller), the mirror is left alone and the result says moved. Without it a
   * gone entry is removed from the mirror, and that name's tracked changes, which its file's
   * other names still needed, with it (the hard-link attack of hardlink-splits.attack.ts).
   */
  ino?: number;
}

/**
 * Makes one mirror entry equal to its primary entry: type, content (only `ranges`, or only what
 * differs with `compare`, when the mirror file exists; else all of it), size, mode, owner,
 * xattrs and times. A primary entry that is gone is removed from the mirror (recursively).
 */
export async function syncEntry(
  primary: string,
  mirror: string,
  opts: SyncOptions = {},
): Promise<SyncResult> {
  // In ns (bigint): if the entry leaves the primary (a rename queued behind this task) before
  // syncMeta reads its times again, these are the times it carries to its new name.
  const pst = await fsp.lstat(primary, { bigint: true }).catch((e) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return undefined;
    throw e;
  });
  if (opts.ino !== undefined && (!pst || Number(pst.ino) !== opts.ino))
    return { bytesCopied: 0, moved: true };
  if (!pst) {
    await fsp.rm(mirror, { recursive: true, force: true });
    return { bytesCopied: 0 };
  }
  let mst =
    opts.mirrorStat === undefined
      ? await fsp.lstat(mirror).catch(() => undefined)
      : (opts.mirrorStat ?? undefined);
  if (mst && (mst.mode & 0o170000) !== (Number(pst.mode) & 0o170000)) {
    await fsp.rm(mirror, { recursive: true, force: true });
    mst = undefined;
  }
  // A mirror file whose link count is not the primary's is another file than the primary's (a
  // rename over it reached the primary, not yet the mirror), or its names are not the same:
  // writing into it would change its other names too. The name gets a file of its own.
  let separated = false;
  if (
    (opts.separate || opts.alone) &&
    mst?.isFile() &&
    mst.nlink > 1 &&
    pst.isFile() &&
    (opts.alone || Number(pst.nlink) !== mst.nlink)
  ) {
    await fsp.unlink(mirror);
    mst = undefined;
    separated = pst.nlink > 1n;
  }
  const size = Number(pst.size);
  let bytesCopied = 0;
  if (pst.isDirectory()) {
    if (!mst) await fsp.mkdir(mirror, Number(pst.mode) & 0o7777);
  } else if (pst.isSymbolicLink()) {
    const target = await fsp.readlink(primary);
    if (!mst || (await fsp.readlink(mirror)) !== target) {
      await fsp.rm(mirror, { force: true });
      await fsp.symlink(target, mirror);
    }
  } else if (pst.isFile()) {
    if (mst && opts.ranges) bytesCopied = await copyRanges(primary, mirror, opts.ranges, size, opts.cut);
    else if (mst && opts.compare) bytesCopied = await copyDiff(primary, mirror, size);
    else {
      bytesCopied = await copyWholeFile(primary, mirror, Number(pst.mode) & 0o7777);
    }
  } else if (!mst) {
    await mknod(mirror, Number(pst.mode), Number(pst.rdev));
  }
  await syncMeta(primary, mirror, pst, !mst);
  return separated ? { bytesCopied, separated } : { bytesCopied };
}

/**
 * The whole file, read until its end, with the source's permission bits (not fs.copyFile: libuv's copy loop spins for ever when the
 * source shrinks under it, its copy_file_range returning 0 with bytes still "to send" — the
 * primary runs ahead of the mirror's queue, so a truncate can land mid-copy; a stress run hung
 * on it with one thread at 100%). The mirror file is truncated first and gets what was read;
 * a change that shrank or grew the primary meanwhile is queued and applied after this.
 * Only the primary's data is read and written (SEEK_DATA, src/posix/sparse.ts): its holes stay
 * holes, the last one made by extending the file to the primary's size, so a sparse file (a
 * disk image, a core dump) takes no more room in the mirror than in the primary.
 */
export async function copyWholeFile(primary: string, mirror: string, mode: number): Promise<number> {
  const src = await fsp.open(primary, 'r');
  let dst: fsp.FileHandle | undefined;
  let copied = 0;
  try {
    dst = await fsp.open(mirror, 'w', mode);
    // The source's permission bits, as fs.copyFile gave them (the umask applies to a new file).
    await dst.chmod(mode);
    // To the end, wherever it is now: the new file has nothing to punch.
    copied = (await copySpan(src, dst, 0, Number.MAX_SAFE_INTEGER, Buffer.allocUnsafe(CHUNK), false)).copied;
    // Extended over a trailing hole; never cut below what was read (a truncate of the primary
    // meanwhile is queued behind this copy, as before).
    const size = (await src.stat()).size;
    if ((await dst.stat()).size < size) await dst.truncate(size);
  } finally {
    await src.close();
    await dst?.close();
  }
  return copied;
}

/**
 * [from, to) of src into dst at the same offsets, the data only: a hole of src becomes a hole of
 * dst, punched when `punch` (dst may hold bytes there; zeros written where its filesystem has no
 * holes). Returns the bytes written and whether a read met the end of src (it shrank meanwhile).
 */
async function copySpan(
  src: fsp.FileHandle,
  dst: fsp.FileHandle,
  from: number,
  to: number,
  buf: Buffer,
  punch = true,
): Promise<{ copied: number; short: boolean }> {
  const spans = dataSpans(src.fd, from, to);
  let copied = 0;
  for (const [a, b] of spans) {
    for (let pos = a; pos < b; ) {
      const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, b - pos), pos);
      if (bytesRead === 0) return { copied, short: true };
      await writeFull(dst, buf.subarray(0, bytesRead), pos);
      pos += bytesRead;
      copied += bytesRead;
    }
  }
  if (punch) for (const [a, b] of holesBetween(spans, from, to)) await zeroRange(dst.fd, a, b - a);
  return { copied, short: false };
}

async function copyRanges(
  primary: string,
  mirror: string,
  ranges: RangeSet,
  size: number,
  cut?: number,
): Promise<number> {
  const src = await fsp.open(primary, 'r');
  let dst: fsp.FileHandle | undefined;
  let copied = 0;
  try {
    dst = await fsp.open(mirror, 'r+');
    if (cut !== undefined && cut < size) await dst.truncate(cut);
    const buf = Buffer.allocUnsafe(CHUNK);
    for (const [a, b] of ranges.toArray()) {
      const end = Math.min(b, size);
      if (a < end) copied += (await copySpan(src, dst, a, end, buf)).copied;
    }
    await dst.truncate(size);
  } finally {
    await src.close();
    await dst?.close();
  }
  return copied;
}

/**
 * Whether [pos, end) is a hole in both files (the mirror's reaching that far): equal without a
 * read. A sparse image compared at a start would otherwise read all its holes, twice.
 */
function holesInBoth(src: fsp.FileHandle, dst: fsp.FileHandle, dstSize: number, pos: number, end: number) {
  return end <= dstSize && holeThrough(src.fd, pos, end) && holeThrough(dst.fd, pos, end);
}

/**
 * The primary's bytes at pos put into the mirror where the two differ: a run of zeros is punched
 * (a hole of the primary stays one), else written. Returns the mirror's size after.
 */
async function putDiffering(
  dst: fsp.FileHandle,
  data: Buffer,
  pos: number,
  dstSize: number,
): Promise<number> {
  if (data.equals(zeros(data.length))) {
    if (pos < dstSize) await zeroRange(dst.fd, pos, Math.min(data.length, dstSize - pos));
    if (dstSize < pos + data.length) await dst.truncate(pos + data.length);
  } else await writeFull(dst, data, pos);
  return Math.max(dstSize, pos + data.length);
}

/**
 * Whether two files read as the same `size` bytes: both read a chunk at a time and compared
 * (memcmp, several times the speed of hashing them), chunks that are holes in both skipped.
 * False at the first difference, or when either is shorter.
 */
export async function sameContent(a: string, b: string, size: number): Promise<boolean> {
  const fa = await fsp.open(a, 'r');
  let fb: fsp.FileHandle | undefined;
  try {
    fb = await fsp.open(b, 'r');
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size < size || sb.size < size) return false;
    const ba = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(size, 1)));
    const bb = Buffer.allocUnsafe(ba.length);
    for (let pos = 0; pos < size; ) {
      const end = Math.min(size, pos + ba.length);
      if (holesInBoth(fa, fb, sb.size, pos, end)) {
        pos = end;
        continue;
      }
      const n = end - pos;
      const [ga, gb] = await Promise.all([readFull(fa, ba, n, pos), readFull(fb, bb, n, pos)]);
      if (ga !== n || gb !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
      pos = end;
    }
    return true;
  } finally {
    await fa.close();
    await fb?.close();
  }
}

/** Writes only the chunks that differ (for copies that are probably, not provably, equal). */
async function copyDiff(primary: string, mirror: string, size: number): Promise<number> {
  const src = await fsp.open(primary, 'r');
  let dst: fsp.FileHandle | undefined;
  let copied = 0;
  try {
    dst = await fsp.open(mirror, 'r+');
    let dstSize = (await dst.stat()).size;
    const a = Buffer.allocUnsafe(CHUNK);
    const b = Buffer.allocUnsafe(CHUNK);
    for (let pos = 0; pos < size; ) {
      const end = Math.min(size, pos + CHUNK);
      if (holesInBoth(src, dst, dstSize, pos, end)) {
        pos = end;
        continue;
      }
      const { bytesRead } = await src.read(a, 0, end - pos, pos);
      if (bytesRead === 0) break;
      const got = await readFull(dst, b, bytesRead, pos);
      if (got !== bytesRead || !a.subarray(0, bytesRead).equals(b.subarray(0, bytesRead))) {
        dstSize = await putDiffering(dst, a.subarray(0, bytesRead), pos, dstSize);
        copied += bytesRead;
      }
      pos += bytesRead;
    }
    const mst = await dst.stat();
    if (mst.size !== size) await dst.truncate(size);
  } finally {
    await src.close();
    await dst?.close();
  }
  return copied;
}

/**
 * Copies (or, with compare, rewrites where it differs) [offset, offset + len) of primary into
 * mirror, both existing. Returns the bytes written and whether the primary's end was reached.
 */
export async function copyChunk(
  primary: string,
  mirror: string,
  offset: number,
  len: number,
  compare: boolean,
): Promise<{ copied: number; eof: boolean }> {
  const src = await fsp.open(primary, 'r');
  let dst: fsp.FileHandle | undefined;
  let copied = 0;
  try {
    dst = await fsp.open(mirror, 'r+');
    const a = Buffer.allocUnsafe(Math.min(CHUNK, len));
    if (!compare) {
      // Data only, holes kept (copySpan); the end is where the primary's size is now.
      const size = (await src.stat()).size;
      if (offset >= size) return { copied, eof: true };
      const r = await copySpan(src, dst, offset, Math.min(offset + len, size), a);
      return { copied: r.copied, eof: r.short || offset + len >= size };
    }
    const b = Buffer.allocUnsafe(a.length);
    const srcSize = (await src.stat()).size;
    let dstSize = (await dst.stat()).size;
    for (let pos = offset; pos < offset + len; ) {
      const want = Math.min(a.length, offset + len - pos);
      if (pos + want <= srcSize && holesInBoth(src, dst, dstSize, pos, pos + want)) {
        pos += want;
        continue;
      }
      const n = await readFull(src, a, want, pos);
      if (n === 0) return { copied, eof: true };
      const same = (await readFull(dst, b, n, pos)) === n && a.subarray(0, n).equals(b.subarray(0, n));
      if (!same) {
        dstSize = await putDiffering(dst, a.subarray(0, n), pos, dstSize);
        copied += n;
      }
      pos += n;
      if (n < a.length) return { copied, eof: true };
    }
    return { copied, eof: false };
  } finally {
    await src.close();
    await dst?.close();
  }
}

async function readFull(fh: fsp.FileHandle, buf: Buffer, len: number, pos: number): Promise<number> {
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

async function writeFull(fh: fsp.FileHandle, data: Buffer, pos: number): Promise<void> {
  for (let off = 0; off < data.length; ) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, pos + off);
    if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    off += bytesWritten;
  }
}

const MY_UID = process.getuid?.() ?? 0;
const MY_GID = process.getgid?.() ?? 0;

/**
 * Copies mode, owner, xattrs and times (times last: the others move ctime only). fresh: the
 * mirror entry was just made by this process (no xattrs yet, owned by us, a copied file already
 * has the mode), so fewer calls are needed.
 */
export async function syncMeta(
  primary: string,
  mirror: string,
  pst?: fs.Stats | fs.BigIntStats,
  fresh = false,
): Promise<void> {
  pst ??= await fsp.lstat(primary, { bigint: true });
  const link = pst.isSymbolicLink();
  const [uid, gid, mode] = [Number(pst.uid), Number(pst.gid), Number(pst.mode)];
  // chown first: it clears set-user-ID and set-group-ID bits that chmod sets.
  const chown = !fresh || uid !== MY_UID || gid !== MY_GID;
  if (chown) await fsp.lchown(mirror, uid, gid);
  if (!link && (chown || !pst.isFile() || mode & 0o7000)) await fsp.chmod(mirror, mode & 0o7777);
  if (!link) {
    // An attribute removed between list and get is not there (posix/xattr.ts readXattrs), so the mirror
    // loses it too; an entry gone from the primary has none (its unlink is on its way). A
    // mirror that refuses an attribute breaks the pair (the caller's catch), never silently.
    let want: Map<string, Buffer>;
    try {
      want = readXattrs(primary);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      want = new Map();
    }
    const have = fresh ? [] : listXattrs(mirror);
    for (const [name, v] of want) tolerateNoSupport(() => setXattr(mirror, name, v));
    for (const name of have) if (!want.has(name)) tolerateNoSupport(() => removeXattr(mirror, name));
  }
  // Times to the ns, and as they are now: copying the data just read the primary, which may
  // have moved its atime (relatime), and pst is older than that read. An entry gone from the
  // primary meanwhile (renamed: the rename is queued behind and carries these times to the
  // new name, where nothing copies them again) gets pst's, to the ns as well: times made from
  // the ms doubles of fs.Stats are up to ~120 ns off (stress seed 2211, a symlink 37 ns off).
  const times = await fsp.lstat(primary, { bigint: true }).catch(() => undefined);
  if (times) setTimesNs(mirror, times.atimeNs, times.mtimeNs);
  else {
    const [atimeNs, mtimeNs] = timesNs(pst);
    setTimesNs(mirror, atimeNs, mtimeNs);
  }
}

/** atime and mtime in ns: exact from bigint stats, else (callers' listings) from the ms. */
function timesNs(st: fs.Stats | fs.BigIntStats): [bigint, bigint] {
  return 'mtimeNs' in st ? [st.atimeNs, st.mtimeNs] : [msToNs(st.atimeMs), msToNs(st.mtimeMs)];
}

/** A mirror file system without xattrs (of a namespace) keeps none: not a broken pair. */
function tolerateNoSupport(change: () => void): void {
  try {
    change();
  } catch (err) {
    if (!isNoXattrSupport(err)) throw err;
  }
}

export interface TreeEntry {
  /** Volume path ('/a/b'). */
  path: string;
  stat: fs.Stats;
}

/** Walks a tree depth-first (parents before children), yielding volume paths. */
export async function* walk(root: string, rel = ''): AsyncGenerator<TreeEntry> {
  let names: string[];
  try {
    names = await fsp.readdir(rel ? root + rel : root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  names.sort();
  for (const name of names) {
    const p = `${rel}/${name}`;
    const st = await fsp.lstat(root + p).catch(() => undefined);
    if (!st) continue;
    yield { path: p, stat: st };
    if (st.isDirectory()) yield* walk(root, p);
  }
}

/** sha256 of a file; size (if known) sizes the read buffer, so small files cost little. */
export async function hashFile(file: string, size?: number): Promise<string> {
  const h = createHash('sha256');
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(Math.max(4096, Math.min(size ?? CHUNK, CHUNK)));
    // A sparse file's holes are hashed as the zeros they read as, without reading them (a read
    // of a hole costs a page-cache page per 4 KiB); then whatever is past the size fstat gave
    // (the file grew meanwhile) is read as before.
    const st = await fh.stat();
    const reader = sparseReader(
      fh.fd,
      st.size,
      st.blocks * 512 < st.size,
      async (b, offset, length, position) => (await fh.read(b, offset, length, position)).bytesRead,
    );
    let pos = 0;
    for (;;) {
      const r = await reader.next(buf, 0, buf.length);
      const n = typeof r === 'number' ? r : r.hole;
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

export function join(root: string, volumePath: string): string {
  return volumePath === '/' ? root : path.join(root, volumePath);
}
