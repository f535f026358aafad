import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Change,
  type ChangeSink,
  nullSink,
  TwinFs,
  type TwinFsOptions,
} from '../../src/fusefs/index.js';
import { WritebackCache } from '../../src/fusefs/writeback-cache.js';
import { FIXTURES, isMounted, mountTmpfs, runSteps, unmountAll, waitFor } from '../helpers/mounts.js';
import { mountFixture, type PosixFixture } from '../helpers/posix.js';
import { sh, shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { bytes } from './fixtures/bytes.mjs';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const MiB = 1024 * 1024;

/**
 * Makes f exist (empty) through the mount: writes to a file created natively go to the primary
 * until JS takes its create (docs/architecture.md, "Writes and closes of new files in libfuse's
 * threads"); the open(2) that follows is JS's, and the cache takes that file's writes.
 */
async function existing(f: string): Promise<void> {
  await shOk(`: > '${f}'`);
}

async function primaryBytes(file: string): Promise<Buffer> {
  return fsp.readFile(file).catch(() => Buffer.alloc(0));
}

describe('WritebackCache (no FUSE)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('d');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('reads overlay cached data on the primary, and sparse gaps read as zeros', async () => {
    const file = path.join(t.dirs.d!, 'overlay');
    await fsp.writeFile(file, Buffer.alloc(100, 1));
    const cache = new WritebackCache({ sink: nullSink, writebackMs: 60_000 });
    try {
      const node = cache.adopt(1, '/overlay', fs.openSync(file, 'r+'), true);
      cache.write(node, 50, Buffer.alloc(10, 2));
      cache.write(node, 200, Buffer.alloc(10, 3));
      const buf = Buffer.alloc(300, 0xee);
      const n = await cache.read(node, buf, 300, 0);
      const want = Buffer.concat([
        Buffer.alloc(50, 1),
        Buffer.alloc(10, 2),
        Buffer.alloc(40, 1),
        Buffer.alloc(100, 0),
        Buffer.alloc(10, 3),
      ]);
      expect(n).toBe(210);
      expect(buf.subarray(0, n).equals(want)).toBe(true);
      expect((await fsp.readFile(file)).length).toBe(100);
      await cache.flush(node, { sync: 'data' });
      expect((await fsp.readFile(file)).equals(want)).toBe(true);
      expect(cache.getStats().dirtyBytes).toBe(0);
    } finally {
      await cache.dispose();
    }
  });

  it('after a failed flush, keeps the data under newer writes and counts dirty bytes once', async () => {
    const file = path.join(t.dirs.d!, 'fail');
    await fsp.writeFile(file, '');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inFlush = new Promise<void>((r) => (entered = r));
    const sink: ChangeSink = {
      beforeChange: async () => {
        entered();
        await gate;
      },
      apply: async () => undefined,
    };
    const cache = new WritebackCache({ sink, writebackMs: 60_000 });
    // A read-only fd: every write-back fails with EBADF, for real.
    const node = cache.adopt(2, '/fail', fs.openSync(file, 'r'), false);
    cache.write(node, 0, Buffer.alloc(100, 1));
    const flushing = cache.flush(node);
    await inFlush;
    cache.write(node, 50, Buffer.alloc(100, 2)); // overlaps the data being flushed by 50 bytes
    expect(cache.getStats().dirtyBytes).toBe(200);
    release();
    await expect(flushing).rejects.toMatchObject({ code: 'EBADF' });
    expect(node.dirty.size).toBe(150);
    expect(cache.getStats().dirtyBytes).toBe(150);
    expect(cache.getStats().writeErrors).toBe(1);
    const buf = Buffer.alloc(150);
    expect(await cache.read(node, buf, 150, 0)).toBe(150);
    expect(buf.equals(Buffer.concat([Buffer.alloc(50, 1), Buffer.alloc(100, 2)]))).toBe(true);
    expect(cache.takeError(node)?.code).toBe('EBADF');
    expect(cache.takeError(node)).toBeNull();
    // The data stays until the file is gone.
    await cache.discard(node);
    expect(cache.getStats().dirtyBytes).toBe(0);
    await cache.dispose();
  });

  it('a sync of everything keeps each file open until its sync, while handles close meanwhile', async () => {
    // The server's `flush` (flushAll with sync) against releases: the files' last handles are
    // released while the first file's write-back runs. The old code closed a clean file at its
    // release and then synced its closed descriptor (EBADF), or a file that got its number.
    const files = ['dirty', 'clean1', 'clean2'].map((n) => path.join(t.dirs.d!, `all-${n}`));
    for (const f of files) await fsp.writeFile(f, 'x');
    let inWrite!: () => void;
    const writing = new Promise<void>((r) => (inWrite = r));
    let go!: () => void;
    const gate = new Promise<void>((r) => (go = r));
    const sink: ChangeSink = {
      apply: async (c: Change) => {
        if (c.op === 'write') {
          inWrite();
          await gate;
        }
      },
    };
    const cache = new WritebackCache({ sink, writebackMs: 60_000, flushConcurrency: 1 });
    try {
      const [dirty, ...clean] = files.map((f, i) =>
        cache.adopt(100 + i, `/${path.basename(f)}`, fs.openSync(f, 'r+'), true),
      );
      cache.write(dirty!, 0, Buffer.from('new'));
      const synced = cache.flushAll({ sync: true });
      await writing;
      // Their handles close while the dirty file's write-back waits for the sink.
      for (const n of clean) await cache.unref(n);
      // A file opened now may get a closed file's descriptor number.
      const other = fs.openSync(path.join(t.dirs.d!, 'all-dirty'), 'r');
      go();
      await expect(synced).resolves.toBeUndefined();
      fs.closeSync(other);
      // Held only for their turn: closed once synced, nothing left open.
      expect(clean.map((n) => cache.get(n.ino))).toEqual([undefined, undefined]);
      expect(await fsp.readFile(files[0]!, 'utf8')).toBe('new');
    } finally {
      await cache.dispose();
    }
  });

  it('throttles a writer at the limit and lets it go once the flusher made room', async () => {
    const file = path.join(t.dirs.d!, 'throttle');
    await fsp.writeFile(file, '');
    const cache = new WritebackCache({ sink: nullSink, limitBytes: 64 * 1024, writebackMs: 60_000 });
    try {
      const node = cache.adopt(3, '/throttle', fs.openSync(file, 'r+'), true);
      const chunk = 16 * 1024;
      const data = bytes(1024 * 1024, 7);
      let waited = 0;
      for (let off = 0; off < data.length; off += chunk) {
        const r = cache.write(node, off, data.subarray(off, off + chunk));
        if (r) {
          waited++;
          await r;
        }
        expect(cache.getStats().dirtyBytes).toBeLessThanOrEqual(64 * 1024);
      }
      expect(waited).toBeGreaterThan(0);
      expect(cache.getStats().throttledWrites).toBe(waited);
      await cache.flush(node);
      expect((await fsp.readFile(file)).equals(data)).toBe(true);
    } finally {
      await cache.dispose();
    }
  });

  it('writes back each file once it aged past writebackMs, a file dirtied again after its own new write', async () => {
    let clock = 1_000;
    // Real timer every 50 ms; the ages are the injected clock's.
    const cache = new WritebackCache({
      sink: nullSink,
      writebackMs: 100,
      flushConcurrency: 1,
      now: () => clock,
    });
    try {
      const files: Record<string, string> = {};
      const nodes: Record<string, ReturnType<WritebackCache['adopt']>> = {};
      for (const [i, name] of ['open', 'a', 'b', 'c'].entries()) {
        files[name] = path.join(t.dirs.d!, `aged-${name}`);
        await fsp.writeFile(files[name]!, '');
        nodes[name] = cache.adopt(100 + i, `/aged-${name}`, fs.openSync(files[name]!, 'r+'), true);
      }
      nodes.open!.refs++; // open, clean: never written back, never in the way
      const onPrimary = async () => {
        await new Promise((r) => setTimeout(r, 300));
        const out: Record<string, number> = {};
        for (const n of ['a', 'b', 'c']) out[n] = (await fsp.stat(files[n]!)).size;
        return out;
      };
      cache.write(nodes.a!, 0, Buffer.alloc(10, 1));
      clock += 10;
      cache.write(nodes.b!, 0, Buffer.alloc(20, 2));
      clock += 10;
      cache.write(nodes.c!, 0, Buffer.alloc(30, 3));
      clock = 1_105; // a aged 105, b 95, c 85
      expect(await onPrimary()).toEqual({ a: 10, b: 0, c: 0 });
      cache.write(nodes.a!, 10, Buffer.alloc(5, 4)); // dirty again: ages from now
      clock = 1_115; // b 105, c 95, a 10
      expect(await onPrimary()).toEqual({ a: 10, b: 20, c: 0 });
      clock = 1_125; // c 105, a 20
      expect(await onPrimary()).toEqual({ a: 10, b: 20, c: 30 });
      clock = 1_300;
      expect(await onPrimary()).toEqual({ a: 15, b: 20, c: 30 });
      expect(cache.getStats().dirtyBytes).toBe(0);
    } finally {
      await cache.dispose();
    }
  });
});

