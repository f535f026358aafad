#!/usr/bin/env python3
# Differential test of file handles held open across operations (bench/handle-diff.mjs runs it;
# test/fusefs/handle-diff.test.ts runs a short one). One seeded stream of syscalls runs in
# lockstep in two directories: REF (a plain directory, the oracle) and TEST (in a twinfs mount).
# Every result is compared: return values, errno, bytes read, sizes, link counts and modes.
#
# What it aims at: files created and written while held open (twinfs answers CREATE, WRITE and
# RELEASE of such files in libfuse's threads until JavaScript takes the create), several
# handles of one file (dup, a second open, O_APPEND), writes on both sides of the native
# write's 128 KiB bound, truncation, renames, hard links and unlinks under open handles, shared
# mmap writes with and without msync, mmap reads, fsync and fdatasync, truncate by name,
# copy_file_range; with HANDLE_DIFF_FALLOCATE=1 also fallocate(2) in every mode the kernel passes
# on (off by default, so the streams of the seeds documented before it stay the same). The exerciser (bench/exerciser.mjs)
# opens and closes a file per operation; fsx (test/fusefs/fixtures/fsx.py) holds one file.
#
#   python3 bench/handle-diff.py REF TEST SEED OPS
# Prints one JSON line: {"ops": N, "mismatches": [...]} (at most 20 kept); exit 1 on a mismatch.
import errno
import fcntl
import json
import mmap
import os
import random
import stat
import sys

ref_dir, test_dir, seed, n_ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
NAMES = ['f%d' % i for i in range(6)]
MAXLEN = 3 * 1024 * 1024
mismatches = []
op_index = 0
TRACE = os.environ.get('HANDLE_DIFF_TRACE') == '1'  # every step and its results on stderr
# HANDLE_DIFF_LINKS=0: no link(2), so every file keeps one name. For the libfuse2 path, where a
# file's names are kernel inodes of their own that nothing invalidates (its pages and size
# stay stale through another name: the known limit, as for fsx --link).
LINKS = os.environ.get('HANDLE_DIFF_LINKS') != '0'
# HANDLE_DIFF_DIRS=1: names in subdirectories too, and directories made, removed and renamed
# (onto empty and non-empty ones, onto files) while handles of files in them stay open: kernel
# names and libfuse's hidden names below a renamed directory, rmdir of a directory whose files
# are all open and unlinked. Off by default, so the streams of the seeds above stay the same.
DIRS = ['d0', 'd1', 'd2'] if os.environ.get('HANDLE_DIFF_DIRS') == '1' else []
if DIRS:
    NAMES = ['f0', 'f1', 'f2', 'f3', 'd0/f0', 'd0/f1', 'd1/f0', 'd1/f1', 'd2/f0']
# HANDLE_DIFF_BYTES=1: some names hold bytes that are not UTF-8 (Python's str carries such a
# byte as U+DC00 + byte, and os.* passes it as that byte): f1, f3 and d1 become f1\xe9, \xff3 and
# d1\xfe (docs/architecture.md, "Names are bytes").
if os.environ.get('HANDLE_DIFF_BYTES') == '1':
    RAW = {'f1': 'f1\udce9', 'f3': '\udcff3', 'd1': 'd1\udcfe'}
    NAMES = ['/'.join(RAW.get(c, c) for c in n.split('/')) for n in NAMES]
    DIRS = [RAW.get(d, d) for d in DIRS]


class Desc:
    """An open file description (shared by dup): whether its offset can be compared."""
    def __init__(self):
        # The file had another name or another description while this one was open: the
        # kernel's size for this description's name can be stale (high-level libfuse keeps an
        # inode per name), and an O_APPEND write then advances the offset from that stale end
        # while twinfs puts the bytes at the true end (docs/reliability.md, "Handles held open
        # across operations", item 5). Once such a write happened, the offset is not compared
        # (lseek SEEK_CUR, read) until an absolute lseek sets it again.
        self.shared = False
        self.offset_known = True


class Handle:
    def __init__(self, name, flags, fds, desc=None):
        self.name, self.flags, self.fds = name, flags, fds
        self.desc = desc or Desc()


handles = []
# Results that differ at a known limit of high-level libfuse (each is named where it is
# counted), reported apart in the JSON line and not as mismatches.
known = {}


def note_known(what):
    known[what] = known.get(what, 0) + 1


def call(fn, *args):
    """(ok, value) or ('err', errno name)."""
    try:
        return ('ok', fn(*args))
    except OSError as e:
        return ('err', errno.errorcode.get(e.errno, str(e.errno)))


