import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { errnoError } from './errno.js';

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFSOCK = 0o140000;

/**
 * mknod(2) for what twinfs stores: regular files, fifos and device nodes (Node has no mknod,
 * so fifos and devices go through mknod(1)). Sockets are refused (EOPNOTSUPP). Used for the
 * primary (VolumeOps) and the mirror (MirrorWriter). Failures are errno errors.
 */
export async function mknod(p: string, mode: number, dev: number): Promise<void> {
  const perm = mode & 0o7777;
  switch (mode & S_IFMT) {
    case S_IFREG:
      await (await fsp.open(p, 'wx', perm)).close();
      return;
    case S_IFIFO:
      return run(['-m', perm.toString(8), p, 'p']);
    case S_IFCHR:
    case S_IFBLK: {
      const major = (dev >>> 8) & 0xfff;
      const minor = (dev & 0xff) | ((dev >>> 12) & 0xfff00);
      const type = (mode & S_IFMT) === S_IFCHR ? 'c' : 'b';
      return run(['-m', perm.toString(8), p, type, String(major), String(minor)]);
    }
    case S_IFSOCK:
      throw errnoError('EOPNOTSUPP', 'sockets cannot be created on twinfs');
    default:
      throw errnoError('EINVAL');
  }
}

function run(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('mknod', args, { timeout: 10_000 }, (err, _out, stderr) => {
      if (!err) return resolve();
      const msg = String(stderr);
      if (/File exists/.test(msg)) return reject(errnoError('EEXIST'));
      if (/Permission denied|not permitted/.test(msg)) return reject(errnoError('EPERM'));
      if (/No such file/.test(msg)) return reject(errnoError('ENOENT'));
      reject(errnoError('EIO', msg.trim()));
    });
  });
}
