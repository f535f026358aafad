import * as fs from 'node:fs';
import { check } from './errno.js';
import { posix } from './native.js';

/** Linux's PATH_MAX: the longest path a system call takes, its terminating NUL included. */
export const PATH_MAX = 4096;

/** A backing path the kernel accepts, and what to do once the call that used it is done. */
interface BackingRef {
  path: string;
  release(): void;
}

const noRelease = () => undefined;

/** True when root + volumePath is PATH_MAX bytes or more (the kernel refuses it: ENAMETOOLONG). */
export function isTooLong(full: string): boolean {
  // A UTF-16 unit is at most 3 bytes of UTF-8: most paths are decided without encoding them.
  return full.length * 3 >= PATH_MAX && Buffer.byteLength(full) >= PATH_MAX;
}

/**
 * A path naming root + volumePath ('/'-rooted, normalised, no '..') that the kernel accepts.
 * The full path when it is short enough (the common case: no system call). Otherwise the
 * parent directory is opened component by component from root, never through a symlink
 * (native openDirBeneath), and the entry is named /proc/self/fd/N/leaf: the kernel resolves
 * the leaf relative to that descriptor, as the *at calls do with a directory descriptor, and
 * every Node fs call takes such a path. Release it when the call is done (closes N).
 */
function backingRef(root: string, volumePath: string): BackingRef {
  const full = volumePath === '/' ? root : root + volumePath;
  if (!isTooLong(full)) return { path: full, release: noRelease };
  const i = volumePath.lastIndexOf('/');
  const fd = posix().openDirBeneath(root, volumePath.slice(0, i));
  if (fd < 0) check(fd, `open the directories of ${volumePath.slice(0, 200)}... under ${root}`);
  let open = true;
  return {
    path: `/proc/self/fd/${fd}/${volumePath.slice(i + 1)}`,
    release: () => {
      if (open) fs.close(fd, noRelease);
      open = false;
    },
  };
}

/**
 * Runs fn with a kernel-acceptable backing path for each volume path under root (see
 * backingRef), and closes the descriptors it opened when fn returns or its promise settles.
 * Paths short enough (nearly all) cost nothing more than the concatenation.
 */
export function underRoot<T>(root: string, volumePaths: string[], fn: (...backing: string[]) => T): T {
  const refs: BackingRef[] = [];
  const releaseAll = () => {
    for (const r of refs) r.release();
  };
  let out: T;
  try {
    for (const p of volumePaths) refs.push(backingRef(root, p));
    out = fn(...refs.map((r) => r.path));
  } catch (err) {
    releaseAll();
    throw err;
  }
  if (out instanceof Promise) return out.finally(releaseAll) as T;
  releaseAll();
  return out;
}
