import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';

// The read side of the two-name fsx finding (docs/reliability.md). On the libfuse3 path every
// name of a hard-linked file has a kernel inode of its own. After an append through `a`, `b`'s
// kernel inode is invalidated (the WRITE waits for it) but keeps its old i_size until a GETATTR
// of `b` is taken. The kernel drops a GETATTR reply when an invalidation of the same inode is
// processed while that GETATTR is in flight (attr_version); a read through `b` past its old size
// then goes on with the old size: 0 bytes, or SIGBUS for a mapping. twinfs's cache write-back
// used to invalidate every name of the file without waiting (KernelNames.changedBehind, now only
// with TWINFS_WRITEBACK_LINK_ATTRS=invalidate) although it moves neither size nor data. By
// default it invalidates no name of a file with several names and getattr answers the ctime,
// mtime and st_blocks shown before it (KernelNames.recordedAttrs; link-attrs.test.ts checks
// that every name stays current).
//
// The crossing is made on purpose with the test-only TWINFS_TEST_WRITEBACK_IN_GETATTR=/wg/b: a
// getattr of /wg/b first writes the cache back and waits until that write-back's invalidation has
// been processed, then answers (under load the write-back timer does the same by chance;
// bench/two-name-read.mjs: 41-59 short reads in 1,500 rounds with write-backs every 5 ms).
const PROGRAM = `
import json, os
with open('a', 'wb') as f:
    f.write(b'a' * 4096)
os.link('a', 'b')
rb = os.open('b', os.O_RDONLY)
first = len(os.pread(rb, 8192, 0))
fa = os.open('a', os.O_WRONLY | os.O_APPEND)
os.write(fa, b'x' * 4096)
os.close(fa)
got = os.pread(rb, 8192, 4096)
size = os.fstat(rb).st_size
again = os.pread(rb, 8192, 4096)
os.close(rb)
print(json.dumps({'first': first, 'got': len(got), 'same': got == b'x' * 4096, 'fstat': size, 'again': len(again)}))
`;

// The same through a mapping: Python's mmap takes the length from fstat (a GETATTR of `b`, the
// crossing one), and an access past `b`'s old i_size faults. Run in a child so a SIGBUS is
// reported as such.
const MMAP_PROGRAM = `
import json, mmap, os, signal, subprocess, sys
child = """
import mmap, os
with open('c', 'wb') as f:
    f.write(b'a' * 4096)
os.link('c', 'd')
rd = os.open('d', os.O_RDONLY)
os.pread(rd, 4096, 0)
fc = os.open('c', os.O_WRONLY | os.O_APPEND)
os.write(fc, b'y' * 4096)
os.close(fc)
m = mmap.mmap(rd, 0, prot=mmap.PROT_READ)
print(len(m), m[4096:8192] == b'y' * 4096)
"""
r = subprocess.run([sys.executable, '-c', child], capture_output=True, text=True, timeout=30)
print(json.dumps({'rc': r.returncode, 'sigbus': r.returncode == -signal.SIGBUS, 'out': r.stdout.strip()}))
`;

describe('a write-back while a GETATTR of another name is in flight (libfuse3)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', '3', '--writeback-ms', '600000'], {
      ...process.env,
      TWINFS_TEST_WRITEBACK_IN_GETATTR: '/wg/b,/wg/d',
    });
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('a read through the other name after an append sees the appended bytes', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('wg')");
    const seen = JSON.parse(await pyIn(`${fx.mnt}/wg`, PROGRAM, { timeoutMs: 60_000 }));
    // The old code (every name invalidated by the write-back, TWINFS_WRITEBACK_LINK_ATTRS=invalidate):
    // got 0, while fstat (which returns the dropped reply's attributes) said 8192 and a second
    // pread read the 4096 bytes.
    expect(seen).toEqual({ first: 4096, got: 4096, same: true, fstat: 8192, again: 4096 });
  }, 90_000);

  it('a mapping of the other name after an append reads the appended bytes', async () => {
    const seen = JSON.parse(await pyIn(`${fx.mnt}/wg`, MMAP_PROGRAM, { timeoutMs: 60_000 }));
    // The old code: killed by SIGBUS (rc -7), the mapping 8192 bytes long, the kernel's i_size 4096.
    expect(seen).toEqual({ rc: 0, sigbus: false, out: '8192 True' });
  }, 90_000);
});
