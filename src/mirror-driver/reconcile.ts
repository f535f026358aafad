import type { Stats } from 'node:fs';
import { promises as fsp } from 'node:fs';
import { delay } from '../common/async.js';
import { DEVICE_CODES, HEAL_CODES, type MirrorCore } from './driver-core.js';
import type { ProgressEvent } from './driver-types.js';
import { copyChunk, syncMeta } from './entry-sync.js';
import { lstatOrUndefined, mapLimit, outermost, sameMeta } from './tree-helpers.js';

/** Entries synced in parallel inside one queue task, and entries per task. */
const PARALLEL = 16;
/** Background tasks wait for this long a pause in live changes, but no longer than YIELD_MAX_MS. */
const YIELD_QUIET_MS = 5;
const YIELD_MAX_MS = 100;
const BATCH = 64;
const BATCH_BYTES = 8 * 1024 * 1024;
/** Files above this size are reconciled chunk by chunk, LARGE_CHUNK bytes per queue task. */
const LARGE_FILE = 8 * 1024 * 1024;
const LARGE_CHUNK = 8 * 1024 * 1024;

/**
 * A comparison that reads contents (and copies metadata) instead of trusting size, mtime and
 * ctime: everywhere (true), or for the entries a predicate picks.
 */
export type Deep = boolean | ((st: Stats) => boolean);

function isDeep(deep: Deep | undefined, st: Stats): boolean {
  return typeof deep === 'function' ? deep(st) : !!deep;
}

/**
 * How a walk decides that an entry needs no reading: `deep` (compare contents anyway), and
 * `vouch`, the change record's "p did not change since the generation the mirror was known
 * equal at" (ChangeRecord.unchangedSince). With `vouch`, a file whose size, mtime and ctime say
 * equal is taken as equal only where the record vouches for it; any other is compared by
 * content (what differs is rewritten, and counted: Reconciler.noteReread): size, mtime and ctime
 * are what a wrong copy keeps once the times were copied onto it.
 */
export interface WalkCheck {
  deep?: Deep;
  vouch?: (p: string) => boolean;
}

/** The first name a walk met of each primary file with several names, and whether its mirror copy was read. */
type LinkFirsts = Map<number, { path: string; read: boolean }>;

/**
 * Reconciliation: makes a mirror subtree equal to the primary's (the initial copy, start-up
 * comparison, heals, repairs, resync trees), directory by directory in small queue tasks that
 * interleave with live changes in order, keeping hard links and never touching what a split
 * holds; and relinking, which joins again the names of a file that a copy separated, inside
 * the same queue task.
 */
export class Reconciler {
  /** Rename targets seen by each running (unlocked) reconciliation walk. */
  private readonly walks = new Set<Set<string>>();

  constructor(private readonly c: MirrorCore) {}

  /**
   * A rename applied to the mirror: a walk running meanwhile walks its target again, and names
   * left behind (left-behind.ts) follow it.
   */
  noteRename(from: string, to: string): void {
    for (const w of this.walks) w.add(to);
    this.c.leftBehind.noteRename(from, to);
  }

  /**
   * Background work (copy, repair, reconciliation) runs between live changes. An application
   * doing one change after another (rm -r, untar) would wait for a whole background task each
   * time: while changes keep coming, hold back (for up to YIELD_MAX_MS per task).
   */
  async yieldToLive(): Promise<void> {
    const until = Date.now() + YIELD_MAX_MS;
    while (Date.now() - this.c.lastLiveAt < YIELD_QUIET_MS && Date.now() < until) await delay(YIELD_QUIET_MS);
  }

  async relinkIfWanted(cause: string): Promise<void> {
    if (this.c.relinkWanted) await this.relinkVolume(cause);
  }

  /**
   * Links the names of files with several names again after one was copied alone: the other
   * names can be anywhere; the link index (link-index.ts) names them, or, where it cannot vouch
   * for having them all, the volume is compared. Now, inside the task that healed it: until
   * then the copies are separate files, and a change applied to one of them in between (an
   * xattr through the healed name, a write through another) would be on one copy only, and the
   * comparison, which keeps the first name it finds equal by size, mtime and ctime, could keep
   * the other.
   */
  async relinkVolume(cause: string): Promise<void> {
    const names = [...this.c.relinkNames].sort();
    this.c.relinkNames.clear();
    if (names.length > 0 && (await this.relinkIndexed(names).catch(() => false))) {
      this.c.trace.event('relink-indexed', { cause, names });
      return;
    }
    this.c.log(
      `${cause}: a file with several names was copied alone; comparing the volume to link its names`,
    );
    this.c.trace.event('relink', { cause });
    try {
      const r = await this.reconcileTree('/', 'repair', { locked: true });
      this.c.stats.bytesMirrored += r.bytes;
    } catch (err) {
      this.c.broken.markBroken('/', err as NodeJS.ErrnoException);
    }
  }

