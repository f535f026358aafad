import { promises as fsp } from 'node:fs';
import type { DeviceWatch } from './device-watch.js';
import type { MirrorCore } from './driver-core.js';
import type { RepairResult } from './driver-types.js';
import { syncMeta } from './entry-sync.js';
import { lstatOrUndefined, multiLinkFiles, outermost } from './tree-helpers.js';
import { compareOne, type Difference, verifyTrees } from './verify.js';

/**
 * Heals and repairs. A heal makes one path whole from the primary when a change found the
 * mirror lacking what it builds on; a repair copies broken pairs again and returns them to PAIR
 * only where a comparison with the primary (content, metadata, xattrs) says they match, a
 * second time inside the change queue for what differed (verifyRepaired); start-up recovery
 * rewrites the paths the journal named as possibly different.
 */
export class Repairer {
  private repairing: Promise<RepairResult> | null = null;

  constructor(
    private readonly c: MirrorCore,
    private readonly deviceWatch: DeviceWatch,
  ) {}

  /** The repair in progress, if any. */
  get running(): Promise<RepairResult> | null {
    return this.repairing;
  }

  /**
   * Repairs the paths the journal named (exactly: compared chunk by chunk, differences rewritten).
   * With treeWalkFollows, the whole volume's intent ('/', held while changes could reach the
   * primary first: ChangeRouter.changesAhead) is left to the start-up reconciliation that follows,
   * the same walk of the tree; it would otherwise walk it twice.
   */
  async recoverIntents(signal: AbortSignal, treeWalkFollows = false): Promise<void> {
    let bytes = 0;
    let entries = 0;
    for (const p of [...this.c.pendingIntents]) {
      if (signal.aborted) return;
      if (p === '/' && treeWalkFollows) continue;
      const st = await fsp.lstat(this.c.primary + (p === '/' ? '' : p)).catch(() => undefined);
      if (st?.isDirectory()) {
        const r = await this.c.reconciler.reconcileTree(p, 'recover', { signal });
        bytes += r.bytes;
        entries += r.entries;
      } else {
        bytes += await this.c.queue.push(async () => {
          if (this.c.heldUnder(p)) return 0;
          const r = await this.c.copyWhole(p, { compare: true });
          await this.c.reconciler.relinkIfWanted(p);
          return r.bytesCopied;
        });
        entries++;
      }
      if (!signal.aborted) this.c.pendingIntents.delete(p);
    }
    this.c.stats.recoveryBytes += bytes;
    this.c.onProgress.fire({ phase: 'recover', entries, bytes, done: true });
  }

  /** Copies path (and any missing parents) from the primary. */
  async healPath(p: string): Promise<void> {
    if (this.c.heldUnder(p)) {
      // A frozen copy sits at or below p: leave the mirror alone, the resync will sync p.
      for (const s of this.c.splits.values()) {
        if (!s.coversUnder(p)) continue;
        s.touched.add(p);
        void this.c.journal.append({ t: 'm', id: s.id, p }).catch(() => undefined);
      }
      return;
    }
    // A namespace change still queued names p or a directory above it: the primary has made it,
    // and its p may be another entry (or none) than the one the mirror needs there at this point
    // of the queue. Copied, that entry went where the queued rename moved p (a chmod healed /c
    // with the file renamed over it, which the queued rename of /c to /z then moved: /z had the
    // other file's content; queued-names.test.ts). Left to the queued changes (one that meets
    // the same lack heals where the entry went) and compared after them (left-behind.ts), by
    // content: a heal follows a change the mirror could not apply, or one the primary refused
    // after the mirror took it (healFailedWrite), which size and times need not show.
    // Native changes count (MirrorCore.leftToQueue): unreported, a native unlink of p made the
    // copy below fail with ENOENT and the pair BROKEN (native-unlink-cached.test.ts's storm).
    if (this.c.leftToQueue(p, 'heal-left')) return;
    this.c.trace.event('heal', { path: p });
    await this.c.ensureParents(p);
    this.c.writer.forget(p, true);
    // What the mirror has there is not the file the change was about (or the change would have
    // applied): if it has other names, it is some other file and must not be written into.
    const old = await lstatOrUndefined(this.c.layout.data + p);
    if (old?.isFile() && old.nlink > 1) await fsp.unlink(this.c.layout.data + p);
    let r: Awaited<ReturnType<MirrorCore['copyEntry']>>;
    try {
      r = await this.c.copyEntry(this.c.primary + p, this.c.layout.data + p);
    } catch (err) {
      // p left the primary while it was being copied, by a change made in libfuse's threads
      // after the report above: once reported, it is queued, and the queue makes the mirror's p.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !this.c.leftToQueue(p, 'heal-left')) throw err;
      return;
    }
    this.c.stats.bytesMirrored += r.bytesCopied;
    this.c.times.noteParents(p);
    // A directory the mirror lacked (say, renamed before the initial copy reached it) comes
    // with its contents.
    const st = await lstatOrUndefined(this.c.primary + p);
    if (st?.isDirectory()) {
      const t = await this.c.reconciler.reconcileTree(p, 'repair', { locked: true });
      this.c.stats.bytesMirrored += t.bytes;
    }
    // A file with other names came as a copy of its own: the mirror would keep two files where
    // the primary has one, and the next write through one name would leave the other behind.
    if (st?.isFile() && st.nlink > 1) this.c.relinkNames.add(p);
    else if (st?.isDirectory())
      for (const q of await multiLinkFiles(this.c.primary, p)) this.c.relinkNames.add(q);
    await this.c.reconciler.relinkIfWanted(p);
  }

