import type { Stats } from 'node:fs';
import type { Change } from '../fusefs/change-sink.js';
import { lstatOrUndefined } from './tree-helpers.js';

/**
 * The names of the primary's files with several names: (dev, ino) -> volume paths. Filled by
 * the driver's walks of the primary (the start-up comparison, and every reconciliation after
 * it) and kept up to date by the changes (link, unlink, rename, rmdir, create), so finding the
 * other names of a file does not take a walk of the volume.
 *
 * The primary runs ahead of the change queue, so an entry may be stale or missing for a while:
 * namesOf() checks each name against the primary and answers only when it found as many names
 * as the file's link count; otherwise (or before the start-up walk completed) the caller walks
 * the volume as before.
 */
export class LinkIndex {
  private readonly byFile = new Map<string, Set<string>>();
  private readonly byPath = new Map<string, string>();
  /** Every entry of the primary was seen once (the start-up walk completed). */
  private complete = false;

  /** The start-up walk of the whole primary completed: the index holds every name it saw. */
  walkDone(): void {
    this.complete = true;
  }

  /** What a walk found at p on the primary. */
  notePrimary(p: string, st: Stats): void {
    if (st.isFile() && st.nlink > 1) this.add(p, keyOf(st));
    else this.remove(p);
  }

  /**
   * A change reported by the primary, in its order. A link whose source the index does not hold
   * looks its file up on the primary, by a name no change still queued names (`queued`,
   * MirrorCore.nameQueued): the primary has made those already, and under such a name it may
   * have another file. By the new name alone, a rename over it queued behind the link keyed the
   * link's two names under the renamed file, and a heal of the file's names then compared the
   * volume (queued-names.test.ts). Neither name safe: not indexed (namesOf walks).
   */
  async note(c: Change, primary: string, queued: (p: string) => boolean = () => false): Promise<void> {
    switch (c.op) {
      case 'link': {
        const keyAt = async (p: string) => {
          if (queued(p)) return undefined;
          const st = await lstatOrUndefined(primary + p);
          return st?.isFile() ? keyOf(st) : undefined;
        };
        const key = this.byPath.get(c.from) ?? (await keyAt(c.from)) ?? (await keyAt(c.path));
        if (key === undefined) return;
        this.add(c.from, key);
        this.add(c.path, key);
        return;
      }
      case 'rename':
        this.removeUnder(c.path);
        this.moveUnder(c.from, c.path);
        return;
      case 'unlink':
      case 'create':
      case 'mknod':
      case 'symlink':
      case 'mkdir':
        this.remove(c.path);
        return;
      case 'rmdir':
        this.removeUnder(c.path);
        return;
      default:
        return;
    }
  }

  /**
   * Every name of the primary's file st, each checked against the primary; undefined when the
   * index cannot vouch for having them all (the caller walks the volume instead).
   */
  async namesOf(primary: string, st: Stats): Promise<string[] | undefined> {
    if (!this.complete) return undefined;
    const key = keyOf(st);
    const out: string[] = [];
    for (const p of [...(this.byFile.get(key) ?? [])]) {
      const now = await lstatOrUndefined(primary + p);
      if (now?.isFile() && now.ino === st.ino && now.dev === st.dev) out.push(p);
      else if (this.byPath.get(p) === key) this.notePrimaryOrGone(p, now);
    }
    return out.length >= st.nlink ? out.sort() : undefined;
  }

  /** Does the index hold p as a name of a file with several names? */
  has(p: string): boolean {
    return this.byPath.has(p);
  }

  /**
   * The other names the index holds for p's file (none when it holds p as no such name). Names,
   * not a vouching: each may be stale, so a caller reads each by path as it reads p.
   */
  otherNames(p: string): string[] {
    const key = this.byPath.get(p);
    if (key === undefined) return [];
    return [...(this.byFile.get(key) ?? [])].filter((q) => q !== p);
  }

  /** Does the index hold p as a name of st's file? */
  isNameOf(p: string, st: Stats): boolean {
    return this.byPath.get(p) === keyOf(st);
  }

  /** Number of files indexed (for status and tests). */
  get size(): number {
    return this.byFile.size;
  }

  private notePrimaryOrGone(p: string, st: Stats | undefined): void {
    if (st) this.notePrimary(p, st);
    else this.remove(p);
  }

  private add(p: string, key: string): void {
    const old = this.byPath.get(p);
    if (old === key) return;
    if (old !== undefined) this.remove(p);
    this.byPath.set(p, key);
    let names = this.byFile.get(key);
    if (!names) {
      names = new Set();
      this.byFile.set(key, names);
    }
    names.add(p);
  }

  private remove(p: string): void {
    const key = this.byPath.get(p);
    if (key === undefined) return;
    this.byPath.delete(p);
    const names = this.byFile.get(key);
    names?.delete(p);
    if (names?.size === 0) this.byFile.delete(key);
  }

  private pathsUnder(dir: string): string[] {
    return [...this.byPath.keys()].filter((p) => p === dir || p.startsWith(dir + '/'));
  }

  private removeUnder(dir: string): void {
    for (const p of this.pathsUnder(dir)) this.remove(p);
  }

  private moveUnder(from: string, to: string): void {
    for (const p of this.pathsUnder(from)) {
      const key = this.byPath.get(p)!;
      this.remove(p);
      this.add(to + p.slice(from.length), key);
    }
  }
}

function keyOf(st: Stats): string {
  return `${st.dev}:${st.ino}`;
}
