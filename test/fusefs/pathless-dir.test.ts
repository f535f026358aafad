import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';

// fuse-native level 28 (docs/architecture.md, "Directories removed while open"): a directory
// removed (rmdir) or renamed over while a descriptor of it is open has a kernel inode but no
// path in high-level libfuse, and the kernel sends fstat(2), fchmod, fchown and futimens through
// that descriptor as GETATTR and SETATTR without a handle. libfuse answered ESTALE (-116); a
// local filesystem answers them (bench/differential.mjs seed 47025: fchmod of a directory
// renamed over). Each program runs in the mount and in a plain directory of the same
// filesystem, which is the oracle; the expectations below name what both must say.
const REMOVED = `
import errno, json, os, stat
def attempt(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
out = {}
for how in ('rmdir', 'renamedOver', 'nested', 'movedFirst'):
    if how == 'nested':
        os.makedirs('n/inner')
        fd = os.open('n/inner', os.O_RDONLY | os.O_DIRECTORY)
        os.rmdir('n/inner')
        os.rmdir('n')
    elif how == 'movedFirst':
        # Its parent renamed, then itself, then removed: the removal finds it by its new path.
        os.makedirs('p/q')
        fd = os.open('p/q', os.O_RDONLY | os.O_DIRECTORY)
        os.rename('p', 'p2')
        os.rename('p2/q', 'p2/q2')
        os.mkdir('p3')
        os.rename('p3', 'p2/q2')
        os.rmdir('p2/q2')
        os.rmdir('p2')
    else:
        os.mkdir('r')
        fd = os.open('r', os.O_RDONLY | os.O_DIRECTORY)
        if how == 'rmdir':
            os.rmdir('r')
        else:
            os.mkdir('r2')
            os.rename('r2', 'r')
    seen = {}
    st = attempt(lambda: os.fstat(fd))
    seen['fstat'] = st if isinstance(st, str) else [stat.S_ISDIR(st.st_mode), st.st_nlink]
    seen['fchmod'] = attempt(lambda: os.fchmod(fd, 0o1701) or 'ok')
    seen['fchown'] = attempt(lambda: os.fchown(fd, 1000, 1001) or 'ok')
    seen['futimens'] = attempt(lambda: os.utime(fd, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321)) or 'ok')
    st = attempt(lambda: os.fstat(fd))
    seen['after'] = st if isinstance(st, str) else [oct(st.st_mode & 0o7777), st.st_uid, st.st_gid,
                                                    str(st.st_atime_ns), str(st.st_mtime_ns), st.st_nlink]
    seen['list'] = attempt(lambda: os.listdir(fd))
    seen['create'] = attempt(lambda: os.open('x', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd) and 'ok')
    os.close(fd)
    out[how] = seen
# A directory with a path: changes through its descriptor go by the path, as before (the
# primary sees them under the directory's new name).
os.mkdir('live')
fd = os.open('live', os.O_RDONLY)
os.fchmod(fd, 0o750)
os.rename('live', 'moved')
os.fchmod(fd, 0o710)
out['live'] = [oct(os.fstat(fd).st_mode & 0o777), oct(os.stat('moved').st_mode & 0o777), os.fstat(fd).st_nlink]
os.close(fd)
print(json.dumps(out, sort_keys=True))
`;

const WANT_REMOVED = {
  fstat: [true, 0],
  fchmod: 'ok',
  fchown: 'ok',
  futimens: 'ok',
  after: ['0o1701', 1000, 1001, '1500000000123456789', '1600000000987654321', 0],
  list: [],
  create: 'ENOENT',
};

// Many directories opened, half of them removed while open (each then gets a descriptor) and
// all closed: the server keeps none of those descriptors.
const MANY = `
import os
for i in range(300):
    os.mkdir('m%d' % i)
fds = [os.open('m%d' % i, os.O_RDONLY | os.O_DIRECTORY) for i in range(300)]
for i in range(0, 300, 2):
    os.rmdir('m%d' % i)
for fd in fds:
    os.fstat(fd)
    os.close(fd)
print('done')
`;

