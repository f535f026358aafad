import type Fuse from 'fuse-native';
import type { Disposable } from '../common/lifecycle.js';
import type { NativeChangeStats } from './native-stats.js';
import type { VolumeOps } from './volume-ops.js';
import type { WriteInhibitor } from './write-inhibitor.js';

type Cb = (...args: any[]) => void;
type Handler = (...args: any[]) => void;

/**
 * A create done natively (native-create.h): the new file's inode, the descriptor opened O_RDWR
 * (the write-back cache's from now on; -1 when the file was closed natively too), the handle
 * libfuse answered with, and its fstat's mode, uid and gid.
 */
export interface NativeCreated {
  ino: number;
  fd: number;
  fh: number;
  mode: number;
  uid: number;
  gid: number;
}

/**
 * A file created, written and closed natively before JS took its create (native-create.h), or
 * opened, written and closed natively before JS took its open (native-open.h, level 29): its
 * writes are reported by its path.
 */
export interface ClosedFile {
  path: string;
  ino: number;
}

/**
 * The primary's free space for native writes (WritebackCache.reserveOutside / settleOutside):
 * they go to the primary at once, and must not take space the cache promised to cached data.
 */
export interface NativeWriteSpace {
  /** Reserves n bytes if floor more are free; how many it got (undefined: no bound is kept). */
  reserve(n: number, floor: number): number | undefined;
  /** Of the reserved bytes: written to the primary, and given back. */
  settle(landed: number, unused: number): void;
}

/**
 * What native writes may put on the primary before JS takes their queue (reserved ahead). Level
 * 31 wakes JS for a take once less than half of it is left (NATIVE_WRITE_BUDGET_LOW in
 * native-unlink.h, 2 MiB): a writer at ~20,000 4 KiB writes a second used 1 MiB up between two
 * takes, and its next write went to JS's cache (with every later one while JS held the data).
 */
const NATIVE_WRITE_GRANT = 4 * 1024 * 1024;
/**
 * Native writes stop while the primary has less than this free beyond what the cache promised:
 * near a full disk every write takes the cache's path, whose reservation answers ENOSPC exactly.
 */
const NATIVE_WRITE_FREE_FLOOR = 64 * 1024 * 1024;

/**
 * The patched fuse-native's calls for unlinks and creates answered natively (native-unlink.h,
 * native-create.h), as src/types/fuse-native.d.ts declares them.
 */
export type NativeChangeBinding = Pick<
  Fuse,
  | 'nativeUnlink'
  | 'nativeCreate'
  | 'nativeSetattr'
  | 'nativeRename'
  | 'nativeEntries'
  | 'nativeOpen'
  | 'nativeWriteBudget'
  | 'takeNativeChanges'
  | 'nativeChangesQueued'
  | 'endNativeChange'
  | 'pollNativeChanges'
  | 'nativeUnlinkStats'
  | 'onNativeChanges'
>;

/**
 * Ops that never change the primary under a path: they only take the queue. Every other op
 * (namespace changes, open, truncate, metadata, fsync) runs with native unlinks paused: what
 * it changes is then ordered by JS alone.
 */
const READ_ONLY_OPS = new Set([
  'init',
  'getattr',
  'fgetattr',
  'access',
  'readdir',
  'readlink',
  'statfs',
  'read',
  'lseek',
  'write',
  'flush',
  'release',
  'opendir',
  'releasedir',
  'fsyncdir',
  'getxattr',
  'listxattr',
]);

/** TWINFS_NATIVE_UNLINK=0 keeps every unlink on the JS thread (for comparison). */
export function nativeUnlinkFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_UNLINK !== '0';
}

/**
 * Whether files with data in the write-back cache are unlinked natively too (the default);
 * TWINFS_NATIVE_UNLINK=uncached keeps those on the JS thread (the rule before, for comparison).
 */
export function nativeUnlinkCachedFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_UNLINK !== 'uncached';
}

/**
 * Creates answered in libfuse's threads too (native-create.h), the default; TWINFS_NATIVE_CREATE=0
 * keeps them on the JS thread (docs/architecture.md, "Creates in libfuse's threads").
 */
