import { describe, expect, it } from 'vitest';
import { cutOp, type StreamCutAnswer, zeroRunEnds } from '../../src/repository/blob-ops.js';
import { type ChunkerParams, cut, cutOffsets, DEFAULT_CHUNKER } from '../../src/repository/chunker.js';
import { WINDOW } from '../../src/repository/content-cutter.js';
import { Rng } from '../stress/prng.js';

const seeded = (seed: number) => {
  const r = new Rng(seed);
  return () => r.float();
};

/**
 * A sparse file's holes are cut without a scan (blob-ops.ts zeroRunEnds): the chunk boundaries
 * must be exactly the ones FastCDC gives for the same bytes, or the same content backed up from
 * a sparse and a dense file would not share its chunks. Seeded, in-process (pure functions).
 */

const PARAMS: ChunkerParams[] = [
  DEFAULT_CHUNKER,
  { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 },
  { min: 2048, avg: 8192, max: 65536 },
];

/** Bytes of a sparse layout: data spans of random bytes (some runs of zeros inside), the rest zeros. */
function layout(
  rand: () => number,
  size: number,
  maxSpan: number,
): { bytes: Buffer; holes: Array<[number, number]> } {
  const bytes = Buffer.alloc(size);
  const holes: Array<[number, number]> = [];
  let at = Math.floor(rand() * maxSpan);
  if (at > 0) holes.push([0, at]);
  while (at < size) {
    const data = Math.min(size - at, 1 + Math.floor(rand() * maxSpan * (rand() < 0.2 ? 0.001 : 1)));
    for (let i = at; i < at + data; i++) bytes[i] = rand() < 0.1 ? 0 : Math.floor(rand() * 256);
    at += data;
    const hole = Math.min(size - at, Math.floor(rand() * maxSpan * 4));
    if (hole > 0) holes.push([at, at + hole]);
    at += hole;
  }
  return { bytes, holes };
}

function realEnds(data: Uint8Array, p: ChunkerParams): number[] {
  const out: number[] = [];
  let at = 0;
  for (const c of cut(Buffer.from(data.buffer, data.byteOffset, data.byteLength), p)) {
    at += c.length;
    out.push(at);
  }
  return out;
}

