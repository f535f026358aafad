// @ts-check
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { openGzipRange } from './block-gzip.js';
import { exists, fsyncPath, isSafeId, readFirstLine, readJsonLines } from './snapshot-files.js';
import { TarSnapshotWriter } from './tar-writer.js';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */
/** @typedef {import('twinfs').TargetStat} TargetStat */
/**
 * One line of a snapshot's index: where an entry lives in the archive.
 * @typedef {{ path: string, type: import('twinfs').EntryType, size: number, offset?: number, hash?: string, target?: string }} IndexEntry
 */
/**
 * @typedef {{ format: string, archive: string, gzip: boolean, members?: Array<[number, number]> }} IndexHead
 * @typedef {{ head: IndexHead, byPath: Map<string, IndexEntry>, dirs: Set<string> }} SnapshotIndex
 */

export const INDEX_FORMAT = 'twinfs-tar-index/1';

/**
 * @typedef {object} TarOptions
 * @property {boolean} gzip compress new snapshots
 * @property {number} gzipLevel
 * @property {number} gzipBlockSize uncompressed bytes per gzip member
 */

/**
 * The tar target (`tar:/backups`, `tar:/backups?gzip`): one archive per snapshot, readable with
 * any tar, plus an index so a single file is restored by seeking, not by unpacking.
 *
 *   ROOT/<id>.tar.partial | <id>.tar.gz.partial   the archive being written
 *   ROOT/<id>.tar | <id>.tar.gz                     a committed archive
 *   ROOT/<id>.index.jsonl                           offsets of every entry (+ gzip member table)
 *   ROOT/<id>.manifest.jsonl                        the manifest: the commit record, written last
 *
 * Restores never extract the archive: openFile and stat look a volume path up in the index
 * (paths checked, never joined to a filesystem path), so a hostile name inside an archive cannot
 * write anywhere. Member names inside the archive are relative ('docs/a.txt'), never absolute or
 * with '..', and nothing is ever stored below a symlink, so a plain `tar x` of an archive is
 * safe as well.
 */
export class TarTarget {
  /** @type {'tar'} */
  id = 'tar';
  capabilities = { rangedReads: true, dedup: false, atomicRename: true, maxConcurrency: 1 };

  /**
   * @param {string} root
   * @param {TarOptions} options
   * @param {TwinfsApi} api
   */
  constructor(root, options, api) {
    this.root = root;
    this.options = options;
    this.api = api;
    this.spec = `tar:${root}${options.gzip ? '?gzip' : ''}`;
    /** @type {Map<string, Promise<SnapshotIndex>>} */
    this.indexes = new Map();
  }