  /**
   * Links the other names of each named file to its mirror copy (just made from the primary),
   * as a comparison of the volume would (names a split holds are left alone). False, having
   * done nothing or part of it, when the index cannot name them all or a name cannot be
   * linked: the caller then compares the volume.
   */
  private async relinkIndexed(names: string[]): Promise<boolean> {
    const done = new Set<string>();
    for (const p of names) {
      const pst = await lstatOrUndefined(this.c.primary + p);
      if (!pst) return false; // moved on the primary: its name there is not known
      if (!pst.isFile() || pst.nlink < 2 || this.c.heldUnder(p)) continue;
      const key = `${pst.dev}:${pst.ino}`;
      if (done.has(key)) continue;
      const all = await this.c.links.namesOf(this.c.primary, pst);
      const first = await lstatOrUndefined(this.c.layout.data + p);
      if (!all?.includes(p) || !first?.isFile()) return false;
      done.add(key);
      for (const q of all) {
        if (q === p) continue;
        if (this.c.heldUnder(q)) {
          // Linked when the split lets go (its resync), or the names stayed two files. The held
          // name too, not only p: p may name another file by then (renamed over on the primary
          // while the split held q), and relinking p's file then left q's family two files, the
          // held name on the frozen copy and the others on p's (finding 40, docs/reliability.md).
          for (const s of this.c.splits.values())
            if (s.coversUnder(q)) {
              s.relinkAfter.add(p);
              s.relinkAfter.add(q);
            }
          continue;
        }
        const mst = await lstatOrUndefined(this.c.layout.data + q);
        if (mst?.ino === first.ino) continue;
        this.c.writer.forget(q, false);
        await fsp.rm(this.c.layout.data + q, { recursive: true, force: true });
        await this.c.ensureParents(q);
        await fsp.link(this.c.layout.data + p, this.c.layout.data + q);
        this.c.times.noteParents(q);
      }
    }
    return true;
  }

  /**
   * Makes the mirror's subtree at p equal to the primary's: entries whose type, size, mode,
   * owner or mtime differ are copied, entries whose ctime is newer on the primary are compared
   * (metadata, and contents chunk by chunk), extras are removed, hard links are kept, and
   * nothing a split holds is touched.
   *
   * Directory by directory: both listings are read, then the entries are synced in batches,
   * each batch one task in the change queue (so live changes interleave in the right order) and
   * parallel inside it (no live change can run meanwhile). locked: the caller already runs in
   * the queue.
   */
  async reconcileTree(
    p: string,
    phase: ProgressEvent['phase'],
    o: { locked?: boolean; deep?: Deep; vouch?: WalkCheck['vouch']; signal?: AbortSignal } = {},
  ): Promise<{ bytes: number; entries: number }> {
    // A locked walk leaves names a change still queued names to it (see walkTree); they are
    // compared in a turn after those changes. An unlocked walk reads them as before: it walks
    // the target of every rename applied while it runs again, which copies what a rename moved
    // (the reproduced case of walkTree's is a locked walk's; an unlocked one's is not).
    if (o.locked) {
      const chk: WalkCheck = { deep: o.deep, vouch: o.vouch };
      return this.walkTree(p, phase, o, (q) => this.c.leftBehind.add(q, chk));
    }
    const renamed = new Set<string>();
    this.walks.add(renamed);
    try {
      const total = await this.walkTree(p, phase, o);
      for (let round = 0; renamed.size > 0 && round < 10 && !o.signal?.aborted; round++) {
        const again = outermost(renamed).filter((t) => t === p || t.startsWith(p === '/' ? '/' : p + '/'));
        renamed.clear();
        for (const t of again) {
          const r = await this.walkTree(t, phase, o);
          total.bytes += r.bytes;
          total.entries += r.entries;
        }
      }
      return total;
    } finally {
      this.walks.delete(renamed);
    }
  }