def both(what, fn_ref, fn_test, norm=lambda v: v, limit=None):
    """Runs the step in REF, then in TEST; compares the results. Returns (ref, test) raw.
    limit(ref, test): the name of a known limit the difference is, or None."""
    r = call(fn_ref)
    t = call(fn_test)
    rn = (r[0], norm(r[1])) if r[0] == 'ok' else r
    tn = (t[0], norm(t[1])) if t[0] == 'ok' else t
    if rn != tn:
        k = limit(rn, tn) if limit else None
        if k is None and USER:
            k = kept_privs(rn, tn)
        if k:
            note_known(k)
        else:
            mismatch(what, rn, tn)
    if TRACE:
        sys.stderr.write('%d %s%s: %s%s\n' % (op_index, 'U ' if os.geteuid() else '', what, short(rn)[:120], '' if rn == tn else ' GOT ' + short(tn)[:120]))
    return r, t


# fstat, lseek(SEEK_END), fchmod (fchown, futimens) through a descriptor whose file's node has no
# path (opened through a name unlinked while open, in a directory later removed or renamed over:
# docs/reliability.md, "Handles held open across operations", item 9) are compared as any other
# result. Until fuse-native patch level 15 those through a descriptor made by a create that had
# done no read, write or fsync since failed with ESTALE, and this harness counted them apart.


def kept_privs(r, t):
    """A known limit with HANDLE_DIFF_USER: a write by the user through a descriptor whose kernel
    inode (one per name) still had the mode from before a chmod through another name of the file
    does not drop setuid/setgid (the kernel decides that from the inode in memory, without asking:
    docs/architecture.md, "Owner and mode through every name of a hard link"). The results then
    differ in those bits of the mode only, here and in every later stat of the file."""
    if r[0] != 'ok' or t[0] != 'ok' or not isinstance(r[1], tuple) or not isinstance(t[1], tuple):
        return None
    if len(r[1]) != len(t[1]) or r[1][:-1] != t[1][:-1]:
        return None
    rm, tm = r[1][-1], t[1][-1]
    if not isinstance(rm, int) or rm == tm or (rm & ~0o6000) != (tm & ~0o6000) or (rm & 0o6000) & ~tm:
        return None
    return 'setuid/setgid kept by a write through a name whose kernel inode had the old mode'


def mismatch(what, want, got):
    if len(mismatches) < 20:
        mismatches.append({'op': op_index, 'seed': seed, 'what': what, 'want': short(want), 'got': short(got)})


def short(v):
    s = repr(v)
    return s if len(s) < 300 else s[:300] + '...'


def st_norm(st):
    # A directory's size is its backing filesystem's business (ext4's grows with the entries it
    # ever held, libfuse's hidden names included), not compared.
    size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
    return (size, st.st_nlink, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))


def paths(name):
    return os.path.join(ref_dir, name), os.path.join(test_dir, name)


def data(n):
    return rng.randbytes(n)


def io_size():
    k = rng.random()
    if k < 0.55:
        return rng.randint(1, 4096)
    if k < 0.85:
        return rng.randint(4097, 120 * 1024)
    if k < 0.97:
        return rng.randint(120 * 1024, 300 * 1024)  # around the native write's 128 KiB bound
    return rng.randint(300 * 1024, 1100 * 1024)


def existing():
    """Names of regular files now (with DIRS a name can be a directory renamed onto it)."""
    return [n for n in NAMES if os.path.isfile(os.path.join(ref_dir, n)) and not os.path.islink(os.path.join(ref_dir, n))]


def pick_handle(writable=None):
    hs = [h for h in handles if writable is None or ((h.flags & os.O_ACCMODE) != os.O_RDONLY) == writable]
    return rng.choice(hs) if hs else None


def test_size(h):
    """The mount side's size of a handle's file, None if fstat fails (then op_fstat reports it)."""
    try:
        return os.fstat(h.fds[1]).st_size
    except OSError:
        return None


def ref_size(h):
    return os.fstat(h.fds[0]).st_size


def op_create():
    name = rng.choice(NAMES)
    acc = rng.choice([os.O_WRONLY, os.O_RDWR, os.O_RDWR])
    flags = acc | os.O_CREAT
    if rng.random() < 0.5:
        flags |= os.O_EXCL
    if rng.random() < 0.2:
        flags |= os.O_APPEND
    if rng.random() < 0.2:
        flags |= os.O_TRUNC
    mode = rng.choice([0o644, 0o600, 0o640, 0o664])
    pr, pt = paths(name)
    r, t = both('create %s %o' % (name, flags), lambda: os.open(pr, flags, mode), lambda: os.open(pt, flags, mode), lambda v: 'fd')
    keep(name, flags, r, t, Desc())


def op_open():
    names = existing()
    if not names:
        return op_create()
    name = rng.choice(names)
    flags = rng.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR])
    if flags != os.O_RDONLY and rng.random() < 0.2:
        flags |= os.O_APPEND
    if flags != os.O_RDONLY and rng.random() < 0.1:
        flags |= os.O_TRUNC
    pr, pt = paths(name)
    r, t = both('open %s %o' % (name, flags), lambda: os.open(pr, flags), lambda: os.open(pt, flags), lambda v: 'fd')
    keep(name, flags, r, t)


