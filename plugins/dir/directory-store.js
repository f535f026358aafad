// @ts-check
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */
/** @typedef {import('twinfs').ObjectInfo} ObjectInfo */
/** @typedef {import('twinfs').ObjectStore} ObjectStore */

const COMPONENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
/** Objects from this size on are written with O_DIRECT where the memory allows (writeDirect). */
const DIRECT_MIN = 1024 * 1024;
/** O_DIRECT's unit: the address, file offset and length of a direct write are multiples of it. */
const DIRECT_ALIGN = 4096;
/** lstats of a listing in flight at once (fewer than the command's 32 pool threads). */
const LIST_STATS = 16;
/** An lstat answered within this (ms) was answered from the kernel's inode cache. */
const CACHED_LSTAT_MS = 0.1;

/**
 * The object store of the directory target (`dir:/backups`): one file per object, the object's
 * name as its path below the directory. The host keeps a repository in it (docs/repository.md).
 *
 * Every put is atomic and durable: the bytes go to a temporary file beside the final one
 * (O_EXCL), which is synced, renamed into place, and its directory synced. A crash leaves
 * either the old state or the new object, plus at most a `*.tmp-*` file that listings skip.
 */
export class DirectoryStore {
  initOnFirstUse = true;

  /**
   * @param {string} root
   * @param {TwinfsApi} api
   */
  constructor(root, api) {
    this.root = root;
    this.api = api;
    this.spec = `dir:${root}`;
    /** Directories known to exist. @type {Set<string>} */
    this.dirs = new Set();
    /** false once the directory's filesystem refused O_DIRECT (writeDirect). @type {boolean | undefined} */
    this.direct = undefined;
  }

  /**
   * A relative location is refused: it would land wherever the command happens to run (an
   * unmounted backup disk would fill the root filesystem). Nothing is created unless asked.
   * @param {string} location
   * @param {{ create: boolean }} opts
   * @param {TwinfsApi} api
   * @returns {Promise<ObjectStore>}
   */
  static async open(location, opts, api) {
    if (!location) throw api.errors.badLocation('dir: target needs a directory (dir:/backups)');
    if (!path.isAbsolute(location))
      throw api.errors.badLocation(
        `dir:${location} is a relative path; give an absolute one (dir:${path.resolve(location)})`,
      );
    const root = path.normalize(location).replace(/(.)\/+$/, '$1');
    try {
      if (opts.create) await fsp.mkdir(root, { recursive: true, mode: 0o700 });
      const st = await fsp.stat(root).catch((err) => {
        if (err?.code === 'ENOENT') return undefined;
        throw err;
      });
      if (st && !st.isDirectory()) throw api.errors.failed(`target ${root} is not a directory`);
    } catch (err) {
      throw api.errors.fromFs(err, `cannot open target directory ${root}`);
    }
    return new DirectoryStore(root, api);
  }

  /** @param {string} name */
  file(name) {
    const parts = typeof name === 'string' ? name.split('/') : [];
    if (parts.length === 0 || parts.some((p) => !COMPONENT.test(p) || p.includes('.tmp-')))
      throw this.api.errors.failed(`bad object name ${JSON.stringify(name)}`);
    return path.join(this.root, ...parts);
  }

  /**
   * @param {string} name
   * @param {Buffer} data
   */
  async put(name, data) {
    const file = this.file(name);
    await this.storeVia(name, data, true, async (tmp) => {
      await fsp.rename(tmp, file);
      await syncDir(path.dirname(file));
    });
  }

  /**
   * Stores the object only if there is none of that name (ObjectStore.putNew): the bytes go to a
   * synced temporary file, which link(2) gives the final name, and link fails with EEXIST when
   * the name is taken: of two creators at once (two processes, or two hosts on one NFS export)
   * exactly one wins. rename(2), put's step, would replace the other's object instead. The
   * temporary name is then unlinked and the directory synced: link and unlink are durable
   * together. A crash between them leaves a `*.tmp-*` file, which listings skip.
   * @param {string} name
   * @param {Buffer} data
   * @returns {Promise<boolean>} false when an object of that name exists (nothing written)
   */
  async putNew(name, data) {
    const file = this.file(name);
    let stored = true;
    await this.storeVia(name, data, false, async (tmp) => {
      try {
        await fsp.link(tmp, file);
      } catch (err) {
        if (/** @type {NodeJS.ErrnoException} */ (err)?.code !== 'EEXIST') throw err;
        stored = false;
      }
      await fsp.rm(tmp, { force: true });
      await syncDir(path.dirname(file));
    });
    return stored;
  }

