// @ts-check
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { DirectorySnapshotWriter, stampOf } from './directory-writer.js';
import { exists, fsyncPath, SafeTree } from './safe-tree.js';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */
/** @typedef {import('twinfs').SnapshotManifest} SnapshotManifest */

/**
 * The directory target (`dir:/backups`): a plain tree per snapshot, readable with ls and cp.
 * Ported from the peer's built-in src/backup-peer (the original directory target, now only this plugin) onto the public plugin API.
 *
 *   ROOT/<id>.partial/...        a snapshot being written (invisible to listSnapshots)
 *   ROOT/<id>/...                a committed snapshot: the volume's tree as it was
 *   ROOT/.manifests/<id>.jsonl   its manifest; this file is the commit record
 *
 * Commit order (each step durable before the next): file data, directories, rename of the
 * tree to its final name, then the manifest written beside and renamed into place. A crash
 * anywhere leaves either no manifest (the snapshot does not exist and the leftovers are removed
 * by deleteSnapshot) or a complete snapshot. Unchanged files are hard links to the previous
 * snapshot's, so an incremental snapshot costs the changed files plus one directory tree.
 *
 * Ownership and modes are stored on the files as they were when the peer runs as root. As
 * another user it cannot chown, and it keeps owner read/write(/search) bits so that it can read
 * its own backups; the manifest and the catalog hold the true metadata either way, and restore
 * uses those, never the target files' own metadata.
 */
export class DirectoryTarget {
  id = 'dir';
  capabilities = { rangedReads: true, dedup: true, atomicRename: true, maxConcurrency: 8 };

  /**
   * @param {string} root
   * @param {TwinfsApi} api
   */
  constructor(root, api) {
    this.root = root;
    this.api = api;
    this.spec = `dir:${root}`;
    this.manifests = path.join(root, '.manifests');
    /** Committed snapshots being read, with their checked directories cached. @type {Map<string, SafeTree>} */
    this.trees = new Map();
  }

  /**
   * Opens (creating if needed, mode 0700) the target directory.
   * @param {string} location
   * @param {TwinfsApi} api
   */
  static async open(location, api) {
    if (!location) throw api.errors.failed('dir: target needs a directory (dir:/backups)');
    const root = path.resolve(location);
    try {
      await fsp.mkdir(root, { recursive: true, mode: 0o700 });
      await fsp.mkdir(path.join(root, '.manifests'), { mode: 0o700 }).catch((err) => {
        if (err?.code !== 'EEXIST') throw err;
      });
      if (!(await fsp.stat(root)).isDirectory()) throw api.errors.failed(`target ${root} is not a directory`);
    } catch (err) {
      throw api.errors.fromFs(err, `cannot open target directory ${root}`);
    }
    return new DirectoryTarget(root, api);
  }

