import type { ChangesMsg } from '../control/protocol.js';

/**
 * The peer's reading of the server's change record (the prepare reply's `changes`): whether the
 * server vouches that a file did not change since the previous snapshot's split. Only such a
 * file may share the previous snapshot's stored copy (invariant 9); everything else is copied
 * from the split mirror. No answer, or an "unknown" one, vouches for nothing.
 */
export function vouchedBy(changes: ChangesMsg | undefined): (p: string) => boolean {
  if (!changes || changes.unknown) return () => false;
  const changed = new Set(changes.changed);
  const trees = new Set(changes.trees);
  if (trees.has('/')) return () => false;
  return (p) => {
    if (changed.has(p)) return false;
    // The path itself or any directory above it renamed (or changed behind the server's back).
    for (let q = p; q.length > 1; q = q.slice(0, Math.max(1, q.lastIndexOf('/'))))
      if (trees.has(q)) return false;
    return true;
  };
}
