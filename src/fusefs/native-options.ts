import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';

const require = createRequire(import.meta.url);

/**
 * The one place that knows how mount options reach libfuse through fuse-native.
 *
 * fuse-native 2.2.6 passes a fixed list of options; twinfs's patch (patches/, see
 * docs/fuse-native-patch.md) adds `extraOptions`, appended verbatim to the `-o` list. Through
 * it we ask for:
 * - big_writes + max_write=131072: 128 KiB write requests instead of 4 KiB (libfuse2's cap);
 * - max_read / max_readahead: large reads and readahead;
 * - use_ino: our (the primary's) inode numbers, so hard links share one;
 * - default_permissions (a regular option): the kernel checks permission bits like a local fs.
 *
 * With `libfuse: 3` (`serve --fuse 3`, TWINFS_FUSE=3, or DEFAULT_LIBFUSE) the patch's libfuse3
 * build is used instead: kernel attribute and entry caches with timeouts and the page cache kept across
 * opens (kernel_cache), kept exact by invalidating every name of a changed file
 * (kernel-names.ts); no FLUSH at the close of a read-only descriptor (no_rofd_flush); 1 MiB
 * requests (max_write, which libfuse3 turns into max_pages); readdirplus. big_writes and
 * nonempty do not exist there (both are always on). Missing names are not cached
 * (negative_timeout stays 0: docs/architecture.md, "Tried: missing names cached").
 */
export interface NativeMountOptions {
  attrTimeoutSec: number;
  entryTimeoutSec: number;
  allowOther: boolean;
  fsname: string;
  /** Mount over a non-empty directory (`serve --force`); libfuse2 refuses one otherwise. */
  nonempty?: boolean;
  /** Which libfuse: 2 or 3 (default: libfuseFromEnv; docs/architecture.md, "The FUSE layer"). */
  libfuse?: 2 | 3;
  /**
   * libfuse3: the kernel caches directory listings across opens (cache_readdir; default
   * cacheReaddirFromEnv). twinfs invalidates a directory whose entries change without a request
   * of the kernel's (libfuse's removal of a hidden file at its last close).
   */
  cacheReaddir?: boolean;
}

/** Kernel cache timeouts on the libfuse3 path, where every change invalidates exactly. */
export const LIBFUSE3_CACHE_SEC = 60;

/**
 * The libfuse a mount uses when neither `serve --fuse` nor TWINFS_FUSE names one: the one place
 * the default lives: libfuse3 (docs/architecture.md, "The FUSE layer"); libfuse2 is still used
 * where libfuse3 cannot mount: its build is missing (libfuse3-dev was not there at npm install),
 * or the server is not root and has no fusermount3.
 */
export const DEFAULT_LIBFUSE: 2 | 3 = 3;

/** Whether fuse-native's libfuse3 build is there (made at npm install when libfuse3-dev was). */
export function libfuse3Built(): boolean {
  try {
    return require('fuse-native').hasLibfuse3?.() === true;
  } catch {
    return false;
  }
}

/**
 * Whether libfuse3 can mount here: its build is there, and the process is root (libfuse3 mounts
 * with mount(2)) or has `fusermount3` on its PATH (the setuid helper libfuse3 runs otherwise;
 * Debian's `fuse3` package, where `fuse`'s fusermount, libfuse2's helper, does not do).
 */