  /**
   * One walk of p. With `left`, a name that a namespace change still queued names
   * (MirrorCore.nameQueued) is not read from the primary, where that change is made already and
   * the entry under the name may be another one than the mirror's at this point of the queue:
   * it is neither synced nor removed nor walked into, and goes to `left` (the caller compares
   * it once the queued changes have run). Synced, a directory renamed away and made again, both
   * queued behind a heal's locked walk of the volume, gave the mirror's old directory the new
   * one's mode, xattrs and times (which the queued rename carried), or emptied it of what the
   * new one lacked, and the queued rename failed (queued-names.test.ts).
   */
  private async walkTree(
    p: string,
    phase: ProgressEvent['phase'],
    o: { locked?: boolean; deep?: Deep; vouch?: WalkCheck['vouch']; signal?: AbortSignal },
    left?: (p: string) => void,
  ): Promise<{ bytes: number; entries: number }> {
    const chk: WalkCheck = { deep: o.deep, vouch: o.vouch };
    // Left by this walk: not walked into.
    const leftHere = new Set<string>();
    const leave = (q: string): boolean => {
      if (!left || q === '/' || !this.c.nameQueued(q)) return false;
      leftHere.add(q);
      left(q);
      return true;
    };
    const isLeft = (q: string) => {
      for (let a = q; a !== ''; a = a.slice(0, a.lastIndexOf('/'))) if (leftHere.has(a)) return true;
      return false;
    };
    // A name separated from the other names of its file (copyEntry) is linked to them again in
    // the same queue task: a live change in between would reach one of the copies only.
    const run = async <T>(f: () => Promise<T>): Promise<T> => {
      if (o.locked) return f();
      await this.yieldToLive();
      return this.c.queue.push(async () => {
        const r = await f();
        await this.relinkIfWanted(p);
        return r;
      });
    };
    let bytes = 0;
    let entries = 0;
    const links: LinkFirsts = new Map();
    const report = (done: boolean) => this.c.onProgress.fire({ phase, entries, bytes, done });
    const base = p === '/' ? '' : p;
    bytes += await run(async () =>
      leave(p) ? 0 : this.syncQuick(p, await lstatOrUndefined(this.c.primary + base), links, chk),
    );
    if (leftHere.size > 0) return { bytes, entries };
    const dirs = [base];
    let reported = 0;
    while (dirs.length > 0) {
      if (o.signal?.aborted) return { bytes, entries };
      const dir = dirs.pop()!;
      if (isLeft(dir)) continue;
      let names: string[];
      try {
        names = (await fsp.readdir(this.c.primary + dir)).sort();
      } catch {
        continue; // gone or not a directory any more: its own change says what became of it
      }
      const have = await fsp.readdir(this.c.layout.data + dir).catch(() => [] as string[]);
      const wanted = new Set(names);
      const extras = have.filter((n) => !wanted.has(n));
      const stats = await mapLimit(names, PARALLEL, (n) => lstatOrUndefined(`${this.c.primary}${dir}/${n}`));
      const items = names.map((name, i) => ({ path: `${dir}/${name}`, st: stats[i] }));
      for (const it of items) {
        if (!it.st) continue;
        this.c.changes.notePrimary(it.path, it.st);
        this.c.links.notePrimary(it.path, it.st);
      }
      // Small tasks: a live change waits for at most one of them.
      const large = items.filter((it) => it.st?.isFile() && it.st.nlink === 1 && it.st.size > LARGE_FILE);
      const small = items.filter((it) => !large.includes(it));
      for (let i = 0; i < small.length; ) {
        if (o.signal?.aborted) return { bytes, entries };
        let j = i;
        for (let size = 0; j < small.length && j - i < BATCH && size <= BATCH_BYTES; j++)
          size += small[j]!.st?.size ?? 0;
        const batch = small.slice(i, j);
        i = j;
        bytes += await run(() =>
          this.syncBatch(
            batch.filter((it) => !leave(it.path)),
            links,
            chk,
          ),
        );
      }
      for (const it of large) {
        if (o.signal?.aborted) return { bytes, entries };
        bytes += await this.syncLargeFile(it.path, it.st!, run, chk, leave);
      }
      if (extras.length > 0) await run(() => this.removeExtras(dir, extras, leave));
      // Making and removing the names above moved the mirror directory's times (and reading
      // the primary's may have moved its atime): copy them again, now that it is complete.
      await run(() => this.c.times.copy(dir === '' ? '/' : dir));
      entries += items.length;
      if (entries - reported >= 1000) {
        reported = entries;
        report(false);
      }
      for (const it of [...items].reverse()) if (it.st?.isDirectory() && !isLeft(it.path)) dirs.push(it.path);
    }
    report(true);
    // Inside one task (locked): a walk of the volume has linked the names it separated; a walk of
    // a subtree cannot see names outside it.
    if (o.locked) {
      if (p === '/') this.c.relinkNames.clear();
      else await this.relinkIfWanted(p);
    }
    return { bytes, entries };
  }

