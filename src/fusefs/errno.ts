import { constants } from 'node:os';

const errnos = constants.errno as Record<string, number>;

export { errnoError } from '../posix/errno.js';

/**
 * Maps any error to the negative errno FUSE expects. This is the one boundary where errors
 * become errno: Node fs errors carry their own; anything else is EIO (and is logged by the caller).
 */
export function toFuseErrno(err: unknown): number {
  const e = err as NodeJS.ErrnoException | undefined;
  if (e && typeof e.code === 'string' && errnos[e.code] !== undefined) return -errnos[e.code]!;
  if (e && typeof e.errno === 'number' && e.errno < 0) return e.errno;
  return -errnos.EIO!;
}

export function isUnexpected(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code !== 'string' || errnos[code] === undefined;
}