def keep(name, flags, r, t, desc=None):
    if r[0] == 'ok' and t[0] == 'ok':
        handles.append(Handle(name, flags, (r[1], t[1]), desc))
    else:
        for x in (r, t):
            if x[0] == 'ok':
                os.close(x[1])


def op_write():
    h = pick_handle(True)
    if not h:
        return op_create()
    if h.flags & os.O_APPEND and h.desc.shared:
        h.desc.offset_known = False
    b = data(io_size())
    both('write %s (%o, fd %d) len %d' % (h.name, h.flags, h.fds[1], len(b)), lambda: os.write(h.fds[0], b), lambda: os.write(h.fds[1], b))


def op_pwrite():
    h = pick_handle(True)
    if not h:
        return op_create()
    size = ref_size(h)
    off = rng.randint(0, min(size + 65536, MAXLEN))
    b = data(min(io_size(), MAXLEN - off + 1))
    both('pwrite %s (%o, fd %d) %d+%d' % (h.name, h.flags, h.fds[1], off, len(b)), lambda: os.pwrite(h.fds[0], b, off), lambda: os.pwrite(h.fds[1], b, off))


def op_pread():
    h = pick_handle()
    if not h:
        return op_open()
    size = ref_size(h)
    off = rng.randint(0, size + 100)
    n = rng.randint(1, 300 * 1024)
    both('pread %s (%o, fd %d) %d+%d' % (h.name, h.flags, h.fds[1], off, n), lambda: os.pread(h.fds[0], n, off), lambda: os.pread(h.fds[1], n, off))


def op_read():
    h = pick_handle()
    if not h:
        return op_open()
    n = rng.randint(1, 200 * 1024)
    if not h.desc.offset_known:
        # Both run (the streams stay in step); the offsets differ, so the bytes may too.
        call(lambda: os.read(h.fds[0], n))
        call(lambda: os.read(h.fds[1], n))
        return
    both('read %s (%o, fd %d) %d' % (h.name, h.flags, h.fds[1], n), lambda: os.read(h.fds[0], n), lambda: os.read(h.fds[1], n))


def op_seek():
    h = pick_handle()
    if not h:
        return op_open()
    whence = rng.choice([os.SEEK_SET, os.SEEK_END, os.SEEK_CUR])
    off = rng.randint(0, 8192) if whence != os.SEEK_END else -rng.randint(0, 100)
    if whence == os.SEEK_CUR and not h.desc.offset_known:
        call(lambda: os.lseek(h.fds[0], off, whence))
        call(lambda: os.lseek(h.fds[1], off, whence))
        return
    r, t = both('lseek %s (fd %d) %d %d' % (h.name, h.fds[1], off, whence), lambda: os.lseek(h.fds[0], off, whence), lambda: os.lseek(h.fds[1], off, whence))
    if r == t and r[0] == 'ok':
        # Both descriptors are at the same absolute offset now. A failed lseek (EINVAL before
        # the start) moves neither: an offset not known stays so (stream 2102000, op 913).
        h.desc.offset_known = True


def op_fstat():
    h = pick_handle()
    if not h:
        return op_open()
    both('fstat %s' % h.name, lambda: os.fstat(h.fds[0]), lambda: os.fstat(h.fds[1]), st_norm)


def op_stat():
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    both('lstat %s' % name, lambda: os.lstat(pr), lambda: os.lstat(pt), st_norm)


def op_ftruncate():
    h = pick_handle(True)
    if not h:
        return op_create()
    size = ref_size(h)
    n = rng.choice([0, rng.randint(0, size + 1), rng.randint(0, size + 200000)])
    both('ftruncate %s %d' % (h.name, n), lambda: os.ftruncate(h.fds[0], n), lambda: os.ftruncate(h.fds[1], n))


def op_sync():
    h = pick_handle()
    if not h:
        return op_open()
    fn = rng.choice([os.fsync, os.fdatasync])
    both('%s %s' % (fn.__name__, h.name), lambda: fn(h.fds[0]), lambda: fn(h.fds[1]))


def op_close():
    if not handles:
        return op_create()
    h = handles.pop(rng.randrange(len(handles)))
    try:
        if os.fstat(h.fds[0]).st_nlink == 0:
            last_hidden_close[0] = op_index
    except OSError:
        pass
    both('close %s' % h.name, lambda: os.close(h.fds[0]), lambda: os.close(h.fds[1]))


def op_dup():
    h = pick_handle()
    if not h:
        return op_open()
    r, t = both('dup %s' % h.name, lambda: os.dup(h.fds[0]), lambda: os.dup(h.fds[1]), lambda v: 'fd')
    keep(h.name, h.flags, r, t, h.desc)