  /**
   * A big file, chunk by chunk, each chunk one queue task (a whole-file copy would hold live
   * changes back for as long as it takes). Each chunk reads the primary as it is when the task
   * runs, so live writes in between are never undone; the last task fixes size and metadata.
   */
  private async syncLargeFile(
    p: string,
    listed: Stats,
    run: <T>(f: () => Promise<T>) => Promise<T>,
    chk: WalkCheck,
    leave: (p: string) => boolean,
  ): Promise<number> {
    const mp = this.c.layout.data + p;
    const plan = await run(async () => {
      if (this.c.isHeld(p) || leave(p)) return undefined;
      const [pst, mst] = await Promise.all([lstatOrUndefined(this.c.primary + p), lstatOrUndefined(mp)]);
      if (!pst?.isFile() || pst.nlink > 1) return { fallback: true as const, pst };
      // A mirror file with other names is another file (see syncEntry): replaced, not written.
      if (mst?.isFile() && mst.nlink === 1) {
        const sameData = mst.size === pst.size && Math.abs(mst.mtimeMs - pst.mtimeMs) < 1;
        const quick = sameData && sameMeta(pst, mst) && pst.ctimeMs <= mst.ctimeMs;
        const unvouched = quick && !!chk.vouch && !chk.vouch(p);
        if (quick && !isDeep(chk.deep, pst) && !unvouched) return undefined;
        this.c.writer.forget(p, true);
        return { compare: sameData, size: pst.size, drift: unvouched && !isDeep(chk.deep, pst) };
      }
      this.c.writer.forget(p, true);
      if (mst) await fsp.rm(mp, { recursive: true, force: true });
      await this.c.ensureParents(p);
      await fsp.writeFile(mp, '', { mode: 0o600 });
      return { compare: false, size: pst.size, drift: false };
    });
    if (!plan) return 0;
    if ('fallback' in plan)
      return run(async () =>
        leave(p)
          ? 0
          : this.syncQuick(p, (await lstatOrUndefined(this.c.primary + p)) ?? listed, new Map(), chk),
      );
    let bytes = 0;
    for (let off = 0; ; off += LARGE_CHUNK) {
      const r = await run(async () => {
        if (this.c.isHeld(p) || leave(p)) return undefined;
        return copyChunk(this.c.primary + p, mp, off, LARGE_CHUNK, plan.compare).catch((err) => {
          if (HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) return undefined; // gone meanwhile
          throw err;
        });
      });
      if (!r) return bytes;
      bytes += r.copied;
      if (r.eof) break;
    }
    await run(async () => {
      if (this.c.isHeld(p) || leave(p)) return;
      // bigint: its times to the ns if it leaves the primary before syncMeta reads them again.
      const pst = await fsp.lstat(this.c.primary + p, { bigint: true }).catch(() => undefined);
      if (!pst?.isFile()) return;
      await fsp.truncate(mp, Number(pst.size));
      await syncMeta(this.c.primary + p, mp, pst);
    });
    if (plan.drift && bytes > 0) await this.noteReread(p, bytes, listed, 'changed');
    return bytes;
  }

  /** One batch of entries of a directory: plain ones in parallel, directories and hard links in order. */
  private async syncBatch(
    items: Array<{ path: string; st: Stats | undefined }>,
    links: LinkFirsts,
    chk: WalkCheck,
  ): Promise<number> {
    const serial = items.filter(
      (it) => it.st && (it.st.isDirectory() || (it.st.isFile() && it.st.nlink > 1)),
    );
    const plain = items.filter((it) => it.st && !serial.includes(it));
    let bytes = 0;
    for (const it of serial) bytes += await this.syncOne(it.path, it.st, links, chk);
    const r = await mapLimit(plain, PARALLEL, (it) => this.syncOne(it.path, it.st, links, chk));
    for (const b of r) bytes += b;
    return bytes;
  }

