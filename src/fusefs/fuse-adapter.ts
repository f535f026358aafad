import { isUnexpected, toFuseErrno } from './errno.js';
import type { CallerContext, DirListing, VolumeOps } from './volume-ops.js';

type Cb = (...args: any[]) => void;

export interface AdapterOptions {
  /** Reads the caller of the op being dispatched (valid synchronously at handler entry only). */
  context: () => CallerContext | undefined;
  /** Unexpected (non-errno) failures go here; they reach the application as EIO. */
  onUnexpectedError?: (op: string, err: unknown) => void;
}

/**
 * Turns VolumeOps into fuse-native's callback handlers. This is the one boundary where errors
 * become negative errno values.
 */
export function createFuseHandlers(ops: VolumeOps, opts: AdapterOptions): Record<string, Cb> {
  const report =
    opts.onUnexpectedError ?? ((op, err) => console.error(`twinfs: ${op} failed unexpectedly:`, err));
  const fail = (op: string, cb: Cb, err: unknown, ...defaults: unknown[]) => {
    if (isUnexpected(err)) report(op, err);
    cb(toFuseErrno(err), ...defaults);
  };
  // Result-carrying ops answer cb(0, value); data ops answer cb(bytes) or cb(-errno).
  const value =
    (op: string, cb: Cb) =>
    (p: Promise<unknown>): void => {
      p.then(
        (v) => cb(0, v),
        (e) => fail(op, cb, e),
      );
    };
  const status =
    (op: string, cb: Cb) =>
    (p: Promise<unknown>): void => {
      p.then(
        () => cb(0),
        (e) => fail(op, cb, e),
      );
    };
  const tryCall = (op: string, cb: Cb, fn: () => Promise<unknown>, wrap: (p: Promise<unknown>) => void) => {
    let p: Promise<unknown>;
    try {
      p = fn();
    } catch (err) {
      fail(op, cb, err);
      return;
    }
    wrap(p);
  };
  // read and write answer synchronously when they can (cache hit, room in the cache).
  const byteCount = (op: string, cb: Cb, fn: () => number | Promise<number>) => {
    let r: number | Promise<number>;
    try {
      r = fn();
    } catch (err) {
      fail(op, cb, err);
      return;
    }
    if (typeof r === 'number') return cb(r);
    r.then(
      (n) => cb(n),
      (e) => fail(op, cb, e),
    );
  };

  return {
    init: (cb: Cb) => cb(0),
    getattr: (path: string, cb: Cb) => tryCall('getattr', cb, () => ops.getattr(path), value('getattr', cb)),
    fgetattr: (path: string | null, fh: number, cb: Cb) =>
      tryCall('fgetattr', cb, () => ops.fgetattr(fh, path), value('fgetattr', cb)),
    access: (path: string, mode: number, cb: Cb) =>
      tryCall('access', cb, () => ops.access(path, mode), status('access', cb)),
    // A listing with attributes (readdirplus) answers cb(0, names, stats).
    readdir: (path: string, cb: Cb) =>
      tryCall(
        'readdir',
        cb,
        () => ops.readdir(path),
        (p) =>
          p.then(
            (r) => (Array.isArray(r) ? cb(0, r) : cb(0, (r as DirListing).names, (r as DirListing).stats)),
            (e) => fail('readdir', cb, e),
          ),
      ),
    readlink: (path: string, cb: Cb) =>
      tryCall('readlink', cb, () => ops.readlink(path), value('readlink', cb)),
    statfs: (path: string, cb: Cb) => tryCall('statfs', cb, () => ops.statfs(path), value('statfs', cb)),
    open: (path: string, flags: number, cb: Cb) =>
      tryCall('open', cb, () => ops.open(path, flags), value('open', cb)),
    // The open flags after the callback: the fuse-native patch's extension (docs/fuse-native-patch.md).
    create: (path: string, mode: number, cb: Cb, flags?: number) => {
      const ctx = opts.context();
      tryCall('create', cb, () => ops.create(path, mode, ctx, flags ?? 0), value('create', cb));
    },
    read: (_path: string, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) =>
      byteCount('read', cb, () => ops.read(fh, buf, len, pos)),
    // The operations on an open file get a null path when the file has none any more (its
    // directory was removed while a hidden name of it was the last entry: VolumeOps.rmdir); they
    // work by the handle.
    write: (path: string | null, fh: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
      const writepage = opts.context()?.writepage === true;
      byteCount('write', cb, () => ops.write(fh, buf, len, pos, path ?? undefined, writepage));
    },
    flush: (_path: string, fh: number, cb: Cb) =>
      tryCall('flush', cb, () => ops.flush(fh), status('flush', cb)),
    release: (_path: string, fh: number, cb: Cb) =>
      tryCall('release', cb, () => ops.release(fh), status('release', cb)),
    fsync: (path: string | null, datasync: number | boolean, fh: number, cb: Cb) =>
      tryCall('fsync', cb, () => ops.fsync(path, Boolean(datasync), fh), status('fsync', cb)),
    // path is null for a directory removed or renamed over while open (libfuse's node of it has
    // no path): see VolumeOps.fsyncdir.
    fsyncdir: (path: string | null, _datasync: number | boolean, _fh: number, cb: Cb) =>
      tryCall('fsyncdir', cb, () => ops.fsyncdir(path), status('fsyncdir', cb)),
    truncate: (path: string, size: number, cb: Cb) =>
      tryCall('truncate', cb, () => ops.truncate(path, size), status('truncate', cb)),
    ftruncate: (path: string | null, fh: number, size: number, cb: Cb) =>
      tryCall('ftruncate', cb, () => ops.ftruncate(fh, size, path ?? undefined), status('ftruncate', cb)),
    fallocate: (path: string | null, fh: number, mode: number, offset: number, len: number, cb: Cb) =>
      tryCall(
        'fallocate',
        cb,
        () => ops.fallocate(fh, mode, offset, len, path ?? undefined),
        status('fallocate', cb),
      ),
    // SEEK_DATA / SEEK_HOLE (libfuse3, patch level 17): the offset found, or an errno (ENXIO).
    lseek: (_path: string | null, fh: number, offset: number, whence: number, cb: Cb) => {
      let at: number;
      try {
        at = ops.lseek(fh, offset, whence);
      } catch (err) {
        fail('lseek', cb, err);
        return;
      }
      cb(0, at);
    },
    unlink: (path: string, cb: Cb) => {
      const ctx = opts.context();
      tryCall('unlink', cb, () => ops.unlink(path, ctx), status('unlink', cb));
    },
    rmdir: (path: string, cb: Cb) => {
      const ctx = opts.context();
      tryCall('rmdir', cb, () => ops.rmdir(path, ctx), status('rmdir', cb));
    },
    mkdir: (path: string, mode: number, cb: Cb) => {
      const ctx = opts.context();
      tryCall('mkdir', cb, () => ops.mkdir(path, mode, ctx), status('mkdir', cb));
    },
    mknod: (path: string, mode: number, dev: number, cb: Cb) => {
      const ctx = opts.context();
      tryCall('mknod', cb, () => ops.mknod(path, mode, dev, ctx), status('mknod', cb));
    },
    symlink: (target: string, path: string, cb: Cb) => {
      const ctx = opts.context();
      tryCall('symlink', cb, () => ops.symlink(target, path, ctx), status('symlink', cb));
    },
    link: (from: string, path: string, cb: Cb) =>
      tryCall('link', cb, () => ops.link(from, path), status('link', cb)),
    // followsHide (patch level 10): 1 when libfuse hid `to` in this same request, 0 when not;
    // flags (level 15): RENAME_NOREPLACE or 0.
    rename: (from: string, to: string, cb: Cb, followsHide?: number, flags?: number) =>
      tryCall(
        'rename',
        cb,
        () =>
          ops.rename(
            from,
            to,
            followsHide === 0 || followsHide === 1 ? followsHide === 1 : undefined,
            flags ?? 0,
            opts.context(),
          ),
        status('rename', cb),
      ),
    // "#FH": a node without a path, changed through its handle (fuse-native level 12).
    chmod: (path: string, mode: number, cb: Cb) => {
      const ctx = opts.context();
      tryCall(
        'chmod',
        cb,
        () => (isHandlePath(path) ? ops.fchmod(handleOf(path), mode, ctx) : ops.chmod(path, mode, ctx)),
        status('chmod', cb),
      );
    },
    chown: (path: string, uid: number, gid: number, cb: Cb) => {
      const ctx = opts.context();
      tryCall(
        'chown',
        cb,
        () =>
          isHandlePath(path) ? ops.fchown(handleOf(path), uid, gid, ctx) : ops.chown(path, uid, gid, ctx),
        status('chown', cb),
      );
    },
    utimens: (path: string, atime: bigint | null, mtime: bigint | null, cb: Cb) =>
      tryCall(
        'utimens',
        cb,
        () =>
          isHandlePath(path) ? ops.futimens(handleOf(path), atime, mtime) : ops.utimens(path, atime, mtime),
        status('utimens', cb),
      ),
    // "#FH": a node without a path, by a handle of it (fuse-native level 19).
    setxattr: (path: string, name: string, value: Buffer, _position: number, flags: number, cb: Cb) =>
      tryCall(
        'setxattr',
        cb,
        () =>
          isHandlePath(path)
            ? ops.fsetxattr(handleOf(path), name, value, flags)
            : ops.setxattr(path, name, value, flags),
        status('setxattr', cb),
      ),
    getxattr: (path: string, name: string, _position: number, cb: Cb) =>
      tryCall(
        'getxattr',
        cb,
        () => (isHandlePath(path) ? ops.fgetxattr(handleOf(path), name) : ops.getxattr(path, name)),
        value('getxattr', cb),
      ),
    listxattr: (path: string, cb: Cb) => {
      const ctx = opts.context();
      tryCall(
        'listxattr',
        cb,
        () => (isHandlePath(path) ? ops.flistxattr(handleOf(path), ctx) : ops.listxattr(path, ctx)),
        value('listxattr', cb),
      );
    },
    removexattr: (path: string, name: string, cb: Cb) =>
      tryCall(
        'removexattr',
        cb,
        () => (isHandlePath(path) ? ops.fremovexattr(handleOf(path), name) : ops.removexattr(path, name)),
        status('removexattr', cb),
      ),
  };
}

/** fuse-native (level 12) names a node without a path by its handle: "#FH". */
function isHandlePath(path: string): boolean {
  return typeof path === 'string' && path.startsWith('#');
}

function handleOf(path: string): number {
  return Number(path.slice(1));
}
