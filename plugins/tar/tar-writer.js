// @ts-check
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tarStream from 'tar-stream';
import { BlockGzip } from './block-gzip.js';
import { fsyncPath, writeJsonLines } from './snapshot-files.js';
import { TarOffsetWalker } from './tar-offsets.js';

/** @typedef {import('./tar-target.js').TarTarget} TarTarget */
/** @typedef {import('./tar-target.js').IndexEntry} IndexEntry */
/** @typedef {import('twinfs').EntryMeta} EntryMeta */

const ZEROS = Buffer.alloc(64 * 1024);

/**
 * Writes one snapshot as one tar stream (pack → offset walker → [block gzip] → file). A tar is
 * sequential, so operations are queued one at a time (maxConcurrency 1) whatever the caller does.
 *
 * A put that fails mid-stream cannot take back the header and bytes already written: its entry
 * is padded with zeros to the size its header announced, so the archive stays well-formed, and
 * it is left out of the index — the snapshot does not contain it (stat says not found). A retry
 * of the same path appends a new entry, which the index (and a plain `tar x`, last one wins)
 * uses.
 */
export class TarSnapshotWriter {
  /**
   * @param {TarTarget} target
   * @param {string} snapshotId
   */
  static async create(target, snapshotId) {
    const w = new TarSnapshotWriter(target, snapshotId);
    try {
      await w.start();
    } catch (err) {
      throw target.api.errors.fromFs(err, `cannot start snapshot ${snapshotId} at ${target.spec}`);
    }
    return w;
  }

  /**
   * @param {TarTarget} target
   * @param {string} snapshotId
   */
  constructor(target, snapshotId) {
    this.target = target;
    this.api = target.api;
    this.snapshotId = snapshotId;
    this.gzip = target.options.gzip;
    this.archive = target.file(snapshotId, this.gzip ? 'tar.gz' : 'tar');
    this.partial = `${this.archive}.partial`;
    /** @type {'open' | 'committing' | 'committed' | 'aborted'} */
    this.state = 'open';
    /** Entries in archive order; `dead` ones (failed puts) never reach the index. @type {Array<IndexEntry & { dead?: boolean }>} */
    this.order = [];
    /** What each written path is, to refuse writing below a file or a symlink. @type {Map<string, IndexEntry['type']>} */
    this.types = new Map();
    /** Serialises operations: a tar has one write position. @type {Promise<unknown>} */
    this.queue = Promise.resolve();
    this.walked = 0;
    this.pack = tarStream.pack();
    this.walker = new TarOffsetWalker((offset) => {
      const e = this.order[this.walked++];
      if (e && e.type === 'file') e.offset = offset;
    });
    this.gz = this.gzip ? new BlockGzip(target.options.gzipBlockSize, target.options.gzipLevel) : undefined;
    /** @type {Promise<void> | undefined} */
    this.done = undefined;
  }

  async start() {
    const fh = await fsp.open(this.partial, 'wx', 0o600);
    const out = fh.createWriteStream({ highWaterMark: 1 << 20 });
    const stages = /** @type {any[]} */ ([this.pack, this.walker, ...(this.gz ? [this.gz] : []), out]);
    this.done = /** @type {Promise<void>} */ (/** @type {unknown} */ (pipeline(stages)));
    this.done.catch(() => undefined);
  }

