import { Emitter } from '../common/event.js';
import { covers, type Selector } from '../common/selector.js';
import type { GatePass, WriteGate } from './change-sink.js';

/**
 * Which files an inhibition covers (see common/selector.ts), plus the inode numbers (on the
 * primary) of covered files with several names: a change through any name of such a file is
 * held too.
 */
export interface InhibitSelector extends Selector {
  inos?: readonly number[];
}

export interface Inhibition {
  readonly selector: InhibitSelector;
  readonly since: number;
  /** Resolves when no change to a covered file is in flight any more. */
  drained(): Promise<void>;
  /** Lets held changes proceed. Idempotent. */
  release(): void;
}

export interface InhibitorStats {
  /** Changes that had to wait for an inhibition. */
  held: number;
  /** Longest wait, ms. */
  maxStallMs: number;
  activeInhibitions: number;
}

class InhibitionImpl implements Inhibition {
  readonly since = Date.now();
  private releasedFlag = false;
  private readonly releasedWaiters: Array<() => void> = [];
  constructor(
    readonly selector: InhibitSelector,
    private readonly owner: WriteInhibitor,
  ) {}

  covers(path: string, ino?: number): boolean {
    if (ino !== undefined && this.selector.inos?.includes(ino)) return true;
    return covers(this.selector, path);
  }

  get isReleased(): boolean {
    return this.releasedFlag;
  }

  whenReleased(): Promise<void> {
    if (this.releasedFlag) return Promise.resolve();
    return new Promise((r) => this.releasedWaiters.push(r));
  }

  drained(): Promise<void> {
    return this.owner.drained((p, ino) => this.covers(p, ino));
  }

  release(): void {
    if (this.releasedFlag) return;
    this.releasedFlag = true;
    this.owner.forget(this);
    for (const w of this.releasedWaiters.splice(0)) w();
  }
}

/**
 * The default WriteGate: holds changes to files covered by an active inhibition and counts
 * changes in flight per path, so an inhibition can wait for them to drain.
 */
export class WriteInhibitor implements WriteGate {
  private readonly inflight = new Map<string, number>();
  private readonly active = new Set<InhibitionImpl>();
  private drainWaiters: Array<{ covers: (p: string, ino?: number) => boolean; resolve: () => void }> = [];
  private readonly stats = { held: 0, maxStallMs: 0 };
  private readonly _onDidHold = new Emitter<{ path: string }>();
  /** Fires when a change starts waiting on an inhibition. */
  readonly onDidHold = this._onDidHold.event;
  private readonly _onDidRelease = new Emitter<void>();
  /** Fires when an inhibition is released. */
  readonly onDidRelease = this._onDidRelease.event;
  private readonly _onWillInhibit = new Emitter<void>();
  /**
   * Fires synchronously in inhibit(), before the inhibition counts: changes made outside the
   * gate (native-changes.ts) stop and are reported here, ahead of anything the inhibition's
   * owner does next (a split).
   */
  readonly onWillInhibit = this._onWillInhibit.event;

  /** Is any inhibition active? */
  get isInhibiting(): boolean {
    return this.active.size > 0;
  }

  /** Would a change to this file be held now? */
  isHeld(path: string, ino?: number): boolean {
    return this.active.size > 0 && this.blockerOf(path, ino) !== undefined;
  }

  enter(path: string, ino?: number): GatePass | Promise<GatePass> {
    if (this.active.size === 0) return this.pass(path, ino);
    const blocker = this.blockerOf(path, ino);
    if (!blocker) return this.pass(path, ino);
    return this.waitAndPass(path, ino, blocker);
  }

  inhibit(selector: InhibitSelector): Inhibition {
    this._onWillInhibit.fire();
    const inh = new InhibitionImpl(selector, this);
    this.active.add(inh);
    return inh;
  }

  getStats(): InhibitorStats {
    return { ...this.stats, activeInhibitions: this.active.size };
  }

  /** In-flight changes per path (for status and tests). */
  inFlight(): Map<string, number> {
    return new Map(this.inflight);
  }

  /** @internal */
  forget(inh: InhibitionImpl): void {
    this.active.delete(inh);
    this._onDidRelease.fire();
  }

  /** @internal */
  drained(covers: (p: string, ino?: number) => boolean): Promise<void> {
    for (const k of this.inflight.keys()) {
      if (covers(...unkey(k))) return new Promise((resolve) => this.drainWaiters.push({ covers, resolve }));
    }
    return Promise.resolve();
  }

  private blockerOf(path: string, ino?: number): InhibitionImpl | undefined {
    for (const inh of this.active) if (inh.covers(path, ino)) return inh;
    return undefined;
  }

  private async waitAndPass(path: string, ino: number | undefined, first: InhibitionImpl): Promise<GatePass> {
    const started = Date.now();
    this.stats.held++;
    this._onDidHold.fire({ path });
    let blocker: InhibitionImpl | undefined = first;
    while (blocker) {
      await blocker.whenReleased();
      blocker = this.blockerOf(path, ino);
    }
    this.stats.maxStallMs = Math.max(this.stats.maxStallMs, Date.now() - started);
    return this.pass(path, ino);
  }

  private pass(path: string, ino?: number): GatePass {
    const key = ino === undefined ? path : `${path}\u0000${ino}`;
    this.inflight.set(key, (this.inflight.get(key) ?? 0) + 1);
    let done = false;
    return {
      done: () => {
        if (done) return;
        done = true;
        const n = (this.inflight.get(key) ?? 1) - 1;
        if (n > 0) {
          this.inflight.set(key, n);
          return;
        }
        this.inflight.delete(key);
        if (this.drainWaiters.length > 0) this.checkDrains();
      },
    };
  }

  private checkDrains(): void {
    const still: typeof this.drainWaiters = [];
    for (const w of this.drainWaiters) {
      let busy = false;
      for (const k of this.inflight.keys()) {
        if (w.covers(...unkey(k))) {
          busy = true;
          break;
        }
      }
      if (busy) still.push(w);
      else w.resolve();
    }
    this.drainWaiters = still;
  }
}

/** In-flight keys are the path, or path NUL inode for changes that know their inode. */
function unkey(k: string): [string, number | undefined] {
  const i = k.indexOf('\u0000');
  return i < 0 ? [k, undefined] : [k.slice(0, i), Number(k.slice(i + 1))];
}
