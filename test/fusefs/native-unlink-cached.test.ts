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
} from '../control/control-fixture.js';
import { pyIn } from '../helpers/posix.js';

/**
 * Unlinks of files whose data is still in the write-back cache are answered in libfuse's
 * threads too (native-unlink.h `cached`); the cache drops that data when the unlink reaches JS.
 * What must hold: no write-back reports the gone name afterwards (the mirror would get a file,
 * or another file's bytes under a re-created name), nothing of it reaches the primary under its
 * old name again, and a split still sees every unlink before it.
 */

type UnlinkStats = { answered: number; fallbacks: number; busy: number; cached: number; enabled: boolean };

/**
 * One worker of the storm (argv: worker, rounds, seed). All workers use the same six names in
 * s/. A file is only ever made with O_EXCL and written by the worker that made it, in two
 * writes, never truncated: whatever name it ends under, its bytes are LINES copies of one line.
 * Renames and unlinks of names other workers made are the point (ENOENT/EEXIST are expected).
 */
const STORM = `
import os, sys, random, errno
w, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed * 7 + int(w))
LINES = 64
os.makedirs('s', exist_ok=True)
def name():
    return 's/n%d' % rnd.randrange(6)
def ok(e):
    return e.errno in (errno.ENOENT, errno.EEXIST)
for r in range(rounds):
    op = rnd.randrange(10)
    try:
        if op < 5:
            p = name()
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            line = b'%s:%d:%d\\n' % (w.encode(), r, rnd.randrange(1000000))
            os.write(fd, line * (LINES // 2))
            os.write(fd, line * (LINES // 2))
            if op == 4:
                os.fsync(fd)
            os.close(fd)
            if rnd.randrange(2) == 0:
                os.unlink(p)
        elif op < 8:
            os.unlink(name())
        else:
            os.rename(name(), name())
    except OSError as e:
        if not ok(e):
            raise
`;

describe("unlink of a cached file answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const unlinks = async () => (await status(c)).fs.kernelCache.nativeUnlink as UnlinkStats;
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);

  beforeAll(async () => {
    // Write-backs 50 ms after a write: they run beside the unlinks of the files they write.
    // Writes through opens of files at rest are done in libfuse's threads since level 29 and never
    // cached; this test is about data JS's cache holds, so its writes go to JS (native-open-writes.test.ts
    // covers the native path).
    fx = await startControlFixture({
      args: ['--fuse', '3', '--writeback-ms', '50'],
      env: { TWINFS_NATIVE_OPEN: 'open' },
    });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('a file with cached data is unlinked natively and none of it comes back', async () => {
    const before = await unlinks();
    expect(before.enabled).toBe(true);
    await py(
      // Each file made first: the cache takes writes to a file JS knows (a new file's go to the
      // primary in libfuse's thread, see native-create.test.ts).
      "os.mkdir('c')\nfor i in range(40):\n  p = 'c/f%d' % i\n  os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))\n  fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b'c' * 5000); os.close(fd)\n  os.unlink(p)",
    );
    const after = await unlinks();
    // Written and unlinked within a millisecond or so: still cached when unlinked.
    expect(after.cached - before.cached).toBeGreaterThan(0);
    expect(after.answered - before.answered).toBe(40);
    await c.request('flush');
    await sleep(300);
    expect(await fsp.readdir(path.join(fx.primary, 'c'))).toEqual([]);
    const p = await c.prepare({ subtree: '/c' });
    try {
      expect(await fsp.readdir(path.join(p.mirrorRoot, 'c'))).toEqual([]);
    } finally {
      await c.release(p.backupId);
    }
    const cache = (await status(c)).fs.cache as { dirtyBytes: number };
    expect(cache.dirtyBytes).toBe(0);
  });

  it('create/write/rename/unlink storms on shared names during prepares: mirror equals primary, no bytes of a gone file anywhere', async () => {
    const WORKERS = 4;
    const ROUNDS = 3000;
    const { since, before, after } = await stormFromBase(
      fx,
      c,
      { script: STORM, workers: WORKERS, args: [String(ROUNDS), '1'], pauseMs: 30 },
      unlinks,
    );
    expect(after.cached - before.cached).toBeGreaterThan(0);
    expect(after.busy).toBe(0);

    await expectMirrorClean(c);
    // Every file left is whole and one writer's: 64 copies of one line.
    const names = await fsp.readdir(path.join(fx.primary, 's'));
    for (const n of names) {
      const lines = (await fsp.readFile(path.join(fx.primary, 's', n), 'utf8')).split('\n');
      expect(lines.pop()).toBe('');
      expect(lines.length).toBe(64);
      expect(new Set(lines).size).toBe(1);
    }
    // A split taken now holds exactly the primary's names.
    const last = await c.prepare({ volume: true }, { since: since });
    try {
      expect((await fsp.readdir(path.join(last.mirrorRoot, 's'))).sort()).toEqual([...names].sort());
      for (let i = 0; i < 6; i++) {
        const p = `/s/n${i}`;
        if (existsSync(path.join(fx.primary, p))) expect(last.changes!.changed).toContain(p);
        else expect(last.changes!.deleted).toContain(p);
      }
    } finally {
      await c.release(last.backupId);
    }
  });
});
