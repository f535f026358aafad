import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';

// Issue 12 on the libfuse3 path: every name of a hard-linked file has a kernel inode of its own,
// each caching attributes for 60 s. After every kind of change through one name, and after every
// kind of write-back of the cached data (fsync, the write-back timer, mmap pages at close, a
// file no one stat'ed since its write), each name's attributes as a plain stat sees them (the
// kernel's cache, taken before the step by a stat of every name) must equal what twinfs answers
// now (statx with AT_STATX_FORCE_SYNC, which always asks), and all names must agree. atime is
// left out: a read through one name moves it on the primary without a change (relatime).
//
// A write-back moves the primary's ctime and st_blocks. By default twinfs answers the ones it
// showed before (KernelNames.recordedAttrs) and invalidates no name, so no invalidation can cross
// a GETATTR (writeback-getattr.test.ts). With TWINFS_WRITEBACK_LINK_ATTRS=keep (nothing
// invalidated, nothing recorded) the write-back steps fail here: the names keep the old ctime.
const PROGRAM = `
import ctypes, json, mmap, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7ff

def sx(path, flags):
    buf = ctypes.create_string_buffer(256)
    if libc.statx(AT_FDCWD, path.encode(), flags | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    b = buf.raw
    nlink, uid, gid = struct.unpack_from('<III', b, 16)
    (mode,) = struct.unpack_from('<H', b, 28)
    ino, size, blocks = struct.unpack_from('<QQQ', b, 32)
    def ts(o):
        s, ns = struct.unpack_from('<qI', b, o)
        return s * 10**9 + ns
    return {'ino': ino, 'nlink': nlink, 'uid': uid, 'gid': gid, 'mode': mode, 'size': size,
            'blocks': blocks, 'ctime': ts(96), 'mtime': ts(112)}

names = ['a', 'b', 'c']
stale = []
disagree = []
steps = []

def prime():
    for n in names:
        sx(n, 0)

def check(step):
    seen = {n: sx(n, 0) for n in names}
    now = {n: sx(n, AT_STATX_FORCE_SYNC) for n in names}
    for n in names:
        for k in now[n]:
            if seen[n][k] != now[n][k]:
                stale.append([step, n, k, seen[n][k], now[n][k]])
            if now[n][k] != now[names[0]][k]:
                disagree.append([step, n, k, now[n][k], now[names[0]][k]])
    steps.append(step)
    return now[names[0]]

def write(name, data, off, flags=0):
    fd = os.open(name, os.O_WRONLY | flags)
    os.pwrite(fd, data, off) if not flags & os.O_APPEND else os.write(fd, data)
    return fd

with open('a', 'wb') as f:
    f.write(b'0' * 5000)
os.link('a', 'b')
os.link('a', 'c')
prime()
ctimes = {}

# Changes through one name, each after every name took its attributes.
os.close(write('a', b'1' * 3000, 4000)); check('write via a')
prime(); os.close(write('c', b'2' * 700, 0, os.O_APPEND)); check('append via c')
prime(); os.truncate('b', 20000); check('truncate up via b')
prime(); os.truncate('a', 9000); check('truncate down via a')
prime(); os.chmod('c', 0o640); check('chmod via c')
prime(); os.chown('b', os.getuid(), os.getgid()); check('chown via b')
prime(); os.utime('a', ns=(10**18, 10**18)); check('utimens via a')
prime(); os.setxattr('b', 'user.t', b'v'); check('setxattr via b')
prime(); os.link('a', 'd'); names.append('d'); check('link d')
prime(); os.unlink('d'); names.remove('d'); check('unlink d')
prime(); os.rename('c', 'e'); names[2] = 'e'; check('rename c to e')
# An open name unlinked: libfuse renames it to a hidden name, and removes that at its last close
# (after close(2) returned). Nothing any name shows moves then; the primary's ctime does, and
# twinfs answers the one shown before (KernelNames.hiddenNameRemoving).
prime(); os.link('a', 'd'); fd = os.open('d', os.O_RDONLY); os.unlink('d'); check('unlink of the open name d')
prime(); os.close(fd)
for _ in range(500):
    if not any(n.startswith('.fuse_hidden') for n in os.listdir('.')):
        break
    time.sleep(0.01)
hidden_left = [n for n in os.listdir('.') if n.startswith('.fuse_hidden')]
check('hidden name of d removed at its last close')

# Write-backs of cached data, each after every name took the cached file's attributes.
fd = write('b', b'3' * 6000, 2000); prime(); before = sx('a', 0)
os.fsync(fd); os.close(fd); after = check('write-back by fsync via b')
ctimes['fsync'] = [before['ctime'], after['ctime']]
os.close(write('a', b'4' * 100, 50)); prime(); time.sleep(1.5); check('write-back by the timer')
fd = os.open('e', os.O_RDWR)
m = mmap.mmap(fd, 4096)
m[0:5] = b'mmap!'
m.close(); os.close(fd); check('mmap pages written back at close via e')
prime(); time.sleep(1.5); check('write-back of the mmap pages')
# No stat between the write and its write-back (the kernel took none of its attributes).
os.close(write('b', b'5' * 100, 100)); time.sleep(1.5); check('write-back of an unseen write')
# A sparse file: a hole, then data written into it.
prime(); os.truncate('a', 1 << 20); check('truncate to 1 MiB via a')
fd = write('e', b'6' * 4096, 512 << 10); prime(); os.fsync(fd); os.close(fd)
sparse = check('write-back into a hole via e')
# An overwrite of those blocks: while cached they count as new allocation; the write-back keeps
# showing that, so the shown st_blocks may exceed the primary's until the next change.
fd = write('a', b'7' * 4096, 512 << 10); prime(); os.fsync(fd); os.close(fd)
check('write-back of an overwrite via a')
# A change right after the write-back: ctime moves again through every name, and every
# attribute is the primary's again.
prime(); os.chmod('a', 0o600); moved = check('chmod after the write-back via a')
primary = os.stat(os.path.join(sys.argv[1], 'la', 'a'))
print(json.dumps({'stale': stale, 'disagree': disagree, 'steps': len(steps), 'hiddenLeft': hidden_left,
                  'fsyncCtime': [str(t) for t in ctimes['fsync']],
                  'ctimeMoves': moved['ctime'] > sparse['ctime'],
                  'afterChange': [moved['blocks'], str(moved['ctime'])],
                  'primary': [primary.st_blocks, str(primary.st_ctime_ns)]}))
`;

