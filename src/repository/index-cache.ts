import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { RepoKeys } from './crypto.js';
import type { BlobLocation, BlobType } from './pack.js';

/**
 * The peer's local copy of a repository's index (docs/repository.md, "The index cache"): every
 * blob row of the index objects it names, as fixed-size binary rows sorted by blob id, looked up
 * by binary search where they lie in the file's buffer (no object per blob, no JSON parse). It
 * is a cache: keyed by the repository's id and the names of the index objects it holds, used
 * only when each of those is still listed at the target (new ones are read and added; one gone,
 * and the whole index is read again), and authenticated (HMAC with the repository's mac key when
 * it is encrypted, SHA-256 otherwise).
 *
 * File: "TWIC" | version (1) | digest (32) | header length (u32 BE) | header JSON | rows.
 * Row: id (32 bytes) | pack (u32, into header.packs) | offset | length | rawLength (u32 each) |
 * flags (1: tree, 2: compressed) | 3 spare bytes.
 */
const MAGIC = Buffer.from('TWIC');
const VERSION = 1;
const DIGEST_AT = MAGIC.length + 1;
const HEADER_AT = DIGEST_AT + 32;
const ROW = 52;
/** Bytes of a row. */
export const CACHE_ROW = ROW;
const U32 = 0xffff_ffff;
const HEX64 = /^[0-9a-f]{64}$/;
const DIGEST_KIND = 'twinfs index cache';

export interface CacheHeader {
  repo: string;
  /** The index objects whose rows these are, sorted. */
  names: string[];
  /** Every pack of those objects with its indexed size; rows name them by position. */
  packs: Array<[name: string, size: number]>;
  damaged: Array<[id: string, pack: string]>;
  rows: number;
}

/** What became of the cache when the index was first needed (Repository.indexReport). */
export type CacheState = 'off' | 'missing' | 'unreadable' | 'foreign' | 'stale' | 'used';

let dirSetting: string | null | undefined;

/** Where index caches go (null: none); undefined: TWINFS_CACHE_DIR, else the user's cache dir. */
export function setIndexCacheDir(dir: string | null | undefined): void {
  dirSetting = dir;
}

/**
 * The cache directory: `TWINFS_CACHE_DIR` (`off` for none), else `$XDG_CACHE_HOME/twinfs` or
 * `~/.cache/twinfs` (as restic keeps its cache).
 */
export function indexCacheDir(): string | undefined {
  if (dirSetting !== undefined) return dirSetting ?? undefined;
  const env = process.env.TWINFS_CACHE_DIR;
  if (env === 'off') return undefined;
  if (env) return env;
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'twinfs');
}

/** The cache file of a repository (undefined for an id that is not 32 hex digits). */
export function indexCachePath(dir: string, repoId: string): string | undefined {
  return /^[0-9a-f]{32}$/.test(repoId) ? path.join(dir, 'index', repoId) : undefined;
}

/** A cache's blob rows: sorted by id, found by binary search in place. */
export class BlobTable {
  /** The first 4 bytes of each row's id: the binary search runs on these, in JS. */
  private readonly prefix: Uint32Array;
  private readonly key = Buffer.alloc(32);

  constructor(
    private readonly rows: Buffer,
    readonly packNames: string[],
  ) {
    this.prefix = new Uint32Array(rows.length / ROW);
    for (let i = 0; i < this.prefix.length; i++) this.prefix[i] = rows.readUInt32BE(i * ROW);
  }

  get size(): number {
    return this.prefix.length;
  }

