import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { TwinError } from '../common/errors.js';
import type { Change } from '../fusefs/change-sink.js';
import type { MirrorCore } from './driver-core.js';
import type { SplitInfo } from './driver-types.js';
import type { JournalRecord } from './journal.js';
import { covers, coversUnder, type Selector, SplitTracker, UNKNOWN_INO } from './split-tracker.js';

/** Changes that modify an inode's content or metadata (not its names). */
const INODE_OPS = new Set<Change['op']>([
  'write',
  'zero',
  'truncate',
  'chmod',
  'chown',
  'utimens',
  'setxattr',
  'removexattr',
]);

/**
 * Splits and the tracking of changes under them. A split is a marker in the change queue: what
 * was reported before it is on the mirror when split() resolves; a change after it that touches
 * a covered file goes to the split's tracker (and its journal line) instead of the mirror. A
 * split of one name of a hard-linked file covers the file's other names as soon as a change
 * comes through them; held changes to an inode note its link count (see lostLinks).
 */
export class Splitter {
  constructor(private readonly c: MirrorCore) {}

  /**
   * Tracks c in every split it touches (state and journal line in one synchronous step); true
   * when some split holds it, and it must not reach the mirror now.
   */
  async track(c: Change): Promise<boolean> {
    const inodeOp = INODE_OPS.has(c.op);
    if (inodeOp) await this.followFrozen(c.path);
    const holders: SplitTracker[] = [];
    for (const s of this.c.splits.values()) {
      if (!s.touches(c)) continue;
      holders.push(s);
      // State and journal line in one synchronous step (see Journal). Not awaited: the write
      // intent, on disk before the primary changed, covers a crash before this line lands.
      s.record(c);
      if (c.op !== 'fsync') void this.c.journal.append(trackRecord(s.id, c)).catch(() => undefined);
    }
    if (this.c.trace.on)
      this.c.trace.change(
        c,
        holders.map((s) => s.id.slice(-8)),
      );
    if (holders.length === 0) return false;
    if (c.op !== 'fsync') this.c.stats.changesTracked++;
    if (inodeOp) await this.noteInodeChange(holders, c.path);
    if (c.op === 'rename' || c.op === 'link' || c.op === 'create') await this.noteNamedInode(holders, c.path);
    // Unsynced entries moved under the split: its resync syncs them where they land.
    // (What the rename replaced is not the entry the resync left there any more.)
    if (c.op === 'rename' && this.c.resyncer.unsynced.size > 0) {
      this.c.resyncer.moveUnsynced(c.path, null);
      for (const q of this.c.resyncer.moveUnsynced(c.from, c.path)) for (const s of holders) s.touched.add(q);
    }
    return true;
  }

  /**
   * Splits the pairs of the selected files atomically: every change reported before this call
   * is on the mirror when it resolves, and every change after it is tracked. Costs O(1) in the
   * number of files. Overlapping splits are allowed (each tracks its own changes). Refused
   * (ETWIN_MIRROR_BROKEN) while the mirror is being copied or recovered, and when a selected
   * pair is broken: the frozen copy would not be what the primary held. With `exclusive`
   * (what the backup service asks), refused (ETWIN_BUSY) when a live split reaches the
   * selection (SplitTracker.reaches), checked in the split's own turn in the queue, so no change
   * between a caller's check and the split can slip in.
   */
  split(selector: Selector, owner?: string, opts: { exclusive?: boolean } = {}): Promise<SplitInfo> {
    const sel = normalizeSelector(selector);
    this.c.splitsQueued++;
    const queued = this.c.queue.push(async () => {
      if (this.c.disposed) throw new TwinError('ETWIN_DISPOSED', 'the mirror driver is shut down');
      if (this.c.copying)
        throw new TwinError(
          'ETWIN_MIRROR_BROKEN',
          'the mirror is still being copied or recovered; try again when it is in sync',
        );
      const hit = [...this.c.broken.paths, ...this.c.broken.healing].find(
        (b) => covers(sel, b) || coversUnder(sel, b),
      );
      if (hit)
        throw new TwinError('ETWIN_MIRROR_BROKEN', `the mirror pair for ${hit} is BROKEN; repair it first`, {
          path: hit,
        });
      if (opts.exclusive)
        for (const other of this.c.splits.values())
          if (other.reaches(sel))
            throw new TwinError(
              'ETWIN_BUSY',
              `the mirror keeps entries of this selection as split ${other.id} froze them; try again after it is released`,
              { splitId: other.id },
            );
      await this.c.times.syncAll();
      const s = new SplitTracker(`split-${randomUUID()}`, sel, Date.now(), owner);
      // Explicitly selected files with other names (O(selected paths), not O(volume)).
      for (const p of sel.paths ?? []) {
        const st = await fsp.lstat(this.c.layout.data + p).catch(() => undefined);
        if (st?.isFile() && st.nlink > 1) s.frozenInos.set(st.ino, p);
      }
      this.c.splits.set(s.id, s);
      this.c.trace.event('split', { id: s.id.slice(-8), sel });
      s.generation = this.c.changes.generation;
      try {
        void this.c.journal.append(this.c.changes.journalLine()).catch(() => undefined);
        await this.c.journal.append({ t: 'split', s: s.toRecord() });
      } catch (err) {
        this.c.splits.delete(s.id);
        throw new TwinError(
          'ETWIN_MIRROR_BROKEN',
          `cannot record the split: ${(err as Error).message}`,
          {},
          { cause: err },
        );
      }
      const info = this.c.splitInfo(s);
      this.c.onDidSplit.fire(info);
      this.c.onDidChangeState.fire({
        paths: sel.volume ? 'volume' : [...(sel.paths ?? []), ...(sel.subtrees ?? [])],
        state: 'SPLIT',
        splitId: s.id,
      });
      return info;
    });
    return queued.finally(() => this.c.splitsQueued--);
  }