describe('read-your-writes through a long write-back delay', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    // Writes through opens of files at rest are done in libfuse's threads since level 29 and never
    // cached; this test is about data JS's cache holds, so its writes go to JS (native-open-writes.test.ts
    // covers the native path).
    fx = await mountFixture(['--writeback-ms', '600000'], { TWINFS_NATIVE_OPEN: 'open' });
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('shows unsynced writes to other processes at once, but not on the primary yet', async () => {
    const f = path.join(fx.mnt, 'ryw.bin');
    const data = bytes(300_000, 11);
    await existing(f);
    // 64 KiB write(2)s: the cache takes them (128 KiB requests go straight to the primary).
    const r = await runSteps([
      { op: 'open', path: f, flags: 'w' },
      { op: 'write', off: 0, len: data.length, seed: 11, chunk: 64 * 1024 },
      { op: 'close' },
    ]);
    expect(r.every((s) => s.ok)).toBe(true);
    // Another process reads it back through the mount.
    const [read, st] = await runSteps([
      { op: 'read', path: f },
      { op: 'stat', path: f },
    ]);
    expect(read).toMatchObject({ ok: true, size: data.length, sha: sha(data) });
    expect(st).toMatchObject({ ok: true, size: data.length });
    expect(await shOk(`stat -c %s '${f}'`)).toBe(`${data.length}\n`);
    expect((await primaryBytes(path.join(fx.primary, 'ryw.bin'))).length).toBe(0);
  });

  it('large writes to a file with nothing cached go straight to the primary; later ones wait behind cached data', async () => {
    const f = path.join(fx.mnt, 'pass.bin');
    const onPrimary = path.join(fx.primary, 'pass.bin');
    const big = bytes(MiB, 21);
    const r = await runSteps([
      { op: 'open', path: f, flags: 'w' },
      { op: 'write', off: 0, len: MiB, seed: 21 }, // one write(2): 128 KiB requests
    ]);
    expect(r.every((s) => s.ok)).toBe(true);
    // No fsync, write-back 10 minutes away: on the primary all the same.
    expect(sha(await primaryBytes(onPrimary))).toBe(sha(big));
    // A small write is cached; a large one over it must not be overtaken by its write-back.
    const small = bytes(4096, 22);
    const over = bytes(256 * 1024, 23);
    const r2 = await runSteps([
      { op: 'open', path: f, flags: 'r+' },
      { op: 'write', off: 100_000, len: small.length, seed: 22 },
      { op: 'write', off: 0, len: over.length, seed: 23 },
      { op: 'close' },
    ]);
    expect(r2.every((s) => s.ok)).toBe(true);
    const want = Buffer.from(big);
    small.copy(want, 100_000);
    over.copy(want, 0);
    expect(sha(await primaryBytes(onPrimary))).toBe(sha(big)); // both cached: the file was dirty
    const [read] = await runSteps([{ op: 'read', path: f }]);
    expect(read).toMatchObject({ ok: true, size: MiB, sha: sha(want) });
    await runSteps([{ op: 'open', path: f, flags: 'r+' }, { op: 'fsync' }, { op: 'close' }]);
    expect(sha(await primaryBytes(onPrimary))).toBe(sha(want));
  });

  it('write-behind: a file with 4 MiB dirty is written back at once; a smaller one waits', async () => {
    const big = path.join(fx.mnt, 'behind.bin');
    const small = path.join(fx.mnt, 'stays.bin');
    await existing(big);
    await existing(small);
    const r = await runSteps([
      { op: 'open', path: big, flags: 'w' },
      { op: 'write', off: 0, len: 6 * MiB, seed: 24, chunk: 64 * 1024 }, // cached (64 KiB writes)
      { op: 'close' },
      { op: 'open', path: small, flags: 'w' },
      { op: 'write', off: 0, len: 3 * MiB, seed: 25, chunk: 64 * 1024 },
      { op: 'close' },
    ]);
    expect(r.every((s) => s.ok)).toBe(true);
    // The write-back delay is 10 minutes: only write-behind can put the first 4 MiB there.
    const onPrimary = async (name: string) => (await primaryBytes(path.join(fx.primary, name))).length;
    expect(await waitFor(async () => (await onPrimary('behind.bin')) >= 4 * MiB, 5000)).toBe(true);
    expect(await onPrimary('stays.bin')).toBe(0);
    const [read] = await runSteps([{ op: 'read', path: big }]);
    expect(read).toMatchObject({ ok: true, size: 6 * MiB, sha: sha(bytes(6 * MiB, 24)) });
  });

  it('reports size and mtime of cached writes', async () => {
    const f = path.join(fx.mnt, 'times.txt');
    await existing(f);
    await shOk(`printf abc > '${f}' && touch -d '2001-02-03 04:05:06' '${f}'`);
    const before = await runSteps([{ op: 'stat', path: f }]);
    expect(before[0]!.mtimeMs).toBe(new Date('2001-02-03T04:05:06').getTime());
    const start = Date.now();
    await shOk(`printf defg >> '${f}'`);
    const [st] = await runSteps([{ op: 'stat', path: f }]);
    expect(st!.size).toBe(7);
    expect(st!.mtimeMs).toBeGreaterThanOrEqual(start - 2000);
    expect(await shOk(`cat '${f}'`)).toBe('abcdefg');
    // Nothing written back yet: neither the append nor the first bytes (touch sets the times
    // without a write-back; the cache puts them back after it).
    expect((await primaryBytes(path.join(fx.primary, 'times.txt'))).toString()).toBe('');
  });

  it('sparse writes past the end read back with a zero gap', async () => {
    const f = path.join(fx.mnt, 'sparse.bin');
    const r = await runSteps([
      { op: 'open', path: f, flags: 'w' },
      { op: 'write', off: 0, len: 1000, seed: 1 },
      { op: 'write', off: 5_000_000, len: 1000, seed: 2 },
      { op: 'close' },
      { op: 'read', path: f },
    ]);
    const want = Buffer.alloc(5_001_000);
    bytes(1000, 1).copy(want, 0);
    bytes(1000, 2).copy(want, 5_000_000);
    expect(r[4]).toMatchObject({ ok: true, size: want.length, sha: sha(want) });
  });

  it('fsync puts the data on the primary before it returns', async () => {
    const f = path.join(fx.mnt, 'synced.bin');
    const data = bytes(700_000, 12);
    const r = await runSteps([
      { op: 'open', path: f, flags: 'w' },
      { op: 'write', off: 0, len: data.length, seed: 12 },
      { op: 'fsync' },
      { op: 'read', path: path.join(fx.primary, 'synced.bin') },
      { op: 'write', off: 100, len: 1000, seed: 13 },
      { op: 'fdatasync' },
      { op: 'read', path: path.join(fx.primary, 'synced.bin') },
      { op: 'close' },
    ]);
    expect(r.every((s) => s.ok)).toBe(true);
    expect(r[3]).toMatchObject({ size: data.length, sha: sha(data) });
    bytes(1000, 13).copy(data, 100);
    expect(r[6]).toMatchObject({ size: data.length, sha: sha(data) });
  });

  it('`sync FILE` from another process writes back data written by someone else', async () => {
    const f = path.join(fx.mnt, 'other.txt');
    await existing(f);
    await shOk(`printf 'from a writer' > '${f}'`);
    expect((await primaryBytes(path.join(fx.primary, 'other.txt'))).length).toBe(0);
    await shOk(`sync '${f}'`);
    expect((await primaryBytes(path.join(fx.primary, 'other.txt'))).toString()).toBe('from a writer');
  });

  it('writes everything back on SIGTERM', async () => {
    expect(await fx.srv.stop()).toBe(0);
    expect(await isMounted(fx.mnt)).toBe(false);
    expect(sha(await primaryBytes(path.join(fx.primary, 'ryw.bin')))).toBe(sha(bytes(300_000, 11)));
    expect((await primaryBytes(path.join(fx.primary, 'times.txt'))).toString()).toBe('abcdefg');
  });
});

