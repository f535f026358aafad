import { createHash, randomBytes } from 'node:crypto';
import { TwinError } from '../common/errors.js';
import { posix } from '../posix/native.js';
import { corrupt, counterNonce, type RepoKeys, SALT, seal, TAG, unseal } from './crypto.js';
import { loadZstd, type Zstd } from './zstd-binding.js';

let loaded: Zstd | undefined;
/**
 * zstd's addon, loaded on first use: a no-change backup writes and reads only small objects
 * (its lock, the parent's and its own snapshot object), stored as raw zstd frames (sealObject),
 * and never loads it (its dlopen, its runtime's threads, a fresh context per call).
 */
function zstd(): Zstd {
  loaded ??= loadZstd().zstd;
  return loaded;
}

export type BlobType = 'data' | 'tree';

/** Where a blob is: [id, type, offset, length, rawLength, compressed(0|1)] in index objects. */
export interface BlobLocation {
  pack: string;
  type: BlobType;
  offset: number;
  length: number;
  rawLength: number;
  compressed: boolean;
}

export type BlobRow = [
  id: string,
  type: BlobType,
  offset: number,
  length: number,
  rawLength: number,
  z: 0 | 1,
];

export interface PackInfo {
  name: string;
  size: number;
  blobs: BlobRow[];
}

const PACK_MAGIC = Buffer.from('TWPK');
const OBJ_MAGIC = Buffer.from('TWOB');
const VERSION = 1;
export const PACK_HEADER = PACK_MAGIC.length + 1 + SALT;
const TRAILER_NONCE = 0xffff_ffff_ffff_ffffn;
/** A pack is cut once it holds this much. */
export const PACK_SIZE = 16 * 1024 * 1024;

export function packObjectName(name: string): string {
  return `data/${name.slice(0, 2)}/${name}`;
}

/**
 * zstd level 3; undefined when it does not make the chunk smaller, or when the byte entropy of
 * a chunk of 1 KiB or more says it will not (looksIncompressible: no zstd run at all).
 */
export async function compress(plain: Buffer): Promise<Buffer | undefined> {
  if (plain.length < COUNTED_MIN) return plain.length < 64 ? undefined : zstdSmaller(plain);
  if (looksIncompressible(plain)) return undefined;
  return zstdSmaller(plain);
}

async function zstdSmaller(plain: Buffer): Promise<Buffer | undefined> {
  const z = await zstd().compress(plain, 3);
  return z.length < plain.length ? z : undefined;
}

/**
 * Chunks from COUNTED_MIN on have their byte entropy measured before zstd is tried, on a sample
 * of runs of RUN bytes spread over the chunk: every byte up to 4 KiB, from there a run every
 * `step` bytes, the step chosen so that the sample stays at about SAMPLE bytes (32 bytes in every
 * KiB from 64 KiB on: 2 KiB of a 64 KiB chunk). Below 1 KiB the count says too little (1 KiB of
 * random bytes measures ~7.8 bits/byte, 512 bytes ~7.6); 2 KiB measures ~7.9. Every byte of a
 * small file's one chunk was counted once (4–64 KiB): in a backup of many small files that
 * count cost more CPU than the SHA-256 of those bytes (a JavaScript loop over each byte: 22 % of
 * the seal worker's time, bench/repository.mjs --only speed, docs/benchmarks.md).
 */
const COUNTED_MIN = 1024;
const RUN = 32;
const SAMPLE = 2048;
/** Bits per byte of the sample above which a chunk is stored as it is (random data: ~7.9). */
export const INCOMPRESSIBLE_BITS = 7.5;

/**
 * Whether a chunk looks like random bytes (encrypted, already compressed): the byte entropy of
 * a sample of about 2 KiB of it (every byte up to 4 KiB). zstd level 3 costs about as much CPU
 * as a SHA-256 pass on such data and gains nothing; the sample costs a few percent of that. A
 * chunk made of one random block repeated (rare: content-defined chunking stores the repeats of
 * a block larger than a chunk once) is stored uncompressed where zstd would have shrunk it: it
 * costs space, never data.
 */
