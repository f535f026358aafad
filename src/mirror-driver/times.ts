import { type BigIntStats, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { underRoot } from '../posix/long-path.js';
import { setTimesNs } from '../posix/set-times.js';
import type { MirrorCore } from './driver-core.js';
import { lstatNowOrUndefined } from './tree-helpers.js';

/**
 * Times of mirror entries. Data writes move the mirror's mtime; the primary's times are copied
 * (to the ns) after the queue goes idle, at fsync, before a split, and at once after a write to
 * a file with several names (it may lose the name its times are read by next). Pending copies
 * are keyed by path and follow renames.
 */
export class MirrorTimes {
  private readonly pending = new Set<string>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly c: MirrorCore) {}

  /** A change to p moved its mirror times: copy the primary's soon (after 200 ms, in the queue). */
  note(p: string): void {
    this.pending.add(p);
    this.retry();
  }

  /** Copies what is pending in 200 ms (in the queue), unless a copy is due already. */
  private retry(): void {
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        void this.c.queue.push(() => this.syncAll());
      }, 200);
      this.timer.unref();
    }
  }

  /**
   * Entries came or went in the directories of these paths (applied changes, a resync's replay
   * and copies, removals of gone entries), which moved the mirror directories' mtimes to when
   * the mirror did it: the primary's are copied like the others (note). A directory a split
   * holds keeps its frozen times; that split's resync notes it again.
   */
  noteParents(...paths: Array<string | undefined>): void {
    for (const p of paths) {
      if (p === undefined || p === '/') continue;
      const dir = path.posix.dirname(p);
      if (!this.c.isHeld(dir)) this.note(dir);
    }
  }

  /** A write through a name of a file with other names: its times are copied now (see route). */
  async noteAndSync(p: string): Promise<void> {
    this.pending.add(p);
    await this.sync(p);
  }

  /**
   * The entry is gone (unlink): nothing to copy under that name. A copy it owed goes to the
   * file's other names (`heirs`, the link index's): a write through a name, then a link to it,
   * then its unlink within the 200 ms left the other name with the mirror's own mtime
   * (bench/handle-diff.mjs seed 9726, a few ms off).
   */
  drop(p: string, heirs: readonly string[] = []): void {
    if (!this.pending.delete(p)) return;
    this.inherit(heirs);
  }

  private inherit(heirs: readonly string[]): void {
    if (heirs.length === 0) return;
    for (const q of heirs) this.pending.add(q);
    this.retry();
  }

  /** The primary entry's times onto its mirror copy, to the ns (gone from either: nothing to do). */
  async copy(p: string): Promise<void> {
    if (this.c.isHeld(p)) return;
    const st = await underRoot(this.c.primary, [p], (bp) => fsp.lstat(bp, { bigint: true })).catch(
      () => undefined,
    );
    if (!st) return;
    this.setMirrorTimes(p, st.atimeNs, st.mtimeNs);
  }

  /**
   * Sets the mirror entry's times. Through underRoot: past PATH_MAX (a path the mount allows,
   * under the mirror's longer prefix) the plain path failed with ENAMETOOLONG, and a new symlink
   * or a directory at that depth kept the time the mirror made it (docs/reliability.md).
   */
  private setMirrorTimes(p: string, atimeNs: bigint, mtimeNs: bigint): void {
    try {
      underRoot(this.c.layout.data, [p], (bp) => setTimesNs(bp, atimeNs, mtimeNs));
    } catch {
      // Gone from the mirror (or not yet there): the change that removed (or makes) it is queued.
    }
  }

  /** Data writes move the mirror's mtime; copy the primary's so the pair matches. */
  async sync(p: string): Promise<void> {
    if (!this.pending.has(p)) return;
    // A split holds it: its copy keeps its frozen times. Kept pending (its resync copies them
    // anyway). A copy noted before the split whose name was gone from the primary then (its
    // rename on the way, and held: route moves no times for it) met a new file under that name
    // here and gave the split copy that file's times.
    if (this.c.isHeld(p)) return;
    // The primary has made a rename, unlink or new entry at p (or above it) that is still
    // queued: its p may be another entry than the mirror's p at this point of the queue, whose
    // times it would then get (and keep, under the name the queued rename moves it to: stress
    // seed 4 in CI, 2026-12-05, a symlink 8 ms off). Kept pending: the rename moves it (the
    // unlink drops it), and it is copied once nothing queued names it.
    if (this.c.nameQueued(p)) {
      // The queued change may take the name away (an unlink drops the pending copy, a rename over
      // it replaces it), and with it the copy a file with other names owed them: its other names
      // the link index knows are noted too (a copy by a name nothing queued names is exact, and
      // the file's times are the same under each of them).
      for (const q of this.c.links.otherNames(p)) this.pending.add(q);
      this.retry();
      return;
    }
    this.pending.delete(p);
    // One lstat, synchronously (as the mirror's own changes are, see MirrorWriter.applyAt): it
    // runs in a queue turn every later change waits for.
    let st: BigIntStats | undefined;
    try {
      st = underRoot(this.c.primary, [p], (bp) => lstatNowOrUndefined(bp, { bigint: true }));
    } catch {
      st = undefined; // a directory on the way is gone
    }
    if (st) this.setMirrorTimes(p, st.atimeNs, st.mtimeNs);
    // Gone from the primary: it was renamed (or unlinked) and the change is still on its way
    // to this queue. Keep it pending so the rename moves it (the unlink drops it).
    else if (this.pending.size < 100_000) this.pending.add(p);
  }

  /**
   * Pending mtime copies are keyed by path: they follow renames. What was pending at the target
   * (replaced by the rename) goes first, then the source's move there: in one pass, a target
   * noted after the source would have deleted the moved copy again (stress seed 2809: a file
   * truncated, then renamed over a file written just before, kept the mirror's own mtime).
   */
  move(from: string, to: string, heirsOfTo: readonly string[] = []): void {
    const all = [...this.pending];
    // The replaced file's copy, if it owed one, goes to its other names (see drop).
    if (this.pending.has(to)) this.inherit(heirsOfTo);
    for (const q of all) if (q === to || q.startsWith(`${to}/`)) this.pending.delete(q);
    for (const q of all) {
      if (q !== from && !q.startsWith(`${from}/`)) continue;
      this.pending.delete(q);
      this.pending.add(to + q.slice(from.length));
    }
  }

  async syncAll(): Promise<void> {
    for (const p of [...this.pending]) await this.sync(p);
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
  }
}