  /**
   * @param {string} p
   * @param {import('node:stream').Readable} data
   * @param {EntryMeta} meta
   * @param {{ signal?: AbortSignal }} [opts]
   */
  putFile(p, data, meta, opts = {}) {
    return this.op(`put ${p}`, p, 'file', async (name) => {
      const digest = createHash('sha256');
      let bytes = 0;
      /** @type {IndexEntry & { dead?: boolean }} */
      const rec = { path: p, type: 'file', size: meta.size };
      this.order.push(rec);
      const { entry, settled } = addEntry(this.pack, this.header(name, 'file', meta));
      try {
        for await (const chunk of data) {
          if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
          if (this.state === 'aborted') throw this.api.errors.failed(`put ${p}: snapshot aborted`);
          const b = /** @type {Buffer} */ (chunk);
          if (bytes + b.length > meta.size)
            throw this.api.errors.failed(
              `${p} grew past the ${meta.size} bytes announced while it was stored`,
            );
          digest.update(b);
          bytes += b.length;
          await write(entry, b);
        }
        if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
        if (bytes !== meta.size)
          throw this.api.errors.failed(`${p} has ${bytes} bytes, not the ${meta.size} announced`);
      } catch (err) {
        rec.dead = true;
        data.destroy();
        if (this.state !== 'aborted') {
          // Keep the archive well-formed: fill the entry up to the size its header announced.
          for (let left = meta.size - bytes; left > 0; left -= ZEROS.length)
            await write(entry, ZEROS.subarray(0, Math.min(left, ZEROS.length)));
          entry.end();
          await settled;
        }
        throw err;
      }
      entry.end();
      await settled;
      rec.hash = digest.digest('hex');
      return { hash: rec.hash, bytes };
    });
  }

  /**
   * Copies the file from the earlier snapshot's archive (a tar snapshot is self-contained, so
   * nothing is shared: dedup is false, but the source volume is not read again).
   * @param {string} p
   * @param {string} fromSnapshotId
   * @param {import('twinfs').ManifestEntry} entry
   */
  async reuseFile(p, fromSnapshotId, entry) {
    const st = await this.target.stat(fromSnapshotId, p);
    const idx = await this.target.index(fromSnapshotId);
    const old = idx.byPath.get(this.api.volumePathParts(p).join('/'));
    if (st.type !== 'file' || st.size !== entry.size || (entry.hash && old?.hash && old.hash !== entry.hash))
      throw this.api.errors.notFound(`${p} in ${fromSnapshotId} is not the file to reuse`);
    const data = await this.target.openFile(fromSnapshotId, p);
    const r = await this.putFile(p, data, entry);
    if (entry.hash && r.hash !== entry.hash) {
      this.types.delete(this.api.volumePathParts(p).join('/'));
      const last = this.order.findLast((e) => e.path === p);
      if (last) last.dead = true;
      throw this.api.errors.notFound(`${p} in ${fromSnapshotId} no longer has the content to reuse`);
    }
  }

  /**
   * @param {string} p
   * @param {EntryMeta} meta
   */
  putDir(p, meta) {
    return this.op(`mkdir ${p}`, p, 'dir', async (name) => {
      if (name === '') return; // the root is implied
      this.order.push({ path: p, type: 'dir', size: 0 });
      const { entry, settled } = addEntry(this.pack, this.header(`${name}/`, 'directory', meta));
      entry.end();
      await settled;
    });
  }

  /**
   * @param {string} p
   * @param {string} linkTarget
   * @param {EntryMeta} meta
   */
  putSymlink(p, linkTarget, meta) {
    return this.op(`symlink ${p}`, p, 'symlink', async (name) => {
      this.order.push({ path: p, type: 'symlink', size: 0, target: linkTarget });
      const header = { ...this.header(name, 'symlink', meta), linkname: linkTarget };
      const { entry, settled } = addEntry(this.pack, header);
      if (!linkTarget) entry.write(Buffer.alloc(0));
      entry.end();
      await settled;
    });
  }

  /** @param {import('twinfs').SnapshotManifest} manifest */
  async commit(manifest) {
    if (this.state !== 'open') throw this.api.errors.failed(`snapshot ${this.snapshotId} is ${this.state}`);
    if (manifest.meta.snapshotId !== this.snapshotId)
      throw this.api.errors.failed('the manifest names another snapshot');
    this.state = 'committing';
    try {
      await this.queue;
      this.pack.finalize();
      await this.done;
      await fsyncPath(this.partial);
      await fsp.rename(this.partial, this.archive);
      const live = new Map();
      for (const e of this.order) if (!e.dead) live.set(e.path, e);
      /** @type {import('./tar-target.js').IndexHead} */
      const head = {
        format: 'twinfs-tar-index/1',
        archive: path.basename(this.archive),
        gzip: this.gzip,
        ...(this.gz ? { members: this.gz.members } : {}),
      };
      await writeJsonLines(this.target.file(this.snapshotId, 'index'), [head, ...live.values()]);
      const { entries, ...rest } = manifest;
      // The commit point: a snapshot exists once its manifest does.
      await writeJsonLines(this.target.file(this.snapshotId, 'manifest'), [rest, ...entries]);
      this.state = 'committed';
    } catch (err) {
      this.state = 'open';
      await this.abort();
      throw this.api.errors.fromFs(err, `commit of snapshot ${this.snapshotId} failed`);
    }
  }

