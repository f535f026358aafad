// @ts-check
import { Transform } from 'node:stream';

/**
 * A pass-through that walks the tar stream as it is written and reports, for each entry in
 * order, where its data starts in the (uncompressed) archive. This is what the index is built
 * from: the walker reads the headers actually emitted, so long names (PAX headers) and any
 * header layout tar-stream chooses are accounted for without depending on its internals.
 */
export class TarOffsetWalker extends Transform {
  /** @param {(dataOffset: number, size: number) => void} onEntry called once per real entry, in order */
  constructor(onEntry) {
    super();
    this.onEntry = onEntry;
    /** Bytes seen so far. */
    this.position = 0;
    /** Position of the next header block. */
    this.nextHeader = 0;
    /** @type {Buffer[]} */
    this.headerParts = [];
    this.headerBytes = 0;
    this.ended = false;
  }

  /**
   * @param {Buffer} chunk
   * @param {BufferEncoding} _enc
   * @param {(err?: Error | null, data?: Buffer) => void} cb
   * @override
   */
  _transform(chunk, _enc, cb) {
    try {
      this.scan(chunk);
    } catch (err) {
      return cb(/** @type {Error} */ (err));
    }
    cb(null, chunk);
  }

  /** @param {Buffer} chunk */
  scan(chunk) {
    let off = 0;
    while (off < chunk.length && !this.ended) {
      const abs = this.position + off;
      if (abs < this.nextHeader) {
        off += Math.min(chunk.length - off, this.nextHeader - abs);
        continue;
      }
      const take = Math.min(512 - this.headerBytes, chunk.length - off);
      this.headerParts.push(chunk.subarray(off, off + take));
      this.headerBytes += take;
      off += take;
      if (this.headerBytes === 512) this.header(Buffer.concat(this.headerParts), this.position + off - 512);
    }
    this.position += chunk.length;
  }

  /**
   * @param {Buffer} block
   * @param {number} at
   */
  header(block, at) {
    this.headerParts = [];
    this.headerBytes = 0;
    if (block.every((b) => b === 0)) {
      this.ended = true;
      return;
    }
    const size = parseSize(block.subarray(124, 136));
    const type = String.fromCharCode(block[156] ?? 0);
    const dataStart = at + 512;
    this.nextHeader = dataStart + Math.ceil(size / 512) * 512;
    // Extended headers (PAX 'x'/'g', GNU long names 'L'/'K') describe the entry that follows.
    if (type === 'x' || type === 'g' || type === 'L' || type === 'K') return;
    this.onEntry(dataStart, size);
  }
}

/**
 * A header's size field: octal, or base-256 (high bit set) for sizes of 8 GiB and more.
 * @param {Buffer} field
 */
function parseSize(field) {
  if ((field[0] ?? 0) & 0x80) {
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + (field[i] ?? 0);
    return n;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  return text ? Number.parseInt(text, 8) : 0;
}