export function looksIncompressible(plain: Uint8Array): boolean {
  const counts = new Uint32Array(256);
  // A run every `step` bytes (a multiple of RUN: runs never overlap), at most one per KiB.
  const step = Math.min(1024, Math.max(RUN, RUN * Math.floor(plain.length / SAMPLE)));
  let n = 0;
  for (let at = 0; at < plain.length; at += step) {
    const end = Math.min(plain.length, at + RUN);
    for (let i = at; i < end; i++) counts[plain[i]!]!++;
    n += end - at;
  }
  if (n === 0) return false;
  let bits = 0;
  for (const c of counts) if (c > 0) bits -= (c / n) * Math.log2(c / n);
  return bits > INCOMPRESSIBLE_BITS;
}

export function decompress(z: Buffer): Promise<Buffer> {
  return zstd().decompress(z);
}

/** A blob for a pack: its bytes as stored (compressed when `z`) before sealing. */
export interface PackBlob {
  id: string;
  type: BlobType;
  stored: Buffer;
  rawLength: number;
  z: boolean;
}

/**
 * A pack (docs/repository.md, "Packs") built in one buffer: each blob sealed where it goes
 * (blob at offset o: nonce o under the pack's subkey), then the sealed table of contents and its
 * length; named by the hash of it all. The sizes are known before a byte is written, so the
 * blobs are not gathered in parts and joined (one copy of each, not two or three). Written
 * into `into` when the pack fits there (a caller's reused buffer), else into a new buffer.
 *
 * The blobs' bytes may lie in `into` itself (a batch laid out as the pack would be uncompressed:
 * header room first, a tag's room after each blob): each is then sealed in place, in order,
 * provided it starts at or after where it goes (compression only moves blobs towards the
 * start) and the blobs before it take no room after its start.
 */
export function buildPack(
  keys: RepoKeys,
  blobs: PackBlob[],
  into?: Buffer,
): { name: string; bytes: Buffer; info: PackInfo } {
  // The salt is random unencrypted too: the pack's name (its hash) is then never that of an
  // earlier pack, so chunks stored again after a check flagged their copy land in a pack
  // the damage record does not name (an identical pack would inherit the flag for good).
  const salt = randomBytes(SALT);
  const key = keys.encrypted ? keys.subkey(salt, 'twinfs pack') : null;
  const tag = key ? TAG : 0;
  const rows: BlobRow[] = [];
  let at = PACK_HEADER;
  for (const b of blobs) {
    rows.push([b.id, b.type, at, b.stored.length + tag, b.rawLength, b.z ? 1 : 0]);
    at += b.stored.length + tag;
  }
  const toc = Buffer.from(JSON.stringify(rows));
  const size = at + toc.length + tag + 4;
  const bytes = into && into.length >= size ? into.subarray(0, size) : Buffer.allocUnsafeSlow(size);
  PACK_MAGIC.copy(bytes, 0);
  bytes[PACK_MAGIC.length] = VERSION;
  salt.copy(bytes, PACK_MAGIC.length + 1);
  for (const [i, b] of blobs.entries()) sealInto(key, rows[i]![2], b.stored, bytes, rows[i]![2]);
  sealInto(key, TRAILER_NONCE, toc, bytes, at);
  bytes.writeUInt32BE(toc.length + tag, size - 4);
  const name = packNameOf(bytes, at);
  return { name, bytes, info: { name, size, blobs: rows } };
}

/**
 * A pack's name: the SHA-256 of its header (with the random salt) and its sealed table of
 * contents with the length after it, `bytes[0, PACK_HEADER) || bytes[tocAt, end)`. The table
 * names every blob by its content id with its place and length, so the name still stands for
 * the content, and the salt makes it unique; the blobs' bytes themselves are not hashed a
 * third time (their ids, and a file's own SHA-256, already cost a pass each: about 0.7 s of
 * CPU per GiB stored here, docs/repository.md "Names reveal nothing").
 */
export function packNameOf(bytes: Buffer, tocAt: number): string {
  return createHash('sha256')
    .update(bytes.subarray(0, PACK_HEADER))
    .update(bytes.subarray(tocAt))
    .digest('hex');
}

/**
 * Writes plain (sealed under key with the counter nonce, when there is a key) to out at `at`.
 * plain may lie in out at or after `at` (moved first, as memmove does), and is then encrypted
 * where it lies by the project's addon: Node's cipher answers every update with buffers of its
 * own (two per update for GCM), memory that cost a page fault per 4 KiB (~11 µs each on some
 * VMs, more than the encryption of those bytes) whenever malloc had given it back.
 */
