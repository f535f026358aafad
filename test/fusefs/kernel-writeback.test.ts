import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelWriteback } from '../../src/fusefs/kernel-writeback.js';
import { tempDirs } from '../helpers/server.js';

/**
 * The child-process side of prepare's kernel write-back, on a plain directory (coreutils sync
 * works the same on any file system; the FUSE behaviour is in test/control/mmap-prepare.test.ts).
 */
describe('KernelWriteback', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let kw: KernelWriteback;
  beforeAll(async () => {
    t = await tempDirs('vol');
    await fsp.writeFile(path.join(t.dirs.vol!, 'a'), 'a');
    await fsp.writeFile(path.join(t.dirs.vol!, '-b'), 'b');
    kw = new KernelWriteback({ mountPoint: t.dirs.vol!, timeoutMs: 10_000 });
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('runs no child for no names', async () => {
    const r = await kw.sync(() => []);
    expect(r.names).toBe(0);
  });

  it('syncs every name, also one that looks like an option', async () => {
    const r = await kw.sync(() => ['/a', '/-b']);
    expect(r.names).toBe(2);
  });

  it('asks for the names again when one moved between listing and syncing', async () => {
    let round = 0;
    const r = await kw.sync(() => (round++ === 0 ? ['/a', '/gone-now'] : ['/a']));
    expect(round).toBe(2);
    expect(r.names).toBe(1);
  });

  it('a name the kernel says does not exist (unlinked meanwhile) is skipped in the next round', async () => {
    let rounds = 0;
    const r = await kw.sync(() => {
      rounds++;
      return ['/never'];
    });
    // The first round failed on it; the second asked again and had nothing left to write back.
    expect(rounds).toBe(2);
    expect(r.names).toBe(0);
  });

  it('a storm that takes a name away in every round: names written back are not listed again, and it succeeds', async () => {
    let rounds = 0;
    const r = await kw.sync(() => {
      rounds++;
      // Five rounds, each meeting a name unlinked since the last (native unlinks of a storm).
      const names = rounds <= 5 ? ['/a', `/gone${rounds}`] : ['/a'];
      return names;
    });
    expect(rounds).toBe(6);
    expect(r.names).toBe(1);
  });
});