  async abort() {
    if (this.state === 'committed' || this.state === 'aborted') return;
    this.state = 'aborted';
    this.pack.destroy(new Error('snapshot aborted'));
    await this.done?.catch(() => undefined);
    await this.target.removeFiles(this.snapshotId).catch(() => undefined);
  }

  // ---- internals --------------------------------------------------------------------------------

  /**
   * Checks the path, then runs fn alone (queued behind earlier operations).
   * @template T
   * @param {string} what
   * @param {string} p
   * @param {IndexEntry['type']} type
   * @param {(name: string) => Promise<T>} fn called with the member name ('docs/a.txt')
   * @returns {Promise<T>}
   */
  op(what, p, type, fn) {
    const parts = this.api.volumePathParts(p);
    if (parts.length === 0 && type !== 'dir') throw this.api.errors.pathEscape(`${what}: "/" is not a file`);
    const run = async () => {
      if (this.state !== 'open')
        throw this.api.errors.failed(`${what}: snapshot ${this.snapshotId} is ${this.state}`);
      this.claim(parts, type, what);
      try {
        return await fn(parts.join('/'));
      } catch (err) {
        if (type === 'file') this.types.delete(parts.join('/'));
        throw this.api.errors.fromFs(err, what);
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /**
   * Records `parts` as `type`, refusing a path below a file or a symlink (it would escape through
   * the link on a plain extraction) and a change of type.
   * @param {string[]} parts
   * @param {IndexEntry['type']} type
   * @param {string} what
   */
  claim(parts, type, what) {
    for (let i = 1; i < parts.length; i++) {
      const up = parts.slice(0, i).join('/');
      const t = this.types.get(up);
      if (t === 'symlink' || t === 'file')
        throw this.api.errors.pathEscape(`${what}: /${up} is a ${t}; refusing to store anything below it`);
      if (!t) this.types.set(up, 'dir');
    }
    const key = parts.join('/');
    const had = this.types.get(key);
    if (had && (had !== type || type === 'symlink'))
      throw this.api.errors.failed(`${what}: /${key} is already stored as a ${had}`);
    this.types.set(key, type);
  }

  /**
   * @param {string} name
   * @param {'file' | 'directory' | 'symlink'} type
   * @param {EntryMeta} meta
   */
  header(name, type, meta) {
    return {
      name,
      type,
      size: type === 'file' ? meta.size : 0,
      mode: meta.mode & 0o7777,
      uid: meta.uid,
      gid: meta.gid,
      mtime: new Date(meta.mtime),
    };
  }
}

/**
 * Adds an entry to the pack; `settled` resolves once the entry is wholly in the pack's output.
 * @param {any} pack
 * @param {object} header
 * @returns {{ entry: any, settled: Promise<void> }}
 */
function addEntry(pack, header) {
  /** @type {(err?: unknown) => void} */
  let done = () => undefined;
  /** @type {Promise<void>} */
  const settled = new Promise((resolve, reject) => {
    done = (err) => (err ? reject(err) : resolve());
  });
  settled.catch(() => undefined);
  const entry = pack.entry(header, done);
  return { entry, settled };
}

/**
 * Writes to a tar-stream entry, waiting for it to drain.
 * @param {any} entry
 * @param {Buffer} chunk
 * @returns {Promise<void>}
 */
function write(entry, chunk) {
  if (entry.destroying || entry.destroyed) return Promise.reject(new Error('tar entry closed'));
  if (entry.write(chunk)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      entry.off('drain', done);
      entry.off('error', fail);
      resolve();
    };
    /** @param {unknown} err */
    const fail = (err) => {
      entry.off('drain', done);
      entry.off('error', fail);
      reject(err);
    };
    entry.on('drain', done);
    entry.on('error', fail);
  });
}
