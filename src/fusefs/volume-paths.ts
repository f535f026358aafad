import * as path from 'node:path';
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

  /** The backing path of a volume path. */
  backing(volumePath: string): string {
    const v = VolumePaths.normalize(volumePath);
    return v === '/' ? this.root : this.root + v;
  }
}

/** Parent of a volume path ('/' for top-level entries). */
export function parentOf(volumePath: string): string {
  const i = volumePath.lastIndexOf('/');
  return i <= 0 ? '/' : volumePath.slice(0, i);
}