describe('short write-back delay and --write-through', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let short: ServerHandle;
  let through: ServerHandle;
  beforeAll(async () => {
    t = await tempDirs('p1', 'm1', 'p2', 'm2');
    [short, through] = await Promise.all([
      startServer({ primary: t.dirs.p1!, mount: t.dirs.m1!, args: ['--writeback-ms', '200'] }),
      startServer({ primary: t.dirs.p2!, mount: t.dirs.m2!, args: ['--write-through'] }),
    ]);
  });
  afterAll(async () => {
    await short?.kill();
    await through?.kill();
    await t?.cleanup();
  });

  it('writes unsynced data back after the delay', async () => {
    const data = bytes(200_000, 21);
    const r = await runSteps([
      { op: 'open', path: path.join(t.dirs.m1!, 'later.bin'), flags: 'w' },
      { op: 'write', off: 0, len: data.length, seed: 21 },
      { op: 'close' },
    ]);
    expect(r.every((s) => s.ok)).toBe(true);
    const want = sha(data);
    const landed = await waitFor(
      async () => sha(await primaryBytes(path.join(t.dirs.p1!, 'later.bin'))) === want,
      5000,
    );
    expect(landed).toBe(true);
  });

  it('--write-through: a write is on the primary as soon as write() returns', async () => {
    const primaryFile = path.join(t.dirs.p2!, 'wt.bin');
    const r = await runSteps([
      { op: 'open', path: path.join(t.dirs.m2!, 'wt.bin'), flags: 'w' },
      { op: 'write', off: 0, len: 5000, seed: 31 },
      { op: 'read', path: primaryFile },
      { op: 'write', off: 1_000_000, len: 10, seed: 32 },
      { op: 'stat', path: primaryFile },
      { op: 'close' },
    ]);
    expect(r.every((s) => s.ok)).toBe(true);
    expect(r[2]).toMatchObject({ size: 5000, sha: sha(bytes(5000, 31)) });
    expect(r[4]!.size).toBe(1_000_010);
    expect(through.events.find((e) => e.event === 'mounted')).toMatchObject({ writeThrough: true });
  });
});

