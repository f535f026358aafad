import { constants } from 'node:os';

const errnos = constants.errno as Record<string, number>;
const names = new Map(Object.entries(errnos).map(([name, n]) => [n, name]));

/** Builds an errno-style error (what Node's fs would throw) for a code such as 'EINVAL'. */
export function errnoError(code: string, message?: string): NodeJS.ErrnoException {
  const err = new Error(message ?? code) as NodeJS.ErrnoException;
  err.code = code;
  err.errno = -(errnos[code] ?? errnos.EIO!);
  return err;
}

/** Turns the addon's result (0 or a negative errno) into nothing or a thrown errno error. */
export function check(r: number, what: string): void {
  if (r === 0) return;
  const code = names.get(-r) ?? 'EIO';
  throw errnoError(code, `${code}: ${what}`);
}