def op_rename():
    a, b = rng.choice(NAMES), rng.choice(NAMES)
    (ar, at), (br, bt) = paths(a), paths(b)
    both('rename %s %s' % (a, b), lambda: os.rename(ar, br), lambda: os.rename(at, bt), limit=own_link(ar, br))


def own_link(ar, br):
    """A known limit: rename(2) of one name of a file onto another of its names succeeds with
    nothing done on a local filesystem before any permission check; through high-level libfuse
    the two names are two kernel inodes, so the kernel checks write permission on the
    directories and the sticky directory's rule first, and may refuse an ordinary user with
    EACCES or EPERM (docs/reliability.md, "Handles held open across operations", item 5)."""
    try:
        a, b = os.lstat(ar), os.lstat(br)
        same = a.st_ino == b.st_ino and a.st_dev == b.st_dev and ar != br
    except OSError:
        same = False
    def limit(r, t):
        refused = t in (('err', 'EPERM'), ('err', 'EACCES'))
        return 'rename onto another name of the same file as a user: refused' if same and os.geteuid() != 0 and r == ('ok', None) and refused else None
    return limit


def op_link():
    a, b = rng.choice(NAMES), rng.choice(NAMES)
    if not LINKS:
        return op_stat()
    (ar, at), (br, bt) = paths(a), paths(b)
    both('link %s %s' % (a, b), lambda: os.link(ar, br), lambda: os.link(at, bt))


def op_unlink():
    a = rng.choice(NAMES)
    ar, at = paths(a)
    both('unlink %s' % a, lambda: os.unlink(ar), lambda: os.unlink(at))


def op_chmod():
    h = pick_handle()
    if not h:
        return op_open()
    mode = rng.choice([0o644, 0o600, 0o640, 0o444, 0o755])
    both('fchmod %s %o' % (h.name, mode), lambda: os.fchmod(h.fds[0], mode), lambda: os.fchmod(h.fds[1], mode))


def op_mmap():
    hs = [h for h in handles if (h.flags & os.O_ACCMODE) == os.O_RDWR and not h.flags & os.O_APPEND]
    if not hs:
        return op_create()
    h = rng.choice(hs)
    size = ref_size(h)
    if size == 0 or test_size(h) != size:
        return op_fstat()
    off = rng.randint(0, size - 1)
    b = data(min(rng.randint(1, 64 * 1024), size - off))
    sync = rng.random() < 0.5

    def w(fd):
        m = mmap.mmap(fd, size)
        try:
            m[off:off + len(b)] = b
            if sync:
                m.flush()
        finally:
            m.close()
        return len(b)

    both('mmap %s %d+%d%s' % (h.name, off, len(b), ' msync' if sync else ''), lambda: w(h.fds[0]), lambda: w(h.fds[1]))
    for side in (0, 1):
        mapped[side].add(ino_of(h.fds[side]))


def op_truncate_name():
    """truncate(2) by name while handles of the file may be open (and hold cached writes)."""
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    n = rng.choice([0, rng.randint(0, 400000)])
    both('truncate %s %d' % (name, n), lambda: os.truncate(pr, n), lambda: os.truncate(pt, n))


def op_copy_range():
    """copy_file_range(2) between two handles (the same file or two)."""
    src = pick_handle()
    dst = pick_handle(True)
    if not src or not dst or dst.flags & os.O_APPEND or (src.flags & os.O_ACCMODE) == os.O_WRONLY:
        return op_pwrite()
    # Not between files with other names or descriptions: the kernel copies through the page
    # cache of the source's inode of that name, up to its size there, which another name can
    # have left stale, and checks overlap per kernel inode (docs/reliability.md, item 5).
    if src.desc.shared or dst.desc.shared:
        return op_pwrite()
    size = ref_size(src)
    off_in = rng.randint(0, size + 10)
    off_out = rng.randint(0, ref_size(dst) + 1000)
    n = rng.randint(1, 150000)

    def copy(fd_in, fd_out):
        # As callers do: a copy may be short (the kernel's fallback copies in pieces), so
        # call again until all is copied or the source ends.
        done = 0
        while done < n:
            k = os.copy_file_range(fd_in, fd_out, n - done, off_in + done, off_out + done)
            if k == 0:
                break
            done += k
        return done

    both('copy_file_range %s -> %s %d+%d @%d' % (src.name, dst.name, off_in, n, off_out),
         lambda: copy(src.fds[0], dst.fds[0]), lambda: copy(src.fds[1], dst.fds[1]))


