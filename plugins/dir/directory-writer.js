// @ts-check
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { exists, forEachLimit, fsyncPath, SafeTree } from './safe-tree.js';

/** @typedef {import('./directory-target.js').DirectoryTarget} DirectoryTarget */
/** @typedef {import('twinfs').EntryMeta} EntryMeta */

/** Fills ROOT/<id>.partial; commit makes it ROOT/<id> (see DirectoryTarget for the order). */
export class DirectorySnapshotWriter {
  /**
   * @param {DirectoryTarget} target
   * @param {string} snapshotId
   * @param {string} partial
   */
  constructor(target, snapshotId, partial) {
    this.target = target;
    this.api = target.api;
    this.snapshotId = snapshotId;
    this.partial = partial;
    this.tree = new SafeTree(partial, target.api);
    /** Files whose data still has to be synced at commit. @type {string[]} */
    this.unsynced = [];
    /** Directories with their metadata, applied at commit (children change a dir's mtime). @type {Map<string, EntryMeta>} */
    this.dirMeta = new Map();
    this.inflight = 0;
    /** @type {'open' | 'committing' | 'committed' | 'aborted'} */
    this.state = 'open';
    this.asRoot = (process.getuid?.() ?? 1) === 0;
  }

  /**
   * @param {string} p
   * @param {import('node:stream').Readable} data
   * @param {EntryMeta} meta
   * @param {{ signal?: AbortSignal }} [opts]
   */
  putFile(p, data, meta, opts = {}) {
    return this.op(`put ${p}`, async () => {
      const file = await this.tree.prepareParents(p);
      // O_EXCL: never write through an existing entry (a symlink included).
      const fh = await fsp.open(
        file,
        fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
        0o600,
      );
      const digest = createHash('sha256');
      let bytes = 0;
      let ok = false;
      let stamp = '';
      try {
        for await (const chunk of data) {
          if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
          const b = /** @type {Buffer} */ (chunk);
          // Hash (CPU, this thread) while the write runs on the thread pool.
          const written = writeAll(fh, b);
          digest.update(b);
          bytes += b.length;
          await written;
        }
        if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
        await this.applyMeta(fh, meta);
        stamp = stampOf(await fh.stat({ bigint: true }));
        ok = true;
      } finally {
        await fh.close();
        if (!ok) {
          data.destroy();
          await fsp.rm(file, { force: true });
        }
      }
      this.unsynced.push(file);
      return { hash: digest.digest('hex'), bytes, stamp };
    });
  }

  /**
   * putFile for content already in memory. The file is written with synchronous calls: for a
   * small file the thread-pool round trips of six asynchronous ones cost far more than the
   * calls themselves (docs/benchmarks.md, backup).
   * @param {string} p
   * @param {Buffer} data
   * @param {EntryMeta} meta
   * @param {{ signal?: AbortSignal }} [opts]
   */
  putSmallFile(p, data, meta, opts = {}) {
    return this.op(`put ${p}`, async () => {
      const file = await this.tree.prepareParents(p);
      if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
      // O_EXCL: never write through an existing entry (a symlink included).
      const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      let ok = false;
      let stamp = '';
      try {
        for (let off = 0; off < data.length; ) off += fs.writeSync(fd, data, off, data.length - off, off);
        if (this.asRoot) fs.fchownSync(fd, meta.uid, meta.gid);
        fs.fchmodSync(fd, this.asRoot ? meta.mode & 0o7777 : (meta.mode & 0o7777) | 0o600);
        fs.futimesSync(fd, meta.mtime / 1000, meta.mtime / 1000);
        stamp = stampOf(fs.fstatSync(fd, { bigint: true }));
        ok = true;
      } finally {
        fs.closeSync(fd);
        if (!ok) fs.rmSync(file, { force: true });
      }
      this.unsynced.push(file);
      return { hash: createHash('sha256').update(data).digest('hex'), bytes: data.length, stamp };
    });
  }

