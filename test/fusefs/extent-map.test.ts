import { describe, expect, it } from 'vitest';
import { type Extent, ExtentMap, overlappingIn, overlay } from '../../src/fusefs/extent-map.js';

/** The reference: one optional byte per offset (undefined = not dirty). */
class ByteModel {
  bytes: Array<number | undefined> = [];
  write(off: number, data: Uint8Array): number {
    let added = 0;
    for (let i = 0; i < data.length; i++) {
      if (this.bytes[off + i] === undefined) added++;
      this.bytes[off + i] = data[i]!;
    }
    return added;
  }
  truncate(size: number): number {
    let dropped = 0;
    for (let i = size; i < this.bytes.length; i++) if (this.bytes[i] !== undefined) dropped++;
    if (this.bytes.length > size) this.bytes.length = size;
    return dropped;
  }
  get size(): number {
    let n = 0;
    for (const b of this.bytes) if (b !== undefined) n++;
    return n;
  }
  get end(): number {
    for (let i = this.bytes.length - 1; i >= 0; i--) if (this.bytes[i] !== undefined) return i + 1;
    return 0;
  }
}

/** Checks the map's invariants and that it holds exactly the model's bytes (plain throws: hot loop). */
function expectSame(map: ExtentMap, model: ByteModel, ctx: string): void {
  const fail = (what: string) => {
    throw new Error(`${ctx}: ${what}`);
  };
  let prevEnd = -1;
  let size = 0;
  const seen: Array<number | undefined> = [];
  for (const e of map.all()) {
    if (e.len <= 0) fail('empty extent');
    if (e.off < prevEnd) fail(`extents overlap or are unsorted at ${e.off}`);
    if (e.cap < e.len) fail(`cap ${e.cap} < len ${e.len}`);
    if (e.buf.length < e.cap) fail('buf shorter than cap');
    for (let i = 0; i < e.len; i++) seen[e.off + i] = e.buf[i];
    prevEnd = e.off + e.len;
    size += e.len;
  }
  const want = model.bytes;
  const len = Math.max(seen.length, want.length);
  for (let i = 0; i < len; i++)
    if (seen[i] !== want[i]) fail(`byte ${i} is ${seen[i]}, model has ${want[i]}`);
  if (map.size !== size) fail(`size ${map.size}, extents hold ${size}`);
  if (map.size !== model.size) fail(`size ${map.size}, model ${model.size}`);
  if (map.end !== model.end) fail(`end ${map.end}, model ${model.end}`);
  if (map.isEmpty !== (size === 0)) fail('isEmpty wrong');
}

