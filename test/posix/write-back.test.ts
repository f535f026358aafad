import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  WRITEBACK_BATCH_BYTES as BATCH,
  type WriteBackConcurrency,
  WriteBackScheduler,
} from '../../src/posix/write-back.js';
import { waitFor } from '../helpers/mounts.js';

/**
 * WriteBackScheduler, the early write-back of the mirror ('global': one for all its files) and
 * of the primary ('per-file'): ranges merged per descriptor until a batch is wide, what waits
 * while one runs started once it settles, forget's promise the moment a descriptor may close.
 * Real sync_file_range calls on real descriptors (no dirty pages needed: the call takes any).
 */
describe('WriteBackScheduler', () => {
  let dir: string;
  const fds: number[] = [];
  const open = (name: string) => {
    const fd = fs.openSync(path.join(dir, name), 'w');
    fds.push(fd);
    return fd;
  };
  /** A scheduler of the given concurrency, and a batch written to each of two new files. */
  const twoWritten = (concurrency: WriteBackConcurrency, name: string) => {
    const s = new WriteBackScheduler(concurrency);
    const a = open(`${name}-a`);
    const b = open(`${name}-b`);
    s.written(a, 0, BATCH);
    s.written(b, 0, BATCH);
    return { s, a, b };
  };
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-write-back-'));
  });
  afterAll(async () => {
    for (const fd of fds) fs.closeSync(fd);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('merges the ranges of a descriptor until their span is a batch wide', async () => {
    const s = new WriteBackScheduler('per-file');
    const fd = open('merge');
    expect(s.forget(fd)).toBeUndefined();
    s.written(fd, BATCH / 2, BATCH / 4);
    s.written(fd, 0, BATCH / 4);
    expect(s.counts.started).toBe(0); // [0, 3/4 BATCH)
    s.written(fd, (BATCH * 3) / 4, BATCH / 4 - 1);
    expect(s.counts.started).toBe(0);
    s.written(fd, BATCH - 1, 1);
    expect(s.counts.started).toBe(1);
    const running = s.forget(fd);
    expect(running).toBeInstanceOf(Promise);
    await running;
    expect(s.forget(fd)).toBeUndefined();
    expect(s.counts).toEqual({ started: 1, refused: 0 });
  });

  it("'global' runs one at a time for all descriptors, the next once the running one settled", async () => {
    const { s, a, b } = twoWritten('global', 'g');
    expect(s.counts.started).toBe(1);
    expect(s.forget(b)).toBeUndefined(); // b waits: nothing of it runs yet...
    s.written(b, 0, BATCH); // (forget dropped its range: written again)
    await s.forget(a); // ...and starts once a's settled.
    expect(s.counts.started).toBe(2);
    await s.forgetAll();
    expect(s.counts).toEqual({ started: 2, refused: 0 });
  });

  it("'per-file' runs one per descriptor; a file's next range starts once its running one settled", async () => {
    const { s, a } = twoWritten('per-file', 'p');
    expect(s.counts.started).toBe(2);
    // Written while a's runs: waits, and starts with no further write once a's settled.
    s.written(a, BATCH, BATCH);
    expect(s.counts.started).toBe(2);
    expect(await waitFor(() => s.counts.started === 3, 10_000, 5)).toBe(true);
    await s.forgetAll();
    expect(s.counts).toEqual({ started: 3, refused: 0 });
  });

  it('counts a refused write-back (a descriptor not open) and settles', async () => {
    const s = new WriteBackScheduler('global');
    s.written(999_999, 0, BATCH);
    await s.forget(999_999);
    expect(s.counts).toEqual({ started: 1, refused: 1 });
  });
});
