import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { libfuseFromEnv } from '../../src/fusefs/native-options.js';
import { waitFor } from '../helpers/mounts.js';
import {
  inBoth,
  mountFixture,
  type PosixFixture,
  type ProbeStep,
  probe,
  pyIn,
  shInOk,
} from '../helpers/posix.js';
import { sh } from '../helpers/proc.js';

// Files, directories and the errno of every failure, checked against a plain directory on the
// primary's own filesystem (the oracle) and against the errno POSIX/Linux documents.

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture();
});
afterAll(async () => {
  await fx?.close();
});

/** Builds the same tree in the plain directory and in the mount, each under sub. */
async function setupBoth(sub: string, script: string): Promise<{ plain: string; mnt: string }> {
  const dirs = { plain: path.join(fx.plain, sub), mnt: path.join(fx.mnt, sub) };
  for (const d of Object.values(dirs))
    await shInOk(path.dirname(d), `mkdir ${sub} && cd ${sub} && ${script}`);
  return dirs;
}

/** Runs the probe in both trees; each must give exactly the expected results. */
async function expectProbe(dirs: { plain: string; mnt: string }, steps: Array<[...ProbeStep, string]>) {
  const expected = Object.fromEntries(steps.map(([label, , want]) => [label, want]));
  const pySteps = steps.map(([label, code]): ProbeStep => [label, code]);
  const plain = await probe(dirs.plain, pySteps);
  // The oracle must agree with the expectation, or the table itself is wrong.
  expect(plain).toEqual(expected);
  expect(await probe(dirs.mnt, pySteps)).toEqual(expected);
}

/** A listing of a tree with types, sizes, modes and contents of regular files. */
const TREE = `find . -mindepth 1 -printf '%y %p %s %m\\n' | sort; find . -type f | sort | xargs -r sha1sum`;

