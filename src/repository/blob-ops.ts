import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import { TwinError } from '../common/errors.js';
import { posix } from '../posix/native.js';
import { type ChunkerParams, cut, cutOffsets } from './chunker.js';
import { RepoKeys } from './crypto.js';
import { type BlobType, buildPack, compress, type PackInfo } from './pack.js';

/**
 * The repository's CPU work, done in a worker thread (blob-worker.ts, worker-pool.ts):
 * content-defined chunking and blob ids of file content (`cut`), and compression, encryption
 * and naming of a whole pack (`seal`). The format is docs/repository.md's (chunker.ts,
 * pack.ts). Apart from blob-worker.ts (which listens on its parentPort when imported) so that
 * the peer's main thread can run `files` and `seal` itself for a handful of small files:
 * starting a worker thread costs more than that work (small-files.ts, blob-writer.ts).
 */

export interface CutRequest {
  op: 'cut';
  /** The bytes: a whole file, or the next window of a streamed one. */
  data: Uint8Array;
  params: ChunkerParams;
  /** RepoKeys material (encKey || macKey), null: not encrypted. */
  master: Uint8Array | null;
  /** A streamed file: its windows come in order to this worker, under this id. */
  stream?: number;
  /** The first window of the stream (a later one for a stream this worker does not hold fails). */
  first?: boolean;
  /** The last window: the tail is cut too (and, for a whole file, its hash given). */
  final: boolean;
  /** A streamed window that is all zeros, a hole of the file (cut without a scan: zeroRunEnds). */
  zero?: boolean;
}

export interface CutAnswer {
  /** The bytes cut (a stream's carried tail first, then the window), moved back. */
  data: Uint8Array;
  /** End offsets of the chunks in `data`, in order (the uncut tail of a stream is not among them). */
  ends: number[];
  ids: string[];
  /** SHA-256 (hex) of a whole file (streams: the `hash` request's answer). */
  hash?: string;
}

/**
 * A streamed window's chunks, by offsets in the file (the bytes are the caller's windows; their
 * ids are asked for apart, `ids`, on any worker).
 */
export interface StreamCutAnswer {
  /** Offset in the file of the first chunk (the carried tail's start). */
  start: number;
  /** End offsets in the file of the chunks, in order. */
  ends: number[];
  /** Offset in the file where the uncut tail starts (the file's size after its last window). */
  tail: number;
}

export interface SealRequest {
  op: 'seal';
  /**
   * The batch (shared memory the caller reuses): the blobs' plaintext where each would lie in
   * the pack uncompressed (PACK_HEADER bytes first, then each blob and room for its tag). The
   * pack is built in it, over the plaintext, when it fits.
   */
  data: Uint8Array;
  /** [id, type, start, end offset in data] in pack order. */
  blobs: Array<[string, BlobType, number, number]>;
  master: Uint8Array | null;
}

export interface SealAnswer {
  name: string;
  /** The pack: a view of the request's `data`, or a buffer of its own moved back. */
  bytes: Uint8Array;
  info: PackInfo;
  /** Bytes of the blobs before compression, and as stored. */
  rawBytes: number;
  storedBytes: number;
}

export interface HashRequest {
  op: 'hash';
  /** The next window of a streamed file (shared memory, read only). */
  data: Uint8Array;
  stream: number;
  first: boolean;
  /** The last window: answers the file's SHA-256 (hex). */
  final: boolean;
}

/**
 * Small files read here, a batch at a time, with synchronous calls (no thread-pool round trip
 * per open, fstat, read and close on the peer's JS thread), hashed and cut like `cut` does a
 * whole file. Each file is opened without following a symlink (its parents were checked by the
 * caller), fstat'ed before and after the read; one that is not the expected size, not a
 * regular file, larger than `max` or changed during the read gives no content at all.
 */