  /** The first row whose id is not below `key` (32 bytes). */
  private lowerBound(key: Buffer): number {
    const kp = key.readUInt32BE(0);
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.prefix[mid]! < kp) lo = mid + 1;
      else hi = mid;
    }
    while (
      lo < this.size &&
      this.prefix[lo] === kp &&
      this.rows.compare(key, 0, 32, lo * ROW, lo * ROW + 32) < 0
    )
      lo++;
    return lo;
  }

  /** Every row of the blob, one per pack. */
  find(id: string): BlobLocation[] {
    if (!HEX64.test(id)) return [];
    const key = this.key;
    key.write(id, 0, 32, 'hex');
    const out: BlobLocation[] = [];
    for (let i = this.lowerBound(key); i < this.size; i++) {
      if (this.rows.compare(key, 0, 32, i * ROW, i * ROW + 32) !== 0) break;
      const loc = this.at(i);
      if (!out.some((l) => l.pack === loc.pack)) out.push(loc);
    }
    return out;
  }

  idAt(i: number): string {
    return this.rows.toString('hex', i * ROW, i * ROW + 32);
  }

  at(i: number): BlobLocation {
    const o = i * ROW + 32;
    const flags = this.rows[o + 16]!;
    return {
      pack: this.packNames[this.rows.readUInt32BE(o)]!,
      type: flags & 1 ? 'tree' : 'data',
      offset: this.rows.readUInt32BE(o + 4),
      length: this.rows.readUInt32BE(o + 8),
      rawLength: this.rows.readUInt32BE(o + 12),
      compressed: (flags & 2) !== 0,
    };
  }

  /**
   * These rows plus `extra` (any order), sorted, with packs numbered by `packNames` (which
   * starts with this table's own, in order); undefined when a row cannot be a cache row.
   */
  static merge(
    old: BlobTable | undefined,
    extra: Array<
      [id: string, pack: string, type: BlobType, offset: number, length: number, raw: number, z: boolean]
    >,
    packNames: string[],
  ): Buffer | undefined {
    const ordinal = new Map(packNames.map((p, i) => [p, i]));
    for (const [id, pack, , offset, length, raw] of extra)
      if (id.length !== 64 || !ordinal.has(pack) || offset > U32 || length > U32 || raw > U32)
        return undefined;
    const order = sortById(extra.map((e) => e[0]));
    const n = old?.size ?? 0;
    const out = Buffer.allocUnsafe((n + extra.length) * ROW);
    const key = Buffer.alloc(32);
    let from = 0;
    let pos = 0;
    for (const k of order) {
      const [id, pack, type, offset, length, raw, z] = extra[k]!;
      // Not 64 lower-case hex digits: not a blob id of this format.
      if (key.write(id, 0, 32, 'hex') !== 32 || id !== id.toLowerCase()) return undefined;
      if (old) {
        const to = old.lowerBound(key);
        pos += old.rows.copy(out, pos, from * ROW, to * ROW);
        from = to;
      }
      key.copy(out, pos);
      out.writeUInt32BE(ordinal.get(pack)!, pos + 32);
      out.writeUInt32BE(offset, pos + 36);
      out.writeUInt32BE(length, pos + 40);
      out.writeUInt32BE(raw, pos + 44);
      out[pos + 48] = (type === 'tree' ? 1 : 0) | (z ? 2 : 0);
      out.fill(0, pos + 49, pos + ROW);
      pos += ROW;
    }
    if (old) old.rows.copy(out, pos, from * ROW);
    return out;
  }
}

/**
 * The order of these hex ids, sorted: by their first 32 bits as numbers (a typed-array sort, not
 * 100,000 string comparisons), then runs of an equal prefix by the whole id.
 */
function sortById(ids: string[]): number[] {
  const SHIFT = 2 ** 21;
  if (ids.length >= SHIFT) return ids.map((_, i) => i).sort((a, b) => (ids[a]! < ids[b]! ? -1 : 1));
  const keys = new Float64Array(ids.length);
  for (let i = 0; i < ids.length; i++) keys[i] = Number.parseInt(ids[i]!.slice(0, 8), 16) * SHIFT + i;
  keys.sort();
  const order = Array.from(keys, (k) => k % SHIFT);
  const prefixOf = (i: number) => Math.floor(keys[i]! / SHIFT);
  for (let i = 1; i < order.length; i++) {
    // An insertion sort within a run of equal prefixes (rare: about one pair in 100,000 ids).
    for (let j = i; j > 0 && prefixOf(j - 1) === prefixOf(j) && ids[order[j - 1]!]! > ids[order[j]!]!; j--)
      [order[j - 1], order[j]] = [order[j]!, order[j - 1]!];
  }
  return order;
}

