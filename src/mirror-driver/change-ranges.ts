/**
 * The byte ranges of the change record (change-record.ts): per file, which ranges of its data
 * were written since which generation, so that a backup of a large file reads only those
 * ranges from the mirror (VMware CBT's changed areas, at file grain; Hitachi ShadowImage's
 * differential bitmap). Every generation the record retains is a baseline: entries carry the
 * generation they were made at, and the answer for "since G" is the union of the entries after G.
 *
 * A file's log vouches for "since G" only when its data changed through write and truncate
 * alone since G: any other change of the name (create, rename, link, unlink, a change behind the
 * server's back) resets the log at that generation, and "since G" before the reset is answered
 * "whole file". A log past its entry bound drops its oldest entries and answers "whole file"
 * for a baseline before the newest one dropped. Only what the log cannot vouch for is widened:
 * the rest of the record's answer is not affected.
 */

/** End of a truncation range: "from here to wherever the file ends now". */
export const TO_END = Number.MAX_SAFE_INTEGER;

interface FileLog {
  /** Nothing before this generation is known for this file (0: everything since the record's floor). */
  reset: number;
  /** The generation the log was made at (0: loaded): tree resets after it apply to it. */
  born: number;
  /** [generation, start, end) in the order written. */
  entries: Array<[number, number, number]>;
}

/** Saved with the record at a clean shutdown. */
export type SavedRanges = Array<[string, number, Array<[number, number, number]>]>;

/** Tree resets kept unapplied (see resetTree) before they are applied to every log in one pass. */
const MAX_TREE_RESETS = 4096;

export class ChangeRanges {
  private readonly logs = new Map<string, FileLog>();
  /**
   * Subtrees whose names changed identity (resetTree), by directory: the generation of the latest
   * reset of everything below it. Read by since() through a path's ancestors, so that a rename
   * costs a map look-up, not a pass over every log (one per path created or written since the
   * start, up to the record's bound: a pass over 100,000 of them took ~4 ms, twice per rename, on
   * the JS thread every request waits for).
   */
  private readonly treeResets = new Map<string, number>();

  constructor(private readonly maxPerFile = 256) {}

  /** A write of [start, end) reached the file at generation g. */
  write(p: string, g: number, start: number, end: number): void {
    if (end <= start) return;
    const log = this.logOf(p, g);
    const last = log.entries[log.entries.length - 1];
    // Sequential writes of one flush extend one entry (a 1 GiB copy stays one entry).
    if (last && last[2] === start && last[0] === g - 1) {
      last[0] = g;
      last[2] = end;
    } else log.entries.push([g, start, end]);
    if (log.entries.length > this.maxPerFile) {
      const drop = log.entries.splice(0, log.entries.length - this.maxPerFile / 2);
      log.reset = Math.max(log.reset, drop[drop.length - 1]![0]);
    }
  }

  /** The file was truncated to size at generation g: everything from there on may differ. */
  truncate(p: string, g: number, size: number): void {
    this.write(p, g, size, TO_END);
  }

  /** The name's identity changed at generation g (created, replaced, removed, renamed, unknown). */
  reset(p: string, g: number): void {
    this.logs.set(p, { reset: g, born: g, entries: [] });
  }

  /** A subtree's names changed identity at g (a rename of a directory): every log below resets. */
  resetTree(p: string, g: number): void {
    this.reset(p, g);
    this.treeResets.set(p, Math.max(g, this.treeResets.get(p) ?? 0));
    if (this.treeResets.size > MAX_TREE_RESETS) this.applyTreeResets();
  }

  /** The latest tree reset of an ancestor directory of p (0: none); it applies to logs born by then. */
  private treeResetOf(p: string): number {
    if (this.treeResets.size === 0) return 0;
    let g = 0;
    for (let i = p.lastIndexOf('/'); i >= 0; i = i === 0 ? -1 : p.lastIndexOf('/', i - 1)) {
      const r = this.treeResets.get(i === 0 ? '/' : p.slice(0, i));
      if (r !== undefined && r > g) g = r;
    }
    return g;
  }

  /** Applies the tree resets to the logs below them (what resetTree once did at once), and forgets them. */
  private applyTreeResets(): void {
    for (const [k, log] of this.logs) {
      const g = this.treeResetOf(k);
      if (g > log.reset && log.born <= g) {
        log.reset = g;
        log.entries = log.entries.filter((e) => e[0] > g);
      }
    }
    this.treeResets.clear();
  }

  /**
   * The ranges written since `since`, merged and sorted, or undefined when the log cannot vouch
   * for that span (the file must be compared whole).
   */
  since(p: string, since: number): Array<[number, number]> | undefined {
    const log = this.logs.get(p);
    if (!log) return [];
    if (log.reset > since) return undefined;
    const tree = this.treeResetOf(p);
    if (tree > since && log.born <= tree) return undefined;
    const out: Array<[number, number]> = [];
    for (const [g, a, b] of log.entries) if (g > since) out.push([a, b]);
    return merge(out);
  }

  /** Drops the logs of paths the record no longer keeps. */
  forget(keep: (p: string) => boolean): void {
    for (const k of this.logs.keys()) if (!keep(k)) this.logs.delete(k);
  }

  get size(): number {
    return this.logs.size;
  }

  save(): SavedRanges {
    this.applyTreeResets();
    return [...this.logs].map(([p, l]) => [p, l.reset, l.entries]);
  }

  load(saved: SavedRanges | undefined): void {
    if (!Array.isArray(saved)) return;
    for (const [p, reset, entries] of saved)
      if (typeof p === 'string' && Number.isFinite(reset) && Array.isArray(entries))
        this.logs.set(p, { reset, born: 0, entries });
  }

  private logOf(p: string, g: number): FileLog {
    let log = this.logs.get(p);
    if (!log) {
      log = { reset: 0, born: g, entries: [] };
      this.logs.set(p, log);
    }
    return log;
  }
}

/** Sorts and merges overlapping or touching ranges. */
export function merge(ranges: Array<[number, number]>): Array<[number, number]> {
  ranges.sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of ranges) {
    const last = out[out.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}