export interface FilesRequest {
  op: 'files';
  /** Absolute paths and the size each is expected to have (the peer's lstat). */
  files: Array<{ path: string; size: number; max: number }>;
  params: ChunkerParams;
  master: Uint8Array | null;
  /**
   * Where to read the files (shared memory the caller reuses for its later batches), when they
   * fit: no fresh pages per batch.
   */
  out?: Uint8Array;
}

export type FileOutcome =
  /** Read whole and unchanged: its bytes are data[at, at + size). */
  | { kind: 'read'; at: number; size: number; mtimeMs: number; hash: string; ends: number[]; ids: string[] }
  /** Not the expected size, not a regular file, or changed while it was read. */
  | { kind: 'changed'; why: string }
  /** Larger than its max. */
  | { kind: 'grown'; size: number }
  /** open/read failed: the errno code. */
  | { kind: 'failed'; errno: string; message: string };

export interface FilesAnswer {
  /** The files' bytes one after another: a view of the request's `out`, or moved back. */
  data: Uint8Array;
  files: FileOutcome[];
}

/** The blob ids of chunks (views of shared memory, read only), in order. */
export interface IdsRequest {
  op: 'ids';
  parts: Uint8Array[];
  master: Uint8Array | null;
}

export interface DropRequest {
  op: 'drop';
  stream: number;
}

/**
 * Streams in progress: the uncut tail each carries into its next window (`cut`), and the
 * running SHA-256 of each (`hash`, on another worker when there is one, so that a large
 * file's two passes run side by side). FastCDC restarts at every chunk start, so cutting a
 * window and carrying its last (possibly cut short) chunk into the next gives the same
 * boundaries as cutting the whole content at once.
 */
const tails = new Map<number, { tail: Buffer; at: number; tailIsZeros: boolean }>();
const hashes = new Map<number, Hash>();

/** A stream's state here; a later window for a stream this worker does not hold is refused. */
function held<T>(map: Map<number, T>, r: { stream: number; first?: boolean }, fresh: () => T): T {
  let s = map.get(r.stream);
  if (s === undefined) {
    // The worker that held it died and was replaced: starting afresh would store wrong
    // content under a wrong hash.
    if (!r.first)
      throw new TwinError(
        'ETWIN_REPO_WORKER',
        `stream ${r.stream}: its worker thread was replaced while the file was being cut`,
      );
    s = fresh();
    map.set(r.stream, s);
  }
  return s;
}

function keysOf(master: Uint8Array | null): RepoKeys {
  return master
    ? RepoKeys.fromMaster(Buffer.from(master.buffer, master.byteOffset, master.byteLength))
    : RepoKeys.plain();
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

export function hashOp(r: HashRequest): { value: string | null; transfer: ArrayBuffer[] } {
  const h = held(hashes, r, () => createHash('sha256'));
  h.update(r.data);
  if (!r.final) return { value: null, transfer: [] };
  hashes.delete(r.stream);
  return { value: h.digest('hex'), transfer: [] };
}

/** Chunks and blob ids of a whole file, and its SHA-256 (hashed once when it is one chunk). */
function cutWhole(
  data: Buffer,
  params: ChunkerParams,
  keys: RepoKeys,
): { hash: string; ends: number[]; ids: string[] } {
  const digest = createHash('sha256').update(data).digest();
  // Up to the minimum chunk size a file is one chunk (an empty one too), as cut() gives it.
  const chunks = data.length <= params.min ? [data] : cut(data, params);
  const ends: number[] = [];
  const ids: string[] = [];
  for (const c of chunks) {
    ends.push(c.byteOffset - data.byteOffset + c.length);
    ids.push(chunks.length === 1 ? keys.idOfDigest(digest) : keys.blobId(c));
  }
  return { hash: digest.toString('hex'), ends, ids };
}

// O_NONBLOCK: a fifo swapped in for a listed file must not hold the worker in open() (on a
// regular file it changes nothing); fstat then finds it is not a regular file.
const READ_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

/** Opens without following a symlink and, where the owner may, without moving the atime. */
function openNoAtime(file: string): number {
  try {
    return fs.openSync(file, READ_FLAGS | fs.constants.O_NOATIME);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    return fs.openSync(file, READ_FLAGS);
  }
}

/** A file of a batch opened and checked, waiting for its read (readOpened). */
interface Opened {
  fd: number;
  st: fs.Stats;
}

/**
 * Opens one file of a batch and checks it (a regular file of the listed size, at most its max):
 * the descriptor to read, or the outcome when there is nothing to read (its descriptor closed).
 */
function openOne(f: { path: string; size: number; max: number }): Opened | FileOutcome {
  let fd: number;
  try {
    fd = openNoAtime(f.path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { kind: 'failed', errno: e.code ?? 'EIO', message: e.message };
  }
  let outcome: FileOutcome | undefined;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) outcome = { kind: 'changed', why: 'not a regular file' };
    else if (st.size > f.max) outcome = { kind: 'grown', size: st.size };
    else if (st.size !== f.size) outcome = { kind: 'changed', why: `${st.size} bytes` };
    else return { fd, st };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    outcome = { kind: 'failed', errno: e.code ?? 'EIO', message: e.message };
  }
  closeQuietly(fd);
  return outcome;
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // A close of a file only read loses nothing.
  }
}