export type CacheRead = { state: 'used'; header: CacheHeader; table: BlobTable } | { state: CacheState };

/** A repository's cache file, checked: its digest, its repository, its lengths. */
export async function readIndexCache(file: string, repoId: string, keys: RepoKeys): Promise<CacheRead> {
  let buf: Buffer;
  try {
    buf = await fsp.readFile(file);
  } catch {
    return { state: 'missing' };
  }
  if (buf.length < HEADER_AT + 4 || !buf.subarray(0, 4).equals(MAGIC) || buf[4] !== VERSION)
    return { state: 'unreadable' };
  const len = buf.readUInt32BE(HEADER_AT);
  let header: CacheHeader;
  try {
    header = JSON.parse(buf.toString('utf8', HEADER_AT + 4, HEADER_AT + 4 + len)) as CacheHeader;
  } catch {
    return { state: 'unreadable' };
  }
  if (header?.repo !== repoId) return { state: 'foreign' };
  // Of this repository's key (an encrypted one) and whole: else not trusted at all.
  if (!keys.digest(DIGEST_KIND, buf.subarray(HEADER_AT)).equals(buf.subarray(DIGEST_AT, HEADER_AT)))
    return { state: 'unreadable' };
  const rows = buf.subarray(HEADER_AT + 4 + len);
  if (
    !Array.isArray(header.names) ||
    !Array.isArray(header.packs) ||
    !Array.isArray(header.damaged) ||
    rows.length !== header.rows * ROW
  )
    return { state: 'unreadable' };
  // Used: its time says so, and a writer's prune keeps it (pruneIndexCaches).
  const now = new Date();
  await fsp.utimes(file, now, now).catch(() => undefined);
  return {
    state: 'used',
    header,
    table: new BlobTable(
      rows,
      header.packs.map(([p]) => p),
    ),
  };
}

/** Writes a cache file whole (a temporary file renamed over the old one); failures are ignored. */
export async function writeIndexCache(
  file: string,
  keys: RepoKeys,
  header: CacheHeader,
  rows: Buffer,
): Promise<boolean> {
  const head = Buffer.from(JSON.stringify(header));
  const body = Buffer.alloc(4 + head.length + rows.length);
  body.writeUInt32BE(head.length, 0);
  head.copy(body, 4);
  rows.copy(body, 4 + head.length);
  const bytes = Buffer.concat([MAGIC, Buffer.from([VERSION]), keys.digest(DIGEST_KIND, body), body]);
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await fsp.writeFile(tmp, bytes, { mode: 0o600 });
    await fsp.rename(tmp, file);
  } catch {
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    return false;
  }
  await pruneIndexCaches(path.dirname(file));
  return true;
}

/** Another repository's cache not used (read or written) for this long is removed, as restic does. */
export const UNUSED_CACHE_MS = 30 * 24 * 3600 * 1000;
/** A write's temporary file this old was left by a process that died while writing it. */
const STALE_TMP_MS = 3600 * 1000;

/**
 * Removes the caches of repositories this machine has not used for UNUSED_CACHE_MS (a cache is
 * touched whenever it is taken, rewritten when the index grew) and temporary files of writes that
 * never finished: without it every repository ever backed up into (a test's, a benchmark's, a
 * location since deleted) kept its cache for good, one file of ~50 bytes per blob. Run when a
 * cache is written, not on every read; failures are ignored (it is a cache).
 */
async function pruneIndexCaches(dir: string): Promise<void> {
  const now = Date.now();
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const cache = /^[0-9a-f]{32}$/.test(name);
    if (!cache && !/^[0-9a-f]{32}\.\d+\.[0-9a-f]{8}\.tmp$/.test(name)) continue;
    const file = path.join(dir, name);
    const st = await fsp.stat(file).catch(() => undefined);
    if (!st || now - st.mtimeMs <= (cache ? UNUSED_CACHE_MS : STALE_TMP_MS)) continue;
    await fsp.rm(file, { force: true }).catch(() => undefined);
  }
}
