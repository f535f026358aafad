import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashFile, sameContent } from '../../src/mirror-driver/entry-sync.js';
import { Rng } from '../stress/prng.js';

/**
 * verify's content hash reads a sparse file's data only and hashes its holes as zeros
 * (entry-sync.ts hashFile): it must still be the SHA-256 of every byte the file reads as, or a
 * primary and a mirror that differ only in where their holes lie would compare unequal (and a
 * hash that left the holes out would call files with different zeros equal).
 */
describe('hashFile of sparse files', () => {
  it('is the SHA-256 of the bytes the file reads as, for seeded layouts', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'twinfs-hashfile-'));
    try {
      const r = new Rng(4242);
      const MiB = 1024 * 1024;
      const layouts: Array<{ size: number; pieces: Array<[number, number]> }> = [
        { size: 0, pieces: [] },
        { size: 9 * MiB, pieces: [] },
        { size: 9 * MiB + 3, pieces: [[9 * MiB, 3]] },
        { size: 5 * MiB, pieces: [[0, 5 * MiB]] },
      ];
      for (let i = 0; i < 12; i++) {
        const size = 1 + Math.floor(r.float() * 24 * MiB);
        const pieces: Array<[number, number]> = [];
        for (let k = Math.floor(r.float() * 6); k > 0; k--) {
          const at = Math.floor(r.float() * size);
          pieces.push([at, Math.min(size - at, 1 + Math.floor(r.float() * 3 * MiB))]);
        }
        layouts.push({ size, pieces });
      }
      let sparse = 0;
      for (const [n, { size, pieces }] of layouts.entries()) {
        const p = path.join(dir, `f${n}`);
        fs.writeFileSync(p, '');
        fs.truncateSync(p, size);
        const fd = fs.openSync(p, 'r+');
        for (const [at, len] of pieces) {
          const data = Buffer.from(new Uint8Array(len).map(() => 1 + Math.floor(r.float() * 255)));
          fs.writeSync(fd, data, 0, len, at);
        }
        fs.closeSync(fd);
        const st = fs.statSync(p);
        if (st.blocks * 512 < st.size) sparse++;
        const want = createHash('sha256').update(fs.readFileSync(p)).digest('hex');
        expect(await hashFile(p, size), `layout ${n}: ${size} bytes, ${JSON.stringify(pieces)}`).toBe(want);
      }
      expect(sparse).toBeGreaterThan(8);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('sameContent: equal bytes whatever the holes, any differing byte or length found', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'twinfs-same-'));
    try {
      const MiB = 1024 * 1024;
      const size = 20 * MiB + 7;
      const mk = (name: string, pieces: Array<[number, Buffer]>, zerosAt?: [number, number]) => {
        const p = path.join(dir, name);
        fs.writeFileSync(p, '');
        fs.truncateSync(p, size);
        const fd = fs.openSync(p, 'r+');
        for (const [at, b] of pieces) fs.writeSync(fd, b, 0, b.length, at);
        // Zeros written as data: the same bytes as a hole, allocated.
        if (zerosAt) fs.writeSync(fd, Buffer.alloc(zerosAt[1]), 0, zerosAt[1], zerosAt[0]);
        fs.closeSync(fd);
        return p;
      };
      const data = Buffer.alloc(3 * MiB, 7);
      const a = mk('a', [[5 * MiB, data]]);
      const b = mk('b', [[5 * MiB, data]], [12 * MiB, 4 * MiB]);
      expect(await sameContent(a, b, size)).toBe(true);
      const inData = Buffer.from(data);
      inData[MiB + 3] = 8;
      expect(await sameContent(a, mk('c', [[5 * MiB, inData]]), size)).toBe(false);
      // One byte in what is a hole in the other, past both data spans.
      expect(
        await sameContent(
          a,
          mk('d', [
            [5 * MiB, data],
            [19 * MiB, Buffer.from([1])],
          ]),
          size,
        ),
      ).toBe(false);
      const short = mk('e', [[5 * MiB, data]]);
      fs.truncateSync(short, size - 1);
      expect(await sameContent(a, short, size)).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