  /**
   * @param {string} p
   * @param {string} fromSnapshotId
   * @param {import('twinfs').ManifestEntry} entry
   * @returns {Promise<{ stamp: string }>}
   */
  reuseFile(p, fromSnapshotId, entry) {
    return this.op(`reuse ${p}`, async () => {
      this.target.checkId(fromSnapshotId);
      const from = await this.target.committedTree(fromSnapshotId).resolve(p);
      const st = await fsp.lstat(from, { bigint: true });
      if (!st.isFile() || Number(st.size) !== entry.size)
        throw this.api.errors.notFound(`${p} in ${fromSnapshotId} is not the file to reuse`);
      // A copy whose size, mtime or inode changed since it was stored was damaged or replaced
      // here: never share it (the peer stores the file again). Without a recorded stamp there is
      // nothing to prove it intact.
      if (entry.stored === undefined || stampOf(st) !== entry.stored)
        throw this.api.errors.notFound(
          `${p} in ${fromSnapshotId} ${entry.stored === undefined ? 'has no recorded stamp' : 'changed at the target since it was stored'}`,
        );
      const file = await this.tree.prepareParents(p);
      try {
        await fsp.link(from, file);
      } catch (err) {
        // Too many links to one inode (ext4: 65000): give this snapshot its own copy.
        if (/** @type {NodeJS.ErrnoException} */ (err)?.code !== 'EMLINK') throw err;
        await fsp.copyFile(from, file, fs.constants.COPYFILE_EXCL);
        const fh = await fsp.open(file, 'r+');
        try {
          await this.applyMeta(fh, entry);
        } finally {
          await fh.close();
        }
        this.unsynced.push(file);
      }
      return { stamp: stampOf(await fsp.lstat(file, { bigint: true })) };
    });
  }

  /**
   * Another name of a file already in this snapshot: a hard link to it, so the snapshot's tree
   * has the volume's link structure (ls -i, du) and the data once.
   * @param {string} p
   * @param {string} existing
   * @param {EntryMeta} _meta
   */
  putHardLink(p, existing, _meta) {
    return this.op(`link ${p}`, async () => {
      const from = await this.tree.resolve(existing);
      const st = await fsp.lstat(from);
      if (!st.isFile()) throw this.api.errors.failed(`link ${p}: ${existing} is not a file of this snapshot`);
      const file = await this.tree.prepareParents(p);
      try {
        await fsp.link(from, file);
      } catch (err) {
        // Too many links to one inode (ext4: 65000): this name gets its own copy.
        if (/** @type {NodeJS.ErrnoException} */ (err)?.code !== 'EMLINK') throw err;
        await fsp.copyFile(from, file, fs.constants.COPYFILE_EXCL);
        this.unsynced.push(file);
      }
    });
  }

  /**
   * @param {string} p
   * @param {EntryMeta} meta
   */
  putDir(p, meta) {
    return this.op(`mkdir ${p}`, async () => {
      await this.tree.mkdir(p);
      this.dirMeta.set(p, meta);
    });
  }

  /**
   * @param {string} p
   * @param {string} linkTarget
   * @param {EntryMeta} meta
   */
  putSymlink(p, linkTarget, meta) {
    return this.op(`symlink ${p}`, async () => {
      const file = await this.tree.prepareParents(p);
      await fsp.symlink(linkTarget, file);
      if (this.asRoot) await fsp.lchown(file, meta.uid, meta.gid);
      await fsp.lutimes(file, meta.mtime / 1000, meta.mtime / 1000);
    });
  }

  /** @param {import('twinfs').SnapshotManifest} manifest */
  async commit(manifest) {
    if (this.state !== 'open') throw this.api.errors.failed(`snapshot ${this.snapshotId} is ${this.state}`);
    if (this.inflight > 0)
      throw this.api.errors.failed(`commit of ${this.snapshotId} while ${this.inflight} puts are in flight`);
    if (manifest.meta.snapshotId !== this.snapshotId)
      throw this.api.errors.failed('manifest names another snapshot');
    this.state = 'committing';
    const final = path.join(this.target.root, this.snapshotId);
    try {
      // Deepest first: a parent's times must be set after its children are complete.
      const dirs = [...this.dirMeta.keys()].sort((a, b) => b.split('/').length - a.split('/').length);
      for (const d of dirs) await this.applyDirMeta(d, /** @type {EntryMeta} */ (this.dirMeta.get(d)));
      await this.syncTree();
      await fsp.rename(this.partial, final);
      await fsyncPath(this.target.root);
      await this.target.writeManifest(manifest);
      this.state = 'committed';
    } catch (err) {
      this.state = 'open';
      // A half-renamed tree without its manifest is not a snapshot; put it back for abort().
      if (await exists(final)) await fsp.rename(final, this.partial).catch(() => undefined);
      throw this.api.errors.fromFs(err, `commit of snapshot ${this.snapshotId} failed`);
    }
  }

