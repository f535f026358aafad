import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/mounts.js';
import { inBoth, mountFixture, type PosixFixture, pyIn, shInOk } from '../helpers/posix.js';
import { tempDirs } from '../helpers/server.js';

// Times: utimens with one or both times (fuse-native 2.2.6 lost these; twinfs's patched build
// delivers them), the tools that preserve times, and mtime staying put across write-back.
// A short write-back delay keeps the write-back cases fast.

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture(['--writeback-ms', '300']);
});
afterAll(async () => {
  await fx?.close();
});

/** atime and mtime of a path, seconds with 3 decimals (enough for these cases). */
async function times(dir: string, name: string, follow = false): Promise<{ a: string; m: string }> {
  const [a, m] = (await shInOk(dir, `stat ${follow ? '-L ' : ''}-c '%.3X %.3Y' '${name}'`)).trim().split(' ');
  return { a: a!, m: m! };
}

/** 'YYYY-MM-DD hh:mm:ss' UTC as epoch seconds, 3 decimals. */
const at = (iso: string) => (Date.parse(`${iso.replace(' ', 'T')}Z`) / 1000).toFixed(3);

describe('utimens', () => {
  it('touch -m, touch -a and touch -d set exactly the times they name', async () => {
    const dir = fx.mnt;
    await shInOk(dir, 'echo x > t1 && TZ=UTC touch -d "2010-01-01 00:00:00" t1');
    expect(await times(dir, 't1')).toEqual({ a: at('2010-01-01 00:00:00'), m: at('2010-01-01 00:00:00') });
    await shInOk(dir, 'TZ=UTC touch -m -d "2001-02-03 04:05:06" t1');
    expect(await times(dir, 't1')).toEqual({ a: at('2010-01-01 00:00:00'), m: at('2001-02-03 04:05:06') });
    await shInOk(dir, 'TZ=UTC touch -a -d "2002-03-04 05:06:07" t1');
    expect(await times(dir, 't1')).toEqual({ a: at('2002-03-04 05:06:07'), m: at('2001-02-03 04:05:06') });
    await shInOk(dir, 'TZ=UTC touch -d "2003-04-05 06:07:08.123456789" t1');
    expect(await times(dir, 't1')).toEqual({ a: '1049522828.123', m: '1049522828.123' });
    // The primary holds the same times.
    expect(await times(fx.primary, 't1')).toEqual({ a: '1049522828.123', m: '1049522828.123' });
  });

  it('distinct atime and mtime, UTIME_NOW and UTIME_OMIT reach the file', async () => {
    const program = `
import os, time
with open('t2', 'w') as f: f.write('x')
os.utime('t2', ns=(1500000000_250000000, 1600000000_750000000))
st = os.stat('t2'); print(st.st_atime_ns // 1000000, st.st_mtime_ns // 1000000)
os.utime('t2', None)                              # both UTIME_NOW
st = os.stat('t2'); print(abs(st.st_atime - time.time()) < 5, abs(st.st_mtime - time.time()) < 5)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class TS(ctypes.Structure): _fields_ = [('sec', ctypes.c_long), ('nsec', ctypes.c_long)]
UTIME_NOW, UTIME_OMIT, AT_FDCWD = (1 << 30) - 1, (1 << 30) - 2, -100
def utimensat(a, m):
    if libc.utimensat(AT_FDCWD, b't2', (TS * 2)(TS(*a), TS(*m)), 0) != 0: raise OSError(ctypes.get_errno(), 'utimensat')
    st = os.stat('t2'); return st.st_atime_ns // 1000000, st.st_mtime_ns // 1000000
os.utime('t2', (1000000000, 1000000000))
print(utimensat((0, UTIME_OMIT), (1234567890, 5000000)))             # mtime only
print(utimensat((1222222222, 0), (0, UTIME_OMIT)))                   # atime only
a, m = utimensat((0, UTIME_NOW), (0, UTIME_OMIT))                    # atime now
print(abs(a / 1000 - time.time()) < 5, m)
fd = os.open('t2', os.O_RDONLY)
os.utime(fd, (1111111111, 1111111111))            # futimens through a descriptor
os.close(fd)
st = os.stat('t2'); print(int(st.st_atime), int(st.st_mtime))
`;
    const [plain, mnt] = [await pyIn(fx.plain, program), await pyIn(fx.mnt, program)];
    expect(mnt).toBe(plain);
    expect(mnt).toBe(
      '1500000000250 1600000000750\nTrue True\n(1000000000000, 1234567890005)\n(1222222222000, 1234567890005)\n' +
        'True 1234567890005\n1111111111 1111111111\n',
    );
  });

  it('a stat through the mount shows the primary’s times to the nanosecond', async () => {
    // Set on the primary directly: through the mount, setting times goes through Node (µs).
    // A time just below a whole second used to be rounded up into the next one.
    await shInOk(
      fx.primary,
      'echo x > ns && TZ=UTC touch -a -d "2004-04-04 04:04:04.999999999" ns && ' +
        'TZ=UTC touch -m -d "2005-05-05 05:05:05.123456789" ns && mkdir nsd && ' +
        'TZ=UTC touch -d "2006-06-06 06:06:06.999999600" nsd',
    );
    const fmt = `stat -c '%n %X %Y %Z %x %y %z' ns nsd`;
    const onMount = await shInOk(fx.mnt, fmt);
    expect(onMount).toBe(await shInOk(fx.primary, fmt));
    expect(onMount).toContain('ns 1081051444 1115269505 ');
    expect(onMount).toContain('04:04:04.999999999 +0000 2005-05-05 05:05:05.123456789 +0000');
    // ls -l --full-time lists through readdir + getattr: the same.
    const ls = `ls -ld --time-style=+%s.%N ns nsd | cut -d' ' -f6-`;
    expect(await shInOk(fx.mnt, ls)).toBe(await shInOk(fx.primary, ls));
  });

  it('times set through the mount land to the nanosecond; setting one leaves the other exactly', async () => {
    const fmt = `TZ=UTC stat -c '%x|%y' exact`;
    await shInOk(fx.mnt, 'echo x > exact && TZ=UTC touch -d "2007-07-07 07:07:07.123456789" exact');
    await shInOk(fx.mnt, 'TZ=UTC touch -m -d "2008-08-08 08:08:08.987654321" exact');
    const want = '2007-07-07 07:07:07.123456789 +0000|2008-08-08 08:08:08.987654321 +0000\n';
    expect(await shInOk(fx.primary, fmt)).toBe(want);
    expect(await shInOk(fx.mnt, fmt)).toBe(want);
    // Written-back data moves mtime back to the time of the write, and leaves atime alone.
    await shInOk(fx.mnt, 'echo more >> exact');
    expect(
      await waitFor(async () => (await shInOk(fx.primary, 'stat -c %s exact')).trim() === '7', 5000),
    ).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    const [a] = (await shInOk(fx.primary, fmt)).split('|');
    expect(a).toBe('2007-07-07 07:07:07.123456789 +0000');
  });

  it('times before 1970 are set and shown as on a local filesystem', async () => {
    const script =
      'echo x > old && TZ=UTC touch -d "1960-01-01 00:00:00.5" old && ' +
      'TZ=UTC touch -m -d "1901-12-14 00:00:00.25" old && mkdir oldd && ' +
      'TZ=UTC touch -d "1969-12-31 23:59:59.999999999" oldd && TZ=UTC stat -c "%n %x|%y|%X|%Y" old oldd';
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain(
      'old 1960-01-01 00:00:00.500000000 +0000|1901-12-14 00:00:00.250000000 +0000|',
    );
    expect(a.mnt.stdout).toContain('oldd 1969-12-31 23:59:59.999999999 +0000|');
  });

  it('touch -h sets the times of a symlink itself, not of its target', async () => {
    await shInOk(
      fx.mnt,
      'echo x > target && TZ=UTC touch -d "2011-01-01 00:00:00" target && ln -s target sym',
    );
    await shInOk(fx.mnt, 'TZ=UTC touch -h -d "2012-06-06 12:00:00" sym');
    expect((await times(fx.mnt, 'sym')).m).toBe(at('2012-06-06 12:00:00'));
    expect((await times(fx.mnt, 'target')).m).toBe(at('2011-01-01 00:00:00'));
  });

  it('a write after setting the times moves mtime to now; chmod moves ctime', async () => {
    await shInOk(fx.mnt, 'echo x > t3 && touch -d "2001-01-01" t3 && echo more >> t3');
    const now = Date.now() / 1000;
    expect(Math.abs(Number((await times(fx.mnt, 't3')).m) - now)).toBeLessThan(5);
    await shInOk(fx.mnt, 'touch -d "2001-01-01" t3');
    const c0 = Number(await shInOk(fx.mnt, "stat -c '%.3Z' t3"));
    await new Promise((r) => setTimeout(r, 20));
    await shInOk(fx.mnt, 'chmod 600 t3');
    expect(Number(await shInOk(fx.mnt, "stat -c '%.3Z' t3"))).toBeGreaterThan(c0);
  });

  it('creating an entry updates the directory’s mtime', async () => {
    await shInOk(fx.mnt, 'mkdir dm && TZ=UTC touch -d "2001-01-01 00:00:00" dm');
    expect((await times(fx.mnt, 'dm')).m).toBe(at('2001-01-01 00:00:00'));
    await shInOk(fx.mnt, 'touch dm/new');
    expect(Math.abs(Number((await times(fx.mnt, 'dm')).m) - Date.now() / 1000)).toBeLessThan(5);
  });
});

