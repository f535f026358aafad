import type { Stats } from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { HEAL_CODES, type MirrorCore } from './driver-core.js';
import type { ResyncResult } from './driver-types.js';
import { mergeLinkedRanges } from './linked-ranges.js';
import type { SplitTracker } from './split-tracker.js';
import { lstatOrUndefined, outermost } from './tree-helpers.js';

/**
 * Resync: applies what a split tracked to the mirror and rejoins its pairs, in its turn in the
 * change queue. The namespace changes are replayed in order, then the tracked ranges are copied
 * from the primary (the names of one file merged first, linked-ranges.ts) and the metadata of
 * touched paths synced; subtrees whose rename could not be replayed are reconciled. Entries the
 * resync finds gone from the primary stay in the mirror (unsynced) until the changes queued
 * behind it have run: a rename moves them and syncs them where they land, an unlink drops them.
 */
export class Resyncer {
  readonly resyncing = new Set<string>();
  /**
   * Entries a resync found gone from the primary and left in the mirror for the changes queued
   * behind it (see removeGone), not synced yet: a rename moves them and syncs them where they
   * land, an unlink drops them.
   */
  readonly unsynced = new Set<string>();

  constructor(private readonly c: MirrorCore) {}

  /** Applies what changed under a split to the mirror and rejoins its pairs. */
  resync(splitId: string): Promise<ResyncResult> {
    const s = this.c.splits.get(splitId);
    if (!s) return Promise.reject(new TwinError('ETWIN_UNKNOWN_SPLIT', `no split ${splitId}`, { splitId }));
    if (this.resyncing.has(splitId))
      return Promise.reject(
        new TwinError('ETWIN_SPLIT_CONFLICT', `split ${splitId} is already resyncing`, { splitId }),
      );
    this.resyncing.add(splitId);
    this.c.onDidChangeState.fire({
      paths: s.selector.volume ? 'volume' : [...s.touched],
      state: 'RESYNC',
      splitId,
    });
    // Demonstration only (docs/reliability.md, "The harness catches what it exists for"): a
    // resync that does not wait its turn in the change queue must make the stress harness fail.
    if (process.env.TWINFS_DEMO_UNORDERED_RESYNC === '1')
      return this.resyncLocked(s).finally(() => this.resyncing.delete(splitId));
    return this.c.queue.push(() => this.resyncLocked(s)).finally(() => this.resyncing.delete(splitId));
  }