def op_mmap_read():
    """Reads through a shared read mapping: what the page cache holds for the file."""
    h = pick_handle()
    if not h or (h.flags & os.O_ACCMODE) == os.O_WRONLY:
        return op_open()
    size = ref_size(h)
    if size == 0 or test_size(h) != size:
        return op_fstat()
    off = rng.randint(0, size - 1)
    n = min(rng.randint(1, 64 * 1024), size - off)

    def r(fd):
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        try:
            return m[off:off + n]
        finally:
            m.close()

    both('mmap read %s %d+%d' % (h.name, off, n), lambda: r(h.fds[0]), lambda: r(h.fds[1]))


def op_read_name():
    """A fresh open by name, read whole, closed: what another program sees."""
    name = rng.choice(NAMES)
    pr, pt = paths(name)

    def whole(p):
        with open(p, 'rb') as f:
            return f.read()

    both('read whole %s' % name, lambda: whole(pr), lambda: whole(pt))


def by_name(pool, what, fn, norm=lambda v: v):
    """One call on a name picked from pool, in REF and in TEST."""
    name = rng.choice(pool)
    pr, pt = paths(name)
    return both('%s %s' % (what, name), lambda: fn(pr), lambda: fn(pt), norm)


def op_mkdir():
    by_name(DIRS, 'mkdir', os.mkdir)


def op_rmdir():
    by_name(DIRS, 'rmdir', os.rmdir)


def op_rename_dir():
    """A directory renamed onto another (empty or not), a file, or a new name; sometimes a file onto one."""
    a = rng.choice(DIRS)
    b = rng.choice(DIRS + [n for n in NAMES if '/' not in n])
    if rng.random() < 0.15:
        a, b = rng.choice(NAMES), rng.choice(DIRS)
    (ar, at), (br, bt) = paths(a), paths(b)
    both('rename %s %s' % (a, b), lambda: os.rename(ar, br), lambda: os.rename(at, bt))


def op_listdir():
    """A listing: libfuse's hidden names (open files unlinked) are left out on the mount side,
    where high-level libfuse shows them (a known behaviour, not twinfs's choice)."""
    d = rng.choice(['.'] + DIRS)
    dr, dt = paths(d)
    both('listdir %s' % d, lambda: sorted(os.listdir(dr)),
         lambda: sorted(n for n in os.listdir(dt) if not n.startswith('.fuse_hidden')))


def op_stat_dir():
    d = rng.choice(DIRS)
    dr, dt = paths(d)
    both('lstat %s' % d, lambda: os.lstat(dr), lambda: os.lstat(dt), st_norm)


FALLOCATE = os.environ.get('HANDLE_DIFF_FALLOCATE') == '1'
if FALLOCATE:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
# 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE, ZERO_RANGE|KEEP_SIZE
FALLOC_MODES = [0, 0x01, 0x03, 0x03, 0x10, 0x11]


def fallocate(fd, mode, off, n):
    if libc.fallocate(fd, mode, off, n) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def op_fallocate():
    h = pick_handle()
    if not h:
        return op_create()
    size = ref_size(h)
    mode = rng.choice(FALLOC_MODES)
    off = rng.randint(0, size + 100000) if rng.random() < 0.3 else rng.randint(0, max(size, 1))
    n = rng.randint(1, 200000)
    # Through a read-only descriptor: EBADF on both sides. Later reads and the final content
    # compare the bytes.
    both('fallocate %s mode=%#x off=%d len=%d' % (h.name, mode, off, n),
         lambda: fallocate(h.fds[0], mode, off, n), lambda: fallocate(h.fds[1], mode, off, n))



# HANDLE_DIFF_META=1: extended attributes (set with XATTR_CREATE / XATTR_REPLACE, get, list,
# remove, by name and through a descriptor), explicit times to the nanosecond (utimensat by name
# and futimens, then whether a later lstat still shows the time set: a write-back that stamps the
# file after the call would show up), chown, chmod with setuid/setgid bits, symlinks. Off by
# default, so the streams of the seeds documented before it stay the same.
META = os.environ.get('HANDLE_DIFF_META') == '1'
XATTR_NAMES = ['user.a', 'user.b', 'user.twinfs', 'trusted.t']
# Per side, the mtime the stream last set explicitly on each inode. A later write, truncate,
# copy or fallocate changes the file's mtime on both sides, so "other" is then the answer on both.
times_set = ({}, {})
# The op at which each side's times were set (by inode), and the last close of a descriptor of a
# file unlinked while open (see op_times).
times_set_at = ({}, {})
last_hidden_close = [-1]
# Inodes written through a shared mapping: ext4 stamps the time at the page fault (and not at all
# for a page still dirty from an earlier mapping), a FUSE server when the kernel writes the page
# back, whenever that is; their times are not compared.
mapped = (set(), set())


def nf(x):
    """Not following a final symlink: by name only (a descriptor has nothing to follow)."""
    return {} if isinstance(x, int) else {'follow_symlinks': False}


