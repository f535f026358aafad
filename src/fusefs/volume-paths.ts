import * as path from 'node:path';
import { underRoot } from '../posix/long-path.js';
import { errnoError } from './errno.js';

/**
 * Maps volume paths ('/a/b' as FUSE hands them over) to paths under a backing root, refusing
 * anything that would leave the root. FUSE never sends '..' components, but the control
 * channel and the CLI take paths from users, so the check lives here once.
 */
export class VolumePaths {
  readonly root: string;
  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** Normalises a user or FUSE path to a volume path ('/' rooted). Throws EPERM-coded escape errors. */
  static normalize(p: string): string {
    if (typeof p !== 'string' || p.includes('\0'))
      throw errnoError('EINVAL', `invalid path: ${JSON.stringify(p)}`);
    const parts = p.split('/').filter((s) => s !== '' && s !== '.');
    if (parts.includes('..')) throw errnoError('EPERM', `path escapes the volume root: ${p}`);
    return '/' + parts.join('/');
  }

  /** The backing path of a volume path (may be PATH_MAX or longer: see at). */
  backing(volumePath: string): string {
    const v = VolumePaths.normalize(volumePath);
    return v === '/' ? this.root : this.root + v;
  }

  /**
   * Runs fn with backing paths of the volume paths that the kernel accepts even when root +
   * path is PATH_MAX bytes or longer (a path relative to a directory deep in the mount): then
   * the entry is reached through a descriptor of its parent, opened one component at a time
   * without following symlinks (src/posix/long-path.ts). Descriptors close when fn returns or
   * its promise settles; short paths cost nothing more than backing().
   */
  at<T>(volumePaths: string[], fn: (...backing: string[]) => T): T {
    return underRoot(this.root, volumePaths.map(VolumePaths.normalize), fn);
  }
}

/** Parent of a volume path ('/' for top-level entries). */
export function parentOf(volumePath: string): string {
  const i = volumePath.lastIndexOf('/');
  return i <= 0 ? '/' : volumePath.slice(0, i);
}
