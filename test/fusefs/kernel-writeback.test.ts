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

  it('fails with ETWIN_KERNEL_WRITEBACK, naming the cause, when a name stays unsyncable', async () => {
    let rounds = 0;
    const err: any = await kw
      .sync(() => {
        rounds++;
        return ['/never'];
      })
      .catch((e) => e);
    expect(err?.code).toBe('ETWIN_KERNEL_WRITEBACK');
    expect(err.message).toMatch(/No such file or directory/);
    expect(rounds).toBe(3);
  });
});