function sealInto(key: Buffer | null, nonce: number | bigint, plain: Buffer, out: Buffer, at: number): void {
  if (plain.buffer === out.buffer) {
    // Over the whole memory: plain may lie past the end of out (a pack shorter than its
    // batch), where out's own copyWithin would cut the copy short.
    const mem = new Uint8Array(out.buffer, 0, out.buffer.byteLength);
    if (plain.byteOffset !== out.byteOffset + at)
      mem.copyWithin(out.byteOffset + at, plain.byteOffset, plain.byteOffset + plain.length);
  } else plain.copy(out, at);
  if (!key) return;
  const n = plain.length;
  const rc = posix().aesGcmSealInPlace(key, counterNonce(nonce), out.subarray(at, at + n + TAG), n);
  if (rc !== 0)
    throw new TwinError('ETWIN_INTERNAL', `aes-256-gcm in place failed (${rc}) for ${n} bytes`, {
      rc,
      bytes: n,
    });
}

/** The pack's subkey from its header (null: not encrypted). */
export function packKey(keys: RepoKeys, header: Buffer, pack: string): Buffer | null {
  if (header.length < PACK_HEADER || !header.subarray(0, 4).equals(PACK_MAGIC))
    throw corrupt(`pack ${pack}: not a twinfs pack`, { pack });
  if (header[4] !== VERSION) throw corrupt(`pack ${pack}: unknown pack version ${header[4]}`, { pack });
  return keys.encrypted ? keys.subkey(header.subarray(5, PACK_HEADER), 'twinfs pack') : null;
}

/** A blob's plaintext from its stored bytes, checked against its id. */
export async function openBlob(
  keys: RepoKeys,
  key: Buffer | null,
  body: Buffer,
  loc: BlobLocation,
  id: string,
): Promise<Buffer> {
  const stored = key
    ? unseal(key, counterNonce(loc.offset), body, `blob ${id.slice(0, 12)} in pack ${loc.pack.slice(0, 12)}`)
    : body;
  let plain: Buffer;
  try {
    plain = loc.compressed ? await decompress(stored) : stored;
  } catch {
    throw corrupt(`blob ${id} in pack ${loc.pack}: cannot be decompressed`, { blob: id, pack: loc.pack });
  }
  if (plain.length !== loc.rawLength || keys.blobId(plain) !== id)
    throw corrupt(`blob ${id} in pack ${loc.pack}: content does not match its id`, {
      blob: id,
      pack: loc.pack,
    });
  return plain;
}

/** Reads a whole pack's table of contents (for check and index rebuilds). */
export function readTrailer(keys: RepoKeys, bytes: Buffer, pack: string): BlobRow[] {
  const key = packKey(keys, bytes.subarray(0, PACK_HEADER), pack);
  const len = bytes.readUInt32BE(bytes.length - 4);
  const sealed = bytes.subarray(bytes.length - 4 - len, bytes.length - 4);
  const toc = key ? unseal(key, counterNonce(TRAILER_NONCE), sealed, `pack ${pack} trailer`) : sealed;
  try {
    return JSON.parse(toc.toString('utf8')) as BlobRow[];
  } catch {
    throw corrupt(`pack ${pack}: unreadable table of contents`, { pack });
  }
}

/**
 * Seals an index, snapshot or lock object: zstd(JSON), encrypted under a per-object subkey. JSON
 * of at most RAW_OBJECT_MAX bytes is stored as a zstd frame of raw blocks (rawZstdFrame): any
 * zstd decoder reads it, and it is written and read without the addon.
 */
export async function sealObject(keys: RepoKeys, value: unknown): Promise<Buffer> {
  const json = Buffer.from(JSON.stringify(value));
  const plain = json.length <= RAW_OBJECT_MAX ? rawZstdFrame(json) : await zstd().compress(json, 3);
  if (!keys.encrypted) return Buffer.concat([OBJ_MAGIC, Buffer.from([VERSION]), Buffer.alloc(SALT), plain]);
  const salt = randomBytes(SALT);
  const key = keys.subkey(salt, 'twinfs object');
  return Buffer.concat([OBJ_MAGIC, Buffer.from([VERSION]), salt, seal(key, counterNonce(0), plain)]);
}

