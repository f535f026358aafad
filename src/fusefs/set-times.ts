import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { errnoError } from './errno.js';

/**
 * Sets file times to the nanosecond, and can leave one of them alone.
 *
 * Node's fs.utimes/futimes/lutimes take seconds as a double (at today's dates about 240 ns
 * apart) and libuv truncates them to microseconds, so a time read and written back moves by up
 * to a microsecond, and there is no UTIME_OMIT: "set mtime only" rewrites atime too. A file
 * server must hand back exactly what was set (cp -p, rsync -t, Samba re-setting one time). The
 * patched fuse-native exports utimensat(2) (docs/fuse-native-patch.md); it is one synchronous
 * metadata syscall on a local path.
 */
type SetTimes = (path: string, atimeNs: bigint | null, mtimeNs: bigint | null, nofollow: boolean) => number;

const require = createRequire(import.meta.url);
let native: SetTimes | undefined;

function setTimesFn(): SetTimes {
  if (!native) {
    const fn = require('fuse-native').setTimes as SetTimes | undefined;
    if (typeof fn !== 'function')
      throw new Error('fuse-native lacks setTimes: rebuild it (node scripts/build-native.mjs)');
    native = fn;
  }
  return native;
}

const errnoNames = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/** Times of a path itself (a symlink's own times), in ns since the epoch; null leaves one alone. */
export function setTimesNs(path: string, atimeNs: bigint | null, mtimeNs: bigint | null): void {
  if (atimeNs === null && mtimeNs === null) return;
  const r = setTimesFn()(path, atimeNs, mtimeNs, true);
  if (r !== 0) throw errnoError(errnoNames.get(-r) ?? 'EIO', `utimensat ${path}: ${errnoNames.get(-r) ?? r}`);
}

/** Times of an open file, through its descriptor. */
export function setFdTimesNs(fd: number, atimeNs: bigint | null, mtimeNs: bigint | null): void {
  if (atimeNs === null && mtimeNs === null) return;
  const r = setTimesFn()(`/proc/self/fd/${fd}`, atimeNs, mtimeNs, false);
  if (r !== 0) throw errnoError(errnoNames.get(-r) ?? 'EIO', `futimens ${fd}: ${errnoNames.get(-r) ?? r}`);
}

/** ms since the epoch (fractional allowed) as ns. */
export function msToNs(ms: number): bigint {
  const whole = Math.floor(ms);
  return BigInt(whole) * 1_000_000n + BigInt(Math.round((ms - whole) * 1e6));
}

/** ns since the epoch as ms (fractional). */
export function nsToMs(ns: bigint): number {
  return Number(ns / 1_000_000n) + Number(ns % 1_000_000n) / 1e6;
}
