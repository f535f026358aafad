import { promises as fsp } from 'node:fs';
import { check, errnoError } from './errno.js';
import { posix } from './native.js';

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFSOCK = 0o140000;

/**
 * mknod(2) for every node type twinfs stores: regular files, fifos, character and block devices
 * and UNIX sockets (what bind(2) of an AF_UNIX socket asks a filesystem for). dev is a dev_t as
 * stat(2) and FUSE give it. Used for the primary (VolumeOps), the mirror (MirrorWriter,
 * entry-sync) and restore. Failures are errno errors.
 */
export async function mknod(p: string, mode: number, dev: number): Promise<void> {
  switch (mode & S_IFMT) {
    case S_IFREG:
      await (await fsp.open(p, 'wx', mode & 0o7777)).close();
      return;
    case S_IFIFO:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFSOCK:
      // mknod applies the umask: the caller's mode is set as given (chmod after, like the
      // kernel does for a FUSE request, which already applied the caller's umask).
      check(
        posix().mknod(p, mode, (mode & S_IFMT) === S_IFCHR || (mode & S_IFMT) === S_IFBLK ? dev : 0),
        `mknod ${p}`,
      );
      await fsp.chmod(p, mode & 0o7777);
      return;
    default:
      throw errnoError('EINVAL', `mknod ${p}: unknown node type ${(mode & S_IFMT).toString(8)}`);
  }
}