describe('in-process mount: dirty limit and write-back errors', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let tfs: TwinFs | undefined;
  const mounted: string[] = [];
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'small', 'smnt', 'src');
  });
  afterAll(async () => {
    // Unmount (drains the cache) while the primary tmpfs is still there.
    await tfs?.unmount().catch(() => undefined);
    await unmountAll(t.dirs.mnt!, t.dirs.smnt!, ...mounted);
    await t?.cleanup();
  });

  /**
   * A primary that is full: a 1 MiB tmpfs (in `sub` of the small directory, or the directory
   * itself), a server on it with `opts`, `files` made through the mount before (a new file's
   * writes go to the primary at once; these the cache takes), then the primary filled behind the
   * server's back.
   */
  async function fullPrimary(sub: string, opts: Partial<TwinFsOptions>, files: string[] = []) {
    const small = sub ? path.join(t.dirs.small!, sub) : t.dirs.small!;
    if (sub) await fsp.mkdir(small);
    await mountTmpfs(small, 'size=1m');
    mounted.push(small);
    const m = t.dirs.smnt!;
    tfs = await TwinFs.mount({ primary: small, mount: m, ...opts });
    for (const f of files) await existing(`${m}/${f}`);
    await sh(`dd if=/dev/zero of='${small}/filler' bs=4k 2>/dev/null`);
    return { small, m };
  }

  it('throttles writers at the dirty limit: 64 MiB through a 1 MiB cache succeeds', async () => {
    const src = path.join(t.dirs.src!, 'big');
    await fsp.writeFile(src, bytes(64 * MiB, 41));
    const want = sha(await fsp.readFile(src));
    tfs = await TwinFs.mount({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      cacheBytes: MiB,
      writebackMs: 600_000,
      // A slow second copy (like a mirror on a slower disk) makes write-back slower than the
      // writer for sure; without it, a fast page cache could keep up and nothing would throttle.
      sink: { apply: (c) => (c.op === 'write' ? new Promise((r) => setTimeout(r, 5)) : Promise.resolve()) },
    });
    let maxDirty = 0;
    const sampler = setInterval(() => {
      maxDirty = Math.max(maxDirty, tfs!.status().cache.dirtyBytes);
    }, 1);
    try {
      // 64 KiB write(2)s: cached (128 KiB requests would bypass the cache).
      const r = await sh(`dd if='${src}' of='${t.dirs.mnt}/big' bs=64k 2>&1`, { timeoutMs: 60_000 });
      expect(r.code, r.stdout).toBe(0);
    } finally {
      clearInterval(sampler);
    }
    const st = tfs.status().cache;
    expect(maxDirty).toBeGreaterThan(0);
    expect(maxDirty).toBeLessThanOrEqual(MiB);
    expect(st.dirtyBytes).toBeLessThanOrEqual(MiB);
    expect(st.throttledWrites).toBeGreaterThan(0);
    expect(st.writeErrors).toBe(0);
    expect((await shOk(`sha256sum < '${t.dirs.mnt}/big'`)).split(' ')[0]).toBe(want);
    await tfs.flushAll({ sync: true });
    expect(tfs.status().cache.dirtyBytes).toBe(0);
    expect(sha(await fsp.readFile(path.join(t.dirs.primary!, 'big')))).toBe(want);
    await tfs.unmount();
    tfs = undefined;
    expect(await isMounted(t.dirs.mnt!)).toBe(false);
  });

  it.each([
    { alongside: false, name: 'a sink without applyAlongside: large writes go through the cache' },
    { alongside: true, name: 'a sink with applyAlongside (the mirror): large writes pass the cache' },
  ])(
    'with a sink, large writes reach it in order, the fsync after all of them: $name',
    async ({ alongside }) => {
      const file = alongside ? 'big3' : 'big2';
      const src = path.join(t.dirs.src!, file);
      await fsp.writeFile(src, bytes(32 * MiB, alongside ? 43 : 42));
      const want = sha(await fsp.readFile(src));
      // A sink slower than the disk that rebuilds the file from what it is given, one change
      // after another in the order given, as the mirror driver's queue does.
      const copy = Buffer.alloc(32 * MiB);
      let applied = 0;
      let fsyncAfter = -1;
      let alongsideWrites = 0;
      let queue: Promise<void> = Promise.resolve();
      const apply = (c: Change) => {
        queue = queue.then(async () => {
          if (c.op === 'write' && c.path === `/${file}`) {
            await new Promise((r) => setTimeout(r, 1));
            c.data.copy(copy, c.offset);
            applied += c.data.length;
          }
          if (c.op === 'fsync' && c.path === `/${file}`) fsyncAfter = applied;
        });
        return queue;
      };
      const sink: ChangeSink = alongside
        ? {
            apply,
            // Queued at once, like the mirror driver; its turn also waits for the primary's write.
            applyAlongside: (c, primary) => {
              alongsideWrites++;
              const mine = apply(c);
              queue = queue.then(() => primary.catch(() => undefined));
              return mine;
            },
          }
        : { apply };
      tfs = await TwinFs.mount({ primary: t.dirs.primary!, mount: t.dirs.mnt!, writebackMs: 600_000, sink });
      let maxDirty = 0;
      const sampler = setInterval(() => {
        maxDirty = Math.max(maxDirty, tfs!.status().cache.dirtyBytes);
      }, 1);
      try {
        const r = await sh(`dd if='${src}' of='${t.dirs.mnt}/${file}' bs=1M conv=fsync 2>&1`, {
          timeoutMs: 120_000,
        });
        expect(r.code, r.stdout).toBe(0);
      } finally {
        clearInterval(sampler);
      }
      if (alongside) {
        expect(maxDirty).toBe(0); // passed through, not cached
        expect(alongsideWrites).toBeGreaterThanOrEqual((32 * MiB) / (1024 * 1024));
      } else {
        expect(maxDirty).toBeGreaterThan(0); // cached, not passed through
        expect(alongsideWrites).toBe(0);
      }
      expect(fsyncAfter).toBe(32 * MiB); // fsync reached the sink after every write of the file
      expect(sha(copy)).toBe(want);
      expect(sha(await fsp.readFile(path.join(t.dirs.primary!, file)))).toBe(want);
      await tfs.unmount();
      tfs = undefined;
    },
  );

  it('a full primary: fsync and close report ENOSPC, the data stays cached and lands once space is freed', async () => {
    // Without the space reservation: this is the write-back failing after writes were accepted
    // (another process took the space meanwhile), which the reservation cannot prevent. With it
    // the writes below would fail at once (test/fusefs/spill.test.ts, the reported case).
    // With every close sending its FLUSH (nativeNoFlush false): the opens below are answered in
    // libfuse's threads, and with FOPEN_NOFLUSH their close would send none (the next test).
    // Writes through a native open only until JS takes it (levels 29-30): the fsyncs below hand
    // each handle to JS, whose cache then takes its writes. With 'all' (level 31) they would go on
    // natively and meet the full primary at once (the large write's case, last test).
    const { small, m } = await fullPrimary(
      '',
      { writebackMs: 300, reserveSpace: false, nativeNoFlush: false, nativeOpens: 'queued' },
      ['a.bin', 'b.bin'],
    );
    const a = bytes(256 * 1024, 51);
    const b = bytes(200 * 1024, 52);
    // Each open answered in libfuse's thread, its truncation and writes too until JS takes the
    // handle: the first fsync hands it to JS, whose cache then takes the writes.
    const [fsyncRun, closeRun] = await Promise.all([
      runSteps([
        { op: 'open', path: `${m}/a.bin`, flags: 'w' },
        { op: 'fsync' },
        { op: 'write', off: 0, len: a.length, seed: 51, chunk: 64 * 1024 },
        { op: 'fsync' },
        { op: 'close' },
      ]),
      // No fsync after the writes: the background write-back fails, and close() must say so.
      runSteps([
        { op: 'open', path: `${m}/b.bin`, flags: 'w' },
        { op: 'fsync' },
        { op: 'write', off: 0, len: b.length, seed: 52, chunk: 64 * 1024 },
        { op: 'sleep', ms: 1500 },
        { op: 'close' },
      ]),
    ]);
    // A new file's writes go to the primary in libfuse's thread (no space account here bounds
    // them): the full primary answers the first one at once, and nothing is cached.
    const dirty = tfs.status().cache.dirtyBytes;
    const fresh = await runSteps([
      { op: 'open', path: `${m}/fresh.bin`, flags: 'w' },
      { op: 'write', off: 0, len: 16 * 1024, seed: 53, chunk: 4096 },
      { op: 'close' },
    ]);
    expect(fresh.map((s) => s.code ?? 'ok')).toEqual(['ok', 'ENOSPC', 'ok']);
    expect(fresh[1]!.bytes ?? 0).toBe(0);
    expect(tfs.status().cache.dirtyBytes).toBe(dirty);
    expect(fsyncRun.slice(0, 4).map((s) => s.code ?? 'ok')).toEqual(['ok', 'ok', 'ok', 'ENOSPC']);
    // fsync took the error; close reports it again only if a background retry failed meanwhile.
    expect(['ok', 'ENOSPC']).toContain(fsyncRun[4]!.code ?? 'ok');
    expect(closeRun.map((s) => s.code ?? 'ok')).toEqual(['ok', 'ok', 'ok', 'ok', 'ENOSPC']);
    const st = tfs.status().cache;
    expect(st.writeErrors).toBeGreaterThan(0);
    expect(st.dirtyBytes).toBeGreaterThanOrEqual(a.length + b.length);
    // Still readable, whole, through the mount. The reader's close may report the pending
    // write-back error, as any close of the file does, and sha256sum fails on the close of its
    // stdin: cat reads (its close error is not the pipeline's status); the digest checks the bytes.
    expect((await shOk(`cat '${m}/a.bin' 2>/dev/null | sha256sum`)).split(' ')[0]).toBe(sha(a));
    expect((await shOk(`cat '${m}/b.bin' 2>/dev/null | sha256sum`)).split(' ')[0]).toBe(sha(b));
    expect(await shOk(`stat -c %s '${m}/a.bin' '${m}/b.bin'`)).toBe(`${a.length}\n${b.length}\n`);
    // Free the space: the background retry writes both files back without anyone asking.
    await fsp.unlink(path.join(small, 'filler'));
    const landed = await waitFor(
      async () =>
        sha(await primaryBytes(path.join(small, 'a.bin'))) === sha(a) &&
        sha(await primaryBytes(path.join(small, 'b.bin'))) === sha(b),
      10_000,
    );
    expect(landed).toBe(true);
    await waitFor(() => tfs!.status().cache.dirtyBytes === 0, 5000);
    expect(tfs.status().cache.dirtyBytes).toBe(0);
    // The error was reported once; a later fsync succeeds.
    const again = await runSteps([
      { op: 'open', path: `${m}/a.bin`, flags: 'r+' },
      { op: 'fsync' },
      { op: 'close' },
    ]);
    expect(again.every((s) => s.ok)).toBe(true);
    await tfs.unmount();
    tfs = undefined;
  });

  it('a full primary and handles whose close sends no FLUSH: the write-back errors wait for the next close or fsync of the file, the data stays cached and lands once space is freed', async () => {
    // 'queued': as the test before, so that the fsync hands each handle and its writes to JS.
    const { small, m } = await fullPrimary(
      'noflush',
      { writebackMs: 300, reserveSpace: false, nativeOpens: 'queued' },
      ['c.bin', 'e.bin'],
    );
    const noflush = () => tfs!.status().kernelCache?.native?.noflushOpens ?? 0;
    const before = noflush();
    const c = bytes(192 * 1024, 54);
    const e = bytes(64 * 1024, 55);
    // Opened in libfuse's thread with FOPEN_NOFLUSH; the fsync hands the handle to JS, whose
    // cache takes the writes; their write-back fails; the close sends nothing to report it.
    const cached = (f: string, len: number, seed: number) => [
      { op: 'open', path: f, flags: 'r+' },
      { op: 'fsync' },
      { op: 'write', off: 0, len, seed, chunk: 64 * 1024 },
      { op: 'close' },
    ];
    const run = await runSteps([
      { op: 'sleep', ms: 300 },
      ...cached(`${m}/c.bin`, c.length, 54),
      ...cached(`${m}/e.bin`, e.length, 55),
      { op: 'sleep', ms: 1500 },
    ]);
    expect(noflush()).toBe(before + 2);
    expect(run.every((s) => s.ok)).toBe(true);
    expect(tfs.status().cache.writeErrors).toBeGreaterThan(0);
    expect(tfs.status().cache.dirtyBytes).toBeGreaterThanOrEqual(c.length + e.length);
    // Not lost: while an error waits, no open skips its FLUSH, so the next close of c reports
    // it; the next fsync of e does.
    const next = await runSteps([
      { op: 'open', path: `${m}/c.bin`, flags: 'r+' },
      { op: 'close' },
      { op: 'open', path: `${m}/e.bin`, flags: 'r+' },
      { op: 'fsync' },
    ]);
    expect(next.map((s) => s.code ?? 'ok')).toEqual(['ok', 'ENOSPC', 'ok', 'ENOSPC']);
    expect(noflush()).toBe(before + 2);
    // Room again: the background retry writes both back, and the data is exact.
    await fsp.unlink(path.join(small, 'filler'));
    await waitFor(() => tfs!.status().cache.dirtyBytes === 0, 10_000);
    expect(tfs.status().cache.dirtyBytes).toBe(0);
    expect(sha(await primaryBytes(path.join(small, 'c.bin')))).toBe(sha(c));
    expect(sha(await primaryBytes(path.join(small, 'e.bin')))).toBe(sha(e));
    await tfs.unmount();
    tfs = undefined;
  });

  it('the per-write security.capability lookup is answered natively once the primary said "none"', async () => {
    tfs = await TwinFs.mount({ primary: t.dirs.primary!, mount: t.dirs.mnt!, writebackMs: 600_000 });
    const f = path.join(t.dirs.mnt!, 'caps.txt');
    // libfuse3 asks the primary from libfuse's thread (native-attrs.h): no set to remember.
    const native = () => tfs!.status().kernelCache?.native?.xattrs;
    const before = tfs.status().noCapabilityPaths;
    const nativeBefore = native();
    // Four write(2)s: the kernel asks before each; the first answer (ENODATA) is remembered.
    await shOk(`printf a > '${f}' && for i in 1 2 3; do printf b >> '${f}'; done`);
    if (nativeBefore !== undefined) expect(native()).toBeGreaterThanOrEqual(nativeBefore + 4);
    else expect(tfs.status().noCapabilityPaths).toBeGreaterThan(before);
    // Any namespace change forgets: a name may now be another file.
    await shOk(`mv '${f}' '${f}.2'`);
    expect(tfs.status().noCapabilityPaths).toBe(0);
    await tfs.unmount();
    tfs = undefined;
  });

  it('a full primary: a large write (not cached) fails at once with ENOSPC and leaves nothing behind', async () => {
    const { m } = await fullPrimary('again', { writebackMs: 600_000 });
    const r = await runSteps([
      { op: 'open', path: `${m}/big.bin`, flags: 'w' },
      { op: 'write', off: 0, len: 512 * 1024, seed: 61 },
      { op: 'close' },
    ]);
    expect(r.map((s) => s.code ?? 'ok')).toEqual(['ok', 'ENOSPC', 'ok']);
    expect(tfs.status().cache.dirtyBytes).toBe(0);
    await tfs.unmount();
    tfs = undefined;
  });
});

