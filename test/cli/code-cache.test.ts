import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { ROOT, tempDirs } from '../helpers/server.js';

/**
 * The V8 code cache of the CLI's bundle (src/cli/twinfs.cts, docs/architecture.md "The command's
 * start"): what became of every bundle file's cache is printed with TWINFS_DEBUG_CODE_CACHE=1,
 * and the cache files are looked at in TWINFS_CACHE_DIR/code.
 */
const VERSION = JSON.parse(await fsp.readFile(path.join(ROOT, 'package.json'), 'utf8')).version as string;

/** `twinfs --version` with the cache in dir; its run and the cache states it reported for main.cjs. */
async function version(dir: string) {
  const r = await runCli(['--version'], {
    env: { ...process.env, TWINFS_CACHE_DIR: dir, TWINFS_DEBUG_CODE_CACHE: '1' },
  });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout.trim()).toBe(VERSION);
  const states = [...r.stderr.matchAll(/^twinfs: code cache main\.cjs: (.*)$/gm)].map((m) => m[1]);
  return { r, states };
}

/** The one cache file in dir whose name starts with prefix (a bundle file's name). */
async function cacheFile(dir: string, prefix: string): Promise<string> {
  const files = (await fsp.readdir(path.join(dir, 'code'))).filter((f) => f.startsWith(prefix));
  expect(files, `cache files ${prefix}*`).toHaveLength(1);
  return path.join(dir, 'code', files[0]!);
}

/** A cache file's parts: header (magic, CRC-32), key, V8's data. */
const MAGIC_LEN = 'twinfs-code-cache-2\n'.length;
function parts(buf: Buffer) {
  const body = MAGIC_LEN + 4;
  const keyLen = buf.readUInt32LE(body);
  return {
    magic: buf.subarray(0, MAGIC_LEN),
    key: buf.subarray(body + 4, body + 4 + keyLen),
    data: buf.subarray(body + 4 + keyLen),
  };
}

