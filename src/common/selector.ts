/**
 * Which files an operation covers: exact volume paths, whole subtrees, or the whole volume. One
 * definition for the write gate (fusefs), the mirror's splits, the backup service and the REPL.
 */
export interface Selector {
  paths?: readonly string[];
  subtrees?: readonly string[];
  volume?: boolean;
}

/** Is path covered (the path itself, or inside a selected subtree)? */
export function covers(sel: Selector, p: string): boolean {
  if (sel.volume) return true;
  if (sel.paths?.includes(p)) return true;
  return sel.subtrees?.some((t) => t === '/' || p === t || p.startsWith(t + '/')) ?? false;
}

/** Does the selector cover anything at or below dir (so renaming or removing dir moves it)? */
export function coversUnder(sel: Selector, dir: string): boolean {
  if (sel.volume || covers(sel, dir)) return true;
  const under = (p: string) => dir === '/' || p.startsWith(dir + '/');
  return (sel.paths?.some(under) ?? false) || (sel.subtrees?.some(under) ?? false);
}

/** Do two selectors share any file? */
export function selectorsOverlap(a: Selector, b: Selector): boolean {
  if (a.volume || b.volume) return true;
  const roots = (s: Selector) => [
    ...(s.paths ?? []).map((p) => ({ p, tree: false })),
    ...(s.subtrees ?? []).map((p) => ({ p, tree: true })),
  ];
  for (const x of roots(a))
    for (const y of roots(b)) {
      if (x.p === y.p) return true;
      if (x.tree && y.p.startsWith(x.p + '/')) return true;
      if (y.tree && x.p.startsWith(y.p + '/')) return true;
    }
  return false;
}
