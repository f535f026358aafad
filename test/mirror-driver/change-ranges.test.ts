import { describe, expect, it } from 'vitest';
import { ChangeRanges, merge, TO_END } from '../../src/mirror-driver/change-ranges.js';

/**
 * ChangeRanges.resetTree (a rename of a directory) is kept as one entry per directory and read
 * through a path's ancestors instead of resetting every log below it at once (a pass over every
 * logged path per rename). The answers must be those of the eager reset: this reference applies
 * every reset at once, and a seeded stream of writes, truncates, resets, tree resets, saves and
 * loads is answered by both, for every baseline.
 */
class EagerRanges {
  logs = new Map<string, { reset: number; entries: Array<[number, number, number]> }>();
  constructor(private readonly maxPerFile: number) {}
  write(p: string, g: number, a: number, b: number): void {
    if (b <= a) return;
    let log = this.logs.get(p);
    if (!log) this.logs.set(p, (log = { reset: 0, entries: [] }));
    const last = log.entries[log.entries.length - 1];
    if (last && last[2] === a && last[0] === g - 1) {
      last[0] = g;
      last[2] = b;
    } else log.entries.push([g, a, b]);
    if (log.entries.length > this.maxPerFile) {
      const drop = log.entries.splice(0, log.entries.length - this.maxPerFile / 2);
      log.reset = Math.max(log.reset, drop[drop.length - 1]![0]);
    }
  }
  reset(p: string, g: number): void {
    this.logs.set(p, { reset: g, entries: [] });
  }
  resetTree(p: string, g: number): void {
    this.reset(p, g);
    const prefix = p === '/' ? '/' : `${p}/`;
    for (const k of this.logs.keys()) if (k.startsWith(prefix)) this.reset(k, g);
  }
  since(p: string, since: number): Array<[number, number]> | undefined {
    const log = this.logs.get(p);
    if (!log) return [];
    if (log.reset > since) return undefined;
    const out: Array<[number, number]> = [];
    for (const [g, a, b] of log.entries) if (g > since) out.push([a, b]);
    return merge(out);
  }
}

describe('change ranges: tree resets', () => {
  it('answer what resetting every log below the renamed directory at once answered', () => {
    const paths = ['/', '/a', '/a/b', '/a/b/f', '/a/g', '/a/bb', '/a/bb/h', '/c', '/c/a', '/c/a/b', '/x'];
    const differ: string[] = [];
    for (let seed = 1; seed <= 20; seed++) {
      let s = seed * 2654435761;
      const rnd = (n: number) => {
        s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
        return s % n;
      };
      let lazyNow = new ChangeRanges(8);
      let eager = new EagerRanges(8);
      let gen = 0;
      for (let step = 0; step < 600; step++) {
        const p = paths[rnd(paths.length)]!;
        const op = rnd(10);
        const g = ++gen;
        if (op < 5) {
          const a = rnd(1000);
          const b = a + 1 + rnd(100);
          lazyNow.write(p, g, a, b);
          eager.write(p, g, a, b);
        } else if (op === 5) {
          const size = rnd(1000);
          lazyNow.truncate(p, g, size);
          eager.write(p, g, size, TO_END);
        } else if (op === 6) {
          lazyNow.reset(p, g);
          eager.reset(p, g);
        } else if (op < 9) {
          lazyNow.resetTree(p, g);
          eager.resetTree(p, g);
        } else {
          // A clean restart: saved (tree resets applied) and loaded into a new record.
          const saved = lazyNow.save();
          lazyNow = new ChangeRanges(8);
          lazyNow.load(saved);
          const e2 = new EagerRanges(8);
          for (const [k, reset, entries] of saved)
            e2.logs.set(k, { reset, entries: entries.map((e) => [...e]) });
          expect([...e2.logs.keys()].sort()).toEqual([...eager.logs.keys()].sort());
          eager = e2;
        }
        for (const q of paths)
          for (let since = Math.max(0, gen - 40); since <= gen; since += 3) {
            const got = JSON.stringify(lazyNow.since(q, since));
            const want = JSON.stringify(eager.since(q, since));
            if (got !== want)
              differ.push(`seed ${seed} step ${step} ${q} since ${since}: ${got}, eager ${want}`);
          }
      }
    }
    expect(differ.slice(0, 5)).toEqual([]);
  });
});