describe('namespace operations and their errnos', () => {
  it('mkdir, rmdir, unlink, open, truncate and stat fail with the local errno', async () => {
    const dirs = await setupBoth('ns', 'mkdir -p d/sub e full/x && echo a > f && touch full/x/y');
    await expectProbe(dirs, [
      ['mkdir existing dir', "os.mkdir('d')", 'EEXIST'],
      ['mkdir over a file', "os.mkdir('f')", 'EEXIST'],
      ['mkdir in a missing dir', "os.mkdir('nope/x')", 'ENOENT'],
      ['mkdir below a file', "os.mkdir('f/x')", 'ENOTDIR'],
      ['mkdir name too long', "os.mkdir('n' * 256)", 'ENAMETOOLONG'],
      ['mkdir new', "os.mkdir('new', 0o750)", 'OK'],
      ['rmdir non-empty', "os.rmdir('full')", 'ENOTEMPTY'],
      ['rmdir missing', "os.rmdir('nope')", 'ENOENT'],
      ['rmdir a file', "os.rmdir('f')", 'ENOTDIR'],
      ['rmdir empty', "os.rmdir('e')", 'OK'],
      ['unlink a dir', "os.unlink('d')", 'EISDIR'],
      ['unlink missing', "os.unlink('nope')", 'ENOENT'],
      ['unlink below a file', "os.unlink('f/x')", 'ENOTDIR'],
      ['stat missing', "os.stat('nope')", 'ENOENT'],
      ['stat below a file', "os.stat('f/x')", 'ENOTDIR'],
      ['listdir a file', "os.listdir('f')", 'ENOTDIR'],
      ['listdir missing', "os.listdir('nope')", 'ENOENT'],
      ['open missing', "os.open('nope', os.O_RDONLY)", 'ENOENT'],
      ['open O_EXCL existing', "os.open('f', os.O_CREAT | os.O_EXCL | os.O_WRONLY)", 'EEXIST'],
      ['open a dir for writing', "os.open('d', os.O_WRONLY)", 'EISDIR'],
      ['open a file O_DIRECTORY', "os.open('f', os.O_RDONLY | os.O_DIRECTORY)", 'ENOTDIR'],
      ['open below a file', "os.open('f/x', os.O_RDONLY)", 'ENOTDIR'],
      ['create in a missing dir', "os.open('nope/x', os.O_CREAT | os.O_WRONLY)", 'ENOENT'],
      ['create name too long', "os.open('n' * 256, os.O_CREAT | os.O_WRONLY)", 'ENAMETOOLONG'],
      ['truncate a dir', "os.truncate('d', 0)", 'EISDIR'],
      ['truncate missing', "os.truncate('nope', 0)", 'ENOENT'],
      ['readlink a file', "os.readlink('f')", 'EINVAL'],
      ['write to a read-only fd', "os.write(os.open('f', os.O_RDONLY), b'x')", 'EBADF'],
      ['read from a write-only fd', "os.read(os.open('f', os.O_WRONLY), 1)", 'EBADF'],
      ['read a dir', "os.read(os.open('d', os.O_RDONLY), 1)", 'EISDIR'],
    ]);
    const a = await inBoth(fx, `cd ns && ${TREE}`);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain('d ./new 4096 750');
  });

  it('rename follows the local rules for files and directories', async () => {
    const dirs = await setupBoth(
      'rn',
      'mkdir -p d/sub e1 e2 full/x && echo f > f && echo g > g && echo h > h && touch full/x/y',
    );
    await expectProbe(dirs, [
      ['file over file', "os.rename('f', 'g')", 'OK'],
      ['dir over empty dir', "os.rename('e1', 'e2')", 'OK'],
      ['dir over non-empty dir', "os.rename('e2', 'full')", 'ENOTEMPTY'],
      ['file over dir', "os.rename('g', 'd')", 'EISDIR'],
      ['dir over file', "os.rename('d', 'h')", 'ENOTDIR'],
      ['dir into its own subdir', "os.rename('d', 'd/sub/inner')", 'EINVAL'],
      ['missing source', "os.rename('nope', 'x')", 'ENOENT'],
      ['into a missing dir', "os.rename('h', 'nope/h')", 'ENOENT'],
      ['below a file', "os.rename('h', 'g/h')", 'ENOTDIR'],
      ['onto itself', "os.rename('h', 'h')", 'OK'],
      // Across filesystems (/proc can never receive it): the kernel refuses before FUSE.
      ['to another filesystem', "os.rename('h', '/proc/twinfs-probe')", 'EXDEV'],
      ['dir to a new name', "os.rename('d', 'd2')", 'OK'],
      ['file into a dir', "os.rename('h', 'd2/sub/h')", 'OK'],
    ]);
    const a = await inBoth(fx, `cd rn && ${TREE} && cat g d2/sub/h`);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toMatch(/f\nh\n$/);
  });

  it('readdir lists every entry, . and .. included, as a local directory does', async () => {
    const script = `mkdir big && cd big && for i in $(seq 1 300); do echo $i > "f $i"; done &&
      mkdir sub && touch .hidden 'uni-ç€' && ln -s sub link && mkfifo fifo && ls -a1 && ls -a1 sub`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    const names = a.mnt.stdout.split('\n');
    expect(names.slice(0, 2)).toEqual(['.', '..']);
    expect(names).toContain('f 300');
    expect(names).toContain('uni-ç€');
    // The test process may read the mount asynchronously: Node's listing agrees with the primary's.
    expect((await fsp.readdir(path.join(fx.mnt, 'big'))).sort()).toEqual(
      (await fsp.readdir(path.join(fx.primary, 'big'))).sort(),
    );
  });

  it('stat reports the type, mode, size, links and owner of every kind of entry', async () => {
    const script = `mkdir st && cd st && umask 022 && printf 12345 > f && mkdir d && ln -s f l && mkfifo p &&
      chmod 4755 f && mkdir -m 1777 t && umask 077 && touch u && stat -c '%n %F %a %s %h %u %g' f d l p t u`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain('f regular file 4755 5 1 0 0');
    expect(a.mnt.stdout).toContain('u regular empty file 600 0 1 0 0');
  });

  it('st_blocks of freshly written files, dense and sparse, matches the local filesystem', async () => {
    // Read at once, while the data is still cached: du and cp --sparse decide from st_blocks.
    const script = `mkdir blk && cd blk && head -c 100000 /dev/zero | tr '\\0' x > dense &&
      dd if=/dev/zero of=sparse bs=1 count=1 seek=5000000 status=none && : > empty &&
      stat -c '%n %s %b' dense sparse empty`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toMatch(/^dense 100000 \d+\nsparse 5000001 \d+\nempty 0 0\n$/);
  });
});

