import { RangeSet } from './range-set.js';
import type { TrackedFile } from './split-tracker.js';

/**
 * What a resync copies for each tracked name, with the names of one file merged.
 *
 * A split tracks byte ranges and truncations per name, but they happen to inodes: the cache may
 * write back data through one name of a hard-linked file while a truncate came through another.
 * Replayed name by name, the second name's cut (truncate to its smallest size, then copy its
 * own ranges) would zero what the first name's ranges had just copied, leaving zeros in the
 * mirror. So names that share a mirror inode (after the namespace replay) get one merged
 * record — the union of the ranges and the smallest cut — on the first of them, and nothing to
 * copy on the others (their sizes and metadata are synced all the same).
 *
 * inoOf: the mirror inode of a name, undefined when it is not a regular file with other names.
 * whole: names copied whole (undefined) instead. When ranges tracked under a name of a file
 * with other names were lost with that name (SplitTracker.lostLinks), the file's other names
 * may be tracked under their own names, with ranges that miss the lost ones and a link count
 * in the mirror that is 1 by now: the caller names every file that had several names.
 */
export async function mergeLinkedRanges(
  files: ReadonlyMap<string, TrackedFile>,
  paths: readonly string[],
  inoOf: (p: string) => Promise<number | undefined>,
  whole: (p: string) => boolean = () => false,
): Promise<Map<string, TrackedFile | undefined>> {
  const out = new Map<string, TrackedFile | undefined>();
  const groups = new Map<number, string[]>();
  for (const p of paths) {
    const f = files.get(p);
    out.set(p, f);
    if (!f) continue;
    if (whole(p)) {
      out.set(p, undefined);
      continue;
    }
    const ino = await inoOf(p);
    if (ino === undefined) continue;
    const g = groups.get(ino);
    if (g) g.push(p);
    else groups.set(ino, [p]);
  }
  for (const names of groups.values()) {
    if (names.length < 2) continue;
    const ranges = new RangeSet();
    let cut: number | undefined;
    for (const p of names) {
      const f = files.get(p)!;
      for (const [a, b] of f.ranges.toArray()) ranges.add(a, b);
      if (f.cut !== undefined) cut = Math.min(cut ?? Number.POSITIVE_INFINITY, f.cut);
    }
    out.set(names[0]!, { ranges, cut });
    for (const p of names.slice(1)) out.set(p, { ranges: new RangeSet() });
  }
  return out;
}