  /** Full resync of broken pairs (or of everything with all=true). Concurrent calls share one run. */
  repair(opts: { all?: boolean } = {}): Promise<RepairResult> {
    this.repairing ??= this.doRepair(opts).finally(() => {
      this.repairing = null;
    });
    return this.repairing;
  }

  private async doRepair(opts: { all?: boolean }): Promise<RepairResult> {
    if (!(await this.deviceWatch.accept())) {
      // Never copy into the directory a vanished mirror left behind (the wrong disk).
      const reason = (await this.deviceWatch.check()) ?? 'the mirror device is not there';
      this.c.broken.markBroken('/', Object.assign(new Error(reason), { code: 'ENODEV' }));
      return {
        bytes: 0,
        entries: 0,
        remaining: [...this.c.broken.paths],
        reasons: this.c.broken.reasonsOf(),
      };
    }
    const targets = opts.all ? ['/'] : outermost(this.c.broken.paths);
    let bytes = 0;
    let entries = 0;
    for (const t of targets) {
      const cleared = [...this.c.broken.paths].filter((b) => t === '/' || b === t || b.startsWith(t + '/'));
      for (const b of cleared) this.c.broken.paths.delete(b);
      this.c.broken.healing.add(t);
      try {
        const st = await fsp.lstat(this.c.primary + (t === '/' ? '' : t)).catch(() => undefined);
        if (st && !st.isDirectory()) {
          // A file the mirror failed to follow: its copy may be torn anywhere; copy it whole.
          bytes += await this.c.queue.push(async () => {
            if (this.c.heldUnder(t)) return 0;
            const r = await this.c.copyWhole(t);
            await this.c.reconciler.relinkIfWanted(t);
            return r.bytesCopied;
          });
          entries++;
        } else {
          const r = await this.c.reconciler.reconcileTree(t, 'repair', { signal: this.c.abort.signal });
          bytes += r.bytes;
          entries += r.entries;
        }
        // Copying is not proof: the pair is PAIR again only where a comparison says so.
        for (const d of await this.verifyRepaired(t))
          this.c.broken.markBroken(
            d.path || '/',
            Object.assign(new Error(`the mirror still differs after the repair (${d.kind})`), {
              code: 'EVERIFY',
            }),
          );
      } catch (err) {
        this.c.broken.markBroken(t, err as NodeJS.ErrnoException);
      } finally {
        this.c.broken.healing.delete(t);
      }
      if (
        !this.c.broken.isBroken(t) &&
        ![...this.c.broken.paths].some((b) => t === '/' || b.startsWith(t + '/'))
      ) {
        this.c.stats.repairs++;
        for (const b of cleared) void this.c.journal.append({ t: 'repaired', p: b }).catch(() => undefined);
        this.c.onDidChangeState.fire({ paths: [t], state: 'PAIR' });
      }
    }
    return { bytes, entries, remaining: [...this.c.broken.paths], reasons: this.c.broken.reasonsOf() };
  }

  /**
   * Compares a repaired subtree (or file) with the primary, content included. Entries that
   * differ — live changes in flight, or a copy that did not take — are synced and compared once
   * more inside the change queue, where no live change interleaves (for a large file that holds
   * live changes back for one read of both copies, only when the first comparison differed);
   * what still differs is returned (and stays BROKEN). Entries a split holds are left alone.
   */
  private async verifyRepaired(t: string): Promise<Difference[]> {
    const base = t === '/' ? '' : t;
    // First without holding live changes back (a large file's comparison takes a while); only
    // what differs is compared again inside the queue.
    const suspects: string[] = [];
    if ((await compareOne(this.c.primary, this.c.layout.data, base).catch(() => [null])).length > 0)
      suspects.push(base);
    if ((await lstatOrUndefined(this.c.primary + base))?.isDirectory()) {
      const r = await verifyTrees(this.c.primary + base, this.c.layout.data + base, {
        skip: (rel) => this.c.isHeld(base + rel),
        content: true,
        signal: this.c.abort.signal,
      });
      suspects.push(...r.differences.map((d) => base + d.path));
    }
    const still: Difference[] = [];
    for (const p of new Set(suspects)) {
      if (this.c.broken.isBroken(p || '/')) continue; // the copy already failed here, with its reason
      const diffs = await this.c.queue
        .push(async () => {
          if (p !== '' && this.c.heldUnder(p)) return [];
          if ((await compareOne(this.c.primary, this.c.layout.data, p)).length === 0) return [];
          if (p !== '') {
            await this.c.copyWhole(p);
            await this.c.reconciler.relinkIfWanted(p);
          } else await syncMeta(this.c.primary, this.c.layout.data);
          return compareOne(this.c.primary, this.c.layout.data, p);
        })
        .catch((err) => {
          this.c.broken.markBroken(p || '/', err as NodeJS.ErrnoException);
          return [];
        });
      still.push(...diffs);
    }
    return still;
  }
}