  /**
   * syncQuick, with an entry that cannot be copied marked broken (the rest goes on); a failure
   * of the mirror device itself ends the walk (its root is then marked broken by the caller).
   */
  private async syncOne(
    p: string,
    pst: Stats | undefined,
    links: LinkFirsts,
    chk: WalkCheck,
  ): Promise<number> {
    try {
      return await this.syncQuick(p, pst, links, chk);
    } catch (err) {
      if (DEVICE_CODES.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      this.c.broken.markBroken(p, err as NodeJS.ErrnoException);
      return 0;
    }
  }

  private async removeExtras(dir: string, names: string[], leave: (p: string) => boolean): Promise<void> {
    await mapLimit(names, PARALLEL, async (name) => {
      const vp = `${dir}/${name}`;
      // Made since the listing (and already mirrored by its own change)? Or gone from the
      // primary by a change still queued (a rename, which moves it)?
      if (this.c.heldUnder(vp) || leave(vp) || (await lstatOrUndefined(this.c.primary + vp))) return;
      this.c.writer.forget(vp, true);
      await fsp.rm(this.c.layout.data + vp, { recursive: true, force: true });
    });
  }

  /**
   * Syncs one entry unless it provably matches. pst may be a little old (listed before this
   * task ran): a change since is either on the mirror already (which then differs from pst, so
   * the entry is synced from the primary as it is now) or queued behind this task.
   */
  private async syncQuick(
    p: string,
    pst: Stats | undefined,
    links: LinkFirsts,
    chk: WalkCheck,
  ): Promise<number> {
    const mp = p === '/' ? this.c.layout.data : this.c.layout.data + p;
    if (p !== '/' && this.c.isHeld(p)) return 0;
    const mst = await lstatOrUndefined(mp);
    if (!pst) {
      if (p === '/' || !mst || this.c.heldUnder(p)) return 0;
      this.c.writer.forget(p, true);
      await fsp.rm(mp, { recursive: true, force: true });
      return 0;
    }
    const sameType = !!mst && (mst.mode & 0o170000) === (pst.mode & 0o170000);
    if (mst && !sameType && this.c.heldUnder(p)) return 0;
    if (p === '/') {
      if (!mst) await fsp.mkdir(mp, { recursive: true });
      if (!mst || !sameMeta(pst, mst) || pst.ctimeMs > mst.ctimeMs) await syncMeta(this.c.primary, mp, pst);
      return 0;
    }
    let bytes = 0;
    if (pst.isFile() && pst.nlink > 1) {
      const first = links.get(pst.ino);
      if (first) {
        const firstM = await lstatOrUndefined(this.c.layout.data + first.path);
        if (firstM && (!mst || mst.ino !== firstM.ino)) {
          // The mirror held this file as two files: one of them missed what the other got, and
          // size, mtime and ctime do not tell which. The copy kept (the first name's) is read
          // against the primary before the other names are linked to it.
          if (mst?.isFile() && !first.read) bytes += await this.readKept(first, pst);
          this.c.writer.forget(p, false);
          await fsp.rm(mp, { recursive: true, force: true });
          await this.c.ensureParents(p);
          await fsp.link(this.c.layout.data + first.path, mp);
          this.c.times.noteParents(p);
        }
        return bytes;
      }
      links.set(pst.ino, { path: p, read: false });
    }
    const sameData =
      sameType && (pst.isDirectory() || (mst!.size === pst.size && Math.abs(mst!.mtimeMs - pst.mtimeMs) < 1));
    const newer = !!mst && pst.ctimeMs > mst.ctimeMs;
    const quick = sameData && sameMeta(pst, mst!) && !newer;
    const deep = isDeep(chk.deep, pst) && pst.isFile();
    // Equal by size, mtime and ctime, but the change record cannot vouch that nothing changed
    // since the mirror was known equal: read (see WalkCheck). Not a file whose names are
    // changing (another link count in the mirror: a link, unlink or rename over it is queued
    // behind), which would get a file of its own here (copyEntry's separate) where it got none
    // before: its queued changes and the comparison of its names settle it, as before.
    const unvouched = quick && pst.isFile() && mst!.nlink === pst.nlink && !!chk.vouch && !chk.vouch(p);
    if (quick && !deep && !unvouched) return 0;
    this.c.writer.forget(p, true);
    const first = pst.isFile() && pst.nlink > 1 ? links.get(pst.ino) : undefined;
    if (first) first.read = true;
    if (quick && !deep) {
      // Read only because the record cannot vouch: the mirror's file is kept whatever its names
      // (never a file of its own here: what the primary's names do next is queued behind), and
      // only while the primary's entry is still the file listed (another file renamed there
      // since is queued behind too, and is not read into this one).
      const r = await this.copyUnlessGone(p, mp, { compare: true, mirrorStat: mst, ino: pst.ino });
      if (!r) return bytes;
      if (r.bytesCopied > 0) await this.noteReread(p, r.bytesCopied, pst, 'changed');
      return bytes + r.bytesCopied;
    }
    // Same size and mtime: probably equal, so compare rather than copy.
    const opts = { compare: sameData, mirrorStat: mst ?? null, separate: true };
    let r: { bytesCopied: number } | undefined;
    try {
      r = await this.copyUnlessGone(p, mp, opts);
    } catch (err) {
      if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      // The parent is normally there (directories are synced before their entries).
      await this.c.ensureParents(p);
      r = await this.copyUnlessGone(p, mp, { compare: sameData, separate: true });
    }
    return bytes + (r?.bytesCopied ?? 0);
  }

  /**
   * copyEntry of p from the primary, or undefined when it failed because p left the primary
   * after the walk listed it: the change that removed it is reported behind (an unlink answered
   * in libfuse's thread, or libfuse's own removal of a hidden name at the last close, is on the
   * primary before JS hears of it), and says what becomes of the mirror's entry; or left to the
   * changes of p queued once those made in libfuse's threads are reported. Not a mirror failure.
   */
  private async copyUnlessGone(
    p: string,
    mp: string,
    opts: Parameters<MirrorCore['copyEntry']>[2],
  ): Promise<Awaited<ReturnType<MirrorCore['copyEntry']>> | undefined> {
    try {
      return await this.c.copyEntry(this.c.primary + p, mp, opts);
    } catch (err) {
      if (!HEAL_CODES.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      // p may have gone and come back as another file (a native unlink, then a native create of
      // the name) since the copy's lstat (MirrorCore.leftToQueue); only a p gone for good was
      // left before, and one made again broke `/` (native-unlink-cached's storm).
      if (this.c.leftToQueue(p)) return undefined;
      if (!(await lstatOrUndefined(this.c.primary + p))) return undefined;
      throw err;
    }
  }

  /**
   * Reads the mirror copy a walk kept for a file with several names against the primary (only
   * what differs is written), when another name of it turned out to be another mirror file.
   */
  private async readKept(first: { path: string; read: boolean }, pst: Stats): Promise<number> {
    first.read = true;
    this.c.writer.forget(first.path, false);
    const r = await this.c.copyEntry(this.c.primary + first.path, this.c.layout.data + first.path, {
      compare: true,
      ino: pst.ino,
    });
    if (r.moved) return 0; // moved on the primary: the change that did it is queued behind
    if (r.bytesCopied > 0) await this.noteReread(first.path, r.bytesCopied, pst, 'two-files');
    return r.bytesCopied;
  }

  /**
   * A comparison by content rewrote a mirror copy whose size, mtime and ctime said it was equal:
   * counted in the status (stats.rereadRewrites) and traced. Not an error: the copy was wrong,
   * or the primary had run ahead of the queue (a write that reached the primary before a resync
   * copied the file, reported behind it: the copy has the primary's size and times, and the
   * queued write brings the bytes; the attack of hardlink-splits.attack.ts meets this every few
   * seconds), and the two cannot be told apart here. A primary changed since the listing is
   * not counted.
   */
  private async noteReread(
    p: string,
    bytes: number,
    listed: Stats,
    why: 'changed' | 'two-files',
  ): Promise<void> {
    const now = await lstatOrUndefined(this.c.primary + p);
    if (!now || now.ino !== listed.ino || now.ctimeMs !== listed.ctimeMs) return;
    this.c.stats.rereadRewrites++;
    this.c.trace.event('reread-rewrite', { path: p, bytes, why });
  }
}
