import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, startControlFixture, status } from '../control/control-fixture.js';
import { pyIn } from '../helpers/posix.js';

// Cause 2 of the two-name fsx finding (docs/reliability.md). On the libfuse3 path every name of
// a hard-linked file has a kernel inode of its own. A write(2) through `a` keeps its page locked
// until its WRITE is answered, and that WRITE is answered once `b` is invalidated. twinfs's own
// write-backs invalidate every name, `a` too, and nobody waits for those. When such an
// invalidation of `a` reached the kernel while a write(2) through `a` was in flight, it waited
// for that page. With one helper thread the WRITE's invalidation of `b` was queued behind it,
// so the WRITE waited until the bound (2 s) ran out. It was then answered while `b` still had
// its old size and pages (`waitsBounded` counts such answers). Invalidations nobody waits for
// now go to a lane (thread) of their own.
//
// Write-backs of a file with several names no longer invalidate its names by default (they
// answer the attributes shown before, KernelNames.recordedAttrs), so the first case runs with
// TWINFS_WRITEBACK_LINK_ATTRS=invalidate, the old behaviour, the one way to keep invalidations
// nobody waits for coming at a name a write(2) is going through. The lane split still carries
// those that remain by default (a failed write-back's, a write-back that could record nothing,
// single-name files', listings, a moved append's). The second case checks the default: the same
// appends and write-backs send nothing on the background lane and every write-back recorded.
//
// The window is the time between the write-back's decision to invalidate `a` and the kernel
// taking that invalidation. Under load it is now and then long enough (fsx --link). Here it is
// held open on purpose with the test-only TWINFS_TEST_INVALIDATION_DELAY_MS: every batch is
// queued that much later (a helper thread slow to run cannot be provoked on purpose).
// A write-back every 20 ms keeps such invalidations coming while the appends run.
const DELAY_MS = 50;
const APPENDS = 12;

// Appends through `a`; after each one, the size and the new bytes as seen through a descriptor
// of `b` kept open, and whether the append took longer than the bound.
const PROGRAM = `
import json, os, time
with open('a', 'wb') as f:
    f.write(b'x' * 100)
os.link('a', 'b')
fb = os.open('b', os.O_RDONLY)
os.fstat(fb)
os.pread(fb, 100, 0)
fa = os.open('a', os.O_WRONLY | os.O_APPEND)
size = 100
stale = []
bounded = 0
for i in range(${APPENDS}):
    t = time.monotonic()
    os.write(fa, bytes([65 + i]) * 1000)
    if time.monotonic() - t >= 2:
        bounded += 1
    size += 1000
    seen = os.fstat(fb).st_size
    data = os.pread(fb, 1000, size - 1000)
    if seen != size or data != bytes([65 + i]) * 1000:
        stale.append([i, seen, len(data)])
os.close(fa)
os.close(fb)
print(json.dumps({'stale': stale, 'bounded': bounded}))
`;

describe('invalidations nobody waits for, on a lane of their own (libfuse3, write-backs invalidating)', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  beforeAll(async () => {
    fx = await startControlFixture({
      args: ['--fuse', '3', '--writeback-ms', '20'],
      env: {
        ...process.env,
        TWINFS_TEST_INVALIDATION_DELAY_MS: String(DELAY_MS),
        TWINFS_WRITEBACK_LINK_ATTRS: 'invalidate',
      },
    });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('appends through one name while write-backs invalidate it: no WRITE waits out the bound, the other name is current after each', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('ln')");
    // On the old code every append but the first waited out the bound: 12 × 2 s.
    const seen = JSON.parse(await pyIn(`${fx.mnt}/ln`, PROGRAM, { timeoutMs: 120_000 }));
    const k = (await status(c)).fs.kernelCache;
    // appendsOffEnd: every append through `a` started at the file's end as twinfs knows it.
    expect({ ...seen, waitsBounded: k.waitsBounded, appendsOffEnd: k.appendsOffEnd }).toEqual({
      stale: [],
      bounded: 0,
      waitsBounded: 0,
      appendsOffEnd: 0,
    });
    // The write-backs' invalidations were sent (on the background lane): the case was exercised.
    expect(k.lanes.background.sent).toBeGreaterThan(0);
  }, 150_000);
});

describe('the same appends and write-backs by default (libfuse3): write-backs invalidate no name', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  beforeAll(async () => {
    const env = { ...process.env, TWINFS_TEST_INVALIDATION_DELAY_MS: String(DELAY_MS) };
    delete env.TWINFS_WRITEBACK_LINK_ATTRS;
    fx = await startControlFixture({ args: ['--fuse', '3', '--writeback-ms', '20'], env });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('no invalidation on the background lane, the other name current after each append', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('ln')");
    const seen = JSON.parse(await pyIn(`${fx.mnt}/ln`, PROGRAM, { timeoutMs: 120_000 }));
    const k = (await status(c)).fs.kernelCache;
    expect({ ...seen, waitsBounded: k.waitsBounded, background: k.lanes.background.sent }).toEqual({
      stale: [],
      bounded: 0,
      waitsBounded: 0,
      background: 0,
    });
    // The write-backs of the file ran (every 20 ms) without invalidating: recorded the attributes
    // shown, or found that no one had taken any since the last WRITE (which one is timing).
    expect((k.writeBacksRecorded ?? 0) + (k.writeBacksRecordedUnseen ?? 0)).toBeGreaterThan(0);
  }, 150_000);
});
