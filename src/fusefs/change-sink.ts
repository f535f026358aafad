import type { Disposable } from '../common/lifecycle.js';

/**
 * The flush hook: the single place where every change that reaches the primary directory is
 * reported, in the order the primary saw it. The mirror driver implements ChangeSink; the
 * backup sequence uses WriteGate to inhibit and drain writes to chosen files.
 *
 * Paths are volume paths: '/'-rooted, normalised, never containing '..'.
 */
export type Change =
  | { op: 'write'; path: string; offset: number; data: Buffer }
  | { op: 'truncate'; path: string; size: number }
  /**
   * The range reads as zeros now (fallocate(2) PUNCH_HOLE or ZERO_RANGE on the primary); always
   * inside the file, the size unchanged (a size fallocate changed comes as a truncate after it).
   */
  | { op: 'zero'; path: string; offset: number; length: number }
  | { op: 'create'; path: string; mode: number; uid: number; gid: number }
  | { op: 'mkdir'; path: string; mode: number; uid: number; gid: number }
  | {
      op: 'mknod';
      path: string;
      mode: number;
      dev: number;
      uid: number;
      gid: number;
      /** The new node's times to the ns, as decimal strings (set on the mirror's copy as made). */
      atimeNs?: string;
      mtimeNs?: string;
    }
  | {
      op: 'symlink';
      path: string;
      target: string;
      uid: number;
      gid: number;
      /** The new symlink's times to the ns, as decimal strings (see mknod). */
      atimeNs?: string;
      mtimeNs?: string;
    }
  | { op: 'link'; path: string; from: string }
  | { op: 'rename'; path: string; from: string }
  | { op: 'unlink'; path: string }
  | { op: 'rmdir'; path: string }
  | { op: 'chmod'; path: string; mode: number }
  | { op: 'chown'; path: string; uid: number; gid: number }
  | {
      op: 'utimens';
      path: string;
      atime: number | null;
      mtime: number | null;
      /** The same to the ns, as decimal strings (ms as a double lose up to ~120 ns today). */
      atimeNs?: string | null;
      mtimeNs?: string | null;
    }
  | { op: 'setxattr'; path: string; name: string; value: Buffer }
  | { op: 'removexattr'; path: string; name: string }
  /** The file's data must be durable wherever the sink keeps it before this resolves. */
  | { op: 'fsync'; path: string; datasync: boolean };

export interface ChangeSink {
  /**
   * Called before a change to path reaches the primary (optional). A sink that must survive a
   * crash between the primary and its own copy records its intent here (a write-intent log).
   */
  beforeChange?(path: string): void | Promise<void>;
  /**
   * Called after the change was applied to the primary. A write's data buffer is owned by the
   * cache and is not modified afterwards; the sink may keep it until the returned promise
   * settles. A sink error is the sink's to record (e.g. mark a pair broken): throwing here
   * fails the application's operation, which only an fsync should ever see.
   */
  apply(change: Change): Promise<void>;
  /**
   * Optional: a write handed over while it is being written to the primary, so the sink's copy
   * and the primary's are written at the same time (both in the libuv pool). It is queued in
   * the same synchronous step as the primary's write starts, so it keeps its place in the order
   * of changes as apply would; `primary` settles when the primary's write has (rejects if it
   * failed, possibly after a part of the data landed). The sink must not take its turn's
   * follow-ups (times, the next change) before `primary` settled, and must make its copy what
   * the primary holds when the primary's write failed. The data buffer stays valid until the
   * returned promise settles.
   */
  applyAlongside?(change: Change & { op: 'write' }, primary: Promise<void>): Promise<void>;
  /**
   * Optional: from when this resolves until the returned handle is disposed, changes may reach
   * the primary before the sink hears of them and before its beforeChange (unlinks and creates
   * answered in libfuse's threads, native-changes.ts). `report` reports every such change made
   * so far, synchronously, in the primary's order. A sink that keeps a write-intent log records,
   * before this resolves, an intent that covers any path; a sink that answers what changed calls
   * `report` before it answers. Without this method (and with a beforeChange), those changes
   * stay with the JS path.
   */
  changesAhead?(report: () => void): Promise<Disposable>;
  /**
   * Optional: whether the sink follows the primary change for change right now, so that changes
   * may be answered before it has them at no cost to it (a mirror with no split held, no resync,
   * copy, repair or broken pair: it reads nothing of the primary by path that a change running
   * ahead could have moved). Renames, mkdir, symlink and rmdir are answered in libfuse's threads
   * only while this says true (native-changes.ts); absent: always.
   */
  following?(): boolean;
}

export const nullSink: ChangeSink = { apply: async () => undefined };

/**
 * An fsync of a file whose changes the sink already has (every write of it reported and
 * applied): the primary's sync, already started, and the sink's fsync change run at the same
 * time, and both settle before this does (the primary's error first). The fsync change is
 * queued only after the sink applied the file's writes, so it still follows them there; what
 * it adds to the sink's queue (durability there) does not depend on the primary's sync having
 * finished, and the application hears of the fsync only once both are durable. One after the
 * other, the mirror's sync waited for the primary's trip to the disk before starting its own
 * (docs/architecture.md, "fsync with a mirror: both syncs at once").
 */
export async function syncAlongside(primarySync: Promise<void>, report: Promise<void> | null): Promise<void> {
  const [primary, sink] = await Promise.allSettled([primarySync, report]);
  if (primary.status === 'rejected') throw primary.reason;
  if (sink.status === 'rejected') throw sink.reason;
}

/** A pass through the gate: call done() when the guarded operation has finished. */
export interface GatePass {
  done(): void;
}

/**
 * Decides when a change to a path may proceed. Every write accepted into the cache and every
 * namespace change goes through it, so a freeze can inhibit exactly the files it covers and
 * wait for in-flight operations on them to finish.
 */
export interface WriteGate {
  /**
   * Resolves when changes to path may proceed; the pass counts as in flight until done(). Data
   * changes also give the file's inode, so a freeze of one name of a hard-linked file holds
   * writes through its other names.
   */
  enter(path: string, ino?: number): GatePass | Promise<GatePass>;
}