describe('attributes through every name of a hard link after each change and write-back (libfuse3)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', '3', '--writeback-ms', '300']);
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('every name shows what twinfs answers now, and all names agree', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('la')");
    const seen = JSON.parse(await pyIn(`${fx.mnt}/la`, PROGRAM, { timeoutMs: 60_000, args: [fx.primary] }));
    expect({
      stale: seen.stale,
      disagree: seen.disagree,
      steps: seen.steps,
      ctimeMoves: seen.ctimeMoves,
      hiddenLeft: seen.hiddenLeft,
    }).toEqual({
      stale: [],
      disagree: [],
      steps: 22,
      ctimeMoves: true,
      hiddenLeft: [],
    });
    // The write-back by fsync moved no attribute a name had taken (ctime as shown before it).
    expect(seen.fsyncCtime[1]).toBe(seen.fsyncCtime[0]);
    // After the next change nothing recorded is left: st_blocks and ctime are the primary's.
    expect(seen.afterChange).toEqual(seen.primary);
  }, 90_000);
});

// The kernel decides ownership (chmod, chown, the sticky directory's rule) and the setuid kill
// of a write from the attributes its inode of the name used holds in memory, without asking
// first; the invalidation after a change through another name only marks them old. twinfs stats
// the other names through the mount before answering a chmod or chown (VolumeOps.ownerRefreshed),
// so the kernel holds the new owner and mode everywhere at once. Both directions, as a user
// (nobody) against root's changes through the file's other name, in a 1777 directory; a plain
// directory gives the same answers. Without the refresh a chmod by the new owner was refused
// (EPERM, 3 of 3); the write (its open refreshes the attributes for its permission check) must
// still drop the setuid bit root had just set through the other name.
const OWNER_PROGRAM = `
import errno, json, os, sys
NOBODY = 65534
def as_nobody(fn):
    pid = os.fork()
    if pid == 0:
        os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)
        try:
            fn(); os._exit(0)
        except OSError as e:
            os._exit(e.errno)
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    return 'ok' if code == 0 else errno.errorcode.get(code, str(code))
out = []
for i in range(3):
    a, b = 'oa%d' % i, 'ob%d' % i
    with open(a, 'w') as f: f.write('x')
    os.chmod(a, 0o666)
    os.link(a, b)
    os.stat(a); os.stat(b)                 # both names' inodes in the kernel, root the owner
    os.chown(a, NOBODY, NOBODY)            # given to the user through a
    given = as_nobody(lambda: os.chmod(b, 0o600))
    os.chown(a, 0, 0); os.chmod(a, 0o666)  # taken back
    os.stat(b)
    os.chmod(a, 0o4777)                    # root makes it setuid through a
    def write():
        with open(b, 'a') as f: f.write('y')
    wrote = as_nobody(write)
    out.append([given, wrote, oct(os.stat(a).st_mode & 0o7777)])
print(json.dumps(out))
`;

describe('ownership through every name of a hard link (libfuse3)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', '3']);
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('a chmod or chown through one name holds for the kernel’s checks through the others at once', async () => {
    for (const dir of [fx.plain, fx.mnt]) {
      await pyIn(dir, "import os; os.mkdir('own'); os.chmod('own', 0o1777)");
      const seen = JSON.parse(await pyIn(`${dir}/own`, OWNER_PROGRAM, { timeoutMs: 60_000 }));
      expect(seen, dir === fx.mnt ? 'mount' : 'plain directory').toEqual(
        Array(3).fill(['ok', 'ok', '0o777']),
      );
    }
  }, 90_000);
});