def ino_of(x):
    try:
        return os.fstat(x).st_ino if isinstance(x, int) else os.lstat(x).st_ino
    except OSError:
        return None


def xattr_target():
    """(what, ref target, test target, limit): a name (files, symlinks not followed: EPERM for
    user.* on a symlink on both sides) or a descriptor."""
    h = pick_handle()
    if h and rng.random() < 0.4:
        return ('fd %s' % h.name, h.fds[0], h.fds[1], None)
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    return (name, pr, pt, None)


def undo_on_ref(r, key, limit):
    """A limit that wraps a changing xattr call: when the test side hit it (ESTALE, nothing
    changed there), the ref side's change is undone, so the two files stay comparable."""
    if limit is None:
        return None
    try:
        before = os.getxattr(r, key, **nf(r))
    except OSError:
        before = None

    def wrapped(rn, tn):
        k = limit(rn, tn)
        if k and rn[0] == 'ok':
            try:
                if before is None:
                    os.removexattr(r, key, **nf(r))
                else:
                    os.setxattr(r, key, before, 0, **nf(r))
            except OSError:
                pass
        return k
    return wrapped


def op_setxattr():
    what, r, t, limit = xattr_target()
    key = rng.choice(XATTR_NAMES)
    k = rng.random()
    n = 0 if k < 0.1 else rng.randint(1, 200) if k < 0.8 else rng.randint(200, 3000)
    value = data(n)
    flags = rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
    both('setxattr %s %s len %d flags %d' % (what, key, n, flags),
         lambda: os.setxattr(r, key, value, flags, **nf(r)),
         lambda: os.setxattr(t, key, value, flags, **nf(t)), limit=undo_on_ref(r, key, limit))


def op_getxattr():
    what, r, t, limit = xattr_target()
    key = rng.choice(XATTR_NAMES)
    both('getxattr %s %s' % (what, key), lambda: os.getxattr(r, key, **nf(r)),
         lambda: os.getxattr(t, key, **nf(t)), limit=limit)


def op_listxattr():
    what, r, t, limit = xattr_target()
    # Only the namespaces the stream writes: the backing filesystems may add their own
    # (security.*, system.*) the same on both sides or not.
    norm = lambda v: sorted(x for x in v if x.startswith(('user.', 'trusted.')))
    both('listxattr %s' % what, lambda: os.listxattr(r, **nf(r)),
         lambda: os.listxattr(t, **nf(t)), norm, limit)


def op_removexattr():
    what, r, t, limit = xattr_target()
    key = rng.choice(XATTR_NAMES)
    both('removexattr %s %s' % (what, key), lambda: os.removexattr(r, key, **nf(r)),
         lambda: os.removexattr(t, key, **nf(t)), limit=undo_on_ref(r, key, limit))


def rand_ns():
    k = rng.random()
    if k < 0.1:
        return -rng.randint(1, 10**18)  # before 1970
    if k < 0.2:
        return rng.randint(0, 10**9) * 10**9  # whole seconds
    return rng.randint(0, 4 * 10**18)


def op_utime():
    h = pick_handle()
    by_fd = h is not None and rng.random() < 0.4
    if by_fd:
        what, r, t = 'fd %s' % h.name, h.fds[0], h.fds[1]
    else:
        name = rng.choice(NAMES)
        what, (r, t) = name, paths(name)
    ns = (rand_ns(), rand_ns())
    res = both('utime %s %d %d' % (what, ns[0], ns[1]), lambda: os.utime(r, ns=ns, **nf(r)),
               lambda: os.utime(t, ns=ns, **nf(t)))
    for side, (x, target) in enumerate(zip(res, (r, t))):
        k = ino_of(target)
        if x[0] == 'ok' and k is not None:
            times_set[side][k] = ns[1]
            times_set_at[side][k] = op_index


def op_times():
    """Whether each side's file still shows the mtime the stream set (and the exact value)."""
    h = pick_handle()
    if h and rng.random() < 0.5:
        what, r, t = 'fd %s' % h.name, h.fds[0], h.fds[1]
        st = lambda x: os.fstat(x)
    else:
        name = rng.choice(NAMES)
        what, (r, t) = name, paths(name)
        st = lambda x: os.lstat(x)

    dir_set_at = []

    def look(side, x):
        s = st(x)
        if s.st_ino in mapped[side]:
            return 'mapped'
        # Not set, or set and changed since, are one answer: an inode number the stream saw set
        # can come back on one side only for a new file.
        want = times_set[side].get(s.st_ino)
        if side == 0 and stat.S_ISDIR(s.st_mode) and want is not None:
            dir_set_at.append(times_set_at[0].get(s.st_ino, -1))
        return ('set', want) if want is not None and s.st_mtime_ns == want else 'other'

    r0, t0 = call(lambda: look(0, r)), call(lambda: look(1, t))
    if r0 != t0 and ('ok', 'mapped') not in (r0, t0):
        # A known limit: a file unlinked while open keeps a hidden name in its directory until
        # its last close, and high-level libfuse removes that name then, which moves the
        # directory's mtime where a local filesystem's close moves nothing (docs/reliability.md,
        # "Handles held open across operations", item 9).
        if t0 == ('ok', 'other') and dir_set_at and dir_set_at[0] < last_hidden_close[0]:
            note_known('directory mtime moved by the last close of a file unlinked while open')
        else:
            mismatch('times %s' % what, r0, t0)
    if TRACE:
        sys.stderr.write('%d times %s: %s%s\n' % (op_index, what, short(r0), '' if r0 == t0 else ' GOT ' + short(t0)))


