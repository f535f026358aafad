import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorClean,
  sleep,
  startControlFixture,
  status,
  stormFromBase,
  waitUntil,
} from '../control/control-fixture.js';
import { pyIn, shIn } from '../helpers/posix.js';

/**
 * The libfuse3 path answers UNLINK in libfuse's threads when nothing twinfs holds is involved
 * (native-unlink.h in the fuse-native patch) and hands the change to JS afterwards. The mirror,
 * the change record and a split must still see every unlink in the primary's order: before a
 * create of the same name that followed it, and before a split that followed it. A freeze must
 * still hold an unlink of a frozen file.
 */

type UnlinkStats = { answered: number; fallbacks: number; busy: number; enabled: boolean };

/** Create/unlink storm of one worker in directory w<N> (argv: N, rounds). */
const STORM = `
import os, sys
w, rounds = sys.argv[1], int(sys.argv[2])
d = 'w' + w
os.makedirs(d, exist_ok=True)
for r in range(rounds):
    for i in range(8):
        p = '%s/n%d' % (d, i)
        if os.path.exists(p):
            os.unlink(p)
        # An empty file: nothing cached, its unlink is answered natively.
        open(p, 'wb').close()
        os.unlink(p)
        # Data made durable (nothing left in the cache), unlinked, created again.
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, (b'%d %d %s\\n' % (r, i, w.encode())) * 50)
        os.fsync(fd)
        os.close(fd)
        os.unlink(p)
        if i % 2 == 0 and r == rounds - 1:
            # Created again, empty (no later write whose copy would heal a lost entry).
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
        elif i % 2 == 0:
            with open(p, 'wb') as f:
                f.write(b'round %d of %s\\n' % (r, w.encode()))
`;

describe("unlink answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const unlinks = async () => (await status(c)).fs.kernelCache.nativeUnlink as UnlinkStats;
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);

  beforeAll(async () => {
    fx = await startControlFixture({ args: ['--fuse', '3'] });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('unlinks done natively just before a prepare are in its split and its change answer', async () => {
    await py(
      "os.mkdir('b')\nfor i in range(20):\n  fd = os.open('b/f%d' % i, os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b'x' * 3000); os.fsync(fd); os.close(fd)",
    );
    const first = await c.prepare({ subtree: '/b' });
    expect(first.items.length).toBe(21);
    await c.release(first.backupId);
    const before = await unlinks();
    expect(before.enabled).toBe(true);
    await py("for i in range(20): os.unlink('b/f%d' % i)");
    const p = await c.prepare({ subtree: '/b' }, { since: first.generation });
    try {
      // Answered in libfuse's thread (nothing of them was cached any more).
      expect((await unlinks()).answered - before.answered).toBe(20);
      expect(await fsp.readdir(path.join(p.mirrorRoot, 'b'))).toEqual([]);
      expect([...(p.changes?.deleted ?? [])].sort()).toEqual(
        Array.from({ length: 20 }, (_, i) => `/b/f${i}`).sort(),
      );
    } finally {
      await c.release(p.backupId);
    }
  });

  it('an unlink of a frozen file still waits for the thaw', async () => {
    await py(
      "fd = os.open('fz', os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b'z' * 100); os.fsync(fd); os.close(fd)",
    );
    // In another directory: an unlink holds its directory's lock in the kernel while it waits,
    // and so would a lookup of `o` in it once the kernel dropped that entry (a cache drop by
    // anything on the machine): the other unlink runs in a shell whose working directory holds
    // `o` from before the freeze, and starts on a marker outside the mount.
    await py("os.mkdir('o')\nopen('o/other', 'wb').close()");
    const ready = path.join(fx.base, 'o-ready');
    const go = path.join(fx.base, 'o-go');
    const other = shIn(
      path.join(fx.mnt, 'o'),
      `touch '${ready}'; while [ ! -e '${go}' ]; do sleep 0.05; done; rm other`,
      { timeoutMs: 60_000 },
    );
    await waitUntil(async () => existsSync(ready), 10_000, 'the shell in o started');
    const f: any = await c.request('freeze', { selector: { paths: ['/fz'] }, timeoutMs: 60_000 });
    const rm = shIn(fx.mnt, 'rm fz', { timeoutMs: 30_000 });
    try {
      await sleep(1000);
      expect(existsSync(path.join(fx.primary, 'fz'))).toBe(true);
      expect((await unlinks()).enabled).toBe(false);
      // Other unlinks go on meanwhile (through JS).
      await fsp.writeFile(go, '');
      expect((await other).code).toBe(0);
      expect(existsSync(path.join(fx.primary, 'o/other'))).toBe(false);
      expect(existsSync(path.join(fx.primary, 'fz'))).toBe(true);
    } finally {
      await c.request('thaw', { freezeId: f.freezeId });
    }
    expect((await rm).code).toBe(0);
    expect(existsSync(path.join(fx.primary, 'fz'))).toBe(false);
    await waitUntil(async () => (await unlinks()).enabled, 5000, 'native unlinks back on');
  });

  it('create/unlink storms from child processes during prepare loops: mirror and change record follow the primary', async () => {
    const WORKERS = 3;
    const ROUNDS = 25;
    const { since, before, after } = await stormFromBase(
      fx,
      c,
      { script: STORM, workers: WORKERS, args: [String(ROUNDS)], pauseMs: 20 },
      unlinks,
    );
    // Many of the storm's ~1,490 unlinks were answered natively, between prepares. How many
    // depends on how much of the storm's time prepares hold the volume (native unlinks are off
    // while one inhibits), which grows with the load: 255 and 290 at load 17-20.
    expect(after.answered - before.answered).toBeGreaterThan(WORKERS * ROUNDS);
    expect(after.busy).toBe(0);

    // The change record: names gone at the end are deleted, names there are changed.
    const last = await c.prepare({ volume: true }, { since: since });
    try {
      const ch = last.changes!;
      expect(ch.unknown).toBeUndefined();
      for (let w = 0; w < WORKERS; w++)
        for (let i = 0; i < 8; i++) {
          const p = `/w${w}/n${i}`;
          if (i % 2 === 0) {
            expect(ch.changed).toContain(p);
            const st = await fsp.lstat(path.join(last.mirrorRoot, p));
            expect([st.size, st.mode & 0o777]).toEqual([0, 0o600]);
          } else {
            expect(ch.deleted).toContain(p);
            expect(existsSync(path.join(last.mirrorRoot, p))).toBe(false);
          }
        }
    } finally {
      await c.release(last.backupId);
    }
    // The mirror equals the primary.
    await expectMirrorClean(c);
  });
});
