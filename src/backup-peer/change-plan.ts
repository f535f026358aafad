import * as path from 'node:path';
import type { ChangesMsg, SelectorMsg } from '../control/protocol.js';
import type { EntryRecord } from './catalog.js';

/**
 * What an incremental run must look at, from the server's change answer (issue 13): the
 * previous snapshot's entries the server vouches for are carried over without opening or
 * stat'ing their split copies; only the changed paths (and the directories holding them, whose
 * times a create or remove moves) are looked at, and only the subtrees the answer cannot
 * itemise (renamed directories, directories changed behind the server's back) are walked.
 * Exactly what the server cannot vouch for is compared; when it vouches for nothing, there is
 * no plan and the run walks the whole selection.
 */
export interface ChangePlan {
  /** Parent entries carried over unread (their stored copies shared). */
  carried: EntryRecord[];
  /** Single paths to look at in the mirror (gone ones are dropped). */
  dirty: string[];
  /** Subtrees to walk in the mirror. */
  walk: string[];
  /** Changed files whose data changed only in these ranges (change-ranges.ts). */
  ranges: Map<string, Array<[number, number]>>;
}

export function planFromChanges(
  selector: SelectorMsg,
  parent: { selector?: unknown; entries: Map<string, EntryRecord> } | undefined,
  changes: ChangesMsg | undefined,
): ChangePlan | undefined {
  const c = parent && changedPaths(selector, parent.selector, changes);
  if (!parent || !c) return undefined;
  const { dirty, walk, inside } = c;
  const underWalk = (p: string) => walk.some((w) => p === w || p.startsWith(`${w}/`));
  // Names of one inode are copied together (the copier links them): looked at, shared as vouched.
  const linked = new Set<string>();
  for (const e of parent.entries.values()) if (e.linkTo) linked.add(e.path).add(e.linkTo);
  const carried: EntryRecord[] = [];
  for (const e of parent.entries.values()) {
    if (!inside(e.path) || underWalk(e.path)) continue;
    if (dirty.has(e.path) || linked.has(e.path)) dirty.add(e.path);
    else carried.push(e);
  }
  return {
    carried,
    dirty: [...dirty].filter((p) => !underWalk(p)).sort(),
    walk,
    ranges: rangesOf(changes!, dirty),
  };
}

/**
 * What the change answer names inside the selection, without the parent's entries: the paths
 * to look at (each changed, deleted or renamed name and the directory holding it) and the
 * subtrees to walk. Undefined when it vouches for nothing (unknown, another selection, a path
 * list, a tree at or above the selection's root).
 */
export function changedPaths(
  selector: SelectorMsg,
  parentSelector: unknown,
  changes: ChangesMsg | undefined,
): { dirty: Set<string>; walk: string[]; inside: (p: string) => boolean } | undefined {
  if (!changes || changes.unknown) return undefined;
  // Only a parent of the very same selection holds every entry this run would find.
  if (JSON.stringify(normal(parentSelector)) !== JSON.stringify(normal(selector))) return undefined;
  if (selector.paths) return undefined;
  const root = selector.volume ? '/' : selector.subtree!.replace(/\/+$/, '') || '/';
  const inside = (p: string) => root === '/' || p === root || p.startsWith(`${root}/`);
  const walk: string[] = [];
  for (const t of [...changes.trees].sort()) {
    // A tree at or above the selection's root: nothing is vouched for.
    if (t === '/' || root === t || root.startsWith(`${t}/`)) return undefined;
    if (inside(t) && !walk.some((w) => t.startsWith(`${w}/`))) walk.push(t);
  }
  const dirty = new Set<string>();
  const touch = (p: string) => {
    if (!inside(p)) return;
    dirty.add(p);
    // A create, remove or rename moved the directory's times.
    const d = path.posix.dirname(p);
    if (inside(d)) dirty.add(d);
  };
  for (const p of changes.changed) touch(p);
  for (const p of changes.deleted ?? []) touch(p);
  for (const r of changes.renamed ?? []) {
    touch(r.from);
    touch(r.to);
  }
  for (const w of walk) touch(w);
  return { dirty, walk, inside };
}

/** The changed ranges the answer gives for paths that will be looked at. */
export function rangesOf(
  changes: ChangesMsg,
  dirty: ReadonlySet<string>,
): Map<string, Array<[number, number]>> {
  const ranges = new Map<string, Array<[number, number]>>();
  for (const r of changes.ranges ?? []) if (dirty.has(r.path)) ranges.set(r.path, r.ranges);
  return ranges;
}

function normal(s: unknown): unknown {
  const o = (s ?? {}) as SelectorMsg & { exclude?: string[] };
  // Other --exclude patterns select other entries: the parent's set is not this run's.
  const ex = o.exclude?.length ? { exclude: o.exclude } : {};
  if (o.volume) return { volume: true, ...ex };
  if (o.subtree !== undefined) return { subtree: o.subtree.replace(/\/+$/, '') || '/', ...ex };
  return { paths: o.paths ?? [], ...ex };
}
