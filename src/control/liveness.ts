import type { WebSocket } from 'ws';

/**
 * Ping/pong liveness of control connections. Every connection is pinged each intervalMs. One
 * that holds writes (a freeze, or a prepare under way, whose writes wait on it) and has not
 * answered for holderTimeoutMs is dropped, and what it held is given back with it: a stopped
 * (SIGSTOP) or vanished operator cannot hold writes for longer than that (VSS gives a writer
 * 10 s). One that holds only splits gets splitHolderTimeoutMs: a split holds no write, only the
 * mirror's catching up, while dropping it fails a backup whose peer was merely busy (a peer's
 * JS thread that gets 10% of a core on a loaded machine answers pings seconds late). Other
 * connections get idleTimeoutMs. A tick that comes late (this process itself was stalled, so
 * the pongs may sit unread in the socket) forgives everyone once instead of dropping them.
 */
export interface LivenessOptions {
  /** Ping period, ms (default 1000). */
  intervalMs: number;
  /** A holder of writes that has not answered for this long is dropped, ms (default 4000). */
  holderTimeoutMs: number;
  /** A holder of splits only, ms (default 10000). */
  splitHolderTimeoutMs: number;
  /** Anyone else, ms (default 30000). */
  idleTimeoutMs: number;
}

export const DEFAULT_LIVENESS: LivenessOptions = {
  intervalMs: 1000,
  holderTimeoutMs: 4000,
  splitHolderTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
};

/** What a connection holds, for its bound: writes (a freeze or a prepare under way), splits only, nothing. */
export type Holding = 'writes' | 'splits' | null;

interface Tracked {
  lastPong: number;
  holds: () => Holding;
  onDrop: (silentMs: number) => void;
}

export class Liveness {
  private readonly tracked = new Map<WebSocket, Tracked>();
  private readonly timer: NodeJS.Timeout;
  private lastTick = performance.now();

  constructor(private readonly opts: LivenessOptions = DEFAULT_LIVENESS) {
    this.timer = setInterval(() => this.tick(), opts.intervalMs);
    this.timer.unref();
  }

  track(ws: WebSocket, holds: () => Holding, onDrop: (silentMs: number) => void): void {
    const t: Tracked = { lastPong: performance.now(), holds, onDrop };
    this.tracked.set(ws, t);
    ws.on('pong', () => {
      t.lastPong = performance.now();
    });
    ws.once('close', () => this.tracked.delete(ws));
  }

  dispose(): void {
    clearInterval(this.timer);
    this.tracked.clear();
  }

  private bound(holding: Holding): number {
    if (holding === 'writes') return this.opts.holderTimeoutMs;
    return holding === 'splits' ? this.opts.splitHolderTimeoutMs : this.opts.idleTimeoutMs;
  }

  private tick(): void {
    const now = performance.now();
    const late = now - this.lastTick > 2 * this.opts.intervalMs;
    this.lastTick = now;
    for (const [ws, t] of this.tracked) {
      if (late) t.lastPong = now;
      const silent = now - t.lastPong;
      if (silent > this.bound(t.holds())) {
        this.tracked.delete(ws);
        t.onDrop(silent);
        ws.terminate();
        continue;
      }
      if (ws.readyState === 1) ws.ping();
    }
  }
}
