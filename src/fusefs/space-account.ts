import { promises as fsp } from 'node:fs';

/**
 * Space on the primary promised to cached writes. A write the cache accepts is acknowledged
 * before it reaches the primary; if the primary could never take it, the application must hear
 * ENOSPC from that write(), not from a later fsync or never (close of a file whose write-back
 * failed, a shutdown onto a full disk). The cache reserves, for every newly dirty byte beyond
 * a file's size on the primary, a byte of the primary's free space (statfs), and gives the
 * reservation back as the data lands. Overwrites inside a file need no new space and reserve
 * nothing; holes are not counted. Other processes can still take the space after a write was
 * accepted: the spill journal (writeback-spill.ts) covers that.
 */
export class SpaceAccount {
  /** Free bytes on the primary at the last statfs, less what landed since and the margin. */
  private free = Number.POSITIVE_INFINITY;
  private reserved = 0;
  private landedSinceRefresh = 0;
  /** Bytes that landed while the last statfs ran (counted as used: they may be in its answer). */
  private lastLandedDuring = 0;
  private refreshing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly dir: string,
    private readonly marginBytes: number,
    private readonly statfs: (dir: string) => Promise<{ bavail: number; bsize: number }>,
  ) {}

  /**
   * Reads the free space of dir's filesystem now and every refreshMs. marginBytes are never
   * promised (metadata, other writers' slack). Default 256 KiB, every 1000 ms.
   */
  static async open(
    dir: string,
    opts: {
      marginBytes?: number;
      refreshMs?: number;
      statfs?: (dir: string) => Promise<{ bavail: number; bsize: number }>;
    } = {},
  ): Promise<SpaceAccount> {
    const a = new SpaceAccount(dir, opts.marginBytes ?? 256 * 1024, opts.statfs ?? ((d) => fsp.statfs(d)));
    await a.refresh();
    const every = opts.refreshMs ?? 1000;
    if (every > 0) {
      a.timer = setInterval(() => void a.refresh(), every);
      a.timer.unref();
    }
    return a;
  }

  get reservedBytes(): number {
    return this.reserved;
  }

  get freeBytes(): number {
    return Math.max(0, this.free - this.reserved);
  }

  /** Promises n bytes if the primary has them (by the last statfs); false otherwise. */
  tryReserve(n: number): boolean {
    if (n <= 0) return true;
    if (this.reserved + n > this.free) return false;
    this.reserved += n;
    return true;
  }

  /**
   * Gives back n reserved bytes, and accounts for landedBytes written to the primary beyond
   * files' old ends (its free space shrank by them even before the next statfs says so).
   */
  release(n: number, landedBytes = 0): void {
    if (n > 0) this.reserved = Math.max(0, this.reserved - n);
    if (landedBytes > 0) {
      this.free -= landedBytes;
      this.landedSinceRefresh += landedBytes;
    }
  }

  /** Reads statfs again (one at a time; callers share a running refresh). */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      const landedBefore = this.landedSinceRefresh;
      try {
        const s = await this.statfs(this.dir);
        // Bytes that landed while statfs ran may or may not be in its answer: count them as
        // used (the next refresh corrects the estimate upwards).
        const landedDuring = this.landedSinceRefresh - landedBefore;
        this.free = s.bavail * s.bsize - this.marginBytes - landedDuring;
        this.landedSinceRefresh = landedDuring;
        this.lastLandedDuring = landedDuring;
      } catch {
        // Keep the last estimate: statfs failing is the primary's problem, reported elsewhere.
      }
    })().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  /**
   * The statfs a write is refused on: one started now (after a running one, whose answer may be
   * older than the refusal), read again while data landed during it (up to `tries` times).
   * Bytes landing during a statfs are counted as used and may be in its answer as well: with a
   * write-behind landing beside the writes, a refusal on that answer would be a false ENOSPC
   * (seen: a 20 MiB primary refused a file's writes with 2–3.6 MiB still free). The refused
   * writer waits meanwhile, so what lands is what was in flight: the reads settle.
   */
  async refreshSettled(tries = 10): Promise<void> {
    for (let i = 0; i < tries; i++) {
      await this.refreshing;
      await this.refresh();
      if (this.lastLandedDuring === 0) return;
    }
  }

  dispose(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
