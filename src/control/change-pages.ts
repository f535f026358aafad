import type { ChangesMsg } from './protocol.js';

/** Bytes of paths (roughly, as JSON) one page of a `changes` answer carries. */
export const CHANGES_PAGE_BYTES = 256_000;

type Answer = Omit<ChangesMsg, 'more'> & {
  deleted: string[];
  renamed: Array<{ from: string; to: string }>;
  ranges: Array<{ path: string; ranges: Array<[number, number]> }>;
};

/**
 * Cuts a change answer into pages that each fit a control message (MAX_MESSAGE_BYTES): the
 * prepare reply carries the first, `changes` requests fetch the rest (cursor = page index). The
 * lists keep their order; a reader concatenates the pages' lists (joinPages). No list is
 * capped: 100,000 changed paths are a few pages, never "unknown".
 */
export function toPages(a: Answer, maxBytes = CHANGES_PAGE_BYTES): ChangesMsg[] {
  const head = (): Answer => ({
    since: a.since,
    changed: [],
    trees: [],
    deleted: [],
    renamed: [],
    ranges: [],
  });
  const first = head();
  if (a.unknown) first.unknown = a.unknown;
  const pages: Answer[] = [first];
  let bytes = 0;
  const room = (n: number): Answer => {
    if (bytes + n > maxBytes && bytes > 0) {
      pages.push(head());
      bytes = 0;
    }
    bytes += n;
    return pages[pages.length - 1]!;
  };
  for (const p of a.changed) room(p.length + 4).changed.push(p);
  for (const p of a.trees) room(p.length + 4).trees.push(p);
  for (const p of a.deleted) room(p.length + 4).deleted.push(p);
  for (const r of a.renamed) room(r.from.length + r.to.length + 20).renamed.push(r);
  for (const r of a.ranges) room(r.path.length + 20 + r.ranges.length * 34).ranges.push(r);
  return pages.map((p, i) => (i + 1 < pages.length ? { ...p, more: String(i + 1) } : p));
}

/** The pages of one answer as one (the client joins them before the peer reads them). */
export function joinPages(pages: ChangesMsg[]): ChangesMsg {
  const [first, ...rest] = pages;
  const all: ChangesMsg = {
    since: first!.since,
    ...(first!.unknown ? { unknown: first!.unknown } : {}),
    changed: [...first!.changed],
    trees: [...first!.trees],
    deleted: [...(first!.deleted ?? [])],
    renamed: [...(first!.renamed ?? [])],
    ranges: [...(first!.ranges ?? [])],
  };
  for (const p of rest) {
    for (const x of p.changed) all.changed.push(x);
    for (const x of p.trees) all.trees.push(x);
    for (const x of p.deleted ?? []) all.deleted!.push(x);
    for (const x of p.renamed ?? []) all.renamed!.push(x);
    for (const x of p.ranges ?? []) all.ranges!.push(x);
  }
  return all;
}
