import * as fs from 'node:fs';
import type { Disposable } from '../common/lifecycle.js';
import type { Change } from '../fusefs/change-sink.js';
import { HEAL_CODES, type MirrorCore } from './driver-core.js';
import type { SplitTracker } from './split-tracker.js';
import { lstatNowOrUndefined } from './tree-helpers.js';

/** Changes that add or remove a directory entry (and so move the directory's times). */
const NAMESPACE_OPS = new Set(['create', 'mknod', 'mkdir', 'symlink', 'link', 'unlink', 'rmdir', 'rename']);

/**
 * Changes answered before the mirror applied them (see apply): each is complete in itself (the
 * mirror writer needs nothing of the primary for it), and a crash before it lands is covered by
 * its write intent, journaled before the primary changed.
 */
const BEHIND_OPS = new Set<Change['op']>([
  'create',
  'mkdir',
  'mknod',
  'symlink',
  'link',
  'rename',
  'unlink',
  'rmdir',
  'chmod',
  'chown',
  'utimens',
  'setxattr',
  'removexattr',
]);

/** Changes that put an entry at their path (replacing what the mirror has there). */
const REPLACING_OPS = new Set<Change['op']>(['create', 'mknod', 'mkdir', 'symlink', 'link', 'rename']);

/** Names the mirror's held sources are moved aside to (see moveHeldSourceAside). */
let asideCount = 0;

/** Queue length past which a change waits for its turn again (back-pressure). */
const MAX_BEHIND = 4096;

/**
 * Change routing: every change the primary reports goes through one serial queue, in the order
 * the primary saw it, and is either tracked by the splits that hold it (Splitter.track) or
 * applied to the mirror (MirrorWriter). A write intent is journaled before the primary is
 * touched. A change the mirror cannot apply heals its path from the primary, or breaks the
 * pairs it hit; the application never sees a mirror error.
 */
export class ChangeRouter {
  constructor(private readonly c: MirrorCore) {}

  beforeChange(p: string): void | Promise<void> {
    this.c.changes.stamp(p);
    const known = this.c.intents.has(p);
    this.c.intents.set(p, Date.now());
    if (!known) return this.c.journal.appendNow({ t: 'intent', p })?.catch(() => undefined);
  }

  /**
   * Changes that reach the primary before beforeChange (unlinks and creates answered in
   * libfuse's threads, fusefs/native-changes.ts) keep the rule "intent and stamp before the
   * change" at a coarser grain. The intent: one for the whole volume, written before this
   * resolves and kept by every checkpoint while held, so a crash with such a change unreported
   * is repaired by the start-up reconciliation of the tree (Repairer.recoverIntents; a create or
   * an unlink is a name the walk sees missing or extra). The stamp: the change record takes
   * `report` before it answers (ChangeRecord.reportAhead), so no answer misses a change the
   * primary has. Each change still gets its own stamp and intent when reported (beforeChange).
   */
  async changesAhead(report: () => void): Promise<Disposable> {
    this.c.aheadHolds++;
    this.c.changes.reportAhead = report;
    await this.c.journal.appendNow({ t: 'intent', p: '/' })?.catch(() => undefined);
    let held = true;
    return {
      dispose: () => {
        if (!held) return;
        held = false;
        this.c.aheadHolds--;
        if (this.c.changes.reportAhead === report) this.c.changes.reportAhead = undefined;
      },
    };
  }

  apply(c: Change): Promise<void> {
    if (this.c.disposed) return Promise.resolve();
    this.noteReport(c);
    const routed = NAMESPACE_OPS.has(c.op) ? this.routeNamed(c) : this.c.queue.push(() => this.route(c));
    // Write-behind for namespace and metadata changes: queued in the primary's order (the queue
    // position is all that orders them against later changes, splits and verify), answered before
    // the mirror has them. Waited for: data (the cache's flusher takes its pace from the mirror,
    // and an unlink of a multiply-linked file waits for its write-back, whose times route copies
    // while the name exists), truncate of a file with other names (the same), fsync (durable
    // where the sink keeps it), and any change once the queue is long (back-pressure, so it
    // cannot grow without bound).
    if ((BEHIND_OPS.has(c.op) || (c.op === 'truncate' && this.oneName(c.path))) && this.mayAnswerBehind()) {
      routed.catch((err) => this.c.log(`change ${c.op} ${c.path} failed: ${(err as Error).message}`));
      return Promise.resolve();
    }
    return routed;
  }