def op_chown():
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    uid, gid = rng.choice([0, 1000, 65534]), rng.choice([0, 1000, 65534, -1])
    both('lchown %s %d %d' % (name, uid, gid), lambda: os.chown(pr, uid, gid, follow_symlinks=False),
         lambda: os.chown(pt, uid, gid, follow_symlinks=False))
    both('lstat owner %s' % name, lambda: os.lstat(pr), lambda: os.lstat(pt),
         lambda s: (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)))


def op_chmod_name():
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    # setgid without group execute (0o2745) only with root alone: a write or truncate by a user
    # outside the file's group clears that bit on a local filesystem; the kernel's FUSE code
    # clears setgid only together with group execute (fuse_setattr: the server's job with
    # FUSE_HANDLE_KILLPRIV_V2, which high-level libfuse 3.14 cannot pass on). A known limit.
    mode = rng.choice([0o4755, 0o2755, 0o6755, 0o2755 if USER else 0o2745, 0o1777, 0o644, 0o600])
    both('chmod %s %o' % (name, mode), lambda: os.chmod(pr, mode), lambda: os.chmod(pt, mode))


def op_symlink():
    target = rng.choice(NAMES + ['nowhere', 'a' * 200])
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    both('symlink %s -> %s' % (name, target[:20]), lambda: os.symlink(target, pr), lambda: os.symlink(target, pt))


def op_readlink():
    by_name(NAMES, 'readlink', os.readlink)


def op_stat_follow():
    by_name(NAMES, 'stat', os.stat, st_norm)



# HANDLE_DIFF_USER=1: about half the operations run as an ordinary user (effective uid 1000,
# gid 1000, groups 1000 and 2000; seteuid and back, so descriptors opened as either stay open):
# permission checks, ownership of what it creates, setuid/setgid cleared by its writes and
# chowns, sticky directories, chgrp to a group it is in. The top directories are 1777; with
# HANDLE_DIFF_META the stream's chown and chmod give files to and take them from the user.
USER = os.environ.get('HANDLE_DIFF_USER') == '1'
USER_ID, USER_GROUPS = 1000, [1000, 2000]


def as_user(fn):
    os.setgroups(USER_GROUPS)
    os.setegid(USER_ID)
    os.seteuid(USER_ID)
    try:
        fn()
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups([])


def op_chmod_dir():
    d = rng.choice(DIRS or ['.'])
    dr, dt = paths(d)
    mode = rng.choice([0o1777, 0o777, 0o755, 0o2777, 0o3777])
    both('chmod dir %s %o' % (d, mode), lambda: os.chmod(dr, mode), lambda: os.chmod(dt, mode))


def op_chgrp():
    name = rng.choice(NAMES)
    pr, pt = paths(name)
    gid = rng.choice([0, 1000, 2000, 3000])
    both('lchgrp %s %d' % (name, gid), lambda: os.chown(pr, -1, gid, follow_symlinks=False),
         lambda: os.chown(pt, -1, gid, follow_symlinks=False))
    both('lstat owner %s' % name, lambda: os.lstat(pr), lambda: os.lstat(pt),
         lambda s: (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)))


def op_owner():
    name = rng.choice(NAMES + DIRS)
    pr, pt = paths(name)
    both('owner %s' % name, lambda: os.lstat(pr), lambda: os.lstat(pt),
         lambda s: (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)))


# HANDLE_DIFF_SEEK=1: lseek(2) SEEK_DATA / SEEK_HOLE through the open descriptors (off by
# default: the streams of the seeds documented before it stay the same). The two sides may
# answer differently and both be right (a filesystem may call a hole data: twinfs does while the
# primary may not hold all of the file), so what is compared is what must hold on both: every
# byte of a range answered as a hole reads as zero through the same descriptor, and SEEK_DATA at
# the end answers ENXIO. The descriptor's offset is put back after.
SEEK = os.environ.get('HANDLE_DIFF_SEEK') == '1'