  private async resyncLocked(s: SplitTracker): Promise<ResyncResult> {
    const started = Date.now();
    this.c.splits.delete(s.id);
    this.c.trace.event('resync', { id: s.id.slice(-8), lostLinks: s.lostLinks, files: s.files.size });
    // Other splits that still hold some of these paths keep them frozen: those paths are
    // resynced when the last holder lets go (their changes are tracked there too).
    const stillHeld = (p: string) => this.c.heldUnder(p);
    let bytes = 0;
    let entries = 0;
    const trees = new Set<string>();
    for (const c of s.namespace) {
      if (stillHeld(c.path) || ((c.op === 'rename' || c.op === 'link') && stillHeld(c.from))) continue;
      // A directory rename whose target the mirror has already: a change under the new name that
      // was not held healed its path there, making the directory. Replacing it (it is empty) or
      // merging into it brings back the source's entries as the mirror had them, including those
      // the primary removed under the new name since: the target tree is compared.
      if (c.op === 'rename' && (await this.bothDirs(c.from, c.path))) trees.add(c.path);
      // A tree to compare that this rename moves is compared where it ends up as well (a heal
      // under a held directory's new name, then that directory renamed again: the stale names
      // the heal could not see are at the last name).
      if (c.op === 'rename')
        for (const t of [...trees])
          if (t === c.from || t.startsWith(c.from + '/')) trees.add(c.path + t.slice(c.from.length));
      try {
        await this.c.writer.apply(c);
      } catch (err) {
        // The final state is reconciled below; a rename that could not be replayed needs its
        // subtrees compared.
        if (c.op !== 'rename') continue;
        const code = (err as NodeJS.ErrnoException).code;
        if (
          (code === 'ENOTEMPTY' || code === 'EEXIST') &&
          (await this.mergeInto(c.from, c.path).catch(() => false))
        ) {
          trees.add(c.path);
          continue;
        }
        trees.add(c.path);
        trees.add(c.from);
      }
    }
    const paths = [...new Set([...s.touched, ...s.files.keys()])].sort();
    // Names whose inode lost another name with tracked ranges (lostLinks) are copied whole.
    const primaryInos = new Map<string, number | undefined>();
    if (s.lostLinks)
      for (const p of s.files.keys()) primaryInos.set(p, (await lstatOrUndefined(this.c.primary + p))?.ino);
    const tracked = await mergeLinkedRanges(
      s.files,
      paths,
      async (p) => {
        const st = stillHeld(p) ? undefined : await lstatOrUndefined(this.c.layout.data + p);
        return st?.isFile() && st.nlink > 1 ? st.ino : undefined;
      },
      s.lostLinks ? (p) => s.copiesWhole(p, primaryInos.get(p)) : undefined,
    );
    const gone: string[] = [];
    for (const p of paths) {
      if (stillHeld(p)) continue;
      const pst = await lstatOrUndefined(this.c.primary + p);
      // Another file than the one whose changes were tracked here: a rename over it (or an
      // unlink and a new file) reached the primary and is queued behind this resync. The
      // mirror's entry is still the old file, maybe with other names: copying the new file into
      // it would give those names another file's content, size and mode (stress seed 2211).
      // As if gone: the queued changes put the new file there, and the old file's other names
      // are owed its changes (nameGone).
      const noted = s.inodeNumbers.get(p);
      if (!pst || (noted !== undefined && pst.ino !== noted)) {
        gone.push(p);
        this.unsynced.add(p);
        // Its changes go with it; if its file has other names, they are owed them (below).
        s.nameGone(p);
        continue;
      }
      const f = tracked.get(p);
      if (this.c.trace.on)
        this.c.trace.event('resync-entry', {
          path: p,
          ranges: f ? f.ranges.toArray() : 'whole',
          cut: f?.cut,
        });
      try {
        // Only into the file whose changes were tracked: a name gone (or another file) by the
        // time the copy begins is handled as gone above, never removed here with what was
        // tracked under it.
        const r = await this.c.copyWhole(p, { ranges: f?.ranges, cut: f?.cut, ino: pst.ino });
        bytes += r.bytesCopied;
        entries++;
        // Gone from the primary (or another file there) while it was being copied: a rename or
        // unlink reached the primary and is queued behind this resync, and what the copy read
        // after it (xattrs, read as none) is missing. Owed where the queued rename puts it, as
        // if gone before the copy (stress seed 2820: a split copy lacked an xattr), and, as
        // above, to its file's other names (nameGone): the copy may not have reached them.
        const after = r.moved ? undefined : await lstatOrUndefined(this.c.primary + p);
        if (!after || after.ino !== pst.ino) {
          gone.push(p);
          this.unsynced.add(p);
          s.nameGone(p);
          if (!r.moved && pst.isFile() && pst.nlink > 1) s.copiedAfterMove(pst.ino);
        }
      } catch (err) {
        if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) {
          this.c.broken.markBroken(p, err as NodeJS.ErrnoException);
          continue;
        }
        // Gone from the primary (or another file there) after the copy looked at it and before
        // it opened it: as gone while copied, above. Comparing its directory instead removed
        // the mirror's name and left its file's other names elsewhere without what was tracked
        // under it (the hard-link attack, 2026-12-04: a write through a name unlinked right
        // after it was missing from the file's two other names in the next split copy).
        const after = await lstatOrUndefined(this.c.primary + p);
        if (!after || after.ino !== pst.ino) {
          gone.push(p);
          this.unsynced.add(p);
          s.nameGone(p);
          if (pst.isFile() && pst.nlink > 1) s.copiedAfterMove(pst.ino);
        } else trees.add(path.posix.dirname(p));
      }
    }
    // A changed file lost a name while it had others: they are found by comparing everything.
    // (The other names of a name that got a file of its own are linked after the trees.)
    if (s.lostLinks) trees.add('/');
    // The other names of an inode that lost a changed name are not known here, and what changed
    // may not show in size, mtime or ctime (the replayed unlink just moved the mirror's ctime past
    // the primary's): primary files of such inodes that changed since the split are compared in
    // full, metadata included.
    const deep = s.lostLinks
      ? (st: Stats) =>
          // (A second of margin: file times come from the kernel's coarse clock.)
          st.isFile() && st.ctimeMs >= s.since - 1000 && (s.lostUnknown || s.lostInos.has(st.ino))
      : undefined;
    // What the comparisons may take as equal by size, mtime and ctime: only files the change
    // record vouches did not change since the split (the split copy, which was the primary's
    // then). The rest is read: a mirror copy that went wrong keeps the primary's size and times
    // (they are copied by path), and was taken as equal by every comparison short of a verify
    // (finding 33 of docs/reliability.md). Without a generation (a split recovered from the
    // journal) or a record that can vouch for it, every file in these trees is read.
    const vouch = (s.generation && this.c.changes.unchangedSince(s.generation)) || (() => false);
    for (const t of outermost(trees)) {
      try {
        const r = await this.c.reconciler.reconcileTree(t, 'resync', { locked: true, deep, vouch });
        bytes += r.bytes;
        entries += r.entries;
      } catch (err) {
        this.c.broken.markBroken(t, err as NodeJS.ErrnoException);
      }
    }
    // Names healed alone while this split held another name of their file: copied again (each
    // copy missed the changes that went to the other) and their names linked to that copy.
    for (const p of s.relinkAfter) {
      if (stillHeld(p)) continue;
      try {
        const r = await this.c.copyWhole(p, { compare: true });
        bytes += r.bytesCopied;
        this.c.relinkNames.add(p);
      } catch (err) {
        if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? ''))
          this.c.broken.markBroken(p, err as NodeJS.ErrnoException);
      }
    }
    await this.c.reconciler.relinkIfWanted(`resync of ${s.id}`);
    this.c.stats.resyncBytes += bytes;
    // Replayed and copied entries moved their directories' times (the split's own included).
    for (const c of s.namespace) this.c.times.noteParents(c.path, c.op === 'rename' ? c.from : undefined);
    this.c.times.noteParents(...paths);
    this.c.trace.event('resynced', { id: s.id.slice(-8), gone, trees: outermost(trees) });
    if (gone.length > 0)
      void this.c.queue
        .push(() => this.removeGone(gone))
        .catch((err) => this.c.broken.markBroken('/', err as NodeJS.ErrnoException));
    await this.c.journal.append({ t: 'released', id: s.id }).catch(() => undefined);
    const result = { splitId: s.id, bytesCopied: bytes, entries, ms: Date.now() - started };
    this.c.onDidResync.fire(result);
    this.c.onDidChangeState.fire({
      paths: s.selector.volume ? 'volume' : paths,
      state: 'PAIR',
      splitId: s.id,
    });
    return result;
  }

  /**
   * Replays a directory rename whose target the mirror already has (files under the new name
   * were mirrored while the rename was held back): moves in whatever the target lacks, keeps
   * what it has (made from the primary later), drops the rest of the source.
   */
  private async mergeInto(from: string, to: string): Promise<boolean> {
    if (!(await this.bothDirs(from, to))) return false;
    const src = this.c.layout.data + from;
    const dst = this.c.layout.data + to;
    this.c.writer.forget(from, true);
    for (const name of await fsp.readdir(src)) {
      const d = await fsp.lstat(`${dst}/${name}`).catch(() => undefined);
      if (!d) await fsp.rename(`${src}/${name}`, `${dst}/${name}`);
      else if (d.isDirectory()) await this.mergeInto(`${from}/${name}`, `${to}/${name}`);
    }
    await fsp.rm(src, { recursive: true, force: true });
    return true;
  }

  /** Are from and to both directories in the mirror? */
  private async bothDirs(from: string, to: string): Promise<boolean> {
    const [a, b] = await Promise.all([
      lstatOrUndefined(this.c.layout.data + from),
      lstatOrUndefined(this.c.layout.data + to),
    ]);
    return a?.isDirectory() === true && b?.isDirectory() === true;
  }

  /**
   * Entries a resync found gone from the primary. Their removal may already be on its way in the
   * queue (the primary runs ahead of it) as a rename: removing them now would make that rename
   * fail and heal its target as a fresh copy (a hard link lost). Run after what was queued
   * during the resync: whatever is still gone from the primary then is removed.
   */
  private async removeGone(paths: string[]): Promise<void> {
    const left = paths.filter((p) => this.unsynced.delete(p));
    this.c.trace.event('removeGone', { left });
    const back: string[] = [];
    for (const p of left) {
      if (this.c.heldUnder(p)) {
        this.c.touchHolders(p);
        continue;
      }
      if (await lstatOrUndefined(this.c.primary + p)) {
        back.push(p);
        continue;
      }
      this.c.writer.forget(p, true);
      await fsp
        .rm(this.c.layout.data + p, { recursive: true, force: true })
        .catch((err) => this.c.broken.markBroken(p, err as NodeJS.ErrnoException));
      this.c.times.noteParents(p);
    }
    await this.syncUnsynced(back);
  }

  /** Moves unsynced entries at or below from to below to (null: drops them); returns their new paths. */
  moveUnsynced(from: string, to: string | null): string[] {
    const moved: string[] = [];
    for (const p of [...this.unsynced]) {
      if (p !== from && !p.startsWith(from + '/')) continue;
      this.unsynced.delete(p);
      if (to !== null) moved.push(to + p.slice(from.length));
    }
    return moved.sort();
  }

  /**
   * Syncs entries a resync could not (they had moved on the primary) where they are now. The
   * mirror's entry is the file the resync left there; the primary's may be another one, renamed
   * over the name while the resync ran and reported only after it (queued behind removeGone):
   * a mirror file with other names is never written in place (that gave them the other file's
   * content, the late-report form of stress seed 3110) but gets a file of its own, whose names
   * on the primary are linked to it again (relinkIfWanted).
   */
  async syncUnsynced(paths: string[]): Promise<void> {
    for (const p of paths) {
      if (this.c.heldUnder(p)) {
        this.c.touchHolders(p);
        continue;
      }
      try {
        const r = await this.c.copyWhole(p, { compare: true, alone: true });
        this.c.stats.resyncBytes += r.bytesCopied;
      } catch (err) {
        // Moved on again: the change that did it is queued and carries on from there.
        if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? ''))
          this.c.broken.markBroken(p, err as NodeJS.ErrnoException);
      }
    }
    await this.c.reconciler.relinkIfWanted('entries moved during a resync');
  }
}
