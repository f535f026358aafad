import { check } from './errno.js';
import { posix } from './native.js';

/**
 * The names in a directory (no '.' and '..', unsorted), without moving its atime where the
 * caller may ask for that (O_NOATIME: owner or root), and never through a final symlink
 * (ENOTDIR/ELOOP). The backup peer walks split mirror copies with it: Node's readdir would move
 * every directory's atime (relatime, once ctime is newer), and the next snapshot would record
 * the moved one. Synchronous: one getdents loop on a local directory.
 */
export function readdirNoAtime(dir: string): string[] {
  const r = posix().readdirNoAtime(dir);
  if (typeof r === 'number') {
    check(r, `readdir ${dir}`);
    return [];
  }
  return r;
}