export function nativeCreateFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_CREATE !== '0';
}

/**
 * The writes of a file created natively answered natively too while JS has not taken its create
 * (native-create.h), the default with native creates; TWINFS_NATIVE_WRITE=0 sends them to JS
 * (docs/architecture.md, "Writes and closes of new files in libfuse's threads").
 */
export function nativeWriteFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_WRITE !== '0';
}

/**
 * A chmod (mode), chown (the owner after it), utimens (ns, null where not set) or setxattr of a
 * user.* name (name, a copy of the value; fuse-native level 27) done natively, as the queue has it.
 */
export type NativeSetattr =
  | ['m', number]
  | ['o', number, number]
  | ['t', bigint | null, bigint | null]
  | ['X', string, Buffer]
  /** A truncate by path (level 30): the size, the file's inode. */
  | ['z', number, number];

/**
 * chmod, chown, utimens and setxattr of user.* names answered in libfuse's threads too
 * (native-setattr.h), the default with native creates; TWINFS_NATIVE_SETATTR=0 keeps them on the
 * JS thread (docs/architecture.md, "chmod and utimens in libfuse's threads").
 */
export function nativeSetattrFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_SETATTR !== '0';
}

/**
 * Renames of files answered in libfuse's threads too (native-rename.h), the default with native
 * creates; TWINFS_NATIVE_RENAME=0 keeps them on the JS thread (docs/architecture.md, "Renames in
 * libfuse's threads").
 */
export function nativeRenameFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_RENAME !== '0';
}

/** A mkdir, symlink or rmdir done natively, as the queue has it (native-entries.h). */
export type NativeEntry =
  | ['d', number, number, number]
  | ['s', string, number, number, bigint, bigint]
  | ['x'];

/**
 * mkdir, symlink and rmdir answered in libfuse's threads too (native-entries.h), the default
 * with native creates; TWINFS_NATIVE_ENTRIES=0 keeps them on the JS thread (docs/architecture.md,
 * "mkdir, symlink and rmdir in libfuse's threads").
 */
export function nativeEntriesFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.TWINFS_NATIVE_ENTRIES !== '0';
}

/** An open done natively, as the queue has it (native-open.h): its fd a duplicate for the cache. */
export interface NativeOpened {
  ino: number;
  fd: number;
  fh: number;
  /** The descriptor may write (opened read-write, as openCacheFd opens). */
  writable: boolean;
  /** The file was opened for writing (O_WRONLY or O_RDWR; fuse-native level 27). */
  write: boolean;
}

/**
 * Opens of existing files (read-only, and for writing without O_TRUNC or O_APPEND since
 * fuse-native level 27), with their reads and releases, answered in libfuse's threads too
 * (native-open.h), the default with native creates, and since level 29 the WRITEs of such a
 * handle until JS takes its open (with native writes on); TWINFS_NATIVE_OPEN=0 keeps them on the
 * JS thread, TWINFS_NATIVE_OPEN=read the opens for writing, TWINFS_NATIVE_OPEN=open their writes
 * (docs/architecture.md, "Read-only opens and their reads in libfuse's threads", its bullets on
 * writes through such a handle and on takes that leave a young open queued).
 */
export function nativeOpenFromEnv(env: NodeJS.ProcessEnv = process.env): NativeOpens {
  if (env.TWINFS_NATIVE_OPEN === '0') return false;
  // For comparison: read, read-only opens only, as level 26; open, the writes to JS, as level 27;
  // queued, the writes natively only until JS takes the open, as levels 29 and 30.
  if (env.TWINFS_NATIVE_OPEN === 'read') return 'read';
  if (env.TWINFS_NATIVE_OPEN === 'queued') return 'queued';
  return env.TWINFS_NATIVE_OPEN === 'open' ? 'open' : 'all';
}

/**
 * Which opens libfuse's threads answer: none, read-only ones, those for writing too, those and
 * their writes until JS takes the open (queued), or those and their writes before and after JS
 * took the open (all, level 31: while the file has one name, JS holds no data of it and no JS
 * change is in flight).
 */
