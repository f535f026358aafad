import { type BigIntStats, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LARGE_FIRST_BYTES, SizingWalk } from '../../src/backup-peer/backup-run.js';
import { MirrorReader, type SourceEntry } from '../../src/backup-peer/mirror-source.js';
import { forEachLimitAsync } from '../../src/backup-peer/safe-tree.js';
import { tempDir } from './peer-fixture.js';

describe('walking the mirror (the run walks it when the item list was cut short)', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });

  it('yields parents before children, sorted, with more entries in a directory than lstats in flight', async () => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const expected: string[] = ['/t'];
    await fsp.mkdir(path.join(d.dir, 't'));
    // 150 entries: three rounds of parallel lstats; every 50th a directory with 2 files.
    const names = Array.from({ length: 150 }, (_, i) => `e${String(i).padStart(3, '0')}`);
    for (const [i, n] of names.entries()) {
      const p = path.join(d.dir, 't', n);
      expected.push(`/t/${n}`);
      if (i % 50 === 7) {
        await fsp.mkdir(p);
        for (const c of ['a', 'b']) {
          await fsp.writeFile(path.join(p, c), c);
          expected.push(`/t/${n}/${c}`);
        }
      } else await fsp.writeFile(p, n);
    }
    await fsp.symlink('/etc', path.join(d.dir, 't', 'zlink'));
    expected.push('/t/zlink');
    const got: string[] = [];
    for await (const s of new MirrorReader(d.dir).walk({ subtree: '/t' })) {
      expect(s.stat).toBeDefined();
      got.push(s.path);
    }
    expect(got).toEqual(expected);
  });

  it("takes a cached directory's lstats on the JS thread, the same entries and stats as the thread pool gives", async () => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const t = path.join(d.dir, 't');
    await fsp.mkdir(path.join(t, 'sub'), { recursive: true });
    // 150 entries in one directory: three batches; a symlink to a directory is an entry, not walked.
    for (let i = 0; i < 150; i++)
      await fsp.writeFile(path.join(t, `f${String(i).padStart(3, '0')}`), 'x'.repeat(i));
    await fsp.writeFile(path.join(t, 'sub', 'y'), 'y');
    await fsp.symlink(path.join(t, 'sub'), path.join(t, 'zlink'));
    const walkWith = async (cachedLstatMs: number) => {
      // The walk's lstats through the thread pool (fs.promises.lstat), counted.
      const pool = vi.spyOn(fsp, 'lstat');
      const got: Array<[string, string, string]> = [];
      try {
        for await (const s of new MirrorReader(d.dir, undefined, { cachedLstatMs }).walk({ subtree: '/t' }))
          got.push([s.path, String(s.stat?.size), String(s.stat?.mtimeNs)]);
        return { got, poolLstats: pool.mock.calls.length };
      } finally {
        pool.mockRestore();
      }
    };
    // Every first lstat of a batch counts as cached: no entry of a directory already read goes
    // through the pool (the root's own lstat and the check of its parent do).
    const js = await walkWith(Number.POSITIVE_INFINITY);
    const pool = await walkWith(0);
    expect(pool.poolLstats).toBeGreaterThan(150);
    expect(js.poolLstats).toBeLessThanOrEqual(2);
    expect(js.got).toEqual(pool.got);
    expect(js.got.map((g) => g[0])).toEqual([
      '/t',
      ...Array.from({ length: 150 }, (_, i) => `/t/f${String(i).padStart(3, '0')}`),
      '/t/sub',
      '/t/sub/y',
      '/t/zlink',
    ]);
  });

  it('with dirsLast, every entry of a directory comes before what its subdirectories hold; parents still first, sorted', async () => {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const t = path.join(d.dir, 't');
    await fsp.mkdir(path.join(t, 'a', 'aa'), { recursive: true });
    await fsp.mkdir(path.join(t, 'b'));
    for (const f of ['a/x', 'a/aa/y', 'b/z', 'big', 'c']) await fsp.writeFile(path.join(t, f), f);
    const got: string[] = [];
    for await (const s of new MirrorReader(d.dir).walk({ subtree: '/t' }, { dirsLast: true }))
      got.push(s.path);
    expect(got).toEqual(['/t', '/t/a', '/t/b', '/t/big', '/t/c', '/t/a/aa', '/t/a/x', '/t/a/aa/y', '/t/b/z']);
    // Depth first without it (every other walk).
    const depthFirst: string[] = [];
    for await (const s of new MirrorReader(d.dir).walk({ subtree: '/t' })) depthFirst.push(s.path);
    expect(depthFirst).toEqual([
      '/t',
      '/t/a',
      '/t/a/aa',
      '/t/a/aa/y',
      '/t/a/x',
      '/t/b',
      '/t/b/z',
      '/t/big',
      '/t/c',
    ]);
  });

  it('the sizing walk hands a large file out before the entries queued ahead of it, once its directory was taken', async () => {
    const stat = (kind: 'dir' | 'file', size = 0, nlink = 1) =>
      ({
        isDirectory: () => kind === 'dir',
        isFile: () => kind === 'file',
        size: BigInt(size),
        nlink: BigInt(nlink),
      }) as unknown as BigIntStats;
    const e = (p: string, st: BigIntStats): SourceEntry => ({ path: p, mirrorPath: p, stat: st });
    const large = LARGE_FIRST_BYTES;
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const walk = new SizingWalk(
      async function* () {
        yield e('/t', stat('dir'));
        await gate;
        yield e('/t/a', stat('dir'));
        yield e('/t/a/x', stat('file', 10));
        // Its directory /t was taken: it goes first.
        yield e('/t/big', stat('file', large));
        // /t/a is queued, not taken: in order. So are a smaller file and one of two names.
        yield e('/t/a/big2', stat('file', large));
        yield e('/t/mid', stat('file', large - 1));
        yield e('/t/linked', stat('file', large, 2));
        yield e('/t/z', stat('file', 1));
      },
      100,
      new AbortController().signal,
      () => undefined,
    );
    const it = walk.entries()[Symbol.asyncIterator]();
    expect((await it.next()).value?.path).toBe('/t');
    open();
    await walk.finished;
    const rest: string[] = [];
    for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value.path);
    expect(rest).toEqual(['/t/big', '/t/a', '/t/a/x', '/t/a/big2', '/t/mid', '/t/linked', '/t/z']);
  });

  it('forEachLimitAsync runs at most `limit` at once and overlaps pulling with processing', async () => {
    let inFlight = 0;
    let max = 0;
    let pulled = 0;
    async function* items() {
      for (let i = 0; i < 20; i++) {
        pulled++;
        yield i;
      }
    }
    const seen: number[] = [];
    await forEachLimitAsync(items(), 3, async (i) => {
      inFlight++;
      max = Math.max(max, inFlight);
      await new Promise((r) => setTimeout(r, 2));
      seen.push(i);
      inFlight--;
    });
    expect(max).toBe(3);
    expect(pulled).toBe(20);
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('forEachLimitAsync rejects with the first failure, stops pulling and closes the iterable', async () => {
    let pulled = 0;
    let closed = false;
    async function* items() {
      try {
        for (let i = 0; i < 1000; i++) {
          pulled++;
          yield i;
        }
      } finally {
        closed = true;
      }
    }
    await expect(
      forEachLimitAsync(items(), 4, async (i) => {
        if (i === 5) throw new Error('boom');
        await new Promise((r) => setTimeout(r, 1));
      }),
    ).rejects.toThrow('boom');
    expect(pulled).toBeLessThan(20);
    expect(closed).toBe(true);
  });

  it('forEachLimitAsync rejects when the iterable itself throws', async () => {
    async function* items() {
      yield 1;
      throw new Error('walk failed');
    }
    await expect(forEachLimitAsync(items(), 2, async () => undefined)).rejects.toThrow('walk failed');
  });
  /** A tree of `n` files in two directories, and the paths a walk of it gives. */
  async function smallTree(n: number): Promise<{ dir: string; paths: string[] }> {
    const d = await tempDir();
    cleanups.push(d.cleanup);
    const paths = ['/t'];
    await fsp.mkdir(path.join(d.dir, 't'));
    for (const sub of ['a', 'b']) {
      await fsp.mkdir(path.join(d.dir, 't', sub));
      paths.push(`/t/${sub}`);
      for (let i = 0; i < n / 2; i++) {
        const name = `f${String(i).padStart(3, '0')}`;
        await fsp.writeFile(path.join(d.dir, 't', sub, name), 'x'.repeat(i));
        paths.push(`/t/${sub}/${name}`);
      }
    }
    return { dir: d.dir, paths };
  }

  it('the sizing walk hands its entries to a slow copy in order; past the entries it queues, the copy walks on from the last one', async () => {
    const { dir, paths } = await smallTree(40);
    const reader = new MirrorReader(dir);
    let walks = 0;
    const counts: Array<[number, number, boolean]> = [];
    const walk = new SizingWalk(
      () => {
        walks++;
        return reader.walk({ subtree: '/t' });
      },
      3,
      new AbortController().signal,
      (files, bytes, done) => counts.push([files, bytes, done]),
    );
    const got: string[] = [];
    // Slower than the walk: at most 3 entries wait, so it queues only the first few.
    await forEachLimitAsync(walk.entries(), 2, async (s) => {
      got.push(s.path);
      await new Promise((r) => setTimeout(r, 2));
    });
    expect(got).toEqual(paths);
    expect(walks).toBe(2);
    // The totals of the whole walk, told once at its end.
    const bytes = 2 * Array.from({ length: 20 }, (_, i) => i).reduce((a, b) => a + b, 0);
    expect(counts.filter((c) => c[2])).toEqual([[paths.length, bytes, true]]);
  });

  it('a split copy whose walk differs where the copy walks on fails with ETWIN_MIRROR_CHANGED', async () => {
    const { dir } = await smallTree(40);
    const reader = new MirrorReader(dir);
    let walks = 0;
    const walk = new SizingWalk(
      async function* () {
        // The copy's own walk finds a new entry sorted before everything it had queued.
        if (++walks === 2) await fsp.writeFile(path.join(dir, 't', 'a', 'e'), 'new');
        yield* reader.walk({ subtree: '/t' });
      },
      3,
      new AbortController().signal,
      () => undefined,
    );
    await expect(
      forEachLimitAsync(walk.entries(), 1, async () => {
        await new Promise((r) => setTimeout(r, 2));
      }),
    ).rejects.toMatchObject({ code: 'ETWIN_MIRROR_CHANGED' });
  });
});
