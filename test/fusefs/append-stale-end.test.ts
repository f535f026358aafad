import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';

// docs/reliability.md, "Handles held open across operations", item 8. A file with names a and b,
// an O_APPEND descriptor through b whose kernel inode knows the size 100,000; a truncate through
// a to 50,000. The append through b comes at the kernel's stale end (100,000) and twinfs writes
// it at the file's end (50,000). twinfs used to invalidate b once that WRITE was answered (its
// pages hold the bytes at the kernel's offset); that invalidation, processed while the GETATTR of
// the next lseek(SEEK_END) was in flight, made the kernel drop the reply, and lseek said 101,000.
// Now nothing is invalidated: the WRITE marks b's size stale in the kernel, and the GETATTR's
// answer (51,000) differs from the kernel's, which drops b's pages. The test-only hooks make the
// crossing happen every time: every invalidation is queued 40 ms late, and a getattr of b waits
// 80 ms and then until both lanes are idle.
const PROGRAM = `
import json, os
out = []
for i in range(3):
    a, b = 'a%d' % i, 'b%d' % i
    fa = os.open(a, os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fa, b'a' * 100000)
    os.link(a, b)
    fb = os.open(b, os.O_WRONLY | os.O_APPEND)
    known = os.fstat(fb).st_size
    os.truncate(a, 50000)
    os.write(fb, b'x' * 1000)
    end = os.lseek(fb, 0, os.SEEK_END)
    rd = os.open(b, os.O_RDONLY)
    data = os.pread(rd, 200000, 0)
    out.append({'known': known, 'end': end, 'read': len(data), 'appended': data[50000:] == b'x' * 1000,
                'fstat': os.fstat(fb).st_size, 'other': os.stat(a).st_size})
    for f in (fa, fb, rd):
        os.close(f)
print(json.dumps(out))
`;

describe('an O_APPEND write at a stale end through another name (libfuse3)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', '3'], {
      TWINFS_TEST_INVALIDATION_DELAY_MS: '40',
      TWINFS_TEST_LANES_IN_GETATTR: '/ap/b0,/ap/b1,/ap/b2',
    });
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('lands at the end, and that name shows the true end at once', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('ap')");
    const seen = JSON.parse(await pyIn(`${fx.mnt}/ap`, PROGRAM, { timeoutMs: 60_000 }));
    const want = { known: 100000, end: 51000, read: 51000, appended: true, fstat: 51000, other: 51000 };
    expect(seen).toEqual([want, want, want]);
  }, 90_000);
});
