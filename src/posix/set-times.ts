import { check } from './errno.js';
import { posix } from './native.js';

/**
 * Sets file times to the nanosecond, and can leave one of them alone (UTIME_OMIT).
 *
 * Node's fs.utimes/futimes/lutimes take seconds as a double (at today's dates about 240 ns
 * apart) and libuv truncates them to microseconds, so a time read and written back moves by up
 * to a microsecond, and there is no UTIME_OMIT: "set mtime only" rewrites atime too. A file
 * server and a restore must hand back exactly what was set (cp -p, rsync -t, Samba re-setting
 * one time). utimensat(2) through the project's addon: one synchronous metadata syscall.
 */
export function setTimesNs(path: string, atimeNs: bigint | null, mtimeNs: bigint | null): void {
  if (atimeNs === null && mtimeNs === null) return;
  check(posix().utimensat(path, atimeNs, mtimeNs, true), `utimensat ${path}`);
}

/** Times of an open file, through its descriptor. */
export function setFdTimesNs(fd: number, atimeNs: bigint | null, mtimeNs: bigint | null): void {
  if (atimeNs === null && mtimeNs === null) return;
  check(posix().utimensat(`/proc/self/fd/${fd}`, atimeNs, mtimeNs, false), `futimens ${fd}`);
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
