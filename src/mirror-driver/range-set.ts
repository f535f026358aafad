/** A set of byte ranges [start, end), kept sorted and merged. */
export class RangeSet {
  private ranges: Array<[number, number]> = [];

  add(start: number, end: number): void {
    if (end <= start) return;
    const out: Array<[number, number]> = [];
    let s = start;
    let e = end;
    let placed = false;
    for (const [a, b] of this.ranges) {
      if (b < s) out.push([a, b]);
      else if (a > e) {
        if (!placed) {
          out.push([s, e]);
          placed = true;
        }
        out.push([a, b]);
      } else {
        s = Math.min(s, a);
        e = Math.max(e, b);
      }
    }
    if (!placed) out.push([s, e]);
    this.ranges = out;
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