export function libfuse3Usable(
  uid = process.getuid?.() ?? 0,
  pathEnv = process.env.PATH ?? '',
  built: () => boolean = libfuse3Built,
): boolean {
  if (!built()) return false;
  if (uid === 0) return true;
  return pathEnv.split(':').some((dir) => {
    if (!dir) return false;
    try {
      fs.accessSync(path.join(dir, 'fusermount3'), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * The libfuse chosen by the environment: TWINFS_FUSE=2 or 3; otherwise DEFAULT_LIBFUSE, or
 * libfuse2 when that is 3 and libfuse3 cannot mount here (libfuse3Usable).
 */
export function libfuseFromEnv(
  env: NodeJS.ProcessEnv = process.env,
  haveLibfuse3 = () => libfuse3Usable(),
): 2 | 3 {
  if (env.TWINFS_FUSE === '2') return 2;
  if (env.TWINFS_FUSE === '3') return 3;
  if (env.TWINFS_FUSE)
    throw new TwinError('ETWIN_USAGE', `TWINFS_FUSE must be 2 or 3, not ${JSON.stringify(env.TWINFS_FUSE)}`, {
      value: env.TWINFS_FUSE,
    });
  return DEFAULT_LIBFUSE === 3 && !haveLibfuse3() ? 2 : DEFAULT_LIBFUSE;
}

/**
 * libfuse3 path: getattr (so lookups) and getxattr answered in libfuse's threads from the
 * primary and the cache's attributes (native-attrs.h in the patch), unless
 * TWINFS_NATIVE_ATTRS=0 (every request then crosses to the JS thread, as before).
 */
export function nativeAttributesFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_ATTRS !== '0';
}

/**
 * Files created or opened in libfuse's threads with one name are opened with FOPEN_NOFLUSH while
 * JS's flush would do nothing (fuse-native level 30, native-attrs.h): their close(2) sends no
 * FLUSH. A write-back error of data JS cached for such a file after its open is then reported
 * by the next fsync(2) of the file, or a later close that sends its FLUSH (none is skipped while
 * an error waits), not by that close. TWINFS_NATIVE_NOFLUSH=0 keeps the FLUSH (comparison).
 */
export function nativeNoFlushFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_NOFLUSH !== '0';
}

/** TWINFS_CACHE_READDIR=0 makes every opendir read the listing again (for comparison). */
export function cacheReaddirFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_CACHE_READDIR !== '0';
}

export const DEFAULT_NATIVE_OPTIONS: NativeMountOptions = {
  // 0: libfuse2 gives each name of a hard-linked file its own kernel inode, so cached
  // attributes (nlink, size) seen through one name go stale after changes through another.
  // Correctness first; it costs a getattr per stat (see docs/benchmarks.md).
  attrTimeoutSec: 0,
  entryTimeoutSec: 1,
  allowOther: (process.getuid?.() ?? 1) === 0,
  fsname: 'twinfs',
};

/** Ops that may wait on a freeze or on the cache draining must not be failed by fuse-native's 15 s timer. */
const UNTIMED_OPS = [
  'write',
  'flush',
  'fsync',
  'fsyncdir',
  'release',
  'create',
  'truncate',
  'ftruncate',
  'fallocate',
  'unlink',
  'rmdir',
  'mkdir',
  'mknod',
  'symlink',
  'link',
  'rename',
  'chmod',
  'chown',
  'utimens',
  'setxattr',
  'removexattr',
] as const;

export function fuseNativeOptions(o: NativeMountOptions): Record<string, unknown> {
  const timeout: Record<string, number | false> = { default: 60_000 };
  for (const op of UNTIMED_OPS) timeout[op] = false;
  if (o.libfuse === 3) {
    return {
      libfuse: 3,
      force: false,
      mkdir: false,
      fsname: o.fsname,
      allowOther: o.allowOther,
      defaultPermissions: true,
      attrTimeout: String(LIBFUSE3_CACHE_SEC),
      entryTimeout: String(LIBFUSE3_CACHE_SEC),
      kernelCache: true,
      // cache_readdir: an option of the patch (not libfuse's): opendir sets cache_readdir and
      // keep_cache, so an unchanged directory is listed from the kernel's cache.
      // no_rofd_flush (libfuse's): a read-only open is answered with FOPEN_NOFLUSH, so its
      // close(2) sends no FLUSH (docs/architecture.md, "Metadata requests on the JS thread; no FLUSH for read-only
      // descriptors").
      extraOptions: [
        'use_ino',
        'max_write=1048576',
        'max_readahead=1048576',
        'no_rofd_flush',
        ...((o.cacheReaddir ?? cacheReaddirFromEnv()) ? ['cache_readdir'] : []),
      ],
      timeout,
    };
  }
  return {
    force: false,
    mkdir: false,
    fsname: o.fsname,
    allowOther: o.allowOther,
    defaultPermissions: true,
    // Strings: fuse-native drops a numeric 0 (falsy).
    attrTimeout: String(o.attrTimeoutSec),
    entryTimeout: String(o.entryTimeoutSec),
    extraOptions: [
      'big_writes',
      'max_write=131072',
      'max_read=131072',
      'max_readahead=1048576',
      'use_ino',
      ...(o.nonempty ? ['nonempty'] : []),
    ],
    timeout,
  };
}