/** One opened file of a batch read into out[at, at + expected size), checked again, closed. */
function readOpened(
  f: { path: string; size: number; max: number },
  { fd, st }: Opened,
  out: Buffer,
  at: number,
  params: ChunkerParams,
  keys: RepoKeys,
): FileOutcome {
  try {
    let off = 0;
    while (off < f.size) {
      const n = fs.readSync(fd, out, at + off, f.size - off, off);
      if (n === 0) break;
      off += n;
    }
    const after = fs.fstatSync(fd);
    if (off !== f.size || after.size !== st.size || after.mtimeMs !== st.mtimeMs)
      return { kind: 'changed', why: `${after.size} bytes` };
    const data = out.subarray(at, at + f.size);
    return { kind: 'read', at, size: f.size, mtimeMs: st.mtimeMs, ...cutWhole(data, params, keys) };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { kind: 'failed', errno: e.code ?? 'EIO', message: e.message };
  } finally {
    closeQuietly(fd);
  }
}

export function filesOp(r: FilesRequest): { value: FilesAnswer; transfer: ArrayBuffer[] } {
  const keys = keysOf(r.master);
  // Room for every file at its expected size: one that differs is refused, never read past.
  let total = 0;
  for (const f of r.files) total += f.size;
  const shared = r.out !== undefined && r.out.length >= total;
  const out = shared ? asBuffer(r.out!) : Buffer.allocUnsafeSlow(total);
  // Every file of the batch opened and checked first, and its read asked of the kernel ahead
  // (fadvise WILLNEED: it starts the disk reads and returns): on a cold page cache the disk gets
  // the whole batch at once, not one file at a time behind this thread's blocking reads (a
  // thread per concurrent read would cost thousands of page faults to start). Then each file
  // is read, checked again and closed, in order.
  const opened = r.files.map((f) => openOne(f));
  for (const o of opened) if ('fd' in o && o.st.size > 0) posix().fadviseWillNeed(o.fd, 0, o.st.size);
  const files: FileOutcome[] = [];
  let at = 0;
  for (const [i, f] of r.files.entries()) {
    const o = opened[i]!;
    files.push('fd' in o ? readOpened(f, o, out, at, r.params, keys) : o);
    at += f.size;
  }
  const data = new Uint8Array(out.buffer, out.byteOffset, total);
  return { value: { data, files }, transfer: shared ? [] : [out.buffer as ArrayBuffer] };
}

