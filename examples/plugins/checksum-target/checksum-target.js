// @ts-check
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Transform } from 'node:stream';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * `checksum:/DIR` — a plain tree per snapshot and a SHA256SUMS file that `sha256sum -c` checks:
 *
 *   DIR/<id>.partial/...          a snapshot being written
 *   DIR/<id>/data/...             the files, as they were
 *   DIR/<id>/SHA256SUMS           "HASH  ./path" per file (coreutils format)
 *   DIR/<id>/manifest.json        the manifest: written last, the commit record
 *
 * An example of a third-party target: it uses nothing but the public API (context.twinfs) and
 * Node, and proves itself with the conformance suite (test/checksum-target.test.ts).
 */
export class ChecksumTarget {
  id = 'checksum';
  capabilities = { rangedReads: true, dedup: false, atomicRename: true, maxConcurrency: 4 };

  /**
   * @param {string} root
   * @param {TwinfsApi} api
   * @param {{ verifyOnRead: boolean }} options
   */
  constructor(root, api, options) {
    this.root = root;
    this.api = api;
    this.options = options;
    this.spec = `checksum:${root}`;
  }

  /**
   * @param {string} location
   * @param {TwinfsApi} api
   * @param {{ verifyOnRead: boolean }} options
   */
  static async open(location, api, options) {
    if (!location.startsWith('/'))
      throw api.errors.failed('checksum: needs an absolute directory (checksum:/DIR)');
    const root = path.resolve(location);
    try {
      await fsp.mkdir(root, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw api.errors.fromFs(err, `checksum: cannot open ${root}`);
    }
    return new ChecksumTarget(root, api, options);
  }

  /** @param {import('twinfs').SnapshotMeta} meta */
  async beginSnapshot(meta) {
    const id = this.checkId(meta.snapshotId);
    if (await exists(path.join(this.root, id, 'manifest.json')))
      throw this.api.errors.failed(`snapshot ${id} already exists at ${this.spec}`);
    const partial = path.join(this.root, `${id}.partial`);
    try {
      await fsp.rm(partial, { recursive: true, force: true });
      await fsp.rm(path.join(this.root, id), { recursive: true, force: true });
      await fsp.mkdir(path.join(partial, 'data'), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot start snapshot ${id}`);
    }
    return new ChecksumWriter(this, id, partial);
  }

  async listSnapshots() {
    /** @type {Array<{ snapshotId: string, time: number }>} */
    const out = [];
    for (const name of await fsp.readdir(this.root).catch(() => /** @type {string[]} */ ([]))) {
      if (!ID.test(name) || name.endsWith('.partial')) continue;
      const m = await this.readManifest(name).catch(() => undefined);
      if (m) out.push({ snapshotId: m.meta.snapshotId, time: m.meta.time });
    }
    return out.sort((a, b) => a.time - b.time || a.snapshotId.localeCompare(b.snapshotId));
  }

  /**
   * @param {string} snapshotId
   * @returns {Promise<import('twinfs').SnapshotManifest>}
   */
  async readManifest(snapshotId) {
    const id = this.checkId(snapshotId);
    try {
      return JSON.parse(await fsp.readFile(path.join(this.root, id, 'manifest.json'), 'utf8'));
    } catch (err) {
      throw this.api.errors.fromFs(err, `snapshot ${id} at ${this.spec}`);
    }
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
    } catch (err) {
      await fh?.close();
      throw this.api.errors.fromFs(err, `${p} in snapshot ${snapshotId}`);
    }
    const stream = fh.createReadStream({ start: range.start, end: range.end });
    if (!this.options.verifyOnRead || range.start || range.end !== undefined) return stream;
    const want = (await readSums(path.join(this.root, snapshotId, 'SHA256SUMS'))).get(this.rel(p));
    const check = new VerifyingStream(want, `${p} in snapshot ${snapshotId}`, this.api);
    stream.on('error', (err) => check.destroy(err));
    return stream.pipe(check);
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   */
  async stat(snapshotId, p) {
    const file = await this.committedPath(snapshotId, p);
    try {
      const st = await fsp.lstat(file);
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file';
      return { type: /** @type {import('twinfs').EntryType} */ (type), size: type === 'file' ? st.size : 0 };
    } catch (err) {
      throw this.api.errors.fromFs(err, `${p} in snapshot ${snapshotId}`);
    }
  }

  /** @param {string} snapshotId */
  async deleteSnapshot(snapshotId) {
    const id = this.checkId(snapshotId);
    try {
      // The commit record first: from here on the snapshot does not exist.
      await fsp.rm(path.join(this.root, id, 'manifest.json'), { force: true });
      await fsp.rm(path.join(this.root, id), { recursive: true, force: true });
      await fsp.rm(path.join(this.root, `${id}.partial`), { recursive: true, force: true });
    } catch (err) {
      throw this.api.errors.fromFs(err, `cannot delete snapshot ${id}`);
    }
  }

  async close() {}

  /**
   * Re-hashes every file of a snapshot and compares with its SHA256SUMS.
   * @param {string} snapshotId
   */
  async verify(snapshotId) {
    const id = this.checkId(snapshotId);
    const sums = await readSums(path.join(this.root, id, 'SHA256SUMS'));
    /** @type {string[]} */
    const bad = [];
    for (const [rel, want] of sums) {
      const h = createHash('sha256');
      const file = await safePath(this.api, path.join(this.root, id, 'data'), rel.split('/'), false);
      for await (const c of fs.createReadStream(file)) h.update(c);
      if (h.digest('hex') !== want) bad.push(`/${rel}`);
    }
    return { snapshotId: id, files: sums.size, bad };
  }

  // ---- internals -------------------------------------------------------------------------------

  /** @param {string} id */
  checkId(id) {
    if (typeof id !== 'string' || !ID.test(id) || id.endsWith('.partial') || id.includes('..'))
      throw this.api.errors.failed(`bad snapshot id ${JSON.stringify(id)}`);
    return id;
  }

  /** @param {string} p */
  rel(p) {
    return this.api.volumePathParts(p).join('/');
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   */
  async committedPath(snapshotId, p) {
    const parts = this.api.volumePathParts(p);
    const id = this.checkId(snapshotId);
    if (!(await exists(path.join(this.root, id, 'manifest.json'))))
      throw this.api.errors.notFound(`no snapshot ${id} at ${this.spec}`);
    return safePath(this.api, path.join(this.root, id, 'data'), parts, false);
  }
}

class ChecksumWriter {
  /**
   * @param {ChecksumTarget} target
   * @param {string} snapshotId
   * @param {string} partial
   */
  constructor(target, snapshotId, partial) {
    this.target = target;
    this.api = target.api;
    this.snapshotId = snapshotId;
    this.partial = partial;
    this.data = path.join(partial, 'data');
    /** @type {Map<string, string>} relative path → sha256 */
    this.sums = new Map();
    /** @type {'open' | 'committed' | 'aborted'} */
    this.state = 'open';
  }

  /**
   * @param {string} p
   * @param {import('node:stream').Readable} data
   * @param {import('twinfs').EntryMeta} _meta
   * @param {{ signal?: AbortSignal }} [opts]
   */
  async putFile(p, data, _meta, opts = {}) {
    const file = await this.prepare(p);
    /** @type {fs.promises.FileHandle | undefined} */
    let fh;
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      fh = await fsp.open(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      for await (const chunk of data) {
        if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
        hash.update(chunk);
        bytes += chunk.length;
        await fh.write(chunk);
      }
      if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
      await fh.sync();
    } catch (err) {
      data.destroy();
      await fh?.close();
      fh = undefined;
      await fsp.rm(file, { force: true });
      throw this.api.errors.fromFs(err, `put ${p}`);
    } finally {
      await fh?.close();
    }
    const digest = hash.digest('hex');
    this.sums.set(this.target.rel(p), digest);
    return { hash: digest, bytes };
  }

  /**
   * @param {string} p
   * @param {string} fromSnapshotId
   * @param {import('twinfs').ManifestEntry} entry
   */
  async reuseFile(p, fromSnapshotId, entry) {
    const rel = this.target.rel(p);
    const from = this.target.checkId(fromSnapshotId);
    const old = await readSums(path.join(this.target.root, from, 'SHA256SUMS')).catch(() => new Map());
    if (!old.has(rel) || (entry.hash && old.get(rel) !== entry.hash))
      throw this.api.errors.notFound(`${p} is not in snapshot ${fromSnapshotId}`);
    const file = await this.prepare(p);
    try {
      const src = await safePath(this.api, path.join(this.target.root, from, 'data'), rel.split('/'), false);
      // A reflink where the filesystem has them (btrfs, XFS), a copy elsewhere.
      await fsp.copyFile(src, file, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE);
    } catch (err) {
      throw this.api.errors.fromFs(err, `reuse ${p}`);
    }
    this.sums.set(rel, old.get(rel));
  }

  /**
   * @param {string} p
   * @param {import('twinfs').EntryMeta} _meta
   */
  async putDir(p, _meta) {
    this.checkOpen();
    await safePath(this.api, this.data, this.api.volumePathParts(p), true, true);
  }

  /**
   * @param {string} p
   * @param {string} linkTarget
   * @param {import('twinfs').EntryMeta} _meta
   */
  async putSymlink(p, linkTarget, _meta) {
    const file = await this.prepare(p);
    try {
      await fsp.symlink(linkTarget, file);
    } catch (err) {
      throw this.api.errors.fromFs(err, `symlink ${p}`);
    }
  }

  /** @param {import('twinfs').SnapshotManifest} manifest */
  async commit(manifest) {
    this.checkOpen();
    const final = path.join(this.target.root, this.snapshotId);
    try {
      const lines = [...this.sums].sort(([a], [b]) => (a < b ? -1 : 1)).map(([rel, h]) => sumLine(h, rel));
      await writeDurably(path.join(this.partial, 'SHA256SUMS'), lines.join(''));
      await fsp.rename(this.partial, final);
      await writeDurably(path.join(final, 'manifest.json'), JSON.stringify(manifest));
      this.state = 'committed';
    } catch (err) {
      throw this.api.errors.fromFs(err, `commit of ${this.snapshotId}`);
    }
  }

  async abort() {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await fsp.rm(this.partial, { recursive: true, force: true });
  }

  checkOpen() {
    if (this.state !== 'open') throw this.api.errors.failed(`snapshot ${this.snapshotId} is ${this.state}`);
  }

  /** Checks the path and creates its parents; returns where it goes. @param {string} p */
  async prepare(p) {
    this.checkOpen();
    const parts = this.api.volumePathParts(p);
    if (parts.length === 0) throw this.api.errors.pathEscape(`"${p}" is the root, not a file`);
    const parent = await safePath(this.api, this.data, parts.slice(0, -1), true, true);
    return path.join(parent, /** @type {string} */ (parts.at(-1)));
  }
}

/**
 * Joins parts under root, refusing to pass through anything but real directories (a stored
 * symlink is never followed); with `create`, makes missing directories.
 * @param {TwinfsApi} api
 * @param {string} root
 * @param {string[]} parts
 * @param {boolean} create
 * @param {boolean} [all] check (and create) the last part too
 */
async function safePath(api, root, parts, create, all = false) {
  let cur = root;
  for (const [i, name] of parts.entries()) {
    cur = path.join(cur, name);
    if (i === parts.length - 1 && !all) break;
    let st = await fsp.lstat(cur).catch((err) => {
      if (err.code === 'ENOENT' && create) return undefined;
      throw api.errors.fromFs(err, `/${parts.slice(0, i + 1).join('/')}`);
    });
    if (!st) {
      // Concurrent puts may create the same directory: EEXIST is fine, what is there is checked below.
      await fsp.mkdir(cur, { mode: 0o700 }).catch((err) => {
        if (err.code !== 'EEXIST') throw err;
      });
      st = await fsp.lstat(cur);
    }
    const at = `/${parts.slice(0, i + 1).join('/')}`;
    if (st.isSymbolicLink()) throw api.errors.pathEscape(`${at} is a symlink; refusing to follow it`);
    if (!st.isDirectory()) {
      if (!create) throw api.errors.notFound(`${at} is not a directory`);
      throw api.errors.pathEscape(`${at} is not a directory; refusing to write below it`);
    }
  }
  return cur;
}

/**
 * A line of coreutils' SHA256SUMS; names with a newline or a backslash are escaped its way.
 * @param {string} hash
 * @param {string} rel
 */
function sumLine(hash, rel) {
  const escaped = rel.includes('\\') || rel.includes('\n');
  const name = escaped ? rel.replace(/\\/g, '\\\\').replace(/\n/g, '\\n') : rel;
  return `${escaped ? '\\' : ''}${hash}  ./${name}\n`;
}

/** @param {string} file */
async function readSums(file) {
  /** @type {Map<string, string>} */
  const sums = new Map();
  for (const line of (await fsp.readFile(file, 'utf8')).split('\n')) {
    const m = /^(\\?)([0-9a-f]{64}) {2}\.\/(.*)$/.exec(line);
    if (!m?.[2] || m[3] === undefined) continue;
    const rel = m[1] ? m[3].replace(/\\(\\|n)/g, (_, c) => (c === 'n' ? '\n' : '\\')) : m[3];
    sums.set(rel, m[2]);
  }
  return sums;
}

/**
 * @param {string} file
 * @param {string} text
 */
async function writeDurably(file, text) {
  const tmp = `${file}.tmp`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
}

/** @param {string} p */
async function exists(p) {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}

/** Passes a file through, failing at its end if its sha256 is not the recorded one. */
class VerifyingStream extends Transform {
  /**
   * @param {string | undefined} want
   * @param {string} what
   * @param {TwinfsApi} api
   */
  constructor(want, what, api) {
    super();
    this.want = want;
    this.what = what;
    this.api = api;
    this.hash = createHash('sha256');
  }

  /**
   * @override
   * @param {Buffer} chunk
   * @param {BufferEncoding} _enc
   * @param {(err?: Error | null, data?: Buffer) => void} cb
   */
  _transform(chunk, _enc, cb) {
    this.hash.update(chunk);
    cb(null, chunk);
  }

  /**
   * @override
   * @param {(err?: Error | null) => void} cb
   */
  _flush(cb) {
    const got = this.hash.digest('hex');
    cb(
      this.want && got !== this.want
        ? this.api.errors.failed(`${this.what}: sha256 ${got}, SHA256SUMS says ${this.want}`)
        : null,
    );
  }
}
