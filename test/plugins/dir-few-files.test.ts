import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobWriter, SEAL_HERE_MAX } from '../../src/repository/blob-writer.js';
import { checkRepository } from '../../src/repository/index.js';
import type { RepositoryTarget } from '../../src/repository/repository-target.js';
import { INLINE_FILES, SmallFileReader } from '../../src/repository/small-files.js';
import { WorkerPool } from '../../src/repository/worker-pool.js';
import {
  fileEntry,
  fileMeta,
  manifest,
  pseudoRandom,
  sha256,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { dirRepositoryFixture } from './plugin-fixtures.js';

const MiB = 1024 * 1024;

/**
 * A backup of a handful of changed small files (issue 13: 10 changed among 100,000 in at most
 * twice the no-change time) starts no worker thread: its files are read, and its one small
 * pack sealed, on the main thread. Real threads, a real dir: repository.
 */
describe('dir repository: a few small files on the main thread', () => {
  const fx = dirRepositoryFixture('twinfs-few-');
  const pool = (size: number) => {
    const p = new WorkerPool(size);
    fx.defer(() => p.close());
    return p;
  };

  /** Creates the repository (its first snapshot). */
  async function created(t: RepositoryTarget): Promise<void> {
    const data = Buffer.from('first');
    const w = await t.beginSnapshot(snapMeta('first'));
    await w.putFile('/first', streamOf(data, 1024), fileMeta(data.length));
    await w.commit(manifest(snapMeta('first'), [fileEntry('/first', data)]));
  }

  async function mirrorOf(n: number, size: (i: number) => number): Promise<Map<string, Buffer>> {
    const dir = await fx.tmp();
    const files = new Map<string, Buffer>();
    await fsp.mkdir(path.join(dir, 'mirror'));
    for (let i = 0; i < n; i++) {
      const p = path.join(dir, 'mirror', `f${i}`);
      const data = pseudoRandom(size(i), 40 + i);
      await fsp.writeFile(p, data);
      files.set(p, data);
    }
    return files;
  }

  it('ten small files are read and sealed into a pack without a worker thread, stored exactly; one changed since it was listed stores nothing', async () => {
    const files = await mirrorOf(10, (i) => 2048 + i);
    process.env.TWINFS_PASSWORD = 'few files';
    const t = await fx.open(`dir:${path.dirname(path.dirname([...files.keys()][0]!))}/r`);
    await created(t);
    const p = pool(2);
    const reader = new SmallFileReader(t.repo, p);
    const writer = new BlobWriter(t.repo, p);
    const changed = [...files.keys()][3]!;
    const reads = await Promise.all(
      [...files].map(([f, data]) => reader.read(f, f === changed ? data.length + 1 : data.length, MiB)),
    );
    const ids: string[] = [];
    for (const [i, r] of reads.entries()) {
      const [f, data] = [...files][i]!;
      if (f === changed) {
        expect(r).toMatchObject({ kind: 'changed' });
        continue;
      }
      if (r.kind !== 'read') throw new Error(`${f}: ${JSON.stringify(r)}`);
      expect(r.hash).toBe(sha256(data));
      await writer.add(r.blobs, 'data');
      r.release();
      ids.push(...r.blobs.map((b) => b.id));
    }
    const packs = await writer.flush();
    expect(packs.length).toBe(1);
    expect(p.threads().length).toBe(0);
    await t.repo.writeIndex({ packs });
    for (const [i, id] of ids.entries()) {
      const data = [...files].filter(([f]) => f !== changed)[i]![1];
      expect((await t.repo.readBlob(id)).equals(data)).toBe(true);
    }
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
  });

  it('past INLINE_FILES files the reader threads read them, and a batch past SEAL_HERE_MAX is sealed by a worker: every file stored exactly', async () => {
    const files = await mirrorOf(INLINE_FILES + 8, (i) => 4096 + i * 997);
    process.env.TWINFS_PASSWORD = 'few files';
    const t = await fx.open(`dir:${path.dirname(path.dirname([...files.keys()][0]!))}/r`);
    await created(t);
    const readers = pool(2);
    const sealers = pool(1);
    const reader = new SmallFileReader(t.repo, readers);
    const writer = new BlobWriter(t.repo, sealers);
    let total = 0;
    const ids: Array<[string, Buffer]> = [];
    // One after another: the first ones on the main thread (INLINE_FILES and its bytes), the rest in threads.
    for (const [f, data] of files) {
      const r = await reader.read(f, data.length, MiB);
      if (r.kind !== 'read') throw new Error(`${f}: ${JSON.stringify(r)}`);
      await writer.add(r.blobs, 'data');
      r.release();
      for (const b of r.blobs) ids.push([b.id, data]);
      total += data.length;
    }
    expect(total).toBeGreaterThan(SEAL_HERE_MAX);
    expect(readers.threads().length).toBeGreaterThan(0);
    const packs = await writer.flush();
    expect(sealers.threads().length).toBe(1);
    await t.repo.writeIndex({ packs });
    for (const [id, data] of ids) expect((await t.repo.readBlob(id)).equals(data)).toBe(true);
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
  });
});