describe('cutting runs of zeros without a scan', () => {
  it('zeroRunEnds gives what FastCDC gives for a tail followed by zeros', () => {
    const rand = seeded(5150);
    let shortcuts = 0;
    for (const p of PARAMS)
      for (let i = 0; i < 60; i++) {
        const t = Math.floor(rand() * (p.max + 1));
        const tail = new Uint8Array(t);
        // Data, zeros, or data ending in zeros (the tail of a chunk cut at a hole's start).
        const dataTo = rand() < 0.2 ? 0 : Math.floor(rand() * (t + 1));
        for (let k = 0; k < dataTo; k++) tail[k] = Math.floor(rand() * 256);
        const w = Math.floor(p.max * (0.5 + rand() * 4)) + Math.floor(rand() * 3);
        const got = zeroRunEnds(tail, w, p, dataTo === 0 && rand() < 0.5);
        const want = Array.from(cutOffsets([tail, new Uint8Array(w)], p)).filter((o) => o > 0);
        const real = want.filter((o, k) => k === 0 || o > want[k - 1]!);
        if (real.at(-1) !== t + w) real.push(t + w);
        if (got === null) continue;
        shortcuts++;
        expect(got, `params ${p.max}, tail ${t} (data to ${dataTo}), zeros ${w}`).toEqual(real);
      }
    // It must actually apply to most cases (a window larger than max + 64).
    expect(shortcuts).toBeGreaterThan(100);
  });

  it('a stream with its holes flagged cuts exactly like the whole file', () => {
    const rand = seeded(6160);
    let flagged = 0;
    let stream = 1_000_000;
    for (const p of PARAMS)
      for (let i = 0; i < 6; i++) {
        const size = Math.floor(rand() * 24 * 1024 * 1024) + 1;
        const { bytes, holes } = layout(rand, size, p.max * 3);
        const want = realEnds(bytes, p);
        const id = stream++;
        const ends: number[] = [];
        for (let at = 0, first = true; at < size; first = false) {
          // Windows as the reader fills them: up to WINDOW, cut short where a hole starts or ends.
          let to = Math.min(size, at + WINDOW);
          const h = holes.find(([a, b]) => b > at && a < to);
          if (h && h[0] > at) to = h[0];
          else if (h && h[0] <= at) to = Math.min(to, h[1]);
          const zero = holes.some(([a, b]) => a <= at && to <= b);
          if (zero) flagged++;
          const final = to === size;
          const a = cutOp({
            op: 'cut',
            data: new Uint8Array(bytes.subarray(at, to)),
            params: p,
            master: null,
            stream: id,
            first,
            final,
            ...(zero ? { zero: true } : {}),
          }).value as StreamCutAnswer;
          ends.push(...a.ends);
          at = to;
        }
        expect(ends, `params ${p.max}, size ${size}`).toEqual(want);
      }
    expect(flagged).toBeGreaterThan(20);
  });

  it('windows shaped as the reader fills them, and a small flagged window between data and a hole', () => {
    const p = DEFAULT_CHUNKER;
    const rand = seeded(8180);
    const check = (windows: Array<{ bytes: Buffer; zero: boolean }>, id: number) => {
      const all = Buffer.concat(windows.map((w) => w.bytes));
      const ends: number[] = [];
      windows.forEach((w, k) => {
        const a = cutOp({
          op: 'cut',
          data: new Uint8Array(w.bytes),
          params: p,
          master: null,
          stream: id,
          first: k === 0,
          final: k === windows.length - 1,
          ...(w.zero ? { zero: true } : {}),
        }).value as StreamCutAnswer;
        ends.push(...a.ends);
      });
      expect(ends).toEqual(realEnds(all, p));
    };
    const data = (n: number) => Buffer.from(new Uint8Array(n).map(() => Math.floor(rand() * 256)));
    // A zero window too small for the shortcut keeps the data tail before it; the next zero
    // window must not take that tail for zeros.
    for (let k = 0; k < 20; k++)
      check(
        [
          { bytes: data(300_000 + Math.floor(rand() * 700_000)), zero: false },
          { bytes: Buffer.alloc(10_000), zero: true },
          { bytes: Buffer.alloc(3 * p.max), zero: true },
          { bytes: data(10_000), zero: false },
        ],
        2_000_001 + k,
      );
    // Full windows, flagged only when wholly in a hole (what content-cutter.ts sends).
    for (let i = 0; i < 4; i++) {
      const size = 20 * WINDOW + Math.floor(rand() * WINDOW);
      const { bytes, holes } = layout(rand, size, 3 * WINDOW);
      const windows: Array<{ bytes: Buffer; zero: boolean }> = [];
      for (let at = 0; at < size; at += WINDOW) {
        const to = Math.min(size, at + WINDOW);
        windows.push({ bytes: bytes.subarray(at, to), zero: holes.some(([a, b]) => a <= at && to <= b) });
      }
      expect(windows.some((w) => w.zero)).toBe(true);
      check(windows, 2_000_100 + i);
    }
  });

  it('a flag on a window that is not zeros would cut wrongly: the flag is what the shortcut trusts', () => {
    // The reader only flags what it filled with zeros itself; this pins that the flag is used
    // (the test above would pass with the shortcut left out, this one would not).
    const p = DEFAULT_CHUNKER;
    const rand = seeded(7170);
    const data = new Uint8Array(4 * p.max).map(() => Math.floor(rand() * 256));
    const a = cutOp({
      op: 'cut',
      data,
      params: p,
      master: null,
      stream: 42,
      first: true,
      final: true,
      zero: true,
    }).value as StreamCutAnswer;
    expect(a.ends).toEqual([p.max, 2 * p.max, 3 * p.max, 4 * p.max]);
    expect(realEnds(data, p)).not.toEqual(a.ends);
  });
});
