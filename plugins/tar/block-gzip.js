// @ts-check
import * as fs from 'node:fs';
import { Transform } from 'node:stream';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';

const gzip = promisify(zlib.gzip);

/**
 * Compresses a stream as a series of independent gzip members of `blockSize` uncompressed bytes
 * each (the BGZF / `pigz --independent` idea). The file is an ordinary .tar.gz to gunzip and
 * tar, and the member table ([uncompressed offset, compressed offset] per member, kept in the
 * snapshot's index) lets a restore start decompressing at the member holding the wanted bytes
 * instead of at the beginning of the archive.
 */
export class BlockGzip extends Transform {
  /**
   * @param {number} blockSize
   * @param {number} level
   */
  constructor(blockSize, level) {
    super();
    this.blockSize = blockSize;
    this.level = level;
    /** @type {Buffer[]} */
    this.pending = [];
    this.pendingBytes = 0;
    this.uncompressed = 0;
    this.compressed = 0;
    /** @type {Array<[number, number]>} */
    this.members = [];
  }

  /**
   * @param {Buffer} chunk
   * @param {BufferEncoding} _enc
   * @param {(err?: Error | null) => void} cb
   * @override
   */
  _transform(chunk, _enc, cb) {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    if (this.pendingBytes < this.blockSize) return cb();
    this.flushBlocks(false).then(() => cb(), cb);
  }

  /**
   * @override
   * @param {(err?: Error | null) => void} cb
   */
  _flush(cb) {
    this.flushBlocks(true).then(() => cb(), cb);
  }

  /** @param {boolean} all */
  async flushBlocks(all) {
    let buf = Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    while (buf.length >= this.blockSize || (all && buf.length > 0)) {
      const block = buf.subarray(0, this.blockSize);
      buf = buf.subarray(block.length);
      const out = await gzip(block, { level: this.level });
      this.members.push([this.uncompressed, this.compressed]);
      this.uncompressed += block.length;
      this.compressed += out.length;
      this.push(out);
    }
    if (buf.length) {
      this.pending.push(Buffer.from(buf));
      this.pendingBytes = buf.length;
    }
  }
}

/**
 * Reads uncompressed bytes [start, end] (inclusive) of a block-gzipped file: decompression
 * starts at the member holding `start` and stops reading the file after the member holding `end`.
 * @param {string} file
 * @param {Array<[number, number]>} members [uncompressed offset, compressed offset], ascending
 * @param {number} start
 * @param {number} end
 * @returns {import('node:stream').Readable}
 */
export function openGzipRange(file, members, start, end) {
  let i = 0;
  for (let lo = 0, hi = members.length - 1; lo <= hi; ) {
    const mid = (lo + hi) >> 1;
    if ((members[mid]?.[0] ?? 0) <= start) {
      i = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  let j = i;
  while (j + 1 < members.length && (members[j + 1]?.[0] ?? Number.POSITIVE_INFINITY) <= end) j++;
  const from = members[i]?.[1] ?? 0;
  const next = members[j + 1];
  const raw = fs.createReadStream(file, { start: from, end: next ? next[1] - 1 : undefined });
  const gunzip = zlib.createGunzip();
  const slice = new Slice(start - (members[i]?.[0] ?? 0), end - start + 1);
  raw.on('error', (err) => slice.destroy(err));
  gunzip.on('error', (err) => slice.destroy(err));
  slice.on('close', () => {
    raw.destroy();
    gunzip.destroy();
  });
  raw.pipe(gunzip).pipe(slice);
  return slice;
}

/** Skips `skip` bytes, passes `take`, then ends. */
export class Slice extends Transform {
  /**
   * @param {number} skip
   * @param {number} take
   */
  constructor(skip, take) {
    super();
    this.skip = skip;
    this.remaining = take;
  }

  /**
   * @param {Buffer} chunk
   * @param {BufferEncoding} _enc
   * @param {(err?: Error | null) => void} cb
   * @override
   */
  _transform(chunk, _enc, cb) {
    if (this.remaining <= 0) return cb();
    let c = chunk;
    if (this.skip > 0) {
      const n = Math.min(this.skip, c.length);
      this.skip -= n;
      c = c.subarray(n);
    }
    if (c.length > this.remaining) c = c.subarray(0, this.remaining);
    this.remaining -= c.length;
    if (c.length) this.push(c);
    if (this.remaining <= 0) this.push(null);
    cb();
  }

  /**
   * @override
   * @param {(err?: Error | null) => void} cb
   */
  _flush(cb) {
    cb(this.remaining > 0 ? new Error(`archive ended ${this.remaining} bytes early`) : null);
  }
}
