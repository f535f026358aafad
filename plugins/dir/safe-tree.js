// @ts-check
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */

/**
 * A directory tree read or written by volume path without ever following a symlink out of it:
 * every parent component is checked to be a real directory (lstat, cached), and the last
 * component is opened with O_NOFOLLOW by the callers. This keeps a hostile or racy path list
 * (a stored symlink '/a -> /etc' followed by a file '/a/passwd') from reading or writing
 * outside the tree. The cache assumes nobody else swaps a checked directory for a symlink while
 * we work: true for a snapshot being written and for a committed one.
 */
export class SafeTree {
  /**
   * @param {string} root
   * @param {TwinfsApi} api
   */
  constructor(root, api) {
    this.root = root;
    this.api = api;
    /** Directories (relative, '' = root) known to be real directories inside the tree. */
    this.dirs = new Set(['']);
  }

  /** Absolute path of a volume path (checked for '..', not for symlinks). @param {string} volumePath */
  abs(volumePath) {
    const parts = this.api.volumePathParts(volumePath);
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /**
   * Checks every parent of volumePath is a real directory; returns the absolute path. A parent
   * that is a file or a symlink throws pathEscape with `blockedAt` set (the caller reading a
   * snapshot turns that into not-found: nothing is below a file).
   * @param {string} volumePath
   */
  async resolve(volumePath) {
    const parts = this.api.volumePathParts(volumePath);
    let rel = '';
    for (const name of parts.slice(0, -1)) {
      const next = rel ? `${rel}/${name}` : name;
      if (!this.dirs.has(next)) {
        const st = await fsp.lstat(path.join(this.root, next));
        if (!st.isDirectory())
          throw Object.assign(
            this.api.errors.pathEscape(
              `${volumePath}: /${next} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}; refusing to follow it`,
            ),
            { blockedAt: `/${next}` },
          );
        this.dirs.add(next);
      }
      rel = next;
    }
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /**
   * Creates volumePath's parents as needed, refusing symlinks on the way; returns the absolute
   * path of volumePath itself (not created).
   * @param {string} volumePath
   * @param {number} [mode]
   */
  async prepareParents(volumePath, mode = 0o700) {
    const parts = this.api.volumePathParts(volumePath);
    await this.mkdirs(parts.slice(0, -1), mode);
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /**
   * Creates volumePath as a directory (and its parents); an existing real directory is fine.
   * @param {string} volumePath
   * @param {number} [mode]
   */
  async mkdir(volumePath, mode = 0o700) {
    const parts = this.api.volumePathParts(volumePath);
    await this.mkdirs(parts, mode);
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /**
   * @param {string[]} parts
   * @param {number} mode
   */
  async mkdirs(parts, mode) {
    let rel = '';
    for (const name of parts) {
      const next = rel ? `${rel}/${name}` : name;
      if (!this.dirs.has(next)) {
        const abs = path.join(this.root, next);
        await fsp.mkdir(abs, mode).catch((err) => {
          if (err?.code !== 'EEXIST') throw err;
        });
        // mkdir never follows a final symlink, but EEXIST may be one: look.
        const st = await fsp.lstat(abs);
        if (!st.isDirectory())
          throw this.api.errors.pathEscape(
            `/${next} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}; refusing to write through it`,
          );
        this.dirs.add(next);
      }
      rel = next;
    }
  }
}

/** @param {string} p */
export async function exists(p) {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}

/** fsyncs a file or directory by path. @param {string} p */
export async function fsyncPath(p) {
  const fh = await fsp.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Runs fn over items with at most `limit` in flight; rejects with the first failure (after the rest settle).
 * @template T
 * @param {Iterable<T>} items
 * @param {number} limit
 * @param {(item: T) => Promise<void>} fn
 */
export async function forEachLimit(items, limit, fn) {
  const it = items[Symbol.iterator]();
  /** @type {{ err: unknown } | undefined} */
  let failed;
  const worker = async () => {
    for (;;) {
      if (failed) return;
      const n = it.next();
      if (n.done) return;
      try {
        await fn(n.value);
      } catch (err) {
        failed ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  if (failed) throw failed.err;
}