  /**
   * Everything written into the partial tree on disk before it takes its final name. Past a
   * few files, one syncfs(2) of the target's filesystem (coreutils `sync -f`; Node has no
   * syncfs) costs a fraction of an fsync per file and per directory (15,424 files: 0.6 s
   * against 1.4-2.9 s, docs/benchmarks.md). Per file when `sync -f` cannot run.
   */
  async syncTree() {
    if (this.unsynced.length > SYNCFS_ABOVE && (await syncfs(this.partial))) return;
    await forEachLimit(this.unsynced, 16, fsyncPath);
    await forEachLimit(await listDirs(this.partial), 16, fsyncPath);
  }

  async abort() {
    if (this.state === 'committed' || this.state === 'aborted') return;
    this.state = 'aborted';
    await fsp.rm(this.partial, { recursive: true, force: true }).catch(() => undefined);
  }

  /**
   * @template T
   * @param {string} what
   * @param {() => Promise<T>} fn
   * @returns {Promise<T>}
   */
  async op(what, fn) {
    if (this.state !== 'open')
      throw this.api.errors.failed(`${what}: snapshot ${this.snapshotId} is ${this.state}`);
    this.inflight++;
    try {
      return await fn();
    } catch (err) {
      throw this.api.errors.fromFs(err, what);
    } finally {
      this.inflight--;
    }
  }

  /**
   * Owner before mode (chown clears set-id bits), times last.
   * @param {fs.promises.FileHandle} fh
   * @param {EntryMeta} meta
   */
  async applyMeta(fh, meta) {
    if (this.asRoot) await fh.chown(meta.uid, meta.gid);
    await fh.chmod(this.asRoot ? meta.mode & 0o7777 : (meta.mode & 0o7777) | 0o600);
    await fh.utimes(meta.mtime / 1000, meta.mtime / 1000);
  }

  /**
   * @param {string} p
   * @param {EntryMeta} meta
   */
  async applyDirMeta(p, meta) {
    const dir = this.tree.abs(p);
    if (this.asRoot) await fsp.lchown(dir, meta.uid, meta.gid);
    await fsp.chmod(dir, this.asRoot ? meta.mode & 0o7777 : (meta.mode & 0o7777) | 0o700);
    await fsp.utimes(dir, meta.mtime / 1000, meta.mtime / 1000);
  }
}

/**
 * @param {fs.promises.FileHandle} fh
 * @param {Buffer} b
 */
async function writeAll(fh, b) {
  for (let off = 0; off < b.length; ) off += (await fh.write(b, off, b.length - off)).bytesWritten;
}

const SYNCFS_ABOVE = 64;

/**
 * A stored file's stamp (PutResult.stamp): size, mtime to the ns, inode. Not ctime: sharing the
 * file with a later snapshot (link) moves its ctime, which is no damage.
 * @param {fs.BigIntStats} st
 */
export function stampOf(st) {
  return `${st.size}:${st.mtimeNs}:${st.ino}`;
}

/**
 * syncfs(2) of the filesystem holding dir, through `sync -f`. Resolves false when that could
 * not be done (then the caller syncs file by file).
 * @param {string} dir
 * @returns {Promise<boolean>}
 */
function syncfs(dir) {
  return new Promise((resolve) => {
    execFile('sync', ['-f', dir], { timeout: 10 * 60_000 }, (err) => resolve(!err));
  });
}

/**
 * Every directory of a tree, the root included (no symlinks followed).
 * @param {string} root
 */
async function listDirs(root) {
  const out = [root];
  for (let i = 0; i < out.length; i++) {
    for (const d of await fsp.readdir(/** @type {string} */ (out[i]), { withFileTypes: true }))
      if (d.isDirectory()) out.push(path.join(/** @type {string} */ (out[i]), d.name));
  }
  return out;
}