describe('file data', () => {
  it('reads back what was written, before and after close, at any offset', async () => {
    const program = `
import hashlib, os
fd = os.open('data', os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
os.write(fd, b'hello world')
os.pwrite(fd, b'XY', 3)
os.pwrite(fd, bytes(range(256)) * 1000, 70000)
print(os.pread(fd, 11, 0), os.fstat(fd).st_size, os.stat('data').st_size)
os.lseek(fd, 0, os.SEEK_SET)
print(hashlib.sha1(os.read(fd, 1 << 20)).hexdigest())
os.close(fd)
with open('data', 'rb') as f:
    d = f.read()
print(len(d), hashlib.sha1(d).hexdigest(), d[11:70000].count(0))
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt).toContain("b'helXY world' 326000 326000");
  });

  it('fsync and fdatasync return only once the data is on the primary', async () => {
    const program = `
import os, sys
primary = sys.argv[1]
for name, sync in (('fs1', os.fsync), ('fs2', os.fdatasync)):
    fd = os.open(name, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, name.encode() * 10000)
    sync(fd)
    with open(os.path.join(primary, name), 'rb') as f:
        print(name, f.read() == name.encode() * 10000)
    os.close(fd)
ro = os.open('fs1', os.O_RDONLY); os.fsync(ro); os.close(ro)
d = os.open('.', os.O_RDONLY | os.O_DIRECTORY); os.fsync(d); os.close(d)
print('synced ro and dir')
`;
    expect(await pyIn(fx.mnt, program, { args: [fx.primary] })).toBe(
      'fs1 True\nfs2 True\nsynced ro and dir\n',
    );
  });

  it('truncate and ftruncate grow and shrink files holding cached data', async () => {
    const program = `
import hashlib, os
fd = os.open('tr', os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b'x' * 10000)
os.ftruncate(fd, 100)                               # shrink below cached data
print(os.fstat(fd).st_size, os.pread(fd, 20000, 0).count(b'x'))
os.write(fd, b'y')                                  # at offset 10000: file grows, hole between
os.ftruncate(fd, 20000)                             # grow
d = os.pread(fd, 30000, 0)
print(os.fstat(fd).st_size, len(d), d.count(b'x'), d.count(b'y'), d.count(0))
other = os.open('tr', os.O_WRONLY)
os.pwrite(other, b'z' * 500, 0)                     # cached through a second descriptor
os.truncate('tr', 50)                               # truncate by path
print(os.stat('tr').st_size, os.pread(fd, 1000, 0))
os.ftruncate(fd, 0); os.write(fd, b'after')         # to zero and rewrite (offset is 10001)
print(os.fstat(fd).st_size, os.pread(fd, 5, 10001))
os.close(other)
t = os.open('tr', os.O_RDWR | os.O_TRUNC)           # O_TRUNC while cached data exists
print(os.fstat(fd).st_size, os.pread(fd, 100, 0))
os.close(t); os.close(fd)
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt.split('\n')[0]).toBe('100 100');
    const shell = `printf abcdef > ts && truncate -s 3 ts && cat ts && truncate -s 8 ts && od -An -c ts`;
    const a = await inBoth(fx, shell);
    expect(a.mnt).toEqual(a.plain);
    // After a sync the primary holds exactly what the plain directory holds.
    await pyIn(fx.mnt, "import os\nfd = os.open('tr', os.O_RDONLY)\nos.fsync(fd)");
    expect(await fsp.readFile(path.join(fx.primary, 'tr'))).toEqual(
      await fsp.readFile(path.join(fx.plain, 'tr')),
    );
  });

  it('truncate by path of closed files, small and past 64 MiB, keeps what it should', async () => {
    // The server truncates a closed file up to 64 MiB on its JS thread and a larger one on the
    // thread pool (volume-ops.ts, SYNC_TRUNCATE_BYTES): both sides of that line, growing and
    // shrinking, against the plain directory.
    const program = `
import hashlib, os
def put(name, data, at=None):                       # written, synced and closed: nothing cached
    with open(name, 'r+b' if at is not None else 'wb') as f:
        if at is not None: f.seek(at)
        f.write(data); f.flush(); os.fsync(f.fileno())
def show(name):
    with open(name, 'rb') as f: d = f.read()
    print(name, os.stat(name).st_size, len(d), hashlib.sha1(d).hexdigest()[:12])
put('trp-small', bytes(range(256)) * 40)
os.truncate('trp-small', 1000); show('trp-small')           # shrink, file closed
os.truncate('trp-small', 5000); show('trp-small')           # grow: a hole after byte 1000
put('trp-big', b'head' * 1000)
os.truncate('trp-big', 100 << 20); show('trp-big')          # grow past 64 MiB (a 4 KB file: JS thread)
put('trp-big', b'tail', (100 << 20) - 4)
os.truncate('trp-big', 70 << 20); show('trp-big')           # shrink a 100 MiB file (thread pool)
os.truncate('trp-big', 2000); show('trp-big')               # 70 MiB to 2000 bytes (thread pool)
os.truncate('trp-big', 0); show('trp-big')
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt.split('\n')).toContain(
      `trp-big ${70 << 20} ${70 << 20} ${plain.split('\n')[3]!.split(' ')[3]}`,
    );
    // After a sync the primary holds exactly what the plain directory holds.
    await pyIn(fx.mnt, "import os\nfor n in ('trp-small', 'trp-big'): os.fsync(os.open(n, os.O_RDONLY))");
    expect(await fsp.readFile(path.join(fx.primary, 'trp-small'))).toEqual(
      await fsp.readFile(path.join(fx.plain, 'trp-small')),
    );
    expect((await fsp.stat(path.join(fx.primary, 'trp-big'))).size).toBe(0);
  });

  it('O_APPEND writes go to the end, also past another descriptor’s writes', async () => {
    const program = `
import os
with open('ap', 'w') as f: f.write('start\\n')
a = os.open('ap', os.O_WRONLY | os.O_APPEND)
b = os.open('ap', os.O_RDWR)
os.write(a, b'one\\n')
os.pwrite(b, b'grown past the end\\n', 10)
os.write(a, b'two\\n')
os.lseek(a, 0, os.SEEK_SET); os.write(a, b'three\\n')   # seek is ignored with O_APPEND
os.close(a); os.close(b)
print(repr(open('ap').read()))
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt).toContain('grown past the end\\ntwo\\nthree\\n');
    const a = await inBoth(
      fx,
      `echo first > sh-ap && echo second >> sh-ap && echo third >> sh-ap && cat sh-ap`,
    );
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toBe('first\nsecond\nthird\n');
  });

  it('sparse regions read as zeros, cached or written back', async () => {
    const program = `
import hashlib, os
fd = os.open('sparse', os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
os.pwrite(fd, b'head', 0)
os.pwrite(fd, b'mid', 300000)
os.pwrite(fd, b'end', 5 << 20)
def show(tag):
    d = os.pread(fd, 6 << 20, 0)
    print(tag, len(d), d[:4], d[300000:300003], d[-3:], d.count(0), os.pread(fd, 10, 1000), os.pread(fd, 10, 4 << 20))
show('cached')
os.fsync(fd)
show('synced')
os.ftruncate(fd, 7 << 20)
show('grown')
os.close(fd)
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt).toContain(`cached 5242883 b'head' b'mid' b'end' 5242873`);
    const a = await inBoth(
      fx,
      `dd if=/dev/zero of=dd-sparse bs=1 count=1 seek=1000000 2>/dev/null && od -An -tx1 dd-sparse | sort -u`,
    );
    expect(a.mnt).toEqual(a.plain);
  });

  it('a reader sees a file grow while another process writes it, never garbage', async () => {
    const writer = `
import os, sys, time
fd = os.open('growing', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
for i in range(300):
    os.write(fd, bytes([i % 251 + 1]) * 4096)
    time.sleep(0.002)
os.close(fd)
open('growing.done', 'w').close()
`;
    const reader = `
import os, time
while not os.path.exists('growing'): time.sleep(0.001)
sizes, bad = set(), 0
while True:
    done = os.path.exists('growing.done')
    with open('growing', 'rb') as f: d = f.read()
    sizes.add(len(d))
    for k in range(len(d) // 4096):
        if d[k * 4096:(k + 1) * 4096] != bytes([k % 251 + 1]) * 4096: bad += 1
    if len(d) % 4096: bad += 1
    if done: break
print(len(d), bad, len(sizes) >= 3)
`;
    const w = pyIn(fx.mnt, writer);
    const out = await pyIn(fx.mnt, reader);
    await w;
    expect(out).toBe(`${300 * 4096} 0 True\n`);
  });

  it('an unlinked or renamed open file keeps working through its descriptor', async () => {
    const program = `
import os
fd = os.open('gone', os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b'abc' * 1000)
os.unlink('gone')
print('gone' in os.listdir('.'), os.path.exists('gone'))
os.write(fd, b'more')
print(len(os.pread(fd, 10000, 0)), os.pread(fd, 3, 0), os.fstat(fd).st_size, os.fstat(fd).st_nlink)
os.close(fd)
fd = os.open('moving', os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b'abc')
os.rename('moving', 'moved')
os.write(fd, b'def')
os.close(fd)
print(open('moved').read(), os.path.exists('moving'))
with open('victim', 'w') as f: f.write('old')
fd = os.open('replacement', os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b'new')
os.rename('replacement', 'victim')
os.write(fd, b'+')
print(open('victim').read())
os.close(fd)
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt).toBe("False False\n3004 b'abc' 3004 0\nabcdef False\nnew+\n");
    // libfuse keeps an unlinked open file as .fuse_hidden*; it must be gone once closed.
    const clean = await waitFor(
      async () => !(await fsp.readdir(fx.primary)).some((n) => n.startsWith('.fuse_hidden')),
      5000,
    );
    expect(clean).toBe(true);
  });

  it('large sequential writes reach the server as large FUSE writes (dd bs=1M)', async (ctx) => {
    // Optional check: needs strace (Debian package strace) to watch the server's /dev/fuse reads.
    if ((await sh('command -v strace')).code !== 0) ctx.skip();
    const pid = fx.srv.proc.pid!;
    const log = path.join(path.dirname(fx.plain), 'strace.log');
    const tracer = spawn(
      'strace',
      ['-f', '-e', 'trace=read', '-e', 'signal=none', '-o', log, '-p', String(pid)],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    try {
      let err = '';
      tracer.stderr!.on('data', (d) => (err += d.toString()));
      expect(await waitFor(async () => /attached/.test(err), 10_000)).toBe(true);
      await new Promise((r) => setTimeout(r, 200));
      await shInOk(fx.mnt, 'dd if=/dev/zero of=dd-1m bs=1M count=16 conv=fsync status=none');
    } finally {
      tracer.kill('SIGINT');
      await new Promise((r) => tracer.once('exit', r));
    }
    // Reads of /dev/fuse return one request each; a 128 KiB write request is 131072 bytes of
    // data plus its header (libfuse2's largest; libfuse3 with max_write=1M sends 1 MiB ones).
    // Nothing else the server reads with read(2) comes near that size.
    const sizes = (await fsp.readFile(log, 'utf8'))
      .split('\n')
      .filter((l) => /\bread(\(| resumed)/.test(l))
      .map((l) => Number(/= (\d+)$/.exec(l)?.[1] ?? 0));
    const large = sizes.filter((n) => n >= 131072);
    expect(large.reduce((a, n) => a + n, 0)).toBeGreaterThanOrEqual(16 * 1048576);
    if (libfuseFromEnv() === 3) expect(large.filter((n) => n >= 1048576).length).toBeGreaterThanOrEqual(14);
  });
});