describe('tools that preserve times', () => {
  // The source tree lives outside the mount, with whole-second times (%T@ compares exactly).
  const SRC = `rm -rf src && mkdir -p src/sub && echo one > src/a && echo two > src/sub/b && ln -s a src/l &&
    dd if=/dev/urandom of=src/big bs=64k count=20 status=none &&
    TZ=UTC touch -d "2001-01-01 01:01:01" src/a src/big && TZ=UTC touch -a -d "2009-09-09 09:09:09" src/a &&
    TZ=UTC touch -m -d "2002-02-02 02:02:02" src/sub/b && TZ=UTC touch -h -d "2005-05-05 05:05:05" src/l &&
    TZ=UTC touch -d "2003-03-03 03:03:03" src/sub src && chmod 640 src/a`;
  const LIST = `find . -printf '%p %y %m %T@\\n' | sort`;
  // cp -p of single files: the new directory itself has a fresh mtime.
  const LIST_FILES = `find . -mindepth 1 -printf '%p %y %m %T@\\n' | sort`;
  let src: string;
  let expected: string;
  beforeAll(async () => {
    src = path.dirname(fx.plain);
    await shInOk(src, SRC);
    expected = await shInOk(path.join(src, 'src'), LIST);
  });

  for (const [tool, out, cmd] of [
    ['cp -p', 'cpp', 'mkdir cpp && cp -p "$SRC/a" "$SRC/big" cpp/'],
    ['cp -a', 'cpa', 'cp -a "$SRC" cpa'],
    ['rsync -a (-t)', 'rs', 'rsync -a "$SRC/" rs/'],
    ['tar x', 'tx', 'mkdir tx && tar -C "$SRC" -cf - . | tar -C tx -xf -'],
  ] as const) {
    it(`${tool} keeps modification times`, async () => {
      const list = tool === 'cp -p' ? LIST_FILES : LIST;
      const script = `SRC='${path.join(src, 'src')}' && ${cmd} && cd ${out} && ${list}`;
      const a = await inBoth(fx, script);
      expect(a.mnt).toEqual(a.plain);
      if (tool === 'cp -p') {
        expect(a.mnt.stdout).toContain('./a f 640 978310861.0000000000\n');
        expect(a.mnt.stdout).toContain('./big f 644 978310861.0000000000\n');
        // cp -p keeps atime too (the source's, which reading it may have moved: relatime).
        const srcTimes = await shInOk(path.join(src, 'src'), 'stat -c "%X %Y" a');
        expect(await shInOk(path.join(fx.mnt, 'cpp'), 'stat -c "%X %Y" a')).toBe(srcTimes);
      } else {
        expect(a.mnt.stdout).toBe(expected);
      }
    });
  }
});

