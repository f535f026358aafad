import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { TwinError } from '../common/errors.js';
import { type ChunkerParams, cut } from './chunker.js';
import { RepoKeys } from './crypto.js';
import { type BlobType, compress, PackBuilder, type PackInfo } from './pack.js';
import { toWire } from './worker-pool.js';

/**
 * The repository's CPU work, in a worker thread (worker-pool.ts): content-defined chunking and
 * blob ids of file content (`cut`), and compression, encryption and naming of a whole pack
 * (`seal`). The format is docs/repository.md's, built by the same chunker and PackBuilder the
 * main thread used before.
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

export interface SealRequest {
  op: 'seal';
  /** The blobs' plaintext, one after another. */
  data: Uint8Array;
  /** [id, type, end offset in data] in pack order. */
  blobs: Array<[string, BlobType, number]>;
  master: Uint8Array | null;
}

export interface SealAnswer {
  name: string;
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
const tails = new Map<number, Buffer>();
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

function hashOp(r: HashRequest): { value: string | null; transfer: ArrayBuffer[] } {
  const h = held(hashes, r, () => createHash('sha256'));
  h.update(r.data);
  if (!r.final) return { value: null, transfer: [] };
  hashes.delete(r.stream);
  return { value: h.digest('hex'), transfer: [] };
}

function cutOp(r: CutRequest): { value: CutAnswer; transfer: ArrayBuffer[] } {
  const keys = keysOf(r.master);
  const input = asBuffer(r.data);
  let data: Buffer;
  let hash: string | undefined;
  let digest: Buffer | undefined;
  if (r.stream === undefined) {
    data = input;
    digest = createHash('sha256').update(data).digest();
    hash = digest.toString('hex');
  } else {
    const tail = held(tails, { stream: r.stream, first: r.first }, () => Buffer.alloc(0));
    // The tail and the window in a buffer of its own, moved back (the window may be shared).
    data = Buffer.allocUnsafeSlow(tail.length + input.length);
    tail.copy(data, 0);
    input.copy(data, tail.length);
    tails.delete(r.stream);
  }
  const chunks = cut(data, r.params);
  if (r.stream !== undefined && !r.final) {
    const tail = chunks.pop();
    tails.set(r.stream, tail ? Buffer.from(tail) : Buffer.alloc(0));
  }
  const ends: number[] = [];
  const ids: string[] = [];
  for (const c of chunks) {
    ends.push(c.byteOffset - data.byteOffset + c.length);
    // A whole file of one chunk: its id comes from the file's own hash (hashed once).
    ids.push(digest && chunks.length === 1 ? keys.idOfDigest(digest) : keys.blobId(c));
  }
  const out = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { value: { data: out, ends, ids, hash }, transfer: [data.buffer as ArrayBuffer] };
}

async function sealOp(r: SealRequest): Promise<{ value: SealAnswer; transfer: ArrayBuffer[] }> {
  const keys = keysOf(r.master);
  const all = asBuffer(r.data);
  let start = 0;
  const parts = r.blobs.map(([id, type, end]) => {
    const plain = all.subarray(start, end);
    start = end;
    return { id, type, plain };
  });
  const stored = await Promise.all(parts.map((p) => compress(p.plain)));
  const pack = new PackBuilder(keys);
  let storedBytes = 0;
  for (const [i, p] of parts.entries()) {
    const z = stored[i];
    pack.add(p.id, p.type, z ?? p.plain, p.plain.length, z !== undefined);
    storedBytes += (z ?? p.plain).length;
  }
  const { name, bytes, info } = pack.finish();
  // A buffer of its own to move back (a small pack may sit in Buffer's shared pool).
  let own = bytes;
  if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) {
    own = Buffer.allocUnsafeSlow(bytes.length);
    bytes.copy(own);
  }
  return {
    value: { name, bytes: own, info, rawBytes: all.length, storedBytes },
    transfer: [own.buffer as ArrayBuffer],
  };
}

async function handle(req: CutRequest | HashRequest | SealRequest | DropRequest) {
  switch (req.op) {
    case 'cut':
      return cutOp(req);
    case 'hash':
      return hashOp(req);
    case 'seal':
      return sealOp(req);
    case 'drop':
      tails.delete(req.stream);
      hashes.delete(req.stream);
      return { value: null, transfer: [] };
    default:
      throw new TwinError(
        'ETWIN_INTERNAL',
        `unknown repository worker request ${(req as { op: string }).op}`,
      );
  }
}

parentPort?.on('message', (msg: { id: number } & (CutRequest | HashRequest | SealRequest | DropRequest)) => {
  handle(msg).then(
    ({ value, transfer }) => parentPort!.postMessage({ id: msg.id, ok: true, value }, transfer),
    (err) => parentPort!.postMessage({ id: msg.id, ok: false, error: toWire(err) }),
  );
});