  /**
   * A namespace change, queued with its names counted in namesQueued until its turn comes: a
   * read of the primary by path in a turn before it (a copy of times, MirrorTimes.sync; the
   * inode a split notes for a name, Splitter.track) would find another entry. In its own turn
   * the primary's entry is the one the change is about.
   */
  private routeNamed(c: Change): Promise<void> {
    // A link's source keeps its entry: deferring for it only delayed a copy of times that a
    // write through a name of a file with several names makes at once (the name may go next).
    const names = c.op === 'rename' ? [c.path, c.from] : [c.path];
    const q = this.c.namesQueued;
    for (const n of names) q.set(n, (q.get(n) ?? 0) + 1);
    return this.c.queue.push(() => {
      for (const n of names) {
        const k = (q.get(n) ?? 1) - 1;
        if (k > 0) q.set(n, k);
        else q.delete(n);
      }
      return this.route(c);
    });
  }

  /**
   * A large write queued while the primary's copy is being written: in its turn the mirror's
   * copy is written at the same time (both in the libuv pool), and the turn ends only once the
   * primary's write settled, so nothing after it (times, later changes, a split marker) runs
   * before the primary has it. Always waited for, like apply's writes. The intent journaled by
   * beforeChange covers a crash between the two, as before.
   */
  applyAlongside(c: Change & { op: 'write' }, primary: Promise<void>): Promise<void> {
    if (this.c.disposed) return primary.catch(() => undefined);
    this.noteReport(c);
    return this.c.queue.push(async () => {
      try {
        await this.route(c, primary);
      } finally {
        // Also when route failed early: the next turn never runs before the primary has it.
        await primary.catch(() => undefined);
      }
    });
  }

  /**
   * What every report does before it is queued: the change record, liveness, and the renewal of
   * its paths' intents. One intent covers a whole write-back, whose runs reach the primary one
   * after the other, each reported after it landed; checkpoints drop intents idle for
   * INTENT_IDLE_MS (they once aged from the first run: a write-back taking longer lost its
   * intent while later runs were on the primary and not yet reported).
   */
  private noteReport(c: Change): void {
    const now = Date.now();
    this.c.lastLiveAt = now;
    this.c.changes.note(c);
    if (this.c.intents.has(c.path)) this.c.intents.set(c.path, now);
    if ('from' in c && this.c.intents.has(c.from)) this.c.intents.set(c.from, now);
  }

  /** The primary's file at p has one name (a truncate of it copies no times by path at once). */
  private oneName(p: string): boolean {
    try {
      return fs.lstatSync(this.c.primary + p).nlink === 1;
    } catch {
      return false; // a long path, or gone already: wait, as before
    }
  }

  /**
   * Only while the mirror follows the primary entry for entry. With a split live or queued, a
   * resync, repair, recovery or copy running, or pairs broken, the mirror's tree may differ from
   * the primary's on purpose (a held directory keeps its old name), and what is healed, copied
   * or relinked is read from the primary as it is when that work runs: the primary must not be
   * far ahead of the queue then, so the application waits, as it always did. Found by the stress
   * harness: libfuse3 seed 12, a rename inside a directory whose own rename a split held was
   * healed after the writer had renamed the directory again, and a stale name stayed in the
   * mirror; libfuse2 seed 14, a resync relinked the names of a file where the primary had them
   * two renames later, and the queued rename of their directory then found its target full.
   */
  private mayAnswerBehind(): boolean {
    return this.following() && this.c.queue.length <= MAX_BEHIND;
  }

  /**
   * The mirror follows the primary entry for entry (see mayAnswerBehind, less the queue's length):
   * what ChangeSink.following answers.
   */
  following(): boolean {
    const c = this.c;
    return (
      c.splits.size === 0 &&
      c.splitsQueued === 0 &&
      c.resyncer.resyncing.size === 0 &&
      c.resyncer.unsynced.size === 0 &&
      !c.copying &&
      !c.repairer.running &&
      c.broken.paths.size === 0 &&
      c.broken.healing.size === 0 &&
      c.leftBehind.size === 0
    );
  }

