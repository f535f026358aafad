import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { EntryCopier } from '../../src/backup-peer/entry-copier.js';
import { MirrorReader } from '../../src/backup-peer/mirror-source.js';
import type { EntryMeta, SnapshotWriter } from '../../src/backup-peer/target.js';
import { tempDir } from './peer-fixture.js';

/**
 * EntryCopier reads a small split copy in one read of its size and streams a large one (over
 * 1 MiB) in chunks bounded by its size: both must store exactly the file's bytes, and both must
 * notice a copy that grows or shrinks while it is read (ETWIN_MIRROR_CHANGED), never store it.
 */
describe('EntryCopier reads split copies', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });

  /** A writer that hashes what it is given; `during` runs after the first chunk arrived. */
  const fakeWriter = (during?: () => Promise<void>) => {
    const stored = new Map<string, Buffer>();
    const w = {
      snapshotId: 's',
      async putFile(p: string, data: Readable, _meta: EntryMeta) {
        const chunks: Buffer[] = [];
        for await (const c of data) {
          chunks.push(c as Buffer);
          if (chunks.length === 1) await during?.();
        }
        const all = Buffer.concat(chunks);
        stored.set(p, all);
        return { hash: createHash('sha256').update(all).digest('hex'), bytes: all.length };
      },
    } as unknown as SnapshotWriter;
    return { w, stored };
  };

  const setup = async (size: number) => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const file = path.join(d.dir, 'f');
    const data = Buffer.alloc(size);
    for (let i = 0; i < size; i++) data[i] = (i * 7 + 3) & 0xff;
    await fsp.writeFile(file, data);
    return { dir: d.dir, file, data };
  };

  const copier = (dir: string, w: SnapshotWriter) =>
    new EntryCopier({ reader: new MirrorReader(dir), writer: w, signal: new AbortController().signal });

  for (const [label, size] of [
    ['empty', 0],
    ['small (one read)', 40_000],
    ['exactly 1 MiB (one read)', 1 << 20],
    ['large (streamed)', (3 << 20) + 123],
  ] as const) {
    it(`stores a ${label} file byte for byte, with its sha256`, async () => {
      const { dir, data } = await setup(size);
      const { w, stored } = fakeWriter();
      const e = await copier(dir, w).copy({ path: '/f', mirrorPath: '/f' });
      expect(stored.get('/f')?.equals(data)).toBe(true);
      expect(e?.hash).toBe(createHash('sha256').update(data).digest('hex'));
      expect(e?.size).toBe(size);
    });
  }

  for (const [label, size] of [
    ['small', 40_000],
    ['large', (3 << 20) + 123],
  ] as const) {
    it(`fails with ETWIN_MIRROR_CHANGED when a ${label} copy grows while it is read`, async () => {
      const { dir, file } = await setup(size);
      const { w } = fakeWriter(() => fsp.appendFile(file, Buffer.alloc(4096, 1)));
      await expect(copier(dir, w).copy({ path: '/f', mirrorPath: '/f' })).rejects.toMatchObject({
        code: 'ETWIN_MIRROR_CHANGED',
      });
    });

    it(`fails when a ${label} copy shrinks while it is read`, async () => {
      const { dir, file } = await setup(size);
      const { w } = fakeWriter(() => fsp.truncate(file, 100));
      await expect(copier(dir, w).copy({ path: '/f', mirrorPath: '/f' })).rejects.toMatchObject({
        code: expect.stringMatching(/^ETWIN_(MIRROR_CHANGED|TARGET_FAILED)$/),
      });
    });
  }
});