// Several processes at once, each in its own directory tree, with a seeded random order of
// renames of the directory and its parent, renames onto it and removals while a descriptor of
// it is open (a second descriptor of the same directory now and then): once removed, fstat says
// nlink 0 and fchmod works, every time.
const CONCURRENT = `
import errno, json, os, random, sys
rng = random.Random(int(sys.argv[1]))
me = 'w' + sys.argv[1]
os.mkdir(me)
bad = []
done = 0
for i in range(int(sys.argv[2])):
    parent = '%s/p%d' % (me, i)
    os.makedirs(parent + '/d')
    fds = [os.open(parent + '/d', os.O_RDONLY | os.O_DIRECTORY)]
    if rng.random() < 0.3:
        fds.append(os.open(parent + '/d', os.O_RDONLY | os.O_DIRECTORY))
    where = parent + '/d'
    for _ in range(rng.randrange(3)):
        if rng.random() < 0.5:
            os.rename(parent, parent + 'x')
            parent += 'x'
            where = parent + '/' + where.rsplit('/', 1)[1]
        else:
            new = parent + '/e%d' % rng.randrange(100)
            os.rename(where, new)
            where = new
    if rng.random() < 0.5:
        os.rmdir(where)
    else:
        os.mkdir(parent + '/over')
        os.rename(parent + '/over', where)
        os.rmdir(where)
    for fd in fds:
        try:
            st = os.fstat(fd)
            os.fchmod(fd, 0o700)
            if st.st_nlink != 0 or (os.fstat(fd).st_mode & 0o777) != 0o700:
                bad.append([i, where, st.st_nlink])
        except OSError as e:
            bad.append([i, where, errno.errorcode[e.errno]])
        os.close(fd)
    os.rmdir(parent)
    done += 1
print(json.dumps({'done': done, 'bad': bad[:5], 'badCount': len(bad)}))
`;

function serverFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The server's descriptors once down to `before`, or after 5 s (RELEASEDIR goes behind close(2)). */
async function serverFdsAfter(pid: number, before: number): Promise<number> {
  let n = serverFds(pid);
  for (let i = 0; i < 50 && n > before; i++) {
    await new Promise((r) => setTimeout(r, 100));
    n = serverFds(pid);
  }
  return n;
}

describe('descriptors of directories removed or renamed over (libfuse3)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', '3']);
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('fstat, fchmod, fchown and futimens answer through the descriptor as on a local filesystem', async () => {
    await pyIn(fx.mnt, "import os; os.mkdir('rd')");
    await pyIn(fx.plain, "import os; os.mkdir('rd')");
    const mnt = JSON.parse(await pyIn(`${fx.mnt}/rd`, REMOVED, { timeoutMs: 60_000 }));
    const plain = JSON.parse(await pyIn(`${fx.plain}/rd`, REMOVED, { timeoutMs: 60_000 }));
    expect(plain).toEqual({
      rmdir: WANT_REMOVED,
      renamedOver: WANT_REMOVED,
      nested: WANT_REMOVED,
      movedFirst: WANT_REMOVED,
      live: ['0o710', '0o710', 2],
    });
    expect(mnt).toEqual(plain);
    // The live directory's change reached the primary under its new name.
    const st = JSON.parse(
      await pyIn(fx.primary, "import json, os; print(json.dumps(oct(os.stat('rd/moved').st_mode & 0o777)))"),
    );
    expect(st).toBe('0o710');
  }, 120_000);

  it('holds under several processes renaming and removing open directories at once', async () => {
    const pid = fx.srv.proc.pid!;
    await pyIn(fx.mnt, "import os; os.mkdir('cc')");
    const before = serverFds(pid);
    const runs = await Promise.all(
      [1, 2, 3, 4].map((seed) =>
        pyIn(`${fx.mnt}/cc`, CONCURRENT, { args: [String(seed), '150'], timeoutMs: 120_000 }),
      ),
    );
    for (const out of runs) expect(JSON.parse(out)).toEqual({ done: 150, bad: [], badCount: 0 });
    expect(await serverFdsAfter(pid, before)).toBeLessThanOrEqual(before);
  }, 180_000);

  it('keeps no descriptor once the handles closed', async () => {
    const pid = fx.srv.proc.pid!;
    await pyIn(fx.mnt, "import os; os.mkdir('many')");
    const before = serverFds(pid);
    expect((await pyIn(`${fx.mnt}/many`, MANY, { timeoutMs: 60_000 })).trim()).toBe('done');
    expect(await serverFdsAfter(pid, before)).toBeLessThanOrEqual(before);
  }, 120_000);
});

describe('with the pathless wrappers off (TWINFS_PATHLESS_HANDLES=0)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', '3'], { TWINFS_PATHLESS_HANDLES: '0' });
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('fstat of a removed directory fails as high-level libfuse fails it (ESTALE)', async () => {
    const out = await pyIn(
      fx.mnt,
      `
import errno, os
os.mkdir('r')
fd = os.open('r', os.O_RDONLY | os.O_DIRECTORY)
os.rmdir('r')
try:
    os.fstat(fd)
    print('ok')
except OSError as e:
    print(errno.errorcode[e.errno])
`,
    );
    expect(out.trim()).toBe('ESTALE');
  }, 60_000);
});