  /** One change, in its turn in the queue: tracked by the splits that hold it, or applied. */
  private async route(c: Change, primary?: Promise<void>): Promise<void> {
    // Whether the primary's write (applyAlongside) succeeded.
    let primaryOk = true;
    const primaryDone = primary?.then(
      () => undefined,
      () => {
        primaryOk = false;
      },
    );
    // A name an unlink removes, or a rename replaces, may owe its file a copy of the primary's
    // times (a write through it, noted while it was the file's only name): the file's other
    // names, as the link index holds them before this change takes the name out, inherit it.
    const heirs = c.op === 'unlink' || c.op === 'rename' ? this.c.links.otherNames(c.path) : undefined;
    await this.c.links.note(c, this.c.primary, (p) => this.c.nameQueued(p));
    // Tracked: the resync copies the range from the primary, whatever the write left there.
    // (applyAlongside waits for the primary's write on every way out of here.)
    if (await this.c.splitter.track(c)) return;
    if ((c.op === 'rename' || c.op === 'link') && this.c.broken.paths.size > 0)
      this.c.broken.followBroken(c.from, c.path, c.op === 'rename');
    if (this.c.broken.isBroken(c.path)) {
      // A rename onto a broken pair is not applied to the mirror, where the old name would then
      // stay with nothing left to remove it (a repair of the new name does not touch it): it is
      // broken too, and a repair makes both names as the primary has them.
      if (c.op === 'rename' && !this.c.broken.isBroken(c.from))
        this.c.broken.markBroken(
          c.from,
          Object.assign(new Error(`renamed onto the broken pair ${c.path}`), { code: 'EIO' }),
        );
      return;
    }
    try {
      // A rename over a name a comparison ahead of the queue made (see relinkRenamed): noted
      // before the rename replaces it.
      const overCopy = c.op === 'rename' && this.overLinkedName(c.from, c.path);
      if (REPLACING_OPS.has(c.op) && this.c.splits.size > 0) this.moveHeldSourceAside(c.path);
      if (c.op === 'fsync') await this.c.times.sync(c.path);
      else if (c.op === 'rename') this.c.times.move(c.from, c.path, heirs);
      else if (c.op === 'unlink') this.c.times.drop(c.path, heirs);
      // An mtime set exactly: the mirror takes it from the change; a copy still pending for the
      // name (a write before it, or one a gone name handed on) has nothing left to correct.
      else if (c.op === 'utimens' && (c.mtimeNs != null || c.mtime != null)) this.c.times.drop(c.path);
      if (primaryDone === undefined) await this.c.writer.apply(c);
      else {
        const mine = this.c.writer.apply(c).then(
          () => undefined,
          (e: unknown) => e,
        );
        await primaryDone;
        const err = await mine;
        if (!primaryOk) {
          // The primary refused (a part of) a write the mirror may have taken: the mirror's
          // copy is made what the primary holds, or the pair is broken.
          await this.healFailedWrite(c.path);
          return;
        }
        if (err !== undefined) throw err;
      }
      this.c.stats.changesApplied++;
      // Entries that live splits hold the changes of may have moved with it in the mirror.
      if (c.op === 'rename') this.mirrorRenamed(this.c.splits.values(), c.from, c.path);
      if (NAMESPACE_OPS.has(c.op)) this.c.times.noteParents(c.path, c.op === 'rename' ? c.from : undefined);
      // A directory renamed under a running walk may have moved where the walk has been to a
      // place it has already left: it gets walked again afterwards.
      if (c.op === 'rename') this.c.reconciler.noteRename(c.from, c.path);
      if (this.c.resyncer.unsynced.size > 0) {
        if (c.op === 'rename') {
          // What the rename replaced is not the entry the resync left there any more.
          this.c.resyncer.moveUnsynced(c.path, null);
          await this.c.resyncer.syncUnsynced(this.c.resyncer.moveUnsynced(c.from, c.path));
        } else if (c.op === 'unlink' || c.op === 'rmdir') this.c.resyncer.moveUnsynced(c.path, null);
      }
      if (overCopy) await this.relinkRenamed(c.path);
      if (c.op === 'write' || c.op === 'zero' || c.op === 'truncate') {
        if (c.op === 'write') this.c.stats.bytesMirrored += c.data.length;
        // An inode with other names may lose this one next (unlink, or libfuse's .fuse_hidden
        // name going on release), and then its times can no longer be read by path: copy them
        // now. The primary still has the name: an unlink waits for the flush (or the truncate),
        // which waits for us.
        if ((this.c.writer.linkCount(c.path) ?? 1) > 1) {
          await this.c.times.noteAndSync(c.path);
        } else this.c.times.note(c.path);
      } else if (c.op === 'create' || c.op === 'mkdir') this.c.times.note(c.path);
      // A symlink or node made with the primary's times (mirror-writer's setNewTimes) is exact.
      else if ((c.op === 'mknod' || c.op === 'symlink') && c.mtimeNs === undefined) this.c.times.note(c.path);
    } catch (err) {
      await this.onApplyError(c, err as NodeJS.ErrnoException);
    }
  }