describe('utimens of a file with cached data (mirror on, write-back held back)', () => {
  // A write-back delay no case reaches: the data stays cached until the case's fsync.
  let mx: PosixFixture;
  let t: Awaited<ReturnType<typeof tempDirs>>;
  const A = 1_000_000_000_123_456_789n;
  const M = 1_100_000_000_987_654_321n;
  beforeAll(async () => {
    t = await tempDirs('mirror', 'state');
    mx = await mountFixture([
      '--writeback-ms',
      '600000',
      '--mirror',
      t.dirs.mirror!,
      '--state-dir',
      t.dirs.state!,
    ]);
  });
  afterAll(async () => {
    await mx?.close();
    await t?.cleanup();
  });

  /** size, atime and mtime (ns) of a file, as `size atime mtime`. */
  const statNs = (file: string) =>
    pyIn(
      path.dirname(file),
      `import os\nst = os.stat('${path.basename(file)}')\nprint(st.st_size, st.st_atime_ns, st.st_mtime_ns)`,
    ).then((s) => s.trim());
  const fsyncIn = (dir: string, name: string) =>
    pyIn(dir, `import os\nfd = os.open('${name}', os.O_WRONLY)\nos.fsync(fd)\nos.close(fd)`);

  it('sets the times without writing the data back; after the write-back they are exact in primary and mirror', async () => {
    const out = await pyIn(
      mx.mnt,
      `import os
os.close(os.open('cached', os.O_CREAT | os.O_WRONLY, 0o644))  # a new file's writes skip the cache
# O_APPEND: JS's open, whose writes go to the cache (a native open's go to the primary, also
# after JS took the handle since fuse-native level 31).
fd = os.open('cached', os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_APPEND, 0o644)
os.write(fd, b'y' * 100000)
os.close(fd)
os.utime('cached', ns=(${A}, ${M}))
st = os.stat('cached'); print(st.st_size, st.st_atime_ns, st.st_mtime_ns)`,
    );
    expect(out.trim()).toBe(`100000 ${A} ${M}`);
    // The data is still only in the cache; the primary already has the times.
    expect(await statNs(path.join(mx.primary, 'cached'))).toBe(`0 ${A} ${M}`);
    await fsyncIn(mx.mnt, 'cached');
    expect(await statNs(path.join(mx.primary, 'cached'))).toBe(`100000 ${A} ${M}`);
    expect(await statNs(path.join(mx.mnt, 'cached'))).toBe(`100000 ${A} ${M}`);
    const mirrored = path.join(t.dirs.mirror!, 'data', 'cached');
    expect(await waitFor(async () => (await statNs(mirrored)) === `100000 ${A} ${M}`, 10_000)).toBe(true);
    expect(await fsp.readFile(mirrored)).toEqual(Buffer.alloc(100000, 'y'));
  });

  it('a write or a truncate after the utimens moves mtime again, and the write-back keeps what stat showed', async () => {
    for (const [name, after] of [
      ['then-write', "os.pwrite(fd, b'z' * 10, 5)"],
      ['then-truncate', 'os.ftruncate(fd, 50000)'],
    ]) {
      const shown = await pyIn(
        mx.mnt,
        `import os, time
fd = os.open('${name}', os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
os.write(fd, b'y' * 100000)
os.utime('${name}', ns=(${A}, ${M}))
time.sleep(0.01)
${after}
os.close(fd)
st = os.stat('${name}'); print(st.st_size, st.st_atime_ns, st.st_mtime_ns)`,
      );
      const [, , mtime] = shown.trim().split(' ');
      expect(mtime).not.toBe(String(M));
      expect(Math.abs(Number(BigInt(mtime!) / 1_000_000n) - Date.now())).toBeLessThan(5000);
      await fsyncIn(mx.mnt, name!);
      // After the write-back: the mount and the primary agree, to the ms with what stat showed
      // while the data was cached (a write's time is kept in ms).
      const [, , onPrimary] = (await statNs(path.join(mx.primary, name!))).split(' ');
      expect(await statNs(path.join(mx.mnt, name!))).toBe(await statNs(path.join(mx.primary, name!)));
      expect(BigInt(onPrimary!) / 1_000_000n).toBe(BigInt(mtime!) / 1_000_000n);
    }
  });

  it('a write after an mtime set ahead of now moves it back to now, cached or not, as on a local filesystem', async () => {
    // 2033: later than any write's time. ext4 (the plain directory) moves mtime to the write's
    // time; twinfs once showed the later of the two while the data was cached, and kept the
    // future time until the write-back (bench/handle-diff.py --meta found it).
    const FUTURE = 2_000_000_000_123_456_789n;
    const program = (clean: boolean) => `import os, time
os.close(os.open('ahead', os.O_CREAT | os.O_WRONLY, 0o644))  # a new file's writes skip the cache
fd = os.open('ahead', os.O_RDWR | os.O_TRUNC)
os.write(fd, b'y' * 100000)
${clean ? 'os.fsync(fd)' : ''}
os.utime('ahead', ns=(${FUTURE}, ${FUTURE}))
before = os.stat('ahead').st_mtime_ns
os.pwrite(fd, b'z' * 10, 5)
after = os.fstat(fd).st_mtime_ns
os.close(fd)
print(before, abs(after / 1e9 - time.time()) < 5, abs(os.stat('ahead').st_mtime_ns / 1e9 - time.time()) < 5)
os.unlink('ahead')`;
    for (const clean of [true, false]) {
      const want = `${FUTURE} True True\n`;
      expect(await pyIn(fx.plain, program(clean))).toBe(want);
      expect(await pyIn(mx.mnt, program(clean))).toBe(want);
    }
  });

  it('a truncate after a cached write: mtime is the truncate’s, and stays so after the write-back', async () => {
    const shown = await pyIn(
      mx.mnt,
      `import os, time
os.close(os.open('late-trunc', os.O_CREAT | os.O_WRONLY, 0o644))  # a new file's writes skip the cache
fd = os.open('late-trunc', os.O_RDWR | os.O_TRUNC)
os.write(fd, b'y' * 100000)
w = os.fstat(fd).st_mtime_ns
time.sleep(0.3)
os.ftruncate(fd, 60000)
t = os.fstat(fd).st_mtime_ns
os.close(fd)
print(t - w >= 250_000_000, t)`,
    );
    const [later, mtime] = shown.trim().split(' ');
    expect(later).toBe('True');
    await fsyncIn(mx.mnt, 'late-trunc');
    const [size, , onPrimary] = (await statNs(path.join(mx.primary, 'late-trunc'))).split(' ');
    expect(size).toBe('60000');
    expect(BigInt(onPrimary!) / 1_000_000n).toBe(BigInt(mtime!) / 1_000_000n);
    expect(await statNs(path.join(mx.mnt, 'late-trunc'))).toBe(
      await statNs(path.join(mx.primary, 'late-trunc')),
    );
  });
});