/** Deterministic PRNG (mulberry32), so a failing seed can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const fill = (n: number, v: number) => Buffer.alloc(n, v);

describe('ExtentMap', () => {
  it('starts empty', () => {
    const m = new ExtentMap();
    expect(m.isEmpty).toBe(true);
    expect(m.size).toBe(0);
    expect(m.end).toBe(0);
    expect(m.write(10, Buffer.alloc(0))).toBe(0);
    expect(m.isEmpty).toBe(true);
  });

  it('coalesces sequential appends into spare capacity', () => {
    const m = new ExtentMap();
    for (let i = 0; i < 256; i++) expect(m.write(i * 4096, fill(4096, i))).toBe(4096);
    expect(m.size).toBe(256 * 4096);
    // Capacity doubles, so 1 MiB of 4 KiB appends needs only a handful of extents.
    expect(m.count).toBeLessThan(12);
    const model = new ByteModel();
    for (let i = 0; i < 256; i++) model.write(i * 4096, fill(4096, i));
    expectSame(m, model, 'appends');
  });

  it('returns the change in dirty bytes for overwrites, and copies the caller data', () => {
    const m = new ExtentMap();
    const src = fill(100, 1);
    expect(m.write(0, src)).toBe(100);
    src.fill(9); // the caller's buffer dies after write() returns
    expect(m.write(50, fill(100, 2))).toBe(50);
    expect(m.write(20, fill(10, 3))).toBe(0); // strictly inside: a split
    expect(m.size).toBe(150);
    const model = new ByteModel();
    model.write(0, fill(100, 1));
    model.write(50, fill(100, 2));
    model.write(20, fill(10, 3));
    expectSame(m, model, 'overwrite');
  });

  it('keeps size right when a write splits an extent', () => {
    const m = new ExtentMap();
    m.write(0, fill(1000, 1));
    expect(m.write(100, fill(10, 2))).toBe(0);
    expect(m.size).toBe(1000);
    expect(m.truncate(0)).toBe(1000);
    expect(m.size).toBe(0);
  });

  it('truncates, returning the bytes dropped', () => {
    const m = new ExtentMap();
    m.write(0, fill(10, 1));
    m.write(20, fill(10, 2));
    m.write(40, fill(10, 3));
    expect(m.truncate(25)).toBe(5 + 10);
    expect(m.end).toBe(25);
    expect(m.truncate(100)).toBe(0);
    expect(m.truncate(0)).toBe(15);
    expect(m.isEmpty).toBe(true);
  });

  it('takeAll hands out extents that later writes never modify', () => {
    const m = new ExtentMap();
    m.write(0, fill(10, 1));
    const taken = m.takeAll();
    expect(m.isEmpty).toBe(true);
    // An append at the old end must not reuse the taken extent's spare capacity.
    m.write(10, fill(10, 2));
    m.write(0, fill(5, 3));
    expect(taken).toHaveLength(1);
    expect(taken[0]!.len).toBe(10);
    expect(taken[0]!.buf.subarray(0, 10).equals(fill(10, 1))).toBe(true);
  });

  it('restoreUnder puts old data beneath newer writes', () => {
    const m = new ExtentMap();
    m.write(0, fill(100, 1));
    const taken = m.takeAll();
    m.write(50, fill(100, 2));
    expect(m.restoreUnder(taken)).toBe(50);
    const model = new ByteModel();
    model.write(0, fill(100, 1));
    model.write(50, fill(100, 2));
    expectSame(m, model, 'restoreUnder');
  });

  it('overlappingIn and overlay select and copy the right bytes', () => {
    const m = new ExtentMap();
    m.write(10, fill(10, 1));
    m.write(30, fill(10, 2));
    m.write(50, fill(10, 3));
    expect(m.overlapping(0, 10)).toHaveLength(0);
    expect(m.overlapping(15, 20).map((e) => e.off)).toEqual([10, 30]);
    expect(overlappingIn(m.all(), 40, 10)).toHaveLength(0);
    const target = Buffer.alloc(40, 0xff);
    overlay(target, 15, m.all());
    const want = Buffer.alloc(40, 0xff);
    want.fill(1, 0, 5);
    want.fill(2, 15, 25);
    want.fill(3, 35, 40);
    expect(target.equals(want)).toBe(true);
  });

  it('matches a byte-array model over random operation sequences', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const r = rng(seed);
      const m = new ExtentMap();
      const model = new ByteModel();
      let taken: Extent[] | null = null;
      let takenModel: Array<number | undefined> | null = null;
      const log: string[] = [];
      const ctx = () => `seed ${seed} after ${log.slice(-6).join('; ')}`;
      for (let step = 0; step < 400; step++) {
        const k = r();
        const space = r() < 0.2 ? 64 : 4096;
        if (k < 0.55) {
          // Random, sequential (append) or overwrite-heavy writes.
          const off = r() < 0.3 ? m.end : Math.floor(r() * space);
          const len = 1 + Math.floor(r() * (r() < 0.2 ? 600 : 40));
          const data = Buffer.alloc(len);
          for (let i = 0; i < len; i++) data[i] = Math.floor(r() * 256);
          log.push(`write(${off},${len})`);
          const delta = m.write(off, data);
          const want = model.write(off, data);
          if (delta !== want) throw new Error(`${ctx()}: write returned ${delta}, model added ${want}`);
        } else if (k < 0.65) {
          const size = Math.floor(r() * (m.end + 10));
          log.push(`truncate(${size})`);
          const dropped = m.truncate(size);
          const want = model.truncate(size);
          if (dropped !== want) throw new Error(`${ctx()}: truncate dropped ${dropped}, model ${want}`);
        } else if (k < 0.72 && taken === null) {
          log.push('takeAll');
          taken = m.takeAll();
          takenModel = model.bytes;
          model.bytes = [];
          // Taken extents must be intact whatever happens next.
          const copy = taken.map((e) => ({ off: e.off, data: Buffer.from(e.buf.subarray(0, e.len)) }));
          (taken as Extent[] & { copy?: typeof copy }).copy = copy;
        } else if (k < 0.8 && taken !== null) {
          const copy = (taken as Extent[] & { copy?: Array<{ off: number; data: Buffer }> }).copy!;
          taken.forEach((e, i) => {
            expect(e.off, ctx()).toBe(copy[i]!.off);
            expect(e.buf.subarray(0, e.len).equals(copy[i]!.data), `${ctx()}: taken extent modified`).toBe(
              true,
            );
          });
          if (r() < 0.5) {
            log.push('restoreUnder');
            const newer = model.bytes;
            model.bytes = takenModel!;
            newer.forEach((b, i) => {
              if (b !== undefined) model.bytes[i] = b;
            });
            const sizeBefore = m.size;
            const added = m.restoreUnder(taken);
            if (added !== model.size - sizeBefore)
              throw new Error(`${ctx()}: restoreUnder returned ${added}`);
          } else {
            log.push('drop taken');
          }
          taken = null;
          takenModel = null;
        } else {
          const off = Math.floor(r() * space);
          const len = 1 + Math.floor(r() * 300);
          const target = Buffer.alloc(len, 0xee);
          overlay(target, off, m.overlapping(off, len));
          for (let i = 0; i < len; i++) {
            const want = model.bytes[off + i] ?? 0xee;
            if (target[i] !== want)
              throw new Error(`${ctx()}: overlay byte ${off + i} is ${target[i]}, want ${want}`);
          }
        }
        expectSame(m, model, ctx());
      }
    }
  });
});
