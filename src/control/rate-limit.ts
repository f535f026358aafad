/**
 * Per-connection request budget: a token bucket (ratePerSec refilled, burst at most) and a cap
 * on requests in flight. A connection over either gets EPROTO_RATE_LIMITED for that request;
 * one that keeps sending regardless is closed (it is not a client that reads its replies).
 */
export interface RateLimits {
  /**
   * Sustained requests per second (default 2000). A client that waits for each reply is
   * bounded by its round trips (a tight prepare/release loop on a small volume reaches ~1000/s
   * here); the in-flight cap is what stops a pipelining flood, this bounds its CPU share.
   */
  ratePerSec: number;
  /** Requests allowed at once above the rate (default 5000). */
  burst: number;
  /** Requests being worked on at once (default 16). */
  maxInFlight: number;
  /** Refused requests in a row after which the connection is closed (default 200). */
  closeAfter: number;
}

export const DEFAULT_RATE_LIMITS: RateLimits = {
  ratePerSec: 2000,
  burst: 5000,
  maxInFlight: 16,
  closeAfter: 200,
};

export type RateVerdict = 'ok' | 'limited' | 'close';

export class RateLimiter {
  private tokens: number;
  private last: number;
  private inFlight = 0;
  private refusedInARow = 0;

  constructor(
    private readonly limits: RateLimits = DEFAULT_RATE_LIMITS,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = limits.burst;
    this.last = now();
  }

  /** Whether a request may start; 'ok' counts it in flight until done() is called. */
  admit(): RateVerdict {
    const t = this.now();
    this.tokens = Math.min(
      this.limits.burst,
      this.tokens + ((t - this.last) / 1000) * this.limits.ratePerSec,
    );
    this.last = t;
    if (this.tokens < 1 || this.inFlight >= this.limits.maxInFlight) {
      this.refusedInARow++;
      return this.refusedInARow >= this.limits.closeAfter ? 'close' : 'limited';
    }
    this.tokens -= 1;
    this.inFlight++;
    this.refusedInARow = 0;
    return 'ok';
  }

  done(): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
  }
}