export type NativeOpens = false | 'read' | 'open' | 'queued' | 'all';

/**
 * How long a change made natively may wait for JS while such changes keep coming (ms): JS then
 * takes the queue on this timer instead of being woken for each (fuse_native_changes_poll).
 */
const POLL_MS = 20;

/**
 * How long a take on the timer leaves an open JS has not taken in the queue (ms): a program that
 * opens a file, writes and closes it within this time does it all in libfuse's threads, unless an
 * op reaches JS meanwhile (fuse-native level 29, NativeChanges.take). Longer-lived handles are
 * taken after it, and their writes go to JS's cache.
 */
const OPEN_HOLD_MS = 200;

/**
 * libfuse3: unlinks answered in libfuse's worker thread (native-unlink.h), each reported here
 * in the primary's order as VolumeOps.unlink would have reported it. Order is kept by three
 * rules:
 * - every op handed to JS first takes the queue (what the native side did before the op
 *   reached JS is reported before it);
 * - an op that may change the primary takes the queue and pauses native unlinks in one locked
 *   step until it is answered, so no native unlink lands between its start and its report;
 * - an inhibition (freeze, prepare) turns native unlinks off and reports the queue
 *   synchronously before it counts (WriteInhibitor.onWillInhibit), so a split that follows
 *   sees every change the primary had before it; they come back when no inhibition is left.
 * Creates, writes and releases of new files, and chmod and utimens (native-create.h,
 * native-setattr.h), renames of files (native-rename.h), and mkdir, symlink and rmdir
 * (native-entries.h) go through the same queue; while changes keep coming, JS takes it on a
 * timer rather than being woken for each (keepTaking). So do opens (native-open.h): not
 * changes, but handles JS must know before any op that may name one (nativeOpened); one closed
 * before JS took it leaves the queue without reaching JS (it wrote nothing: its first WRITE
 * would have reached JS, which takes the queue first).
 */
export class NativeChanges implements Disposable {
  private enabled = false;
  private disposed = false;
  /** Taking the queue on a timer (the native side wakes JS no more meanwhile). */
  private polling = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private readonly subs: Disposable[] = [];

  /**
   * cached: files the write-back cache holds data of are unlinked natively too. Their data is
   * dropped when the unlink is reported (VolumeOps.nativeUnlinked marks the node nameless in
   * the same synchronous step as the sink sees the unlink, so no write-back reports the path
   * after it); until then the cache's descriptor keeps the inode, so its number cannot name a
   * new file while the native attribute table still has an entry for it.
   * writes: (with creates only) a new file's writes until JS takes its create (nativeWritten); carry:
   * each with a copy of its bytes (the sink makes its copy from them); space: where the room
   * they may take on the primary is reserved (granted NATIVE_WRITE_GRANT at a time, topped up
   * as their reports come in). setattrs: chmod and utimens by path (with creates only: the same
   * hold covers them; nativeSetattr). renames: of files (likewise; nativeRenamed). entries:
   * mkdir, symlink and rmdir (likewise; nativeEntry). following: whether the sink follows the
   * primary change for change (ChangeSink.following); renames and entries are done natively only
   * then (see setStructural).
   */
  constructor(
    private readonly fuse: NativeChangeBinding,
    private readonly ops: VolumeOps,
    inhibitor: WriteInhibitor,
    private readonly log: (msg: string) => void,
    private readonly cached = true,
    private readonly creates = false,
    private readonly writes: { carry: boolean; space: NativeWriteSpace } | false = false,
    private readonly setattrs = false,
    private readonly renames = false,
    private readonly entries = false,
    private readonly following: () => boolean = () => true,
    private readonly opens: NativeOpens = false,
  ) {
    fuse.onNativeChanges = () => this.take(false, true);
    this.inhibitor = inhibitor;
    this.subs.push(
      inhibitor.onWillInhibit(() => this.set(false)),
      inhibitor.onDidRelease(() => this.set(this.mayRun())),
    );
    if (writes) this.grant();
    this.set(this.mayRun());
  }

  private readonly inhibitor: WriteInhibitor;
  /** Reasons other than an inhibition to keep native changes off (see hold). */
  private holds = 0;