  /**
   * A change that puts an entry at p, not held, while a split holds a rename (or link) from p:
   * the mirror still has p's old entry there for that replay (the primary moved it, so the
   * split no longer covers p). Replacing it would make the replay move (or link) the new entry
   * to the held rename's target: another file's content in the renamed name and, through the
   * names the mirror's file shares, in other files (finding 36 of docs/reliability.md). The old
   * entry is moved aside, in its directory, and the held changes replay it from there (a replay
   * that fails leaves it for the resync's comparison of that path, which removes it: the
   * primary has no such name). One look at each live split's held changes; nothing without a
   * split.
   */
  private moveHeldSourceAside(p: string): void {
    const holders = [...this.c.splits.values()].filter((s) => s.holdsSource(p));
    if (holders.length === 0) return;
    const aside = `${p.slice(0, p.lastIndexOf('/'))}/.twinfs-held-${process.pid}-${++asideCount}`;
    this.c.writer.forget(p, true);
    try {
      fs.renameSync(this.c.layout.data + p, this.c.layout.data + aside);
    } catch {
      return; // nothing there (or a long path): as before
    }
    this.c.trace.event('held-source-aside', { path: p, aside });
    this.mirrorRenamed(holders, p, aside);
  }

  /**
   * The mirror moved from → to: each split's held changes that name entries there follow them,
   * in memory and in the journal (in the same synchronous step, as the journal's checkpoints
   * require), so a split recovered after a crash replays them from where the mirror has them.
   */
  private mirrorRenamed(splits: Iterable<SplitTracker>, from: string, to: string): void {
    for (const s of splits)
      if (s.mirrorRenamed(from, to))
        void this.c.journal.append({ t: 'mr', id: s.id, from, to }).catch(() => undefined);
  }

  /**
   * Is the mirror's entry at `to` a name of a file with other names, about to be replaced by a
   * rename of `from`, a name the link index holds as one of a primary file with several names?
   * Before the rename; one lstat, and only for such names (the index is a map look-up).
   */
  private overLinkedName(from: string, to: string): boolean {
    if (from === to || !this.c.links.has(to)) return false;
    const st = lstatNowOrUndefined(this.c.layout.data + to);
    return st?.isFile() === true && st.nlink > 1;
  }

  /**
   * A rename of a name of a file with several names over a mirror file with other names, after
   * which the moved file has fewer names in the mirror than on the primary (finding 32 of
   * docs/reliability.md): a comparison ahead of the queue read the primary, where this rename
   * had happened, gave the new name a copy of its own and linked the file's other names there to
   * that copy; the rename then moved the mirror's old file over the copy, and the mirror held
   * the file twice, each name's later changes on one of them only. The moved file is compared
   * with the primary (changes applied to the comparison's copy meanwhile reach it) and the
   * file's other names are linked to it again (relinkIfWanted), inside this turn. Only while the
   * primary's entry is still that file (the link index's, in queue order): another file renamed
   * there since is queued behind and is not copied into this one.
   */
  private async relinkRenamed(p: string): Promise<void> {
    const m = lstatNowOrUndefined(this.c.layout.data + p);
    if (!m?.isFile()) return;
    const pst = lstatNowOrUndefined(this.c.primary + p);
    if (!pst?.isFile() || pst.nlink <= m.nlink || !this.c.links.isNameOf(p, pst)) return;
    this.c.trace.event('relink-renamed', { path: p, names: m.nlink, primaryNames: pst.nlink });
    const r = await this.c.copyWhole(p, { compare: true, ino: pst.ino });
    if (r.moved) return; // moved on again: its own change carries on
    this.c.stats.bytesMirrored += r.bytesCopied;
    this.c.relinkNames.add(p);
    await this.c.reconciler.relinkIfWanted(`rename onto ${p}`);
  }

  private async healFailedWrite(p: string): Promise<void> {
    try {
      await this.c.repairer.healPath(p);
    } catch (err) {
      this.c.broken.markBroken(p, err as NodeJS.ErrnoException);
    }
  }

  private async onApplyError(c: Change, err: NodeJS.ErrnoException): Promise<void> {
    const code = err.code ?? '';
    if (
      HEAL_CODES.has(code) ||
      (code === 'EEXIST' && c.op !== 'write') ||
      (code === 'EISDIR' && c.op === 'create')
    ) {
      // The mirror lacks what the change builds on (or already has it): make this path whole
      // from the primary, parents first.
      try {
        await this.c.repairer.healPath(c.path);
        if (c.op === 'rename') await this.c.repairer.healPath(c.from);
        // Healed from the primary as it is now: entries a resync left unsynced there are synced.
        // Left unsynced, the removal of gone entries took the healed entry away once the
        // primary had moved it on (a rename of its directory queued behind).
        if (this.c.resyncer.unsynced.size > 0 && c.op === 'rename') {
          this.c.resyncer.moveUnsynced(c.path, null);
          this.c.resyncer.moveUnsynced(c.from, null);
        }
        return;
      } catch (e) {
        err = e as NodeJS.ErrnoException;
      }
    }
    this.c.broken.markBroken(c.path, err);
    if (c.op === 'rename') this.c.broken.markBroken(c.from, err);
  }
}