  /**
   * @param {string} location `/backups` or `/backups?gzip`
   * @param {Omit<TarOptions, 'gzip'>} defaults
   * @param {TwinfsApi} api
   */
  static async open(location, defaults, api) {
    const q = location.indexOf('?');
    const dir = q < 0 ? location : location.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : location.slice(q + 1));
    for (const k of params.keys())
      if (k !== 'gzip') throw api.errors.failed(`tar: unknown option "${k}" in tar:${location} (only ?gzip)`);
    if (!dir) throw api.errors.failed('tar: target needs a directory (tar:/backups or tar:/backups?gzip)');
    const level = params.get('gzip');
    const gzipLevel = level ? Number(level) : defaults.gzipLevel;
    if (!Number.isInteger(gzipLevel) || gzipLevel < 1 || gzipLevel > 9)
      throw api.errors.failed(`tar: gzip level must be 1..9, not "${level}"`);
    const root = path.resolve(dir);
    try {
      await fsp.mkdir(root, { recursive: true, mode: 0o700 });
      if (!(await fsp.stat(root)).isDirectory()) throw api.errors.failed(`tar: ${root} is not a directory`);
    } catch (err) {
      throw api.errors.fromFs(err, `tar: cannot open ${root}`);
    }
    return new TarTarget(root, { ...defaults, gzipLevel, gzip: params.has('gzip') }, api);
  }

  /** @param {import('twinfs').SnapshotMeta} meta */
  async beginSnapshot(meta) {
    this.checkId(meta.snapshotId);
    const id = meta.snapshotId;
    if (await exists(this.file(id, 'manifest')))
      throw this.api.errors.failed(`snapshot ${id} already exists at ${this.spec}`);
    // Leftovers of an earlier attempt with this id (no manifest: never committed) are not ours to keep.
    await this.removeFiles(id);
    return TarSnapshotWriter.create(this, id);
  }

  async listSnapshots() {
    /** @type {string[]} */
    let names;
    try {
      names = await fsp.readdir(this.root);
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot list ${this.spec}`);
    }
    /** @type {Array<{ snapshotId: string, time: number }>} */
    const out = [];
    for (const n of names) {
      if (!n.endsWith('.manifest.jsonl')) continue;
      const line = await readFirstLine(path.join(this.root, n)).catch(() => undefined);
      const meta = line ? JSON.parse(line).meta : undefined;
      if (meta?.snapshotId && isSafeId(meta.snapshotId))
        out.push({ snapshotId: meta.snapshotId, time: meta.time });
    }
    return out.sort((a, b) => a.time - b.time || a.snapshotId.localeCompare(b.snapshotId));
  }

  /**
   * @param {string} snapshotId
   * @returns {Promise<import('twinfs').SnapshotManifest>}
   */
  async readManifest(snapshotId) {
    this.checkId(snapshotId);
    try {
      const { head, rest } = await readJsonLines(this.file(snapshotId, 'manifest'));
      return { ...head, entries: rest };
    } catch (err) {
      throw this.api.errors.fromFs(err, `snapshot ${snapshotId} at ${this.spec}`);
    }
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   * @param {{ start?: number, end?: number }} [range]
   * @returns {Promise<Readable>}
   */
  async openFile(snapshotId, p, range = {}) {
    const parts = this.api.volumePathParts(p);
    const idx = await this.index(snapshotId);
    const e = idx.byPath.get(parts.join('/'));
    if (e?.type !== 'file' || e.offset === undefined)
      throw this.api.errors.notFound(`${p} is not a file in snapshot ${snapshotId}`);
    const start = Math.max(0, range.start ?? 0);
    const end = Math.min(e.size - 1, range.end ?? e.size - 1);
    if (end < start) return Readable.from([]);
    const archive = path.join(this.root, idx.head.archive);
    try {
      if (!idx.head.gzip) {
        const fh = await fsp.open(archive, 'r');
        return fh.createReadStream({ start: e.offset + start, end: e.offset + end, highWaterMark: 1 << 20 });
      }
      await fsp.access(archive, fs.constants.R_OK);
      return openGzipRange(archive, idx.head.members ?? [[0, 0]], e.offset + start, e.offset + end);
    } catch (err) {
      throw this.api.errors.fromFs(err, `${p} in snapshot ${snapshotId}`);
    }
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   * @returns {Promise<TargetStat>}
   */
  async stat(snapshotId, p) {
    const key = this.api.volumePathParts(p).join('/');
    const idx = await this.index(snapshotId);
    const e = idx.byPath.get(key);
    if (e) return { type: e.type, size: e.type === 'file' ? e.size : 0 };
    if (key === '' || idx.dirs.has(key)) return { type: 'dir', size: 0 };
    throw this.api.errors.notFound(`${p} is not in snapshot ${snapshotId}`);
  }

  /** @param {string} snapshotId */
  async deleteSnapshot(snapshotId) {
    this.checkId(snapshotId);
    this.indexes.delete(snapshotId);
    try {
      // The manifest first: from here on the snapshot does not exist, whatever else fails.
      await fsp.rm(this.file(snapshotId, 'manifest'), { force: true });
      await fsyncPath(this.root).catch(() => undefined);
      await this.removeFiles(snapshotId);
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot delete snapshot ${snapshotId} at ${this.spec}`);
    }
  }

  async close() {
    this.indexes.clear();
  }

  // ---- internals (used by the writer) -----------------------------------------------------------

  /**
   * @param {string} id
   * @param {'manifest' | 'index' | 'tar' | 'tar.gz'} kind
   */
  file(id, kind) {
    return path.join(
      this.root,
      kind === 'manifest' || kind === 'index' ? `${id}.${kind}.jsonl` : `${id}.${kind}`,
    );
  }

  /** Everything but the manifest stored for a snapshot id. @param {string} id */
  async removeFiles(id) {
    for (const f of [this.file(id, 'index'), this.file(id, 'tar'), this.file(id, 'tar.gz')])
      for (const g of [f, `${f}.partial`, `${f}.tmp`]) await fsp.rm(g, { force: true });
    await fsp.rm(`${this.file(id, 'manifest')}.tmp`, { force: true });
  }

  /** @param {string} id */
  checkId(id) {
    if (!isSafeId(id)) throw this.api.errors.failed(`bad snapshot id ${JSON.stringify(id)}`);
  }

  /**
   * A committed snapshot's index, cached (the last few).
   * @param {string} snapshotId
   * @returns {Promise<SnapshotIndex>}
   */
  index(snapshotId) {
    this.checkId(snapshotId);
    let p = this.indexes.get(snapshotId);
    if (!p) {
      p = this.loadIndex(snapshotId);
      p.catch(() => this.indexes.delete(snapshotId));
      this.indexes.set(snapshotId, p);
      while (this.indexes.size > 4)
        this.indexes.delete(/** @type {string} */ (this.indexes.keys().next().value));
    }
    return p;
  }

  /** @param {string} snapshotId */
  async loadIndex(snapshotId) {
    if (!(await exists(this.file(snapshotId, 'manifest'))))
      throw this.api.errors.notFound(`no snapshot ${snapshotId} at ${this.spec}`);
    /** @type {{ head: IndexHead, rest: IndexEntry[] }} */
    let data;
    try {
      data = await readJsonLines(this.file(snapshotId, 'index'));
    } catch (err) {
      throw this.api.errors.failed(`index of snapshot ${snapshotId} at ${this.spec} is unreadable: ${err}`);
    }
    if (data.head.format !== INDEX_FORMAT || !isSafeId(data.head.archive.replace(/\.tar(\.gz)?$/, '')))
      throw this.api.errors.failed(
        `index of snapshot ${snapshotId} at ${this.spec} is not a ${INDEX_FORMAT} index`,
      );
    /** @type {Map<string, IndexEntry>} */
    const byPath = new Map();
    const dirs = new Set();
    for (const e of data.rest) {
      // The index is read back from storage: treat it as untrusted, like the archive.
      const parts = this.api.volumePathParts(e.path);
      byPath.set(parts.join('/'), e);
      for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
    }
    return { head: data.head, byPath, dirs };
  }
}