  /**
   * Native changes off until the returned function is called (synchronously reported first, as
   * for an inhibition): while an open handle's node has no path (handle-nodes.ts, onAnyGone).
   */
  hold(): () => void {
    this.holds++;
    if (this.enabled) this.set(false);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.holds--;
      if (!this.enabled && this.mayRun()) this.set(true);
    };
  }

  private mayRun(): boolean {
    return !this.disposed && this.holds === 0 && !this.inhibitor.isInhibiting;
  }

  /** Space reserved for native writes: the native budget plus what they used unreported. */
  private granted = 0;

  /** Tops the native writes' budget up to NATIVE_WRITE_GRANT (see the constructor). */
  private grant(): void {
    if (!this.writes || this.fuse.nativeWriteBudget === undefined) return;
    const got = this.writes.space.reserve(NATIVE_WRITE_GRANT - this.granted, NATIVE_WRITE_FREE_FLOOR);
    if (got === undefined) {
      if (this.granted >= 0) this.fuse.nativeWriteBudget(-1);
      this.granted = -1;
      return;
    }
    if (got <= 0) return;
    this.granted += got;
    this.fuse.nativeWriteBudget(got);
  }

  /** Wraps fuse-native handlers so that each op takes the queue first (see the class). */
  wrap(handlers: Record<string, Handler>): Record<string, Handler> {
    const out: Record<string, Handler> = {};
    for (const [name, h] of Object.entries(handlers)) {
      if (READ_ONLY_OPS.has(name)) {
        out[name] = (...args: any[]) => {
          this.take(false);
          h(...args);
        };
        continue;
      }
      // Paused even while native unlinks are off: they may come back before the op ends.
      out[name] = (...args: any[]) => {
        this.take(true);
        // The callback is the last function: create's open flags come after it (patch level 10).
        let at = args.length - 1;
        while (at > 0 && typeof args[at] !== 'function') at--;
        const cb = args[at] as Cb;
        let ended = false;
        args[at] = (...res: unknown[]) => {
          if (!ended) {
            ended = true;
            this.fuse.endNativeChange();
          }
          cb(...res);
        };
        h(...args);
      };
    }
    return out;
  }

  /** Reports every unlink and create done natively so far (in order). */
  drain(): void {
    // The sink may ask after the unmount (the change record's reportAhead): the queue was
    // reported at dispose, and the mount's native state may be gone.
    if (!this.disposed) this.take(false);
  }

  stats(): NativeChangeStats {
    return { ...this.fuse.nativeUnlinkStats(), enabled: this.enabled };
  }

  dispose(): void {
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    this.set(false);
    this.fuse.nativeCreate?.(false);
    if (this.setattrs) this.fuse.nativeSetattr?.(false);
    if (this.opens) this.fuse.nativeOpen?.(false);
    // Every native write was reported (set took the queue): the rest of the grant goes back.
    if (this.writes && this.granted > 0) this.writes.space.settle(0, this.granted);
    this.granted = 0;
    for (const s of this.subs) s.dispose();
    this.fuse.onNativeChanges = null;
    this.disposed = true;
  }

  private set(on: boolean): void {
    this.enabled = on;
    // When turned off, the native side is quiet once this returns: report what it did.
    this.fuse.nativeUnlink(on, this.cached);
    if (this.creates) this.fuse.nativeCreate?.(on, this.writes !== false, this.writes && this.writes.carry);
    if (this.setattrs) this.fuse.nativeSetattr?.(on);
    // Writes through them only with native writes (their carry and space budget are those).
    if (this.opens)
      this.fuse.nativeOpen?.(
        on,
        this.opens !== 'read',
        (this.opens === 'all' || this.opens === 'queued') && this.writes !== false,
        this.opens === 'all',
      );
    this.setStructural(on && this.following());
    if (!on) this.take(false);
  }

  /** Renames, mkdir, symlink and rmdir done natively now (see setStructural). */
  private structuralOn = false;

  /**
   * Renames, mkdir, symlink and rmdir change where names are, which a mirror that does not follow
   * the primary change for change (a split held, a resync, copy, repair, broken pairs) reads from
   * the primary by path when their turn comes (a resync's replay, a heal, a relink): on the JS
   * path those are then answered only once the mirror has them, so the primary never runs far
   * ahead of its queue (change-routing.ts, mayAnswerBehind). Done natively they would not wait:
   * so they are done natively only while the sink follows. Checked at every take of the queue
   * (every JS op, every poll tick, every wake): a mirror that stops following is seen at the
   * latest with the next change JS hears of, as a change JS answered behind just before would
   * be; inhibitions (splits) turn everything off first in any case. What found it: the storm case
   * of test/fusefs/native-entries.test.ts under load, where an rmdir done natively while a resync
   * replayed held changes found the mirror's directory not empty.
   */
  private setStructural(on: boolean): void {
    if (on === this.structuralOn) return;
    this.structuralOn = on;
    if (this.renames) this.fuse.nativeRename?.(on);
    if (this.entries) this.fuse.nativeEntries?.(on);
  }

  /**
   * Changes made natively come in runs (`rm -r`, `chmod -R`, `tar x`): once JS took one, it takes
   * the queue every POLL_MS while more keep coming, and the native side no longer wakes it for
   * each (a wake cost ~10 µs of the change's answer and ~20 µs of CPU here, docs/benchmarks.md
   * "chmod and utimens in libfuse's threads"). A tick that finds nothing turns the timer off,
   * which the native side allows only with the queue empty, under the lock changes are queued
   * under: no change is left waiting unwoken.
   */
  private keepTaking(): void {
    if (this.disposed || this.fuse.pollNativeChanges === undefined) return;
    if (!this.polling) {
      this.polling = true;
      this.fuse.pollNativeChanges(true);
    }
    this.pollTimer ??= setTimeout(() => this.pollTick(), POLL_MS).unref();
  }

  private pollTick(): void {
    this.pollTimer = undefined;
    if (this.disposed || this.take(false, true) > 0 || this.held) return;
    if (this.fuse.pollNativeChanges!(false)) this.polling = false;
    // Something was queued between the take and the check: take it (and go on polling).
    else this.take(false, true);
  }

  /** The last take on the timer or a wake left a young open (and what follows) queued. */
  private held = false;

  /**
   * Reports what the native side did since the last take; the number of entries. onTimer: a take
   * no op asked for (the poll's timer, a wake): it leaves an open JS has not taken, still open
   * and younger than OPEN_HOLD_MS, queued with what follows (fuse-native level 29), so that its
   * WRITEs can still be done natively; the timer keeps going until the queue is taken whole.
   * Every op's take (which may name the handle), an inhibition's and a drain's take everything.
   */
  private take(begin: boolean, onTimer = false): number {
    if (this.enabled && (this.renames || this.entries)) this.setStructural(this.following());
    const hold =
      onTimer && (this.opens === 'all' || this.opens === 'queued') && this.writes !== false
        ? OPEN_HOLD_MS
        : 0;
    const done = this.fuse.takeNativeChanges(begin, hold);
    this.held = hold > 0 && this.fuse.nativeChangesQueued?.() === true;
    if (this.held) this.keepTaking();
    if (done === null) {
      if (!this.held) this.closedFiles = undefined;
      return 0;
    }
    // Files created (or opened, level 29) and closed natively: their writes are reported by path.
    // Kept across takes while one leaves entries queued: a take on the timer stops at a young
    // open, which may sit between such a file's entry and its later writes.
    let closed = this.closedFiles;
    let written = 0;
    for (let i = 0; i < done.length; i += 2) {
      const path = done[i] as string;
      const what = done[i + 1];
      if (typeof what === 'number') {
        this.ops
          .nativeUnlinked(path, what)
          .catch((err) =>
            this.log(`reporting the unlink of ${path} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      const kind = (what as unknown[])[0];
      if (kind === 'O') {
        // ['O', ino, fd, fh, writable, write, closed] (native-open.h): the handle registered now,
        // before the op that took the queue may name it; one that wrote natively and was
        // released before this take (closed, level 29) is gone: its writes come by path.
        const [, ino, fd, fh, writable, write, gone] = what as [
          'O',
          number,
          number,
          number,
          number,
          number,
          number?,
        ];
        if (gone === 1) {
          (closed ??= new Map()).set(fh, { path, ino });
          continue;
        }
        try {
          this.ops.nativeOpened(path, { ino, fd, fh, writable: writable !== 0, write: write === 1 });
        } catch (err) {
          this.log(`taking the native open of ${path} failed: ${(err as Error)?.stack ?? err}`);
        }
        continue;
      }
      if (kind === 'd' || kind === 's' || kind === 'x') {
        this.ops
          .nativeEntry(path, what as NativeEntry)
          .catch((err) =>
            this.log(`reporting a native ${kind} of ${path} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      if (kind === 'r') {
        // ['r', to, ino, replaced ino or 0] (native-rename.h)
        const [, to, ino, replaced] = what as ['r', string, number, number];
        // A file created or opened and closed natively (this take or one that left entries
        // queued): its later writes come by its new name.
        if (closed) for (const f of closed.values()) if (f.path === path) f.path = to;
        this.ops
          .nativeRenamed(path, to, ino, replaced)
          .catch((err) =>
            this.log(`reporting the rename of ${path} to ${to} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      if (kind === 'T') {
        // ['T', fh, size] (native-create.h, level 30): an ftruncate through a handle JS had not
        // taken, in its turn among the handle's writes.
        const [, fh, size] = what as ['T', number, number];
        this.ops
          .nativeTruncated(fh, size, closed?.get(fh))
          .catch((err) =>
            this.log(`reporting a truncation through handle ${fh} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      if (kind === 'A') {
        // ['A', fh, size before, size after, mtime ns or null, length] (native-create.h, level
        // 31): an fallocate that only allocates, through a handle whose writes are native. Its
        // length counts as written for the space reserved for native writes (the space it may
        // take).
        const [, fh, before, after, mtimeNs, len] = what as [
          'A',
          number,
          number,
          number,
          bigint | null,
          number,
        ];
        written += len;
        this.ops
          .nativeAllocated(fh, before, after, mtimeNs, closed?.get(fh))
          .catch((err) =>
            this.log(`reporting an fallocate through handle ${fh} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      if (typeof (what as unknown[])[0] === 'string') {
        // ['m', mode], ['o', uid, gid], ['t', atime, mtime], ['X', name, value] or ['z', size,
        // ino] (native-setattr.h)
        const set = what as NativeSetattr;
        this.ops
          .nativeSetattr(path, set)
          .catch((err) =>
            this.log(`reporting a native setattr of ${path} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      if ((what as unknown[]).length === 3) {
        const [fh, offset, data] = what as [number, number, Buffer | number];
        written += typeof data === 'number' ? data : data.length;
        this.ops
          .nativeWritten(fh, offset, data, closed?.get(fh))
          .catch((err) =>
            this.log(`reporting a write of handle ${fh} failed: ${(err as Error)?.stack ?? err}`),
          );
        continue;
      }
      const [ino, fd, fh, mode, uid, gid] = what as number[];
      if (fd < 0) (closed ??= new Map()).set(fh, { path, ino });
      this.ops
        .nativeCreated(path, { ino, fd, fh, mode, uid, gid })
        .catch((err) => this.log(`reporting the create of ${path} failed: ${(err as Error)?.stack ?? err}`));
    }
    // The bytes written landed on the primary: their reservation is used, and topped up again
    // (also after a grant was refused: the primary may have room again).
    if (this.writes && this.granted >= 0 && !this.disposed) {
      const used = Math.min(written, this.granted);
      if (used > 0) {
        this.writes.space.settle(used, 0);
        this.granted -= used;
      }
      this.grant();
    }
    if (done.length > 0) this.keepTaking();
    // Nothing left queued: no write of a file closed so far can still come.
    this.closedFiles = this.held ? closed : undefined;
    return done.length / 2;
  }

  /** Files closed natively whose writes a later take may still bring (see take). */
  private closedFiles: Map<number, ClosedFile> | undefined;
}
