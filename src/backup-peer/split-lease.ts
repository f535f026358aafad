import { TwinError } from '../common/errors.js';
import type { Event } from '../common/event.js';
import { type Disposable, DisposableStore } from '../common/lifecycle.js';
import type { BackupReport, GenerationMsg, PrepareResult, SelectorMsg } from '../control/protocol.js';

/** What a backup run needs of the control channel (ControlClient; a fake in unit tests). */
export interface BackupControl {
  prepare(
    selector: SelectorMsg,
    opts: { leaseMs?: number; listItems?: boolean; since?: GenerationMsg },
  ): Promise<PrepareResult>;
  renew(backupId: string, leaseMs?: number): Promise<unknown>;
  release(backupId: string): Promise<unknown>;
  /** Tells the server how the copy goes, for its status page and metrics (absent in fakes). */
  report?(backupId: string, report: BackupReport): Promise<unknown>;
  readonly onEvent: Event<{ event: string; data: unknown }>;
  readonly onClose: Event<{ code: number; reason: string }>;
  close(): Promise<void>;
  /**
   * The server's hello (ControlClient): its device id picks the previous snapshot before
   * prepare, and the mirror is located from its mirror root while prepare runs.
   */
  readonly hello?: { deviceId: string | null; mirrorRoot?: string | null };
}

/**
 * The peer's hold on one prepared split. It renews the lease every third of its length and
 * reports the split lost (onLost, once) the moment it can know: the connection closes (the server
 * releases a vanished peer's splits), the server announces the split released or expired, or a
 * renew is refused. confirm() proves the split is still held — called after the last read, it
 * makes every read of the run a read of a frozen copy. Disposing releases the split if it is
 * still held.
 */
export class SplitLease implements Disposable {
  private held = true;
  private lostReported = false;
  private readonly store = new DisposableStore();

  constructor(
    private readonly control: BackupControl,
    readonly backupId: string,
    private readonly leaseMs: number,
    private readonly onLost: (err: TwinError) => void,
  ) {
    this.store.add(control.onClose(() => this.lost('the control connection closed')));
    this.store.add(
      control.onEvent(({ event, data }) => {
        const mine = (data as { backupId?: unknown } | null)?.backupId === backupId;
        if (mine && (event === 'released' || event === 'lease-expired'))
          this.lost(`the server says ${event}`);
      }),
    );
    const timer = setInterval(
      () => {
        control.renew(backupId, leaseMs).catch((err) => {
          // A refused renew is final; a renew that timed out may still have landed: the next one tells.
          if ((err as TwinError)?.code !== 'ETWIN_CONTROL_TIMEOUT')
            this.lost(`renew failed: ${describe(err)}`);
        });
      },
      Math.max(500, Math.floor(leaseMs / 3)),
    );
    this.store.add({ dispose: () => clearInterval(timer) });
  }

  /** Renews once more and resolves only if the server still holds the split. */
  async confirm(): Promise<void> {
    if (this.lostReported) throw this.lostError('lost earlier');
    await this.control.renew(this.backupId, this.leaseMs).catch((err) => {
      throw this.lostError(`it could not be confirmed after the copy: ${describe(err)}`);
    });
  }

  /**
   * Lets the server resync (idempotent; failures are the server's to clean up by lease).
   * Resolves with the server's reply once the pairs are back in sync; undefined when this call
   * did not release them (released before, or the request failed).
   */
  async release(): Promise<{ reply: unknown } | undefined> {
    if (!this.held) return undefined;
    this.held = false;
    return this.control.release(this.backupId).then(
      (reply) => ({ reply }),
      () => undefined,
    );
  }

  async dispose(): Promise<void> {
    await this.store.dispose();
    await this.release();
  }

  private lost(why: string): void {
    if (!this.held || this.lostReported) return;
    this.lostReported = true;
    this.onLost(this.lostError(why));
  }

  private lostError(why: string): TwinError {
    return new TwinError(
      'ETWIN_SPLIT_LOST',
      `the split of backup ${this.backupId} was released before the copy finished: ${why}`,
      {
        backupId: this.backupId,
      },
    );
  }
}

export function describe(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e?.code ? `${e.code}: ${e.message}` : String(e?.message ?? err);
}
