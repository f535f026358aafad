import type { MirrorCore } from './driver-core.js';
import { lstatOrUndefined, namesOf } from './tree-helpers.js';

/**
 * The BROKEN pairs: a mirror write error breaks the pairs it hit (never the application's
 * operation); a broken file breaks all its names; a rename or link from a broken pair carries
 * the brokenness to the new name. Pairs being repaired (healing) still count as broken until a
 * verified repair clears them (Repairer).
 */
export class BrokenPairs {
  readonly paths = new Set<string>();
  private readonly reasons = new Map<string, string>();
  /** Broken pairs being repaired: live changes reach them again, but they cannot be split yet. */
  readonly healing = new Set<string>();

  constructor(private readonly c: MirrorCore) {}

  get size(): number {
    return this.paths.size;
  }

  /** Broken or being repaired (what status, the journal and a split see). */
  all(): string[] {
    return [...new Set([...this.paths, ...this.healing])];
  }

  isBroken(p: string): boolean {
    if (this.paths.size === 0) return false;
    for (const b of this.paths) if (p === b || p.startsWith(b + '/') || b === '/') return true;
    return false;
  }

  /** Broken, or inside a pair being repaired. */
  isBrokenOrHealing(p: string): boolean {
    return this.isBroken(p) || [...this.healing].some((h) => h === '/' || p === h || p.startsWith(h + '/'));
  }

  reasonsOf(): Record<string, string> {
    return Object.fromEntries([...this.paths].map((b) => [b, this.reasons.get(b) ?? 'unknown']));
  }

  markBroken(p: string, err: NodeJS.ErrnoException): void {
    if (this.paths.has(p)) return;
    this.c.trace.event('broken', { path: p, code: err.code, msg: err.message });
    this.paths.add(p);
    this.reasons.set(p, `${err.code ?? 'EIO'}: ${err.message}`);
    this.c.log(`mirror pair broken for ${p}: ${err.code ?? err.message}`);
    void this.c.journal.append({ t: 'broken', p }).catch(() => undefined);
    this.c.onDidBreak.fire({ path: p, error: `${err.code ?? 'EIO'}: ${err.message}` });
    this.c.onDidChangeState.fire({ paths: [p], state: 'BROKEN' });
    void this.breakOtherNames(p).catch(() => undefined);
  }

  /** A rename (or link) from a broken pair carries the brokenness to the new name. */
  followBroken(from: string, to: string, subtree: boolean): void {
    const err = Object.assign(new Error(`moved from the broken pair ${from}`), { code: 'EIO' });
    if (this.isBroken(from)) {
      this.markBroken(to, err);
      return;
    }
    if (!subtree) return;
    for (const b of [...this.paths])
      if (b.startsWith(from + '/')) this.markBroken(to + b.slice(from.length), err);
  }

  /**
   * The other names of a broken file are the same file: a change through any of them reaches
   * the mirror copy that failed, and the primary's content behind each of them moves on with
   * the broken one's. They break too (named by the link index, or found by a walk of the
   * primary where it cannot vouch for having them all).
   */
  private async breakOtherNames(p: string): Promise<void> {
    if (p === '/' || this.c.disposed) return;
    const st = await lstatOrUndefined(this.c.primary + p);
    if (!st?.isFile() || st.nlink < 2) return;
    const err = Object.assign(new Error(`another name of the broken file ${p}`), { code: 'EIO' });
    const names = (await this.c.links.namesOf(this.c.primary, st)) ?? (await namesOf(this.c.primary, st));
    for (const q of names) if (q !== p) this.markBroken(q, err);
  }
}
