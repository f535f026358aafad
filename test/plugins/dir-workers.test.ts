import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { EntryCopier } from '../../src/backup-peer/entry-copier.js';
import { MirrorReader } from '../../src/backup-peer/mirror-source.js';
import { type ManifestEntry, readsMirrorFiles } from '../../src/backup-peer/target.js';
import { posix } from '../../src/posix/native.js';
import { BlobWriter } from '../../src/repository/blob-writer.js';
import {
  copyInto,
  copyShared,
  cut,
  cutOffsets,
  DEFAULT_CHUNKER,
  wasmCutOffsets,
} from '../../src/repository/chunker.js';
import { ContentCutter, WINDOW } from '../../src/repository/content-cutter.js';
import { checkRepository } from '../../src/repository/index.js';
import { looksIncompressible } from '../../src/repository/pack.js';
import type { RepositoryTarget } from '../../src/repository/repository-target.js';
import { defaultPoolSizes, WorkerPool } from '../../src/repository/worker-pool.js';
import {
  fileEntry,
  fileMeta,
  manifest,
  pseudoRandom,
  readAll,
  sha256,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { dirRepositoryFixture } from './plugin-fixtures.js';

const MiB = 1024 * 1024;
const require = createRequire(import.meta.url);
const fastcdc = require('@dstanesc/wasm-chunking-fastcdc-node');

/**
 * The repository's write path on worker threads (worker-pool.ts, blob-worker.ts): real worker
 * threads, a real dir: repository, faults provoked for real (a thread terminated while it holds
 * work, a target filesystem that fills up).
 */
describe('dir repository: the worker path', () => {
  const fx = dirRepositoryFixture('twinfs-workers-');
  const open = fx.open;
  const pool = (size: number) => {
    const p = new WorkerPool(size);
    fx.defer(() => p.close());
    return p;
  };
  const until = async (cond: () => boolean) => {
    while (!cond()) await new Promise((r) => setTimeout(r, 5));
  };

  /** A first snapshot that later failures must leave as it was. */
  async function firstSnapshot(t: RepositoryTarget, data: Buffer): Promise<void> {
    const w = await t.beginSnapshot(snapMeta('keep'));
    await w.putFile('/keep.bin', streamOf(data, MiB), fileMeta(data.length));
    await w.commit(manifest(snapMeta('keep'), [fileEntry('/keep.bin', data)]));
  }

  async function expectIntact(t: RepositoryTarget, data: Buffer): Promise<void> {
    expect((await t.listSnapshots()).map((s) => s.snapshotId)).toEqual(['keep']);
    expect(sha256(await readAll(await t.openFile('keep', '/keep.bin')))).toBe(sha256(data));
    const check = await checkRepository(t.repo, { readData: 1 });
    expect(check.problems).toEqual([]);
  }

  it('small files are read by the workers in batches: each stored exactly, and one that vanished, grew, became a fifo or a symlink since it was listed stores nothing and fails alone', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    const mirror = path.join(dir, 'mirror');
    await fsp.mkdir(mirror);
    // Sizes around the edges: empty, inline, one chunk, several chunks (FastCDC min 64 KiB), 1 MiB.
    const sizes = [0, 1, 4096, 16 * 1024 + 1, 64 * 1024, 300_000, MiB];
    const good = new Map<string, Buffer>();
    for (let i = 0; i < 40; i++) good.set(`/g${i}`, pseudoRandom(sizes[i % sizes.length]!, i + 1));
    const bad = ['/vanished', '/grown', '/past-limit', '/fifo', '/symlink'];
    for (const [p, data] of good) await fsp.writeFile(path.join(mirror, p), data);
    for (const p of bad) await fsp.writeFile(path.join(mirror, p), pseudoRandom(5000, 99));
    const reader = new MirrorReader(mirror);
    // Listed (lstat) first, as a walk does; then changed behind the listing.
    const listed = await Promise.all(
      [...good.keys(), ...bad].map(async (p) => ({ path: p, mirrorPath: p, stat: await reader.lstatNs(p) })),
    );
    await fsp.unlink(path.join(mirror, 'vanished'));
    await fsp.appendFile(path.join(mirror, 'grown'), 'x');
    await fsp.appendFile(path.join(mirror, 'past-limit'), Buffer.alloc(MiB));
    await fsp.unlink(path.join(mirror, 'fifo'));
    execFileSync('mkfifo', [path.join(mirror, 'fifo')]);
    await fsp.unlink(path.join(mirror, 'symlink'));
    await fsp.symlink(path.join(mirror, 'g1'), path.join(mirror, 'symlink'));

    const w = await t.beginSnapshot(snapMeta('batch'));
    const copier = new EntryCopier({ reader, writer: w, signal: new AbortController().signal });
    // All at once, as the peer copies: they share batches.
    const entries = await copyAll(copier, listed, bad, good);
    // Nothing of a refused file was claimed: the path can be stored once it holds still.
    await fsp.writeFile(path.join(mirror, 'grown'), pseudoRandom(7000, 3));
    const again = await copier.copy({ path: '/grown', mirrorPath: '/grown' });
    expect(again).toMatchObject({ size: 7000, hash: sha256(pseudoRandom(7000, 3)) });
    entries.push(again!);
    await w.commit(manifest(snapMeta('batch'), entries));
    for (const [p, data] of good)
      expect(sha256(await readAll(await t.openFile('batch', p))), p).toBe(sha256(data));
    await expect(t.openFile('batch', '/vanished')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
    // The chunk ids are the ones a whole-buffer put gives (the same content deduplicates).
    const w2 = await t.beginSnapshot(snapMeta('buffers'));
    for (const [p, data] of good) {
      const r = await w2.putSmallFile!(p, data, fileMeta(data.length));
      expect(r.stamp, p).toBe(entries.find((e) => e.path === p)?.stored);
    }
    await w2.abort();
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
  });

  it('large files are read straight into the windows (no read stream): stored as putFile stores them, and one that grew or shrank since it was listed stores nothing', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    const mirror = path.join(dir, 'mirror');
    await fsp.mkdir(mirror);
    // Just past the small-file size, on and off the window edges.
    const good = new Map<string, Buffer>([
      ['/a', pseudoRandom(MiB + 1, 31)],
      ['/b', pseudoRandom(WINDOW, 32)],
      ['/c', pseudoRandom(2 * WINDOW + 12_345, 33)],
    ]);
    for (const [p, data] of good) await fsp.writeFile(path.join(mirror, p), data);
    for (const p of ['/grown', '/shrunk'])
      await fsp.writeFile(path.join(mirror, p), pseudoRandom(3 * MiB, 34));
    const reader = new MirrorReader(mirror);
    const listed = await Promise.all(
      [...good.keys(), '/grown', '/shrunk'].map(async (p) => ({
        path: p,
        mirrorPath: p,
        stat: await reader.lstatNs(p),
      })),
    );
    await fsp.appendFile(path.join(mirror, 'grown'), 'x');
    await fsp.truncate(path.join(mirror, 'shrunk'), 2 * MiB);

    const w = await t.beginSnapshot(snapMeta('into'));
    // Every large file goes the direct way: a put through a stream fails the test.
    const writer = Object.assign(Object.create(w) as typeof w, {
      putFile: () => Promise.reject(new Error('read through a stream')),
    });
    const copier = new EntryCopier({ reader, writer, signal: new AbortController().signal });
    const entries = await copyAll(copier, listed, ['/grown', '/shrunk'], good);
    await w.commit(manifest(snapMeta('into'), entries));
    for (const [p, data] of good)
      expect(sha256(await readAll(await t.openFile('into', p))), p).toBe(sha256(data));
    // The chunk ids are the ones a streamed put gives (the same content deduplicates).
    const w2 = await t.beginSnapshot(snapMeta('streamed'));
    for (const [p, data] of good) {
      const r = await w2.putFile(p, streamOf(data, MiB), fileMeta(data.length));
      expect(r.stamp, p).toBe(entries.find((e) => e.path === p)?.stored);
    }
    await w2.abort();
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
  });

  it('a file read into the windows in short, odd reads is cut as its stream is', async () => {
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 6));
    const data = pseudoRandom(2 * WINDOW + 777_777, 7);
    const cutter = new ContentCutter(t.repo, pool(2));
    let at = 0;
    let reads = 0;
    const read = async (buf: Buffer, offset: number, length: number) => {
      // Never more than asked, often less: 1,000,003 bytes at most per read.
      const n = Math.min(length, data.length - at, 1_000_003 - (reads++ % 3) * 17);
      data.copy(buf, offset, at, at + n);
      at += n;
      return n;
    };
    const got: string[] = [];
    const r = await cutter.stream(read, async (blobs) => {
      for (const b of blobs) got.push(b.id);
    });
    const whole = await cutter.whole(data);
    expect(r).toEqual({ hash: sha256(data), size: data.length });
    expect(got).toEqual(whole.blobs.map((b) => b.id));
  });

  it('a file read at positions, several windows at once and answered out of order, is cut as its stream is; a short read ends it there', async () => {
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 6));
    const data = pseudoRandom(9 * WINDOW + 333_333, 8);
    const cutter = new ContentCutter(t.repo, pool(2));
    const whole = await cutter.whole(data);
    // Later windows answer first: each read waits longer the earlier its position.
    let inFlight = 0;
    let most = 0;
    const positional = (end: number) => {
      const read = async () => {
        throw new Error('read through the function while `at` is given');
      };
      const at = {
        size: data.length,
        async read(buf: Buffer, offset: number, length: number, position: number) {
          inFlight++;
          most = Math.max(most, inFlight);
          await new Promise((r) => setTimeout(r, Math.max(0, 40 - position / WINDOW)));
          inFlight--;
          const n = Math.max(0, Math.min(length, end - position));
          data.copy(buf, offset, position, position + n);
          return n;
        },
      };
      return Object.assign(read, { at });
    };
    const got: string[] = [];
    const r = await cutter.stream(positional(data.length), async (blobs) => {
      for (const b of blobs) got.push(b.id);
    });
    expect(r).toEqual({ hash: sha256(data), size: data.length });
    expect(got).toEqual(whole.blobs.map((b) => b.id));
    expect(most).toBeGreaterThan(1);
    // The file ends early (it shrank after its size was taken): what was read, and no more.
    const short = 4 * WINDOW + 1234;
    const cutShort = await cutter.stream(positional(short), async () => undefined);
    expect(cutShort).toEqual({ hash: sha256(data.subarray(0, short)), size: short });
  });

  it('work any worker can do goes to the one with the least queued: not to a worker still holding a large window', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 6));
    const data = pseudoRandom(300_000, 9);
    const p = pool(2);
    // Worker 0 holds a cut of 64 MiB (its cost counts until it answers).
    const held = p.run({ op: 'drop', stream: 1 }, [], { worker: 0, cost: 64 * MiB });
    expect([p.idlest(), p.idlest(), p.idlest()]).toEqual([1, 1, 1]);
    // Chunk ids asked of any worker: worker 1 (the least loaded) computes them, keyed.
    const ids = p.run<string[]>({ op: 'ids', parts: [data], master: t.repo.keys.material() }, [], {
      cost: data.length,
    });
    expect(p.idlest()).toBe(1);
    expect(p.threads().length).toBe(2);
    expect(await ids).toEqual([t.repo.keys.blobId(data)]);
    await held;
    // Both idle: round robin between them.
    expect(new Set([p.idlest(), p.idlest()])).toEqual(new Set([0, 1]));
  });

  it("the chunker's cut of parts laid end to end gives compute_chunks' offsets of the joined bytes, and frees the memory it takes", () => {
    const data = pseudoRandom(3 * MiB + 4321, 41);
    const { min, avg, max } = DEFAULT_CHUNKER;
    const whole = [...(fastcdc.compute_chunks(data, min, avg, max) as Uint32Array)];
    // The addon's cut (the default) and the WebAssembly fallback alike.
    for (const cutter of [cutOffsets, wasmCutOffsets]) {
      const by = (parts: Uint8Array[]) => [...cutter(parts, DEFAULT_CHUNKER)];
      expect(by([data]), cutter.name).toEqual(whole);
      expect(
        by([data.subarray(0, 1000), data.subarray(1000, 2 * MiB), data.subarray(2 * MiB)]),
        cutter.name,
      ).toEqual(whole);
    }
    const offsets = (parts: Uint8Array[]) => [...wasmCutOffsets(parts, DEFAULT_CHUNKER)];
    // The chunks cut() makes of it end there.
    expect(cut(data, DEFAULT_CHUNKER).map((c) => c.byteOffset + c.length)).toEqual(
      whole.filter((o) => o > 0),
    );
    // Memory handed to the chunker is freed by it: many cuts do not grow its memory.
    const mem = () => (fastcdc.__wasm.memory as { buffer: ArrayBuffer }).buffer;
    const before = mem().byteLength;
    for (let i = 0; i < 200; i++) offsets([data.subarray(0, MiB), data.subarray(MiB)]);
    expect(mem().byteLength).toBeLessThan(before + 16 * MiB);
  });

  it('cuts windows of shared memory at any offset after a tail of any length as the joined bytes', () => {
    const data = pseudoRandom(3 * MiB + 4321, 43);
    const { min, avg, max } = DEFAULT_CHUNKER;
    // A stream's window is shared memory; the tail before it shifts where it lands in the
    // chunker's memory (copyInto passes such a copy through plain memory of its alignment).
    for (const [tailLen, winAt] of [
      [0, 0],
      [1, 0],
      [12_345, 8],
      [70_001, 3],
      [65_536, 5],
    ] as const) {
      const win = new Uint8Array(new SharedArrayBuffer(data.length + 16), winAt, data.length - tailLen);
      win.set(data.subarray(tailLen));
      const whole = [...(fastcdc.compute_chunks(data, min, avg, max) as Uint32Array)];
      for (const cutter of [cutOffsets, wasmCutOffsets])
        expect(
          [...cutter([data.subarray(0, tailLen), win], DEFAULT_CHUNKER)],
          `${cutter.name} ${tailLen}/${winAt}`,
        ).toEqual(whole);
    }
  });

  /**
   * Copies pseudo-random bytes with `copy` from plain and shared memory, at 8 source offsets, into
   * plain and shared memory at 8 target offsets: exactly those bytes land, and nothing around them.
   */
  function copiesAtEveryAlignment(
    seed: number,
    makeDst: (shared: boolean, length: number) => Uint8Array,
    copy: (dst: Uint8Array, at: number, src: Uint8Array) => void,
  ): void {
    const src = pseudoRandom(64 * 1024 + 77, seed);
    for (const sharedSrc of [false, true])
      for (const sharedDst of [false, true])
        for (let from = 0; from < 8; from++)
          for (let at = 0; at < 8; at++) {
            const s = sharedSrc
              ? new Uint8Array(new SharedArrayBuffer(src.length + 8), from, src.length)
              : src;
            if (sharedSrc) s.set(src);
            const dst = makeDst(sharedDst, src.length + 32);
            dst.fill(0xee);
            copy(dst, at + 8, s);
            expect(Buffer.compare(dst.subarray(at + 8, at + 8 + src.length), src)).toBe(0);
            expect(dst.subarray(0, at + 8).every((b) => b === 0xee)).toBe(true);
            expect(dst.subarray(at + 8 + src.length).every((b) => b === 0xee)).toBe(true);
          }
  }

  it('copies between shared and plain memory byte for byte at every relative alignment', () => {
    copiesAtEveryAlignment(
      44,
      (shared, n) => (shared ? new Uint8Array(new SharedArrayBuffer(n)) : new Uint8Array(n)),
      (dst, at, src) => copyInto(dst, src, at),
    );
  });

  it("copies a blob into a batch (both shared memory) with the addon's memcpy, byte for byte at every alignment", () => {
    copiesAtEveryAlignment(
      45,
      (shared, n) => (shared ? Buffer.from(new SharedArrayBuffer(n)) : Buffer.alloc(n)),
      copyShared,
    );
    // The addon's copy itself: a view's own offset counts, and what does not fit is refused
    // with nothing written.
    const sab = new SharedArrayBuffer(64);
    const dst = new Uint8Array(sab, 8, 32);
    expect(posix().copyBytes(dst, 30, new Uint8Array(2).fill(7))).toBe(2);
    expect([...new Uint8Array(sab, 38, 2)]).toEqual([7, 7]);
    expect(posix().copyBytes(dst, 31, new Uint8Array(2).fill(9))).toBe(-22);
    expect(posix().copyBytes(dst, -1, new Uint8Array(1))).toBe(-22);
    expect(new Uint8Array(sab).filter((b) => b === 9).length).toBe(0);
  });

  it('cuts a streamed file exactly as the whole content is cut, whatever the window edges', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 6));
    // Odd sizes and a source whose pieces straddle the window edges.
    const data = pseudoRandom(4 * WINDOW + 777_777, 5);
    // One worker (the default on two cores: the cut, the hash and the ids of a stream all on
    // it) and two (the cut on one, the hash on the other).
    for (const size of [1, 2]) {
      const cutter = new ContentCutter(t.repo, pool(size));
      const got: string[] = [];
      const r = await cutter.stream(streamOf(data, 3 * MiB + 1), async (blobs) => {
        for (const b of blobs) got.push(b.id);
      });
      const whole = await cutter.whole(data);
      expect(r).toEqual({ hash: sha256(data), size: data.length });
      expect(got).toEqual(whole.blobs.map((b) => b.id));
      expect(got.length).toBeGreaterThan(20);
    }
  });

  it("a streamed file's blob ids go to an idle running reader thread (the one worker cuts and hashes), never start one; the chunks and ids are those of the whole content", async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 6));
    const data = pseudoRandom(6 * WINDOW + 4321, 7);
    const readers = pool(1);
    // Which ops each pool's threads were asked for (the requests still go to the threads).
    const asked = (p: WorkerPool) => {
      const ops: string[] = [];
      const run = p.run.bind(p);
      p.run = ((req, transfer, opts) => {
        ops.push(req.op);
        return run(req, transfer, opts);
      }) as typeof p.run;
      return ops;
    };
    const readerOps = asked(readers);
    const cutter = new ContentCutter(t.repo, pool(1), readers);
    const whole = await cutter.whole(data);
    const streamed = async () => {
      const got: string[] = [];
      const r = await cutter.stream(streamOf(data, MiB), async (blobs) => {
        for (const b of blobs) got.push(b.id);
      });
      expect(r).toEqual({ hash: sha256(data), size: data.length });
      expect(got).toEqual(whole.blobs.map((b) => b.id));
    };
    // No reader thread running: none is started for the ids.
    await streamed();
    expect(readerOps).toEqual([]);
    expect(readers.threads()).toHaveLength(0);
    // A reader thread running and idle (as after the small files of a backup): it names chunks.
    await readers.run({ op: 'drop', stream: 0 });
    readerOps.length = 0;
    await streamed();
    expect(readerOps.filter((op) => op === 'ids').length).toBeGreaterThan(0);
    expect(readerOps.every((op) => op === 'ids')).toBe(true);
  });

  it('the default pools, readers and workers together, start no more threads than the cores (at least one each); the environment overrides either', () => {
    for (let cores = 1; cores <= 32; cores++) {
      const { workers, readers } = defaultPoolSizes(cores, {});
      expect(workers).toBeGreaterThanOrEqual(1);
      expect(readers).toBeGreaterThanOrEqual(1);
      expect(workers + readers).toBeLessThanOrEqual(Math.max(2, cores));
      expect(workers).toBeLessThanOrEqual(8);
      expect(readers).toBeLessThanOrEqual(8);
    }
    expect(defaultPoolSizes(2, {})).toEqual({ workers: 1, readers: 1 });
    expect(defaultPoolSizes(2, { TWINFS_REPO_WORKERS: '3', TWINFS_REPO_READERS: '5' })).toEqual({
      workers: 3,
      readers: 5,
    });
    expect(defaultPoolSizes(4, { TWINFS_REPO_WORKERS: 'x', TWINFS_REPO_READERS: '0' })).toEqual({
      workers: 2,
      readers: 2,
    });
  });

  it("a streamed file's chunks are views of windows that are reused: every chunk's bytes match its id and join to the file, for files cut one after another and side by side", async () => {
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 6));
    const cutter = new ContentCutter(t.repo, pool(2));
    // Copies what take() is handed (the windows are reused once it resolves) and checks each
    // chunk against its id while it is handed over.
    const cutFile = async (data: Buffer, piece: number) => {
      const parts: Buffer[] = [];
      const r = await cutter.stream(streamOf(data, piece), async (blobs) => {
        await new Promise((res) => setImmediate(res));
        for (const b of blobs) {
          expect(t.repo.keys.blobId(b.data)).toBe(b.id);
          parts.push(Buffer.from(b.data));
        }
      });
      expect(r).toEqual({ hash: sha256(data), size: data.length });
      expect(Buffer.concat(parts).equals(data)).toBe(true);
      return parts.length;
    };
    // One after another (the second reuses the first's windows), then three at once (they
    // share the spare windows), sizes on and off the window edges.
    expect(await cutFile(pseudoRandom(8 * WINDOW + 12_345, 21), MiB + 7)).toBeGreaterThan(40);
    await cutFile(pseudoRandom(2 * WINDOW, 22), 3 * MiB);
    await Promise.all([
      cutFile(pseudoRandom(WINDOW + 1, 23), 700_001),
      cutFile(pseudoRandom(2 * WINDOW - 1, 24), MiB),
      cutFile(pseudoRandom(5 * MiB, 25), 64 * 1024),
    ]);
  });

  it('stores chunks that look random as they are (no zstd run), compresses the others, reads both back verified, and finds a flipped byte in a stored-as-is chunk', async () => {
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    const random = pseudoRandom(3 * MiB, 31);
    const text = Buffer.from('twinfs keeps a mirror and backs it up off-host\n'.repeat(70_000));
    expect(looksIncompressible(random.subarray(0, 256 * 1024))).toBe(true);
    expect(looksIncompressible(text.subarray(0, 256 * 1024))).toBe(false);
    const w = await t.beginSnapshot(snapMeta('s'));
    await w.putFile('/random.bin', streamOf(random, MiB), fileMeta(random.length));
    await w.putFile('/text.txt', streamOf(text, MiB), fileMeta(text.length));
    await w.commit(manifest(snapMeta('s'), [fileEntry('/random.bin', random), fileEntry('/text.txt', text)]));
    expect((await readAll(await t.openFile('s', '/random.bin'))).equals(random)).toBe(true);
    expect((await readAll(await t.openFile('s', '/text.txt'))).equals(text)).toBe(true);
    // The index says how each is stored: the random chunks as they are, the text compressed.
    const randomChunks = (await t.repo.readManifest((await t.repo.readSnapshot('s'))!)).find(
      (e) => e.path === '/random.bin',
    )!.chunks!;
    expect(randomChunks.length).toBeGreaterThan(3);
    const locs = randomChunks.map((id) => t.repo.locate(id)!);
    for (const l of locs) expect(l).toMatchObject({ compressed: false, length: l.rawLength });
    const textLocs = [...t.repo.blobs()].filter(([id]) => !randomChunks.includes(id)).map(([, l]) => l[0]!);
    expect(textLocs.filter((l) => l.type === 'data' && l.compressed).length).toBeGreaterThan(0);
    // A flipped byte inside a chunk stored as it is: ETWIN_REPO_CORRUPT, not data.
    const hit = locs[1]!;
    const file = path.join(dir, 'r', 'data', hit.pack.slice(0, 2), hit.pack);
    const bytes = await fsp.readFile(file);
    bytes[hit.offset + 1000] = bytes[hit.offset + 1000]! ^ 0x40;
    await fsp.chmod(file, 0o600);
    await fsp.writeFile(file, bytes);
    const t2 = await open(`dir:${dir}/r`, false);
    await expect(readAll(await t2.openFile('s', '/random.bin'))).rejects.toMatchObject({
      code: 'ETWIN_REPO_CORRUPT',
    });
    expect((await readAll(await t2.openFile('s', '/text.txt'))).equals(text)).toBe(true);
  });

  it("small random chunks (a small file's one chunk, 1 KiB to 64 KiB) are stored as they are without a zstd run; small text is compressed", async () => {
    // The 32-bytes-per-KiB sample of a 4 KiB chunk (128 bytes) cannot measure more than 7
    // bits/byte, so every small chunk went through zstd: every byte is counted up to 4 KiB,
    // above that a sample of about 2 KiB (32-byte runs spread over the chunk). Sizes on and
    // off the steps' edges.
    for (const n of [1024, 4095, 4096, 6143, 40_000, 64 * 1024 - 1])
      for (let seed = 1; seed <= 20; seed++)
        expect(looksIncompressible(pseudoRandom(n, seed)), `${n}`).toBe(true);
    const text = Buffer.from('twinfs keeps a mirror and backs it up off-host\n'.repeat(2000));
    for (const n of [1024, 4096, 6143, 40_000, 64 * 1024 - 1])
      expect(looksIncompressible(text.subarray(0, n)), `${n}`).toBe(false);
    const dir = await fx.tmp();
    const t = await open(`dir:${dir}/r`);
    const w = await t.beginSnapshot(snapMeta('small'));
    const random = pseudoRandom(4096, 41);
    const small = text.subarray(0, 4096);
    await w.putSmallFile!('/random', random, fileMeta(random.length));
    await w.putSmallFile!('/text', small, fileMeta(small.length));
    await w.commit(manifest(snapMeta('small'), [fileEntry('/random', random), fileEntry('/text', small)]));
    const entries = await t.repo.readManifest((await t.repo.readSnapshot('small'))!);
    const loc = (p: string) => t.repo.locate(entries.find((e) => e.path === p)!.chunks![0]!)!;
    expect(loc('/random')).toMatchObject({ compressed: false, length: 4096 });
    expect(loc('/text')).toMatchObject({ compressed: true });
    expect((await readAll(await t.openFile('small', '/random'))).equals(random)).toBe(true);
    expect((await readAll(await t.openFile('small', '/text'))).equals(small)).toBe(true);
  });

  it.each([
    ['an encrypted', 'worker test'],
    ['a plain', undefined],
  ])(
    'packs sealed one after another in their reused batches (in %s repository): every blob of every pack reads back verified',
    async (_, password) => {
      const dir = await fx.tmp();
      if (password) process.env.TWINFS_PASSWORD = password;
      else delete process.env.TWINFS_PASSWORD;
      try {
        const t = await open(`dir:${dir}/r`);
        await firstSnapshot(t, pseudoRandom(MiB, 6));
        expect(t.repo.keys.encrypted).toBe(password !== undefined);
        // One worker: at most two packs in flight, so the later ones are built in reused
        // batches. Compressible blobs (a third) move the blobs after them towards the start
        // of the pack as it is built over the batch.
        const writer = new BlobWriter(t.repo, pool(1));
        const blobs = Array.from({ length: 120 }, (_, i) => {
          const data =
            i % 3 === 0 ? Buffer.from(`blob ${i} `.repeat(50_000)) : pseudoRandom(700_000 + i, 200 + i);
          return { id: t.repo.keys.blobId(data), data };
        });
        for (let i = 0; i < blobs.length; i += 7) await writer.add(blobs.slice(i, i + 7), 'data');
        const packs = await writer.flush();
        expect(packs.length).toBeGreaterThan(4);
        await t.repo.writeIndex({ packs });
        for (const b of blobs) expect((await t.repo.readBlob(b.id)).equals(b.data)).toBe(true);
        expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
      } finally {
        process.env.TWINFS_PASSWORD = 'worker test';
      }
    },
    // ~80 MiB sealed and read back twice: on a shared, loaded machine that outlasts 60 s.
    180_000,
  );

  it('many adds at once fill at most ahead + 2 batches (the others wait for a pack to be written), and every blob of the reused batches reads back verified', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 7));
    // One worker: two packs in flight (ahead), one full batch waiting, one filling. Twelve adds
    // at once, as the peer's small files and windows come: without the wait for room each add
    // that found no full batch to dispatch went on filling new batches.
    const writer = new BlobWriter(t.repo, pool(1));
    const blobs = Array.from({ length: 96 }, (_, i) => {
      const data =
        i % 4 === 0 ? Buffer.from(`blob ${i} `.repeat(100_000)) : pseudoRandom(1_000_000 + i, 900 + i);
      return { id: t.repo.keys.blobId(data), data };
    });
    const queue = [...blobs];
    await Promise.all(
      Array.from({ length: 12 }, async () => {
        for (let b = queue.shift(); b; b = queue.shift()) await writer.add([b], 'data');
      }),
    );
    const packs = await writer.flush();
    expect(packs.length).toBeGreaterThan(5);
    expect(writer.batchBuffers).toBeLessThanOrEqual(4);
    await t.repo.writeIndex({ packs });
    for (const b of blobs) expect((await t.repo.readBlob(b.id)).equals(b.data)).toBe(true);
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
    // ~95 MiB sealed and read back twice: on a shared, loaded machine that outlasts 60 s.
  }, 180_000);

  it("a writer that adopts a finished writer's spare batches makes no batch buffer of its own, and its packs built over the old bytes read back verified", async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    await firstSnapshot(t, pseudoRandom(MiB, 8));
    const first = new BlobWriter(t.repo, pool(1));
    const old = Array.from({ length: 40 }, (_, i) => pseudoRandom(1_000_000 + i, 1300 + i));
    await first.add(
      old.map((data) => ({ id: t.repo.keys.blobId(data), data })),
      'data',
    );
    const firstPacks = await first.flush();
    // Tree-like content: small, compressible, one batch, built over the first writer's bytes.
    const second = new BlobWriter(t.repo, pool(1));
    second.adoptSpares(first);
    const blobs = Array.from({ length: 30 }, (_, i) => Buffer.from(`{"path":"/d/${i}"}\n`.repeat(2000 + i)));
    const items = blobs.map((data) => ({ id: t.repo.keys.blobId(data), data }));
    await second.add(items, 'tree');
    const packs = await second.flush();
    expect(second.batchBuffers).toBe(0);
    await t.repo.writeIndex({ packs: [...firstPacks, ...packs] });
    for (const b of items) expect((await t.repo.readBlob(b.id)).equals(b.data)).toBe(true);
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
  }, 180_000);

  it("small files read in batches into a reader's reused buffers: many batches side by side, every file stored exactly", async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    const mirror = path.join(dir, 'mirror');
    await fsp.mkdir(mirror);
    // 4–200 KiB, distinct: a batch's buffer is read into again only once every file of it
    // was copied into a pack batch; one reused early would store bytes other than the id's.
    const files = new Map<string, Buffer>();
    for (let i = 0; i < 400; i++)
      files.set(`/s${i}`, pseudoRandom(4096 + ((i * 7919) % (196 * 1024)), 500 + i));
    for (const [p, data] of files) await fsp.writeFile(path.join(mirror, p), data);
    const w = await t.beginSnapshot(snapMeta('small'));
    if (!readsMirrorFiles(w)) throw new Error('the repository target reads mirror files itself');
    const put = w.putMirrorFile.bind(w);
    const entries: ManifestEntry[] = [];
    const queue = [...files];
    // 64 at once, as the peer copies: batches are read while others still wait for room in
    // a pack (two packs' worth and more: the writer's backpressure holds them).
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        for (let next = queue.shift(); next; next = queue.shift()) {
          const [p, data] = next;
          const r = await put(
            p,
            { path: path.join(mirror, p), size: data.length, max: MiB },
            fileMeta(data.length),
          );
          if (r.kind !== 'stored') throw new Error(`${p}: ${JSON.stringify(r)}`);
          expect(r.result.hash, p).toBe(sha256(data));
          entries.push({ ...fileEntry(p, data), stored: r.result.stamp });
        }
      }),
    );
    await w.commit(manifest(snapMeta('small'), entries));
    for (const [p, data] of files)
      expect(sha256(await readAll(await t.openFile('small', p))), p).toBe(sha256(data));
    expect((await checkRepository(t.repo, { readData: 1 })).problems).toEqual([]);
    // 400 files read, stored and read back: on a shared, loaded machine that outlasts 60 s.
  }, 180_000);

  it('a worker thread that dies under a streamed file fails it with ETWIN_REPO_WORKER, not a hang, and loses nothing', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    const keep = pseudoRandom(3 * MiB, 1);
    await firstSnapshot(t, keep);
    const p = pool(1);
    const cutter = new ContentCutter(t.repo, p);
    const data = pseudoRandom(3 * WINDOW, 2);
    const source = Readable.from(
      (async function* () {
        // A full window: sent to the worker, which now holds the file's running hash and tail.
        yield data.subarray(0, WINDOW + 1);
        await until(() => p.threads().length === 1);
        await Promise.all(p.threads().map((th) => th.terminate()));
        yield data.subarray(WINDOW + 1);
      })(),
      { objectMode: false },
    );
    await expect(cutter.stream(source, async () => undefined)).rejects.toMatchObject({
      code: 'ETWIN_REPO_WORKER',
    });
    // The pool starts a new thread for the next file, which is cut right.
    const again = await cutter.stream(streamOf(data, MiB), async () => undefined);
    expect(again.hash).toBe(sha256(data));
    await expectIntact(t, keep);
  });

  it('a worker thread that dies while it seals a pack fails the snapshot with ETWIN_REPO_WORKER; the repository keeps what it had', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${dir}/r`);
    const keep = pseudoRandom(2 * MiB, 3);
    await firstSnapshot(t, keep);
    const p = pool(1);
    const writer = new BlobWriter(t.repo, p);
    const blobs = Array.from({ length: 20 }, (_, i) => {
      const data = pseudoRandom(MiB, 100 + i);
      return { id: t.repo.keys.blobId(data), data };
    });
    // 20 MiB: a full pack goes to the worker at once.
    const adding = writer.add(blobs, 'data');
    await until(() => p.threads().length === 1);
    await Promise.all(p.threads().map((th) => th.terminate()));
    await adding;
    await expect(writer.flush()).rejects.toMatchObject({ code: 'ETWIN_REPO_WORKER' });
    await writer.discard();
    await expectIntact(t, keep);
  });

  it('a target filesystem that fills up fails the put with a coded error; the earlier snapshot stays whole', async () => {
    const dir = await fx.tmp();
    const fsDir = path.join(dir, 'small');
    await fsp.mkdir(fsDir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', fsDir]);
    fx.defer(() => execFileSync('umount', ['-l', fsDir]));
    process.env.TWINFS_PASSWORD = 'worker test';
    const t = await open(`dir:${fsDir}/r`);
    const keep = pseudoRandom(4 * MiB, 4);
    await firstSnapshot(t, keep);
    const big = pseudoRandom(48 * MiB, 5);
    const w = await t.beginSnapshot(snapMeta('full'));
    let failure: unknown;
    try {
      await w.putFile('/big.bin', streamOf(big, MiB), fileMeta(big.length));
      await w.commit(manifest(snapMeta('full'), [fileEntry('/big.bin', big)]));
    } catch (err) {
      failure = err;
    }
    expect(failure).toMatchObject({ code: 'ETWIN_TARGET_FAILED', data: { errno: 'ENOSPC' } });
    await w.abort();
    await expectIntact(t, keep);
  });
});

/** Copies every listed entry at once, as the peer does: the `changed` ones must fail with
 * ETWIN_MIRROR_CHANGED, the `good` ones store exactly their data; returns their entries. */
async function copyAll(
  copier: EntryCopier,
  listed: { path: string; mirrorPath: string }[],
  changed: string[],
  good: Map<string, Buffer>,
): Promise<ManifestEntry[]> {
  const results = await Promise.allSettled(listed.map((s) => copier.copy(s)));
  const byPath = new Map(listed.map((s, i) => [s.path, results[i]!]));
  for (const p of changed)
    expect(byPath.get(p), p).toMatchObject({
      status: 'rejected',
      reason: { code: 'ETWIN_MIRROR_CHANGED' },
    });
  const entries: ManifestEntry[] = [];
  for (const [p, data] of good) {
    const r = byPath.get(p)!;
    expect(r.status, p).toBe('fulfilled');
    const e = (r as PromiseFulfilledResult<ManifestEntry>).value;
    expect(e).toMatchObject({ path: p, size: data.length, hash: sha256(data) });
    entries.push(e);
  }
  return entries;
}
