import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RepoKeys } from '../../src/repository/crypto.js';
import {
  type CacheHeader,
  readIndexCache,
  UNUSED_CACHE_MS,
  writeIndexCache,
} from '../../src/repository/index-cache.js';
import { tempDirs } from '../helpers/server.js';

/**
 * The peer's index caches (src/repository/index-cache.ts) are kept per repository in one
 * directory: a cache this machine has not used for UNUSED_CACHE_MS, and a write's temporary file
 * a dead process left, are removed when a cache is written; a cache taken is touched, so it is
 * kept however old its content.
 */
describe('index caches: the unused ones are removed', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('cache');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  const keys = RepoKeys.plain();
  const header = (repo: string): CacheHeader => ({ repo, names: [], packs: [], damaged: [], rows: 0 });
  const id = (c: string) => c.repeat(32);
  const ago = async (file: string, ms: number) => {
    const when = new Date(Date.now() - ms);
    await fsp.utimes(file, when, when);
  };
  const DAY = 24 * 3600 * 1000;

  it("a write removes other repositories' caches unused for 30 days and dead writes' temporary files, and keeps the rest", async () => {
    const dir = path.join(t.dirs.cache!, 'index');
    await fsp.mkdir(dir, { recursive: true });
    const f = (name: string) => path.join(dir, name);
    for (const name of [
      id('b'),
      id('c'),
      `${id('d')}.4242.0123abcd.tmp`,
      `${id('e')}.4243.0123abcd.tmp`,
      'notes.txt',
    ])
      await fsp.writeFile(f(name), 'x');
    await ago(f(id('b')), UNUSED_CACHE_MS + DAY); // unused for 31 days: removed
    await ago(f(id('c')), UNUSED_CACHE_MS - DAY); // 29 days: kept
    await ago(f(`${id('d')}.4242.0123abcd.tmp`), 2 * 3600 * 1000); // a dead write's: removed
    await ago(f('notes.txt'), UNUSED_CACHE_MS + DAY); // not a cache's name: kept
    expect(await writeIndexCache(f(id('a')), keys, header(id('a')), Buffer.alloc(0))).toBe(true);
    expect((await fsp.readdir(dir)).sort()).toEqual(
      [id('a'), id('c'), `${id('e')}.4243.0123abcd.tmp`, 'notes.txt'].sort(),
    );
  });

  it('a cache taken is touched: an old one in use survives the next prune', async () => {
    const dir = path.join(t.dirs.cache!, 'index2');
    const f = (name: string) => path.join(dir, name);
    expect(await writeIndexCache(f(id('1')), keys, header(id('1')), Buffer.alloc(0))).toBe(true);
    await ago(f(id('1')), UNUSED_CACHE_MS + DAY);
    expect((await readIndexCache(f(id('1')), id('1'), keys)).state).toBe('used');
    expect(Date.now() - (await fsp.stat(f(id('1')))).mtimeMs).toBeLessThan(DAY);
    // Another repository's write prunes: the one just taken stays; one not taken goes.
    expect(await writeIndexCache(f(id('3')), keys, header(id('3')), Buffer.alloc(0))).toBe(true);
    await ago(f(id('3')), UNUSED_CACHE_MS + DAY);
    expect(await writeIndexCache(f(id('2')), keys, header(id('2')), Buffer.alloc(0))).toBe(true);
    expect((await fsp.readdir(dir)).sort()).toEqual([id('1'), id('2')]);
  });
});