describe('write-back', () => {
  it('mtime seen right after writing stays the same once the data is written back', async () => {
    const program = `
import os
fd = os.open('wb', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(fd, b'x' * 100000)
os.close(fd)
st = os.stat('wb'); print(st.st_mtime_ns, st.st_size)
`;
    const [m1, size] = (await pyIn(fx.mnt, program)).trim().split(' ');
    expect(size).toBe('100000');
    // Wait until the data is on the primary (write-back after 300 ms), then a bit more.
    const primaryFile = path.join(fx.primary, 'wb');
    expect(
      await waitFor(async () => (await shInOk(fx.primary, 'stat -c %s wb')).trim() === '100000', 5000),
    ).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    const m2 = (await pyIn(fx.mnt, "import os\nprint(os.stat('wb').st_mtime_ns)")).trim();
    const onPrimary = (
      await pyIn(fx.primary, `import os\nprint(os.stat('${primaryFile}').st_mtime_ns)`)
    ).trim();
    // Millisecond precision: what getattr showed before write-back must be what stays.
    expect(Math.round(Number(m2) / 1e6)).toBe(Math.round(Number(m1) / 1e6));
    expect(Math.round(Number(onPrimary) / 1e6)).toBe(Math.round(Number(m1) / 1e6));
  });
});
