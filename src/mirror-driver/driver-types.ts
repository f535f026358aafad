import type { ChangeRecord, Generation } from './change-record.js';
import type { Selector } from './split-tracker.js';

/** The mirror driver's public types (mirror-driver.ts re-exports them). */

export type PairState = 'PAIR' | 'COPY' | 'SPLIT' | 'RESYNC' | 'BROKEN';

export interface MirrorDriverOptions {
  primary: string;
  mirror: string;
  /**
   * Where the primary's volume id and the driver's journal are kept (default /var/lib/twinfs, or
   * ~/.local/state/twinfs).
   */
  stateDir?: string;
  /** Take over a mirror that belongs to another primary. */
  adopt?: boolean;
  /** Retry broken pairs this often, ms (0: only on repair()). Default 30000. */
  retryBrokenMs?: number;
  /** Checkpoint the journal this often, ms. Default 10000. */
  checkpointMs?: number;
  /** Check that the mirror's filesystem is still there this often, ms (0: never). Default 1000. */
  deviceCheckMs?: number;
  /**
   * Compare the whole mirror with the primary (type, size, mtime, ctime, mode, owner) in the
   * background at every start, copying what differs (state COPY meanwhile). Default true: the
   * primary is a plain directory that may have changed while no server ran. A new mirror, a lost
   * journal or a machine crash always get one.
   */
  reconcileOnStart?: boolean;
  log?: (msg: string) => void;
}

export interface SplitInfo {
  splitId: string;
  selector: Selector;
  since: number;
  trackedBytes: number;
  trackedFiles: number;
  owner?: string;
  /** The change record's generation at the split: what the split copy holds (see ChangeRecord). */
  generation: Generation;
}

export interface ResyncResult {
  splitId: string;
  bytesCopied: number;
  entries: number;
  ms: number;
}

export interface MirrorStatus {
  deviceId: string;
  mirrorRoot: string;
  state: 'COPY' | 'PAIR' | 'DEGRADED';
  splits: SplitInfo[];
  broken: string[];
  /** Why each broken pair broke (errno code and message). */
  brokenReasons: Record<string, string>;
  queueLength: number;
  /** The change record (change-record.ts): generation, floor, whether it vouches now. */
  changes: ReturnType<ChangeRecord['describe']>;
  stats: {
    bytesMirrored: number;
    changesApplied: number;
    changesTracked: number;
    /** Bytes copied by resyncs of splits. */
    resyncBytes: number;
    /** Bytes copied by the initial copy and start-up reconciliation. */
    copyBytes: number;
    /** Bytes rewritten for paths the journal named as possibly different after a crash. */
    recoveryBytes: number;
    repairs: number;
    /**
     * Mirror files a comparison read (see Reconciler's WalkCheck) and rewrote from the primary
     * although size, mtime and ctime said equal: a wrong copy, or a primary that ran ahead of the
     * change queue (its change queued behind the comparison): not every one is a wrong copy.
     */
    rereadRewrites: number;
  };
}

export interface RepairResult {
  bytes: number;
  entries: number;
  /** Pairs still BROKEN afterwards, and why. */
  remaining: string[];
  reasons: Record<string, string>;
}

export interface ProgressEvent {
  phase: 'copy' | 'resync' | 'repair' | 'recover';
  entries: number;
  bytes: number;
  done: boolean;
}