  /**
   * The object's bytes in a synced temporary file beside its name (`*.tmp-*`, which listings
   * skip), then `place` gives it the name (put: rename; putNew: link, which refuses a taken
   * name). On any failure the temporary file is removed and the error coded.
   * @param {string} name
   * @param {Buffer} data
   * @param {boolean} direct whole blocks with O_DIRECT where the memory allows (writeDirect)
   * @param {(tmp: string) => Promise<void>} place
   */
  async storeVia(name, data, direct, place) {
    const file = this.file(name);
    const dir = path.dirname(file);
    const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      if (!this.dirs.has(dir)) {
        await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
        this.dirs.add(dir);
      }
      const fh = await fsp.open(
        tmp,
        fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
        0o600,
      );
      try {
        let off = direct ? await this.writeDirect(tmp, data) : 0;
        while (off < data.length) off += (await fh.write(data, off, data.length - off, off)).bytesWritten;
        await fh.sync();
      } finally {
        await fh.close();
      }
      await place(tmp);
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw this.api.errors.fromFs(err, `cannot store ${name} in ${this.spec}`);
    }
  }

  /**
   * Writes the object's whole 4 KiB blocks to the new file with O_DIRECT when the memory allows
   * it, and answers how many bytes it wrote (0: none, the caller writes everything). A pack is
   * written once and synced at once: through the page cache every byte was copied into page
   * cache pages first, fresh memory on a VM that hands freed pages back to its host (~11 µs a
   * 4 KiB page on this project's, more than writing the page), and a backup's packs are all of
   * its new bytes. The repository builds its packs in page-aligned shared memory (blob-writer);
   * a buffer the device refuses (EINVAL: not aligned, or a filesystem without O_DIRECT) is
   * written through the page cache instead. The last partial block goes through the page cache
   * either way; the sync that follows covers both.
   * @param {string} tmp
   * @param {Buffer} data
   */
  async writeDirect(tmp, data) {
    if (this.direct === false || data.length < DIRECT_MIN || data.byteOffset % DIRECT_ALIGN !== 0) return 0;
    /** @type {import('node:fs/promises').FileHandle} */
    let fh;
    try {
      fh = await fsp.open(tmp, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
    } catch (err) {
      // A filesystem without O_DIRECT (EINVAL) will not have it for the next object either.
      if (/** @type {NodeJS.ErrnoException} */ (err)?.code === 'EINVAL') this.direct = false;
      return 0;
    }
    const body = data.length - (data.length % DIRECT_ALIGN);
    let off = 0;
    try {
      while (off < body) {
        const n = (await fh.write(data, off, body - off, off)).bytesWritten;
        off += n;
        if (n === 0 || n % DIRECT_ALIGN !== 0) break;
      }
    } catch (err) {
      // Memory the device cannot take directly: what is left goes through the page cache.
      if (/** @type {NodeJS.ErrnoException} */ (err)?.code !== 'EINVAL') throw err;
    } finally {
      await fh.close();
    }
    return off;
  }

  /**
   * @param {string} name
   * @param {{ start: number, end: number }} [range]
   */
  async get(name, range) {
    const file = this.file(name);
    try {
      if (!range) return await fsp.readFile(file, { flag: fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW });
      const fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        const len = Math.max(0, range.end - range.start + 1);
        const buf = Buffer.allocUnsafe(len);
        let off = 0;
        while (off < len) {
          const { bytesRead } = await fh.read(buf, off, len - off, range.start + off);
          if (bytesRead === 0) break;
          off += bytesRead;
        }
        return off === len ? buf : buf.subarray(0, off);
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw this.api.errors.fromFs(err, `${name} in ${this.spec}`);
    }
  }

  /** @param {string} name */
  async stat(name) {
    try {
      const st = await fsp.lstat(this.file(name));
      if (!st.isFile()) throw this.api.errors.notFound(`${name} in ${this.spec} is not an object`);
      return { name, size: st.size };
    } catch (err) {
      throw this.api.errors.fromFs(err, `${name} in ${this.spec}`);
    }
  }

  /**
   * Every object below the prefix's directory whose name starts with the prefix. Hidden and
   * foreign files count (so a non-empty directory is never taken for an empty store); unfinished
   * temporary files do not.
   * @param {string} prefix
   * @returns {Promise<ObjectInfo[]>}
   */
  async list(prefix) {
    /** @type {ObjectInfo[]} */
    const out = [];
    const files = await this.listNames(prefix);
    // Sizes: on the JS thread, one after the other, when the first lstat was answered from the
    // inode cache, else LIST_STATS at a time in the thread pool (storage that must be asked, a
    // network filesystem, answers them side by side; one at a time, a listing of a few hundred
    // was ~15 ms): a pool round trip costs more than a cached lstat.
    let i = 0;
    if (files.length > 0) {
      const t0 = performance.now();
      const st = lstatQuiet(path.join(this.root, files[0]));
      if (performance.now() - t0 < CACHED_LSTAT_MS) {
        if (st) out.push({ name: files[0], size: st.size });
        for (i = 1; i < files.length; i++) {
          const s2 = lstatQuiet(path.join(this.root, files[i]));
          if (s2) out.push({ name: files[i], size: s2.size });
          // The event loop turns now and then (a peer holding a split answers pings).
          if (i % 1024 === 0) await new Promise((r) => setImmediate(r));
        }
      }
    }
    for (; i < files.length; i += LIST_STATS) {
      const batch = files.slice(i, i + LIST_STATS);
      const stats = await Promise.all(
        batch.map((name) => fsp.lstat(path.join(this.root, name)).catch(() => undefined)),
      );
      batch.forEach((name, j) => {
        const st = stats[j];
        if (st) out.push({ name, size: st.size });
      });
    }
    return out;
  }

  /**
   * The names list gives, read from the directories alone (API 1.3.0): the snapshots, index
   * objects and locks every backup lists want no size, and an lstat per object was most of what
   * a listing cost (~25 µs each here: with 1,000 snapshots kept, ~25 ms of CPU and ~700 page
   * faults of every backup; docs/benchmarks.md, "The no-change incremental with many snapshots
   * kept"). A name that is a directory's (an object's path inside it) is walked.
   * @param {string} prefix
   * @returns {Promise<string[]>}
   */
  async listNames(prefix) {
    const slash = prefix.lastIndexOf('/');
    const base = slash >= 0 ? prefix.slice(0, slash) : '';
    /** @type {string[]} */
    const out = [];
    /** @param {string} rel */
    const walk = async (rel) => {
      /** @type {fs.Dirent[]} */
      let ents;
      try {
        ents = await fsp.readdir(rel ? path.join(this.root, rel) : this.root, { withFileTypes: true });
      } catch (err) {
        if (/** @type {NodeJS.ErrnoException} */ (err)?.code === 'ENOENT') return;
        throw this.api.errors.fromFs(err, `cannot list ${this.spec}`);
      }
      for (const d of ents) {
        const name = rel ? `${rel}/${d.name}` : d.name;
        if (d.isDirectory()) {
          if (name.startsWith(prefix) || prefix.startsWith(`${name}/`)) await walk(name);
        } else if (name.startsWith(prefix) && !d.name.includes('.tmp-')) out.push(name);
      }
    };
    await walk(base);
    return out;
  }

  /**
   * Temporary files of puts whose process died between the file's create and its rename: every
   * object is written to `NAME.tmp-RANDOM` first, and listings skip those, so before this nothing
   * removed them. A backup killed while it wrote its packs left each pack in flight behind (up to
   * ~16 MiB each; test/plugins/dir-killed-backup.test.ts kills one there). Only below data/,
   * index/ and snapshots/, which a process writes only while it holds the repository's lock:
   * prune calls this under the exclusive lock, so no live writer has one there. (locks/, keys/
   * and config are written by processes that hold no lock yet: a taker's lock in flight is left.)
   * @param {{ abort: boolean }} o
   * @returns {Promise<{ count: number, bytes: number }>}
   */
  async incompleteWrites(o) {
    let count = 0;
    let bytes = 0;
    for (const top of ['data', 'index', 'snapshots']) {
      /** @type {fs.Dirent[]} */
      let ents;
      try {
        ents = await fsp.readdir(path.join(this.root, top), { withFileTypes: true, recursive: true });
      } catch (err) {
        if (/** @type {NodeJS.ErrnoException} */ (err)?.code === 'ENOENT') continue;
        throw this.api.errors.fromFs(err, `cannot list ${this.spec}`);
      }
      for (const d of ents) {
        if (!d.isFile() || !d.name.includes('.tmp-')) continue;
        const file = path.join(d.parentPath, d.name);
        const st = await fsp.lstat(file).catch(() => undefined);
        if (!st) continue;
        count++;
        bytes += st.size;
        if (o.abort) await fsp.rm(file, { force: true });
      }
    }
    return { count, bytes };
  }

  /** @param {string} name */
  async delete(name) {
    try {
      await fsp.rm(this.file(name), { force: true });
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot delete ${name} in ${this.spec}`);
    }
  }

  async close() {}
}

/**
 * lstat on the JS thread; undefined when the entry is gone or cannot be lstat'ed.
 * @param {string} file
 */
function lstatQuiet(file) {
  try {
    return fs.lstatSync(file, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/** @param {string} dir */
async function syncDir(dir) {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