  /**
   * A change through another name of a hard-linked file that a split selected by one of its
   * names: in the mirror that name is the frozen copy too, so it must not be written now. The
   * split covers it from here on (its changes are tracked and resynced through the same mirror
   * inode: the names stay one file).
   */
  private async followFrozen(p: string): Promise<void> {
    let any = false;
    for (const s of this.c.splits.values()) if (s.frozenInos.size > 0 && !s.covers(p)) any = true;
    if (!any) return;
    const st = await fsp.lstat(this.c.layout.data + p).catch(() => undefined);
    if (!st?.isFile()) return;
    for (const s of this.c.splits.values()) if (s.frozenInos.has(st.ino)) s.followName(p);
  }

  /**
   * Held changes to an inode: its link count tells the split whether a later unlink of this
   * name could leave other names, unknown to it, with changes to resync (see lostLinks).
   */
  /**
   * A held rename, link or create gave a file a new name: which inode it is, so that the resync
   * can tell it from another file renamed over that name on the primary before the resync
   * reaches it (queued behind). Without it, the resync copied the other file into the mirror's
   * entry, whose other names (a hard link) then had that file's content (stress seed 3110
   * through a rename; through a link, the hard-link attack of hardlink-splits.attack.ts). Taken
   * at the change's turn in the queue, moments after the primary's.
   */
  private async noteNamedInode(holders: SplitTracker[], p: string): Promise<void> {
    const todo = holders.filter((s) => !s.inodeNumbers.has(p));
    if (todo.length === 0) return;
    const st = await fsp.lstat(this.c.primary + p).catch(() => undefined);
    if (!st?.isFile()) return;
    for (const s of todo) s.inodeNumbers.set(p, this.inodeAt(p, st));
  }

  private async noteInodeChange(holders: SplitTracker[], p: string): Promise<void> {
    const todo = holders.filter((s) => !s.inodeChanged.has(p));
    if (todo.length === 0) return;
    const st = await fsp.lstat(this.c.primary + p).catch(() => undefined);
    const ino = st && this.inodeAt(p, st);
    // Gone already (its unlink or rename is queued behind), or maybe another file there (see
    // inodeAt): assume it had other names.
    const nlink = st && ino !== UNKNOWN_INO ? (st.isDirectory() ? 1 : st.nlink) : 2;
    for (const s of todo) s.noteInodeChange(p, nlink, ino);
  }

  /**
   * The inode of the primary's file at p, read in the turn of a change to it: UNKNOWN_INO when a
   * namespace change queued behind names p or a directory above it. The primary has made that
   * change already, so its p may be another file (renamed there), and the resync, taking it for
   * the one this split's changes were about, copied it into the mirror's file, which other names
   * share (a held link to /c, then /f renamed over /c before the link's turn: /a and /b, one
   * file with the mirror's /c, got /f's content). With UNKNOWN_INO the resync takes p as gone.
   */
  private inodeAt(p: string, st: { ino: number; isFile(): boolean }): number {
    return st.isFile() && this.c.nameQueued(p) ? UNKNOWN_INO : st.ino;
  }
}

function trackRecord(id: string, c: Change): JournalRecord {
  switch (c.op) {
    case 'write':
      return { t: 'w', id, p: c.path, a: c.offset, b: c.offset + c.data.length };
    case 'zero':
      return { t: 'w', id, p: c.path, a: c.offset, b: c.offset + c.length };
    case 'truncate':
      return { t: 'tr', id, p: c.path, size: c.size };
    case 'chmod':
    case 'chown':
    case 'utimens':
    case 'setxattr':
    case 'removexattr':
    case 'fsync':
      return { t: 'm', id, p: c.path };
    default:
      return { t: 'ns', id, c };
  }
}

function normalizeSelector(sel: Selector): Selector {
  const norm = (p: string) =>
    '/' +
    p
      .split('/')
      .filter((x) => x && x !== '.')
      .join('/');
  return {
    volume: sel.volume || undefined,
    paths: sel.paths?.map(norm),
    subtrees: sel.subtrees?.map(norm),
  };
}