describe('concurrent writers through a small cache', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--cache-mb', '1', '--writeback-ms', '100']);
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('disjoint regions of one file, separate appends and a shared O_APPEND log come out exact', async () => {
    const N = 8;
    const region = 1024 * 1024 + 333;
    const m = fx.mnt;
    await shOk(`truncate -s 0 '${m}/shared.bin' && : > '${m}/log'`);
    const runs = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        sh(
          `node '${FIXTURES}/region-writer.mjs' '${m}/shared.bin' ${i} ${region} '${m}/own${i}' '${m}/log'`,
          {
            timeoutMs: 60_000,
          },
        ),
      ),
    );
    const counts = runs.map((r, i) => {
      expect(r.code, `writer ${i}: ${r.stderr}`).toBe(0);
      return Number(r.stdout.trim());
    });
    const shared = Buffer.concat(Array.from({ length: N }, (_, i) => bytes(region, 100 + i)));
    const own = counts.map((n, i) =>
      Buffer.concat(Array.from({ length: n }, (_, seq) => bytes(1 + (seq % 5000), seq + i * 100000))),
    );
    const checkLog = (log: Buffer, where: string) => {
      const total = counts.reduce((a, b) => a + b, 0);
      expect(log.length, where).toBe(total * 1000);
      const next = new Array(N).fill(0);
      for (let off = 0; off < log.length; off += 1000) {
        const m = /^w(\d+) (\d+)\n\.*$/.exec(log.subarray(off, off + 1000).toString('latin1'));
        expect(m, `${where}: record at ${off} is torn`).not.toBeNull();
        const w = Number(m![1]);
        expect(Number(m![2]), `${where}: writer ${w} out of order`).toBe(next[w]++);
      }
    };
    // Through the mount, from another process.
    const through = await runSteps([
      { op: 'read', path: `${m}/shared.bin` },
      ...own.map((_, i) => ({ op: 'read', path: `${m}/own${i}` })),
    ]);
    expect(through[0]).toMatchObject({ ok: true, size: shared.length, sha: sha(shared) });
    for (const [i, b] of own.entries()) {
      expect(through[i + 1], `own${i}`).toMatchObject({ ok: true, size: b.length, sha: sha(b) });
    }
    checkLog(Buffer.from(await shOk(`cat '${m}/log'`), 'latin1'), 'log through the mount');
    // And on the primary once the server has written everything back.
    expect(await fx.srv.stop()).toBe(0);
    const p = fx.primary;
    expect(sha(await fsp.readFile(path.join(p, 'shared.bin')))).toBe(sha(shared));
    for (const [i, b] of own.entries())
      expect(sha(await fsp.readFile(path.join(p, `own${i}`))), `own${i}`).toBe(sha(b));
    checkLog(await fsp.readFile(path.join(p, 'log')), 'log on the primary');
  });
});