export function cutOp(r: CutRequest): { value: CutAnswer | StreamCutAnswer; transfer: ArrayBuffer[] } {
  if (r.stream !== undefined) return { value: cutStream(r, r.stream), transfer: [] };
  const keys = keysOf(r.master);
  const data = asBuffer(r.data);
  const digest = createHash('sha256').update(data).digest();
  const chunks = cut(data, r.params);
  const ends: number[] = [];
  const ids: string[] = [];
  for (const c of chunks) {
    ends.push(c.byteOffset - data.byteOffset + c.length);
    // A whole file of one chunk: its id comes from the file's own hash (hashed once).
    ids.push(chunks.length === 1 ? keys.idOfDigest(digest) : keys.blobId(c));
  }
  const out = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return {
    value: { data: out, ends, ids, hash: digest.toString('hex') },
    transfer: [data.buffer as ArrayBuffer],
  };
}

/**
 * The next window of a streamed file: its chunks (the tail carried from the last window
 * first), by their offsets in the file. The window (shared memory) is only read: the tail and
 * the window go straight into the chunker's memory (cutOffsets), and the uncut last chunk is
 * copied into the stream's tail for the next window. No ids: `ids` computes them on whichever
 * worker is free, so that this serial pass stays short.
 */
function cutStream(r: CutRequest, stream: number): StreamCutAnswer {
  const s = held(tails, { stream, first: r.first }, () => ({
    tail: Buffer.alloc(0),
    at: 0,
    tailIsZeros: false,
  }));
  const input = asBuffer(r.data);
  const n = s.tail.length + input.length;
  // As cut() gives them: nothing for no bytes, one chunk up to the minimum size.
  const offs =
    n === 0
      ? []
      : n <= r.params.min
        ? [n]
        : ((r.zero ? zeroRunEnds(s.tail, input.length, r.params, s.tailIsZeros) : null) ??
          cutOffsets([s.tail, input], r.params));
  const rel: number[] = [];
  for (const o of offs) if (o > (rel.at(-1) ?? 0)) rel.push(o);
  if (n > 0 && (rel.at(-1) ?? 0) < n) rel.push(n);
  const start = s.at;
  let rest = 0;
  if (!r.final) {
    rel.pop();
    const from = rel.at(-1) ?? 0;
    rest = n - from;
    // A tail buffer of its own, reused while it fits (not when the new tail starts inside
    // the old one: it is read from there).
    const inOld = from < s.tail.length;
    const room = !inOld && s.tail.buffer.byteLength >= rest && s.tail.byteOffset === 0;
    const next = room ? Buffer.from(s.tail.buffer, 0, rest) : Buffer.allocUnsafeSlow(rest);
    if (inOld) {
      s.tail.copy(next, 0, from);
      input.copy(next, s.tail.length - from);
    } else input.copy(next, 0, from - s.tail.length);
    // Zeros when this window is a hole's and so was any of the old tail it keeps.
    s.tailIsZeros = r.zero === true && (!inOld || s.tailIsZeros);
    s.tail = next;
    s.at = start + from;
  }
  if (r.final) tails.delete(stream);
  return { start, ends: rel.map((e) => start + e), tail: start + n - rest };
}

/**
 * Gear-hash bytes: a FastCDC hash at a byte depends on no byte further back than this (each
 * byte's gear value is shifted out of the 64-bit hash after 64 more).
 */
const GEAR_BYTES = 64;

/** Zeros zeroRunEnds appends to a tail (grown to the largest `max` + GEAR_BYTES asked for). */
let zeros = new Uint8Array(0);

/** Whether this chunker cuts a run of zeros at every `max` bytes, by params (checked once each). */
const zeroRunsCutAtMax = new Map<string, boolean>();

/**
 * The chunk ends cutOffsets gives for a stream's tail followed by `w` zeros (a window that is a
 * hole of the file), without scanning all of them: FastCDC restarts its hash at each chunk's
 * start and finds no cut in a run of zeros before `max` (checked once per parameters against
 * the chunker itself), so once a chunk starts far enough past the tail's data that every byte
 * it hashes is a zero, every chunk up to the end of the zeros is `max` long. Only the tail and
 * the first few `max` of zeros are cut for real. A sparse image's holes cost no cut then (0.8
 * s of CPU per GiB on this machine's pass). Null when the shortcut does not apply.
 */