export async function openObject<T>(keys: RepoKeys, data: Buffer, what: string): Promise<T> {
  if (data.length < PACK_HEADER || !data.subarray(0, 4).equals(OBJ_MAGIC))
    throw corrupt(`${what}: not a twinfs object`);
  if (data[4] !== VERSION) throw corrupt(`${what}: unknown object version ${data[4]}`);
  const body = data.subarray(PACK_HEADER);
  const plain = keys.encrypted
    ? unseal(keys.subkey(data.subarray(5, PACK_HEADER), 'twinfs object'), counterNonce(0), body, what)
    : body;
  try {
    return JSON.parse((readRawZstdFrame(plain) ?? (await decompress(plain))).toString('utf8')) as T;
  } catch {
    throw corrupt(`${what}: unreadable`);
  }
}

/**
 * Objects whose JSON is at most this long are stored uncompressed inside a zstd frame: a lock
 * (~100 bytes), a snapshot object of a volume of some 100,000 files (~9 KiB: its manifest's
 * blob ids, which zstd halved). What that costs in space, ~5 KiB a snapshot, buys a no-change
 * backup that never loads zstd's addon (docs/repository.md "Objects").
 */
export const RAW_OBJECT_MAX = 16 * 1024;
const ZSTD_MAGIC = 0xfd2fb528;
/** A block's largest size (RFC 8878 3.1.1.2.3, Block_Maximum_Size). */
const ZSTD_BLOCK_MAX = 128 * 1024;

/**
 * A zstd frame (RFC 8878 3.1.1) holding data in raw blocks (Block_Type 0): a single segment, its
 * content size in 4 bytes, no checksum, no dictionary. What zstd itself writes for data it
 * cannot shrink; every zstd decoder reads it.
 */
export function rawZstdFrame(data: Uint8Array): Buffer {
  const blocks = Math.max(1, Math.ceil(data.length / ZSTD_BLOCK_MAX));
  const out = Buffer.allocUnsafe(9 + blocks * 3 + data.length);
  out.writeUInt32LE(ZSTD_MAGIC, 0);
  out[4] = 0xa0; // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag
  out.writeUInt32LE(data.length, 5);
  let at = 9;
  for (let i = 0; i < blocks; i++) {
    const part = data.subarray(i * ZSTD_BLOCK_MAX, (i + 1) * ZSTD_BLOCK_MAX);
    // Block_Header: Last_Block (bit 0), Block_Type 0 (bits 1-2), Block_Size (bits 3-23).
    out.writeUIntLE((part.length << 3) | (i === blocks - 1 ? 1 : 0), at, 3);
    out.set(part, at + 3);
    at += 3 + part.length;
  }
  return out;
}

/**
 * The content of one zstd frame made of raw and RLE blocks only, without a checksum or a
 * dictionary (what rawZstdFrame writes), or undefined for anything else: compressed blocks,
 * a checksum, more frames, a malformed frame are the addon's to read (or to reject).
 */
export function readRawZstdFrame(z: Buffer): Buffer | undefined {
  if (z.length < 5 || z.readUInt32LE(0) !== ZSTD_MAGIC) return undefined;
  const fhd = z[4]!;
  // Reserved bit, Content_Checksum_flag, Dictionary_ID_flag: the addon's.
  if (fhd & 0x0f) return undefined;
  const single = (fhd & 0x20) !== 0;
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fhd >> 6]!;
  let at = 5 + (single ? 0 : 1);
  if (at + fcsBytes > z.length) return undefined;
  let size: number | undefined;
  if (fcsBytes === 1) size = z[at]!;
  else if (fcsBytes === 2) size = z.readUInt16LE(at) + 256;
  else if (fcsBytes === 4) size = z.readUInt32LE(at);
  else if (fcsBytes === 8) size = Number(z.readBigUInt64LE(at));
  at += fcsBytes;
  const parts: Buffer[] = [];
  let total = 0;
  for (let last = false; !last; ) {
    if (at + 3 > z.length) return undefined;
    const header = z.readUIntLE(at, 3);
    at += 3;
    last = (header & 1) === 1;
    const type = (header >> 1) & 3;
    const n = header >>> 3;
    if (n > ZSTD_BLOCK_MAX) return undefined;
    if (type === 0) {
      if (at + n > z.length) return undefined;
      parts.push(z.subarray(at, at + n));
      at += n;
    } else if (type === 1) {
      if (at + 1 > z.length) return undefined;
      parts.push(Buffer.alloc(n, z[at]!));
      at += 1;
    } else return undefined;
    total += n;
  }
  if (at !== z.length || (size !== undefined && size !== total)) return undefined;
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, total);
}
