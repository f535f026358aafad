import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * twinfs's own N-API addon (native/posix/twinfs_posix.c): the POSIX calls Node lacks, shared by
 * the FUSE layer, the mirror driver and the backup peer, so that a peer host needs no FUSE
 * build. Every call but syncFileRange and fallocate (promises) is synchronous and returns a negative errno on failure (the wrappers in
 * this folder turn it into an errno error). Built by scripts/build-native.mjs at postinstall.
 */
export interface PosixAddon {
  abiLevel: number;
  mknod(path: string, mode: number, dev: number): number;
  utimensat(path: string, atimeNs: bigint | null, mtimeNs: bigint | null, nofollow: boolean): number;
  flock(fd: number, exclusive: boolean, nonblocking: boolean): number;
  /** The xattr calls take a path (l*xattr) or, since ABI level 13, a descriptor (f*xattr). */
  llistxattr(path: string | number): string[] | number;
  lgetxattr(path: string | number, name: string): Buffer | number;
  lsetxattr(path: string | number, name: string, value: Buffer, flags: number): number;
  lremovexattr(path: string | number, name: string): number;
  readdirNoAtime(path: string): string[] | number;
  openDirBeneath(root: string, rel: string): number;
  /** sync_file_range(SYNC_FILE_RANGE_WRITE) in the thread pool: resolves 0 or -errno. */
  syncFileRange(fd: number, offset: number, len: number): Promise<number>;
  /** fallocate(2) in the thread pool: resolves 0 or -errno. */
  fallocate(fd: number, mode: number, offset: number, len: number): Promise<number>;
  /**
   * AES-256-GCM of data[0, n) in place (key 32 bytes, nonce 12), the 16-byte tag written at
   * data[n, n + 16): 0, or -EINVAL (sizes), -EIO (OpenSSL failed). Not a POSIX call: the
   * repository's pack seal without Node's buffer per cipher update (pack.ts).
   */
  aesGcmSealInPlace(key: Uint8Array, nonce: Uint8Array, data: Uint8Array, n: number): number;
  /**
   * posix_fadvise(POSIX_FADV_WILLNEED): the kernel starts reading the range (len 0: to the end)
   * into the page cache and returns without waiting; 0 or -errno.
   */
  fadviseWillNeed(fd: number, offset: number, len: number): number;
  /**
   * `dst.set(src, at)` as a plain memcpy: src.length, or -EINVAL when it does not fit. For views
   * of shared memory, which V8 copies with relaxed atomic accesses (byte by byte unless both
   * sides are aligned alike mod 8); the caller makes sure no other thread writes either range.
   */
  copyBytes(dst: Uint8Array, at: number, src: Uint8Array): number;
  /**
   * lseek(fd, offset, SEEK_DATA), or SEEK_HOLE with hole: the next data's (hole's; the end counts
   * as one) offset at or after offset, or -errno (-ENXIO: no data there, or past the end; -EINVAL:
   * no such seek on this filesystem). Moves the descriptor's position.
   */
  seekData(fd: number, offset: number, hole: boolean): number;
  /**
   * cachestat(2): how many pages of [offset, offset + len) (len 0: to the end) are in the page
   * cache, or -errno (-ENOSYS before Linux 6.5).
   */
  cachedPages(fd: number, offset: number, len: number): number;
  /**
   * madvise(MADV_HUGEPAGE) over the 2 MiB-aligned part of the buffer's memory: the bytes
   * advised, or -errno. Transparent huge pages for a large buffer's first touch.
   */
  adviseHuge(buf: Uint8Array): number;
  /**
   * FastCDC's cut of the parts laid end to end, as the repository's WebAssembly chunker gives it
   * (`compute_chunks`: each chunk's start, 0 first, then the total length; [0] for no bytes), or
   * -EINVAL (min < 64, avg < 256, max < 1024, 4 GiB or more in all). Since ABI level 14.
   */
  cdcCut(parts: Uint8Array[], min: number, avg: number, max: number): Uint32Array | number;
}

/** Same depth from src/posix (tests) and dist/posix (the CLI): two levels up is the package root. */
const ADDON = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'native',
  'posix',
  'build',
  'Release',
  'twinfs_posix.node',
);
const ABI_LEVEL = 14;

let addon: PosixAddon | undefined;

/** The loaded addon; a clear message when it was never built (postinstall skipped). */
export function posix(): PosixAddon {
  if (addon) return addon;
  let loaded: PosixAddon;
  try {
    loaded = createRequire(import.meta.url)(ADDON) as PosixAddon;
  } catch (err) {
    throw new Error(
      `twinfs's native addon is not built (${ADDON}: ${(err as Error).message}); run: node scripts/build-native.mjs --posix-only`,
    );
  }
  if (loaded.abiLevel !== ABI_LEVEL)
    throw new Error(
      `${ADDON} is level ${loaded.abiLevel}, expected ${ABI_LEVEL}: rebuild it (node scripts/build-native.mjs --posix-only)`,
    );
  addon = loaded;
  return addon;
}
