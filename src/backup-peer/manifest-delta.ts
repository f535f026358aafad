import * as path from 'node:path';

/**
 * A snapshot recorded as a reference to an earlier one plus a delta (issue 13): the entries
 * that are new or differ, and `{ path, gone: true }` for the earlier entries that are gone. The
 * catalog (entriesBase) and the repository (a manifest with a `base`) both resolve it here.
 */
export type DeltaLine<E extends { path: string }> = E | { path: string; gone: true };

export function isGone(l: { path: string; gone?: boolean }): l is { path: string; gone: true } {
  return l.gone === true;
}

/**
 * The entries of base changed by delta, sorted by path. An entry below a path the delta says
 * is gone is gone too (a directory removed or replaced without each name below it listed),
 * unless the delta names that entry again.
 */
export function applyDelta<E extends { path: string }>(
  base: Iterable<E>,
  delta: Iterable<DeltaLine<E>>,
): E[] {
  const byPath = new Map<string, E>();
  for (const e of base) byPath.set(e.path, e);
  const gone = new Set<string>();
  const named = new Set<string>();
  for (const l of delta) {
    if (isGone(l)) {
      byPath.delete(l.path);
      gone.add(l.path);
    } else {
      byPath.set(l.path, l as E);
      named.add(l.path);
    }
  }
  const out: E[] = [];
  for (const e of byPath.values()) if (named.has(e.path) || !belowGone(e.path, gone, named)) out.push(e);
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Whether an ancestor of p is gone (and not named again by the delta). */
function belowGone(p: string, gone: ReadonlySet<string>, named: ReadonlySet<string>): boolean {
  if (gone.size === 0) return false;
  for (let d = path.posix.dirname(p); d !== '/' && d !== '.'; d = path.posix.dirname(d))
    if (gone.has(d) && !named.has(d)) return true;
  return false;
}
