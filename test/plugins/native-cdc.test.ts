import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { posix } from '../../src/posix/native.js';
import { type ChunkerParams, cut, cutOffsets, DEFAULT_CHUNKER } from '../../src/repository/chunker.js';
import { Rng } from '../stress/prng.js';

const require = createRequire(import.meta.url);
const fastcdc = require('@dstanesc/wasm-chunking-fastcdc-node') as {
  compute_chunks(d: Uint8Array, min: number, avg: number, max: number): Uint32Array;
};

/**
 * The repository's chunks are cut by the posix addon's FastCDC (native/posix `cdcCut`) since ABI
 * level 14; every repository written before was cut by the WebAssembly module (the `fastcdc`
 * crate 1.x). A single boundary apart and the same content stops sharing its chunks with older
 * snapshots, so the two must agree byte for byte: on random, periodic, sparse and all-zero bytes,
 * for the default sizes and odd ones (avg not a power of two, min above two thirds of avg, max
 * at min), with the bytes in any number of parts (empty ones, shared memory at odd offsets).
 * Seeded; in-process (the addon and the module are pure functions).
 */

const PARAMS: ChunkerParams[] = [
  DEFAULT_CHUNKER,
  { min: 64, avg: 256, max: 1024 },
  { min: 100, avg: 1500, max: 4000 },
  { min: 8192, avg: 12288, max: 65536 },
  { min: 4096, avg: 5000, max: 5000 },
  { min: 2000, avg: 3000, max: 100_000 },
  { min: 1024, avg: 24_576, max: 1024 },
];

function bytesOf(rng: Rng, kind: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  if (kind === 0) for (let i = 0; i < n; i++) b[i] = rng.int(256);
  else if (kind === 1) {
    // Periodic, with a period that is no power of two.
    const period = 1 + rng.int(5000);
    const unit = Uint8Array.from({ length: period }, () => rng.int(256));
    for (let i = 0; i < n; i++) b[i] = unit[i % period]!;
  } else if (kind === 2) {
    // Sparse: runs of zeros between spans of random bytes.
    for (let i = 0; i < n; ) {
      const span = 1 + rng.int(20_000);
      const data = rng.int(3) === 0;
      for (let j = i; j < Math.min(n, i + span); j++) b[j] = data ? rng.int(256) : 0;
      i += span;
    }
  } // kind 3: all zeros.
  return b;
}

/** `data` in 1-4 parts at random points, some of them empty, some in shared memory at odd offsets. */
function partsOf(rng: Rng, data: Uint8Array): Uint8Array[] {
  const points = [0, data.length];
  for (let k = rng.int(4); k > 0; k--) points.push(rng.int(data.length + 1));
  points.sort((a, b) => a - b);
  const parts: Uint8Array[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const piece = data.subarray(points[i]!, points[i + 1]!);
    if (rng.int(2) === 0) {
      const at = rng.int(8);
      const shared = new Uint8Array(new SharedArrayBuffer(piece.length + 8), at, piece.length);
      shared.set(piece);
      parts.push(shared);
    } else parts.push(piece);
  }
  return parts;
}

describe('native FastCDC (posix addon cdcCut)', () => {
  it('cuts exactly where the WebAssembly chunker does, over 400 seeded inputs', () => {
    const rng = new Rng(14_001);
    let cuts = 0;
    for (let t = 0; t < 400; t++) {
      const p = PARAMS[t % PARAMS.length]!;
      const big = t % 8 === 0;
      const n = rng.int(big ? 6 * 1024 * 1024 : 12 * p.max + 64);
      const data = bytesOf(rng, rng.int(4), n);
      const want = [...fastcdc.compute_chunks(data, p.min, p.avg, p.max)];
      const parts = partsOf(rng, data);
      const got = posix().cdcCut(parts, p.min, p.avg, p.max);
      expect(typeof got, `case ${t}`).not.toBe('number');
      expect(
        [...(got as Uint32Array)],
        `case ${t}: ${n} bytes in ${parts.length} parts, ${p.min}/${p.avg}/${p.max}`,
      ).toEqual(want);
      cuts += want.length;
    }
    // The cases cut something: not only inputs shorter than a chunk.
    expect(cuts).toBeGreaterThan(2000);
  });

  it("is what cut() and cutOffsets() use: the same chunks as the module's, for a 40 MiB file", () => {
    const data = bytesOf(new Rng(14_002), 0, 40 * 1024 * 1024);
    const { min, avg, max } = DEFAULT_CHUNKER;
    const want = [...fastcdc.compute_chunks(data, min, avg, max)];
    expect([...cutOffsets([data], DEFAULT_CHUNKER)]).toEqual(want);
    const ends = cut(Buffer.from(data.buffer, data.byteOffset, data.length), DEFAULT_CHUNKER).map(
      (c) => c.byteOffset + c.length,
    );
    expect(ends).toEqual(want.filter((o) => o > 0));
  });

  it('no bytes give [0]; sizes below the chunker bounds give -EINVAL, and cutOffsets throws', () => {
    expect([...(posix().cdcCut([], 64, 256, 1024) as Uint32Array)]).toEqual([0]);
    expect([...(posix().cdcCut([new Uint8Array(0)], 64, 256, 1024) as Uint32Array)]).toEqual([
      ...fastcdc.compute_chunks(new Uint8Array(0), 64, 256, 1024),
    ]);
    const data = new Uint8Array(5000);
    expect(posix().cdcCut([data], 63, 256, 1024)).toBe(-22);
    expect(posix().cdcCut([data], 64, 255, 1024)).toBe(-22);
    expect(posix().cdcCut([data], 64, 256, 1023)).toBe(-22);
    expect(() => cutOffsets([data], { min: 63, avg: 256, max: 1024 })).toThrow(
      /refused the chunk sizes 63\/256\/1024/,
    );
  });
});
