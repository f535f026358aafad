import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';

// Pages of a shared writable mmap reach twinfs as page write-backs (WRITEs with the write-page
// flag) at close(2) or msync(MS_SYNC), through the name the file was mapped under. On the
// libfuse3 path every other name of the file has a kernel inode of its own, with its own pages,
// which twinfs invalidates after the change. A page write-back is answered without waiting for
// that (it may be the kernel laundering a page for an invalidation the helper thread is sending),
// so the close or msync that caused it must wait instead: otherwise the program, once close()
// returned, reads the other name's old pages (the two-name fsx finding, docs/reliability.md).
//
// The window is the time the helper thread takes to send the invalidation: on a loaded machine
// now and then long enough (fsx --link under load), here held open on purpose with the test-only
// TWINFS_TEST_INVALIDATION_DELAY_MS (a slow helper thread cannot be provoked deterministically).
const DELAY_MS = 400;

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture(['--fuse', '3'], {
    ...process.env,
    TWINFS_TEST_INVALIDATION_DELAY_MS: String(DELAY_MS),
  });
});
afterAll(async () => {
  await fx?.close();
});

// One program, as another process would run it. `b`'s pages are cached first (read through a
// descriptor kept open), then each step changes the file through an mmap of `a` and looks through
// `b` at once (well inside the delay).
const PROGRAM = `
import json, mmap, os
SIZE = 65536
with open('a', 'wb') as f:
    f.write(bytes(SIZE))
os.link('a', 'b')
fb = os.open('b', os.O_RDONLY)
assert os.pread(fb, SIZE, 0) == bytes(SIZE)

def mmap_write(name, off, data, sync, check=None):
    fd = os.open(name, os.O_RDWR)
    m = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[off:off + len(data)] = data
    seen = None
    if sync:
        m.flush()  # msync(MS_SYNC)
        seen = check()
    m.close()
    os.close(fd)
    return seen

out = {}
# close(2) after munmap: the pages go back, then the other name is read.
mmap_write('a', 100, b'A' * 16, False)
out['close'] = os.pread(fb, 16, 100).hex()
# msync(MS_SYNC) while still mapped.
out['msync'] = mmap_write('a', 4096 + 100, b'B' * 16, True, lambda: os.pread(fb, 16, 4096 + 100).hex())
os.close(fb)
print(json.dumps(out))
`;

describe('page write-backs through one name of a hard link (libfuse3)', () => {
  it('close and msync return once the other names dropped their old pages', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('pw')");
    const seen = JSON.parse(await pyIn(`${fx.mnt}/pw`, PROGRAM, { timeoutMs: 60_000 }));
    const hex = (c: string) => Buffer.alloc(16, c).toString('hex');
    expect(seen).toEqual({ close: hex('A'), msync: hex('B') });
  });
});