export function zeroRunEnds(
  tail: Uint8Array,
  w: number,
  p: ChunkerParams,
  tailIsZeros = false,
): number[] | null {
  const key = `${p.min}/${p.avg}/${p.max}`;
  let ok = zeroRunsCutAtMax.get(key);
  if (ok === undefined) {
    const got = Array.from(cutOffsets([new Uint8Array(3 * p.max + 1)], p)).filter((o) => o > 0);
    ok = got.join() === [p.max, 2 * p.max, 3 * p.max, 3 * p.max + 1].join() && p.min >= GEAR_BYTES;
    zeroRunsCutAtMax.set(key, ok);
  }
  // Enough zeros after the tail for every chunk cut for real to have seen all it would have:
  // such a chunk starts before the tail's end + GEAR_BYTES - min, and looks at most `max` on.
  const lead = p.max + GEAR_BYTES;
  if (!ok || w <= lead) return null;
  const t = tail.length;
  // Cut for real: the tail and `lead` zeros. A chunk starting at b whose hashed bytes (from
  // b + min on) are GEAR_BYTES past the tail's data sees only zeros.
  const out: number[] = [];
  let b = 0;
  // A tail of zeros (cut from an earlier window of zeros): every chunk from its start sees zeros.
  if (!tailIsZeros && b + p.min < t + GEAR_BYTES) {
    if (zeros.length < lead) zeros = new Uint8Array(lead);
    for (const o of cutOffsets([tail, zeros.subarray(0, lead)], p)) {
      if (o <= b) continue;
      // Cut with less than `max` after the chunk's start: the full window might cut otherwise.
      if (b + p.max > t + lead) return null;
      out.push(o);
      b = o;
      if (b + p.min >= t + GEAR_BYTES) break;
    }
    if (b + p.min < t + GEAR_BYTES) return null;
  }
  const end = t + w;
  for (let q = b + p.max; q <= end; q += p.max) out.push(q);
  if ((out.at(-1) ?? 0) < end) out.push(end);
  return out;
}

export function idsOp(r: IdsRequest): { value: string[]; transfer: ArrayBuffer[] } {
  const keys = keysOf(r.master);
  return { value: r.parts.map((p) => keys.blobId(asBuffer(p))), transfer: [] };
}

export async function sealOp(r: SealRequest): Promise<{ value: SealAnswer; transfer: ArrayBuffer[] }> {
  const keys = keysOf(r.master);
  const all = asBuffer(r.data);
  let rawBytes = 0;
  const parts = r.blobs.map(([id, type, start, end]) => {
    rawBytes += end - start;
    return { id, type, plain: all.subarray(start, end) };
  });
  // Every blob is read (compressed) before the pack is written over them.
  const stored = await Promise.all(parts.map((p) => compress(p.plain)));
  let storedBytes = 0;
  const blobs = parts.map((p, i) => {
    const z = stored[i];
    storedBytes += (z ?? p.plain).length;
    return { id: p.id, type: p.type, stored: z ?? p.plain, rawLength: p.plain.length, z: z !== undefined };
  });
  // Built over the batch in place (no second buffer of fresh pages per pack), or in a buffer
  // of its own (allocUnsafeSlow) moved back when the table of contents does not fit.
  const { name, bytes, info } = buildPack(keys, blobs, all);
  const shared = bytes.buffer === all.buffer;
  return {
    value: { name, bytes, info, rawBytes, storedBytes },
    transfer: shared ? [] : [bytes.buffer as ArrayBuffer],
  };
}

export function dropOp(r: DropRequest): { value: null; transfer: ArrayBuffer[] } {
  tails.delete(r.stream);
  hashes.delete(r.stream);
  return { value: null, transfer: [] };
}
