import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { RepoKeys } from '../../src/repository/crypto.js';
import {
  openObject,
  PACK_HEADER,
  RAW_OBJECT_MAX,
  rawZstdFrame,
  readRawZstdFrame,
  sealObject,
} from '../../src/repository/pack.js';
import { loadZstd } from '../../src/repository/zstd-binding.js';

/**
 * Small repository objects (src/repository/pack.ts sealObject: a lock, a snapshot object) are
 * stored as a zstd frame of raw blocks, written and read without zstd's addon, so that a
 * no-change backup never loads it. The frames are checked against the addon itself: it must
 * read every frame written here, and what it writes (compressed) is left to it.
 */
const { zstd } = loadZstd();

describe('raw zstd frames for small objects', () => {
  it('writes frames zstd reads back, up to and across its 128 KiB block limit', async () => {
    for (const n of [0, 1, 255, 256, 9_361, 128 * 1024, 128 * 1024 + 1, 300_000]) {
      const data = randomBytes(n);
      const frame = rawZstdFrame(data);
      expect((await zstd.decompress(frame)).equals(data), `${n} bytes`).toBe(true);
      expect(readRawZstdFrame(frame)?.equals(data), `${n} bytes`).toBe(true);
    }
  });

  it("leaves zstd's own compressed frames, and broken ones, to the addon", async () => {
    const text = Buffer.from('twinfs '.repeat(2000));
    expect(readRawZstdFrame(await zstd.compress(text, 3))).toBeUndefined();
    const frame = rawZstdFrame(text);
    expect(readRawZstdFrame(frame.subarray(0, frame.length - 1))).toBeUndefined();
    expect(readRawZstdFrame(Buffer.concat([frame, frame]))).toBeUndefined();
    const wrongSize = Buffer.from(frame);
    wrongSize.writeUInt32LE(text.length + 1, 5);
    expect(readRawZstdFrame(wrongSize)).toBeUndefined();
    expect(readRawZstdFrame(Buffer.from('not zstd at all'))).toBeUndefined();
  });

  it('seals small objects raw and larger ones compressed; both open, encrypted or not', async () => {
    const small = { time: 1, paths: ['/vol'], note: 'x'.repeat(1000) };
    const large = { rows: Array.from({ length: 4000 }, (_, i) => `row ${i}`) };
    expect(Buffer.byteLength(JSON.stringify(large))).toBeGreaterThan(RAW_OBJECT_MAX);
    for (const keys of [RepoKeys.plain(), RepoKeys.fromMaster(randomBytes(64))]) {
      const s = await sealObject(keys, small);
      const l = await sealObject(keys, large);
      expect(await openObject(keys, s, 'small')).toEqual(small);
      expect(await openObject(keys, l, 'large')).toEqual(large);
      if (!keys.encrypted) {
        // After the object's header: the raw frame of the JSON, and zstd's compressed one.
        expect(readRawZstdFrame(s.subarray(PACK_HEADER))?.toString()).toBe(JSON.stringify(small));
        expect(readRawZstdFrame(l.subarray(PACK_HEADER))).toBeUndefined();
        expect(l.length).toBeLessThan(Buffer.byteLength(JSON.stringify(large)) / 2);
      }
    }
  });
});
