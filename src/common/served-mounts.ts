import * as path from 'node:path';

/**
 * The mount points this process serves. The process that serves a FUSE mount must never do
 * file I/O on it itself: each request needs this process's JS thread and thread pool to be
 * answered, so a synchronous call hangs for good and enough asynchronous ones exhaust the
 * pool (docs/architecture.md). Code that may run inside the server (the REPL of
 * `twinfs serve --repl`: restore) asks here before touching a destination.
 */
const served = new Set<string>();

export function addServedMount(realMountPoint: string): void {
  served.add(realMountPoint);
}

export function removeServedMount(realMountPoint: string): void {
  served.delete(realMountPoint);
}

/** The mount served by this process that holds realPath (a resolved path), if any. */
export function servedMountHolding(realPath: string): string | undefined {
  for (const m of served) {
    const rel = path.relative(m, realPath);
    if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) return m;
  }
  return undefined;
}
