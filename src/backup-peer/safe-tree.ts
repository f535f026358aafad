import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { errnoCode, TwinError } from '../common/errors.js';
import { volumePathParts } from './target.js';

/**
 * A directory tree that is read or written by volume path without ever following a symlink
 * out of it: every parent component is checked to be a real directory (lstat, cached), and the
 * last component is opened with O_NOFOLLOW by the callers. This is what keeps a hostile or
 * racy path list (a server's items, a catalog, a restored symlink '/a -> /etc' followed by a
 * file '/a/passwd') from reading or writing outside the tree.
 *
 * The cache assumes nobody else swaps a checked directory for a symlink while we work: true
 * for a split mirror copy, a snapshot being written and a restore destination we populate.
 */
export class SafeTree {
  /** Directories (relative, '' = root) known to be real directories inside the tree. */
  private readonly dirs = new Set<string>(['']);

  constructor(readonly root: string) {}

  /** Absolute path of a volume path inside the tree (checked for '..', not for symlinks). */
  abs(volumePath: string): string {
    const parts = volumePathParts(volumePath);
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /** Checks every parent of volumePath is a real directory; returns the absolute path. */
  async resolve(volumePath: string): Promise<string> {
    const parts = volumePathParts(volumePath);
    let rel = '';
    for (const name of parts.slice(0, -1)) {
      const next = rel ? `${rel}/${name}` : name;
      if (!this.dirs.has(next)) {
        const st = await fsp.lstat(path.join(this.root, next));
        if (!st.isDirectory())
          throw new TwinError(
            'ETWIN_PATH_ESCAPE',
            `${volumePath}: /${next} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}; refusing to follow it`,
            { path: volumePath, at: `/${next}` },
          );
        this.dirs.add(next);
      }
      rel = next;
    }
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /**
   * The absolute path of volumePath when every parent is already known to be a real directory
   * (checked before by resolve or mkdir), else undefined: resolve without a promise for the
   * common case of a walk's entries, whose directory was just read.
   */
  resolveKnown(volumePath: string): string | undefined {
    const parts = volumePathParts(volumePath);
    if (parts.length > 1 && !this.dirs.has(parts.slice(0, -1).join('/'))) return undefined;
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /**
   * Records volumePath as a real directory inside the tree: the caller just read it without
   * following a final symlink (readdirNoAtime), and its parents were resolved.
   */
  knownDirectory(volumePath: string): void {
    const rel = volumePathParts(volumePath).join('/');
    if (rel) this.dirs.add(rel);
  }

  /**
   * Creates volumePath's parents (mode `mode`, before umask) as needed, refusing symlinks on the
   * way; returns the absolute path of volumePath itself (not created).
   */
  async prepareParents(volumePath: string, mode = 0o700): Promise<string> {
    const parts = volumePathParts(volumePath);
    await this.mkdirs(parts.slice(0, -1), mode);
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /** Creates volumePath as a directory (and its parents); an existing real directory is fine. */
  async mkdir(volumePath: string, mode = 0o700): Promise<string> {
    const parts = volumePathParts(volumePath);
    await this.mkdirs(parts, mode);
    return parts.length === 0 ? this.root : path.join(this.root, ...parts);
  }

  /** Forgets what is known about a directory (after the caller removed or replaced it). */
  forget(volumePath: string): void {
    const rel = volumePathParts(volumePath).join('/');
    for (const d of [...this.dirs]) if (d === rel || d.startsWith(rel + '/')) this.dirs.delete(d);
    this.dirs.add('');
  }

  private async mkdirs(parts: string[], mode: number): Promise<void> {
    let rel = '';
    for (const name of parts) {
      const next = rel ? `${rel}/${name}` : name;
      if (!this.dirs.has(next)) {
        const abs = path.join(this.root, next);
        try {
          await fsp.mkdir(abs, mode);
        } catch (err) {
          if (errnoCode(err) !== 'EEXIST') throw err;
        }
        // mkdir never follows a final symlink, but EEXIST may be one: look.
        const st = await fsp.lstat(abs);
        if (!st.isDirectory())
          throw new TwinError(
            'ETWIN_PATH_ESCAPE',
            `/${next} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}; refusing to write through it`,
            { at: `/${next}` },
          );
        this.dirs.add(next);
      }
      rel = next;
    }
  }
}

/** fsyncs a file or directory by path. */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await fsp.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Runs fn over items with at most `limit` in flight; rejects with the first failure (after the rest settle). */
export async function forEachLimit<T>(
  items: Iterable<T>,
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  const it = items[Symbol.iterator]();
  let failed: { err: unknown } | undefined;
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

/**
 * forEachLimit over an async iterable: `limit` workers pull the next item as they get free, so
 * producing items and processing them overlap. Rejects with the first failure (after the
 * workers in flight settled); the iterable is closed then, or when it ran out.
 */
export async function forEachLimitAsync<T>(
  items: AsyncIterable<T>,
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  const it = items[Symbol.asyncIterator]();
  let failed: { err: unknown } | undefined;
  let done = false;
  const worker = async () => {
    for (;;) {
      if (failed || done) return;
      let n: IteratorResult<T>;
      try {
        n = await it.next();
      } catch (err) {
        failed ??= { err };
        return;
      }
      if (n.done) {
        done = true;
        return;
      }
      try {
        await fn(n.value);
      } catch (err) {
        failed ??= { err };
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  } finally {
    if (!done) await it.return?.(undefined)?.catch(() => undefined);
  }
  if (failed) throw failed.err;
}
