import type { MirrorCore } from './driver-core.js';
import type { WalkCheck } from './reconcile.js';
import { lstatOrUndefined, multiLinkFiles, outermost } from './tree-helpers.js';

/**
 * Names a queue turn could not make equal to the primary because a namespace change still in
 * the queue names them (MirrorCore.nameQueued): the primary has made that change already, so
 * what it has under such a name may be another entry than the mirror's at that point of the
 * queue, and copying it there gave the mirror's entry another's mode, owner, xattrs, times or
 * entries, which the queued change then carried on (a directory renamed away and made again,
 * test/mirror-driver/queued-names.test.ts). The turn leaves them to the queued changes; they
 * are followed through the renames the mirror applies and compared with the primary in a turn
 * of their own once those changes ran (a turn at the end of the queue), by a locked walk of
 * each, whose multi-linked files are then linked to their other names (a name left behind may
 * be the one a heal copied alone). A name still queued then waits for the next such turn.
 */
export class LeftBehind {
  /** Each name, with how the walk that left it behind compared (a resync's reads what it cannot vouch for). */
  private readonly names = new Map<string, WalkCheck>();
  private scheduled = false;

  constructor(private readonly c: MirrorCore) {}

  /** Names are waiting for their turn (while they do, applications wait for their changes: ChangeRouter). */
  get size(): number {
    return this.names.size;
  }

  add(p: string, chk: WalkCheck = {}): void {
    this.c.trace.event('left-behind', { path: p });
    const had = this.names.get(p);
    // The stricter comparison wins: one that reads where the other trusted size and times.
    if (!had || chk.deep || (chk.vouch && !had.deep)) this.names.set(p, chk);
    if (this.scheduled) return;
    this.scheduled = true;
    void this.c.queue
      .push(() => this.compare())
      .catch((err) => this.c.broken.markBroken('/', err as NodeJS.ErrnoException));
  }

  /** The mirror moved from → to: names left behind at or below from are followed there (and kept where they were). */
  noteRename(from: string, to: string): void {
    for (const [q, chk] of [...this.names])
      if (q === from || q.startsWith(from + '/')) this.add(to + q.slice(from.length), chk);
  }

  private async compare(): Promise<void> {
    this.scheduled = false;
    const all = [...this.names];
    this.names.clear();
    for (const t of outermost(all.map(([q]) => q))) {
      if (this.c.disposed) return;
      // The strictest comparison any name at or below t was left with.
      let chk: WalkCheck = {};
      for (const [q, c] of all)
        if ((q === t || q.startsWith(t + '/')) && (c.deep || (c.vouch && !chk.deep))) chk = c;
      // The walk leaves t behind again if a change queued since names it (this turn's walk of it
      // is then the next one's).
      const r = await this.c.reconciler.reconcileTree(t, 'repair', { locked: true, ...chk });
      this.c.stats.bytesMirrored += r.bytes;
      if (this.c.nameQueued(t) || this.c.heldUnder(t)) continue;
      const st = await lstatOrUndefined(this.c.primary + t);
      if (st?.isFile() && st.nlink > 1) this.c.relinkNames.add(t);
      else if (st?.isDirectory())
        for (const q of await multiLinkFiles(this.c.primary, t)) this.c.relinkNames.add(q);
    }
    await this.c.reconciler.relinkIfWanted('names a walk left to the changes queued behind it');
  }
}