def seek_check(fd):
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    # The holes' bytes are read through the descriptor itself when it can read, else through a
    # read-only descriptor of the same file: /proc/self/fd reaches it whatever its names do,
    # except on the mount for a node without a path (an OPEN, and high-level libfuse builds a
    # path for it: ESTALE, a known limit). Then the holes are not read on that side.
    own = (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) != os.O_WRONLY
    rfd = None
    if not own:
        try:
            rfd = os.open('/proc/self/fd/%d' % fd, os.O_RDONLY)
        except OSError as e:
            if e.errno != errno.ESTALE:
                raise
            note_known('seek check: a write-only descriptor of a node without a path cannot be reopened to read its holes (OPEN builds a path: ESTALE)')
    try:
        size = os.fstat(fd).st_size
        off = 0
        bad = []
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                d = size
            if d > off and (own or rfd is not None) and os.pread(fd if own else rfd, d - off, off).strip(b'\0'):
                bad.append(('hole over data', off, d))
            if d >= size:
                break
            off = max(os.lseek(fd, d, os.SEEK_HOLE), d + 1)
        try:
            end = 'data at %d' % os.lseek(fd, size, os.SEEK_DATA)
        except OSError as e:
            end = errno.errorcode[e.errno]
        return (bad, end)
    finally:
        if rfd is not None:
            os.close(rfd)
        os.lseek(fd, pos, os.SEEK_SET)


def op_seek_map():
    h = pick_handle()
    if not h:
        return op_open()
    both('seek map %s (%o, fd %d)' % (h.name, h.flags, h.fds[1]), lambda: seek_check(h.fds[0]),
         lambda: seek_check(h.fds[1]))


OPS = [
    (op_create, 10), (op_open, 6), (op_write, 18), (op_pwrite, 12), (op_pread, 8), (op_read, 4),
    (op_seek, 3), (op_fstat, 8), (op_stat, 6), (op_ftruncate, 4), (op_sync, 3), (op_close, 10),
    (op_dup, 2), (op_rename, 3), (op_link, 3), (op_unlink, 4), (op_chmod, 2), (op_mmap, 3),
    (op_read_name, 6), (op_truncate_name, 2), (op_copy_range, 2), (op_mmap_read, 2),
]
if FALLOCATE:
    OPS += [(op_fallocate, 4)]
if SEEK:
    OPS += [(op_seek_map, 3)]
if META:
    OPS += [(op_setxattr, 4), (op_getxattr, 3), (op_listxattr, 2), (op_removexattr, 2), (op_utime, 4),
            (op_times, 5), (op_chown, 2), (op_chmod_name, 2), (op_symlink, 2), (op_readlink, 1),
            (op_stat_follow, 2)]
if USER:
    OPS += [(op_chmod_dir, 2), (op_chgrp, 2), (op_owner, 3)]
if DIRS:
    OPS += [(op_mkdir, 3), (op_rmdir, 3), (op_rename_dir, 4), (op_listdir, 2), (op_stat_dir, 2)]
FNS = [f for f, w in OPS for _ in range(w)]

def note_shared():
    """Marks descriptions whose file has another name or another description now (see Desc)."""
    stats = [(h, os.fstat(h.fds[0])) for h in handles]
    by_ino = {}
    for h, st in stats:
        by_ino.setdefault(st.st_ino, set()).add(id(h.desc))
    for h, st in stats:
        if st.st_nlink != 1 or len(by_ino[st.st_ino]) > 1:
            h.desc.shared = True


for d in DIRS[:2]:
    for r in (ref_dir, test_dir):
        os.mkdir(os.path.join(r, d))
if USER:
    os.umask(0o022)
    for r in (ref_dir, test_dir):
        os.chmod(r, 0o1777)
        # The user must reach both: search permission on every directory above them.
        up = os.path.dirname(os.path.abspath(r))
        while up != '/':
            m = stat.S_IMODE(os.stat(up).st_mode)
            if m & 0o011 != 0o011:
                os.chmod(up, m | 0o011)
            up = os.path.dirname(up)
for op_index in range(n_ops):
    if USER and rng.random() < 0.5:
        as_user(rng.choice(FNS))
    else:
        rng.choice(FNS)()
    if len(handles) > 12:
        op_close()
    note_shared()

while handles:
    op_close()
for name in DIRS:
    op_index += 1
    pr, pt = paths(name)
    both('final lstat %s' % name, lambda: os.lstat(pr), lambda: os.lstat(pt), st_norm)
for name in NAMES:
    op_index += 1
    pr, pt = paths(name)
    both('final lstat %s' % name, lambda: os.lstat(pr), lambda: os.lstat(pt), st_norm)
    if os.path.lexists(pr):
        both('final content %s' % name, lambda: open(pr, 'rb').read(), lambda: open(pt, 'rb').read())

print(json.dumps({'ops': n_ops, 'seed': seed, 'mismatches': mismatches, 'known': known}))
sys.exit(1 if mismatches else 0)
