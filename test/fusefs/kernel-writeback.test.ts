import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelWriteback } from '../../src/fusefs/kernel-writeback.js';
import { bytesOf } from '../../src/posix/byte-names.js';
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

  it('syncs a name that is not UTF-8 by its bytes (through xargs -0), and fails on one that is not there', async () => {
    // node:fs takes it as a Buffer (bytesOf); sync -d of the UTF-8 form (ef bf bd) would fail ENOENT.
    await fsp.writeFile(bytesOf(path.join(t.dirs.vol!, 'l\udce9')), 'latin-1');
    const r = await kw.sync(() => ['/a', '/l\udce9']);
    expect(r.names).toBe(2);
    await expect(kw.sync(() => ['/never\udce9'])).rejects.toMatchObject({ code: 'ETWIN_KERNEL_WRITEBACK' });
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

  it('names gone in every round (a create/unlink storm): the first list is written back, later opens are not waited for, a renamed file is followed', async () => {
    // A sync that logs the names it is given, then runs the real one.
    const log = path.join(t.base, 'sync.log');
    const fake = path.join(t.base, 'logsync');
    await fsp.writeFile(fake, `#!/bin/sh\necho "$@" >> '${log}'\nexec sync "$@"\n`, { mode: 0o755 });
    const logged = new KernelWriteback({ mountPoint: t.dirs.vol!, timeoutMs: 10_000, syncCommand: fake });
    let round = 0;
    // Each round lists one file the worker has already closed and unlinked (the child finds
    // it gone), and from the second on a file opened since; file 7 (listed first as /-b's old
    // name /old-b) shows up under /-b.
    const r = await logged.sync(() => {
      round++;
      return [
        { path: '/a', ino: 1 },
        { path: `/unlinked-${round}`, ino: 100 + round },
        round === 1 ? { path: '/old-b', ino: 7 } : { path: '/-b', ino: 7 },
      ];
    });
    // Round 1 synced /a (missing: /unlinked-1, /old-b); round 2 synced /-b only (the one file
    // of the first list under a name not yet synced), not /unlinked-2 (opened later).
    expect(round).toBe(2);
    expect(r.names).toBe(2);
    const calls = (await fsp.readFile(log, 'utf8')).trim().split('\n');
    expect(calls).toEqual([
      `-d -- ${path.join(t.dirs.vol!, 'a')} ${path.join(t.dirs.vol!, 'unlinked-1')} ${path.join(t.dirs.vol!, 'old-b')}`,
      `-d -- ${path.join(t.dirs.vol!, '-b')}`,
    ]);
  });

  it('a failure other than a missing name still fails the write-back', async () => {
    // A name longer than NAME_MAX: sync cannot open it, and not because it does not exist.
    const long = `/${'x'.repeat(300)}`;
    await expect(
      kw.sync(() => [
        { path: '/a', ino: 1 },
        { path: long, ino: 2 },
      ]),
    ).rejects.toMatchObject({
      code: 'ETWIN_KERNEL_WRITEBACK',
    });
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