describe('the code cache of the CLI bundle', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('fresh', 'broken', 'rejected', 'pruned', 'elsewhere');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('the first start writes the cache, the next compiles from it', async () => {
    const dir = t.dirs.fresh!;
    expect((await version(dir)).states).toEqual(['missing', 'written']);
    const file = await cacheFile(dir, 'main.cjs.');
    const written = await fsp.readFile(file);
    expect(parts(written).data.length).toBeGreaterThan(1000);
    expect((await version(dir)).states).toEqual(['used']);
    // Used, not written again.
    expect((await fsp.readFile(file)).equals(written)).toBe(true);
  });

  it('TWINFS_CACHE_DIR=off: no cache, read or written', async () => {
    const r = await runCli(['--version'], {
      env: { ...process.env, TWINFS_CACHE_DIR: 'off', TWINFS_DEBUG_CODE_CACHE: '1' },
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
    expect(r.stderr).not.toMatch(/code cache/);
  });

  it('a corrupted, truncated or foreign cache file is not given to V8 and is replaced', async () => {
    const dir = t.dirs.broken!;
    await version(dir);
    const file = await cacheFile(dir, 'main.cjs.');
    const good = await fsp.readFile(file);
    // Random bytes, a truncated file, and a good file with one bit of V8's data flipped.
    const flipped = Buffer.from(good);
    flipped[flipped.length - 100]! ^= 1;
    for (const bad of [randomBytes(good.length), good.subarray(0, 10), flipped]) {
      await fsp.writeFile(file, bad);
      expect((await version(dir)).states).toEqual(['foreign', 'written']);
      expect(parts(await fsp.readFile(file)).magic.equals(parts(good).magic)).toBe(true);
      expect((await version(dir)).states).toEqual(['used']);
    }
  });

  it('data V8 rejects (another script’s, under this file’s key) is replaced, and the command runs', async () => {
    const dir = t.dirs.rejected!;
    await version(dir);
    const main = await cacheFile(dir, 'main.cjs.');
    const other = await cacheFile(dir, 'spec-');
    const own = parts(await fsp.readFile(main));
    const foreignData = parts(await fsp.readFile(other)).data;
    // A well-formed file of main.cjs's key (magic, checksum) whose data is spec's.
    const len = Buffer.alloc(4);
    len.writeUInt32LE(own.key.length);
    const rest = Buffer.concat([len, own.key, foreignData]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32LE(crc32(rest));
    await fsp.writeFile(main, Buffer.concat([own.magic, sum, rest]));
    expect((await version(dir)).states).toEqual(['rejected', 'written']);
    expect(parts(await fsp.readFile(main)).data.equals(foreignData)).toBe(false);
    expect((await version(dir)).states).toEqual(['used']);
  });

  it('a start that writes the cache removes the caches of files its bundle no longer has, not those of another bundle', async () => {
    const dir = t.dirs.pruned!;
    await version(dir);
    const main = await cacheFile(dir, 'main.cjs.');
    // What an earlier build left: a chunk this bundle has no more, cached under its own path's
    // hash; and a chunk of the same name of a bundle installed elsewhere (another hash).
    const bundleDir = path.join(ROOT, 'dist', 'cli-bundle');
    const gone = `old-chunk-AAAAAAAA.cjs.${createHash('sha1').update(path.join(bundleDir, 'old-chunk-AAAAAAAA.cjs')).digest('hex').slice(0, 16)}`;
    const elsewhere = `old-chunk-AAAAAAAA.cjs.${'0'.repeat(16)}`;
    for (const f of [gone, elsewhere]) await fsp.writeFile(path.join(dir, 'code', f), 'x');
    await fsp.rm(main);
    const { r } = await version(dir);
    expect(r.stderr).toMatch(/code cache old-chunk-AAAAAAAA\.cjs: removed/);
    const left = await fsp.readdir(path.join(dir, 'code'));
    expect(left).not.toContain(gone);
    expect(left).toContain(elsewhere);
  });

  it("a start that writes the cache removes the caches of another bundle's files that are gone, keeps those whose file is there, and removes a dead write's temporary file", async () => {
    const dir = t.dirs.elsewhere!;
    await version(dir);
    const main = await cacheFile(dir, 'main.cjs.');
    const own = parts(await fsp.readFile(main));
    // A cache file as a bundle elsewhere writes it: our format, its key naming its own file.
    const cacheOf = async (source: string) => {
      const key = Buffer.from(`${process.version} ${process.arch} ${source} 123 456.5`);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(key.length);
      const rest = Buffer.concat([len, key, own.data]);
      const sum = Buffer.alloc(4);
      sum.writeUInt32LE(crc32(rest));
      const name = `${path.basename(source)}.${createHash('sha1').update(source).digest('hex').slice(0, 16)}`;
      await fsp.writeFile(path.join(dir, 'code', name), Buffer.concat([own.magic, sum, rest]));
      return name;
    };
    // A copy that was removed (a benchmark's, an npx run's), one that is still there (its path
    // with a space), and a file of another format under a matching name (another version's).
    const removedCopy = await cacheOf(path.join(t.base, 'removed copy', 'dist', 'cli-bundle', 'main.cjs'));
    const liveFile = path.join(t.base, 'live copy', 'dist', 'cli-bundle', 'main.cjs');
    await fsp.mkdir(path.dirname(liveFile), { recursive: true });
    await fsp.writeFile(liveFile, '');
    const liveCopy = await cacheOf(liveFile);
    const otherFormat = `main.cjs.${'1'.repeat(16)}`;
    await fsp.writeFile(path.join(dir, 'code', otherFormat), 'twinfs-code-cache-9\nanything');
    // Temporary files of writes: one a dead process left an hour ago, one being written now.
    const deadTmp = `main.cjs.${'2'.repeat(16)}.999999.tmp`;
    const freshTmp = `main.cjs.${'3'.repeat(16)}.999998.tmp`;
    for (const f of [deadTmp, freshTmp]) await fsp.writeFile(path.join(dir, 'code', f), 'x');
    const hourAgo = new Date(Date.now() - 3600_000);
    await fsp.utimes(path.join(dir, 'code', deadTmp), hourAgo, hourAgo);
    // A start that finds its cache writes nothing and removes nothing.
    expect((await version(dir)).states).toEqual(['used']);
    expect(await fsp.readdir(path.join(dir, 'code'))).toContain(removedCopy);
    // A start that writes (its main.cjs cache gone) prunes.
    await fsp.rm(main);
    const { r } = await version(dir);
    expect(r.stderr).toContain(
      `its bundle file ${path.join(t.base, 'removed copy', 'dist', 'cli-bundle', 'main.cjs')} is gone`,
    );
    const left = await fsp.readdir(path.join(dir, 'code'));
    expect(left).not.toContain(removedCopy);
    expect(left).not.toContain(deadTmp);
    expect(left).toEqual(expect.arrayContaining([liveCopy, otherFormat, freshTmp, path.basename(main)]));
  });

  it('a cache directory that cannot be written fails nothing', async () => {
    const notADir = path.join(t.base, 'a-file');
    await fsp.writeFile(notADir, 'x');
    const { states } = await version(notADir);
    expect(states[0]).toBe('missing');
    expect(states[1]).toMatch(/^not written \(/);
  });
});
