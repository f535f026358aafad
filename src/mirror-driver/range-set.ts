/** A set of byte ranges [start, end), kept sorted and merged. */
export class RangeSet {
  private ranges: Array<[number, number]> = [];

  /**
   * Adds [start, end). Binary search plus one splice: random 4 KiB writes into a large file make
   * hundreds of thousands of ranges, and a linear rebuild per add would be quadratic.
   */
  add(start: number, end: number): void {
    if (end <= start) return;
    const r = this.ranges;
    // First range that ends at or after start (touching ranges merge).
    let lo = 0;
    let hi = r.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (r[mid]![1] < start) lo = mid + 1;
      else hi = mid;
    }
    let i = lo;
    let s = start;
    let e = end;
    while (i < r.length && r[i]![0] <= e) {
      s = Math.min(s, r[i]![0]);
      e = Math.max(e, r[i]![1]);
      i++;
    }
    r.splice(lo, i - lo, [s, e]);
  }

  /** Drops everything at or beyond size. */
  truncate(size: number): void {
    this.ranges = this.ranges
      .filter(([a]) => a < size)
      .map(([a, b]) => [a, Math.min(b, size)] as [number, number]);
  }

  get bytes(): number {
    return this.ranges.reduce((s, [a, b]) => s + (b - a), 0);
  }

  get isEmpty(): boolean {
    return this.ranges.length === 0;
  }

  toArray(): Array<[number, number]> {
    return this.ranges.map(([a, b]) => [a, b]);
  }

  static from(arr: Array<[number, number]>): RangeSet {
    const r = new RangeSet();
    for (const [a, b] of arr) r.add(a, b);
    return r;
  }
}