  /** @param {import('twinfs').SnapshotMeta} meta */
  async beginSnapshot(meta) {
    this.checkId(meta.snapshotId);
    const partial = path.join(this.root, `${meta.snapshotId}.partial`);
    if (await exists(this.manifestFile(meta.snapshotId)))
      throw this.api.errors.failed(`snapshot ${meta.snapshotId} already exists at ${this.spec}`);
    try {
      // Leftovers of an earlier attempt with this id are not ours to keep.
      await fsp.rm(partial, { recursive: true, force: true });
      await fsp.mkdir(partial, { mode: 0o700 });
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot start snapshot ${meta.snapshotId}`);
    }
    return new DirectorySnapshotWriter(this, meta.snapshotId, partial);
  }

  async listSnapshots() {
    /** @type {string[]} */
    let names;
    try {
      names = await fsp.readdir(this.manifests);
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot list ${this.spec}`);
    }
    /** @type {Array<{ snapshotId: string, time: number }>} */
    const out = [];
    for (const n of names) {
      if (!n.endsWith('.jsonl')) continue;
      const header = await readFirstLine(path.join(this.manifests, n)).catch(() => undefined);
      const meta = header ? JSON.parse(header).meta : undefined;
      if (meta?.snapshotId) out.push({ snapshotId: meta.snapshotId, time: meta.time });
    }
    return out.sort((a, b) => a.time - b.time || a.snapshotId.localeCompare(b.snapshotId));
  }

  /**
   * @param {string} snapshotId
   * @returns {Promise<SnapshotManifest>}
   */
  async readManifest(snapshotId) {
    this.checkId(snapshotId);
    /** @type {string} */
    let text;
    try {
      text = await fsp.readFile(this.manifestFile(snapshotId), 'utf8');
    } catch (err) {
      throw this.api.errors.fromFs(err, `snapshot ${snapshotId} at ${this.spec}`);
    }
    const lines = text.split('\n').filter((l) => l.length > 0);
    return { ...JSON.parse(lines[0] ?? '{}'), entries: lines.slice(1).map((l) => JSON.parse(l)) };
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   * @param {{ start?: number, end?: number }} [range]
   */
  async openFile(snapshotId, p, range = {}) {
    const file = await this.committedPath(snapshotId, p);
    /** @type {fs.promises.FileHandle | undefined} */
    let fh;
    try {
      fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      if (!(await fh.stat()).isFile())
        throw this.api.errors.notFound(`${p} is not a file in snapshot ${snapshotId}`);
      return fh.createReadStream({ start: range.start, end: range.end, highWaterMark: 1 << 20 });
    } catch (err) {
      await fh?.close().catch(() => undefined);
      throw this.api.errors.fromFs(err, `${p} in snapshot ${snapshotId}`);
    }
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   * @returns {Promise<import('twinfs').TargetStat>}
   */
  async stat(snapshotId, p) {
    const file = await this.committedPath(snapshotId, p);
    try {
      const st = await fsp.lstat(file, { bigint: true });
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file';
      return type === 'file' ? { type, size: Number(st.size), stamp: stampOf(st) } : { type, size: 0 };
    } catch (err) {
      throw this.api.errors.fromFs(err, `${p} in snapshot ${snapshotId}`);
    }
  }

  /** @param {string} snapshotId */
  async deleteSnapshot(snapshotId) {
    this.checkId(snapshotId);
    this.trees.delete(snapshotId);
    try {
      // Manifest first: from here on the snapshot no longer exists, whatever else fails.
      await fsp.rm(this.manifestFile(snapshotId), { force: true });
      await fsyncPath(this.manifests).catch(() => undefined);
      await fsp.rm(path.join(this.root, snapshotId), { recursive: true, force: true });
      await fsp.rm(path.join(this.root, `${snapshotId}.partial`), { recursive: true, force: true });
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot delete snapshot ${snapshotId} at ${this.spec}`);
    }
  }

  async close() {
    this.trees.clear();
  }

  // ---- internals (the writer uses these too) ----------------------------------------------------

  /** @param {string} snapshotId */
  manifestFile(snapshotId) {
    return path.join(this.manifests, `${snapshotId}.jsonl`);
  }

  /**
   * Snapshot ids become file names: keep them to a safe alphabet.
   * @param {string} id
   */
  checkId(id) {
    if (
      typeof id !== 'string' ||
      !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id) ||
      id.endsWith('.partial') ||
      id.includes('..')
    )
      throw this.api.errors.failed(`bad snapshot id ${JSON.stringify(id)}`);
  }

  /**
   * Writes the manifest durably: the commit point of a snapshot.
   * @param {SnapshotManifest} manifest
   */
  async writeManifest(manifest) {
    const { entries, ...head } = manifest;
    const file = this.manifestFile(manifest.meta.snapshotId);
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      // Streamed in slices: a manifest of a large volume is large.
      let buf = `${JSON.stringify(head)}\n`;
      for (const e of entries) {
        buf += `${JSON.stringify(e)}\n`;
        if (buf.length > 1 << 20) {
          await fh.write(buf);
          buf = '';
        }
      }
      await fh.write(buf);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await fsyncPath(this.manifests);
  }

  /**
   * A committed snapshot's file, parents checked (a stored symlink is never followed).
   * @param {string} snapshotId
   * @param {string} p
   */
  async committedPath(snapshotId, p) {
    this.api.volumePathParts(p);
    this.checkId(snapshotId);
    if (!(await exists(this.manifestFile(snapshotId))))
      throw this.api.errors.notFound(`no snapshot ${snapshotId} at ${this.spec}`);
    try {
      return await this.committedTree(snapshotId).resolve(p);
    } catch (err) {
      // Below a file or a stored symlink there is nothing in the snapshot: not found ('..' stays an escape).
      if (/** @type {any} */ (err)?.blockedAt)
        throw this.api.errors.notFound(
          `${p} is not in snapshot ${snapshotId} (${/** @type {Error} */ (err).message})`,
        );
      throw this.api.errors.fromFs(err, `${p} in snapshot ${snapshotId}`);
    }
  }

  /** @param {string} snapshotId */
  committedTree(snapshotId) {
    let tree = this.trees.get(snapshotId);
    if (!tree) this.trees.set(snapshotId, (tree = new SafeTree(path.join(this.root, snapshotId), this.api)));
    return tree;
  }
}

/** @param {string} file */
async function readFirstLine(file) {
  const fh = await fsp.open(file, 'r');
  try {
    let text = '';
    const buf = Buffer.alloc(64 * 1024);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) return text;
      text += buf.subarray(0, bytesRead).toString('utf8');
      const i = text.indexOf('\n');
      if (i >= 0) return text.slice(0, i);
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}
