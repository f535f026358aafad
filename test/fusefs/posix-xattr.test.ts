import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inBoth, mountFixture, type PosixFixture, probe, pyIn, shIn, shInOk } from '../helpers/posix.js';

// Extended attributes, fifos and statfs, against a plain directory as the oracle.

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture();
});
afterAll(async () => {
  await fx?.close();
});

describe('extended attributes', () => {
  it('setfattr, getfattr and setfattr -x behave as on the local filesystem', async () => {
    const script = `mkdir xa && cd xa && echo f > f && mkdir d &&
      setfattr -n user.color -v blue f && setfattr -n user.empty f && setfattr -n user.bin -v 0x00ff7f f &&
      setfattr -n user.dir -v yes d && setfattr -n user.color -v red f &&
      getfattr -d -e hex f d && getfattr --only-values -n user.color f && echo &&
      setfattr -x user.color f && getfattr -d f &&
      (getfattr -n user.color f 2>&1; echo "get missing: $?") &&
      (setfattr -x user.color f 2>&1; echo "remove missing: $?") &&
      mv f g && getfattr -n user.bin -e hex g`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain('user.color=0x726564\n');
    expect(a.mnt.stdout).toContain('user.color: No such attribute\nget missing: 1');
    expect(a.mnt.stdout).toContain('No such attribute\nremove missing: 1');
    // The attributes are the primary's.
    expect(await shInOk(path.join(fx.primary, 'xa'), 'getfattr --only-values -n user.dir d')).toBe('yes');
  });

  it('file capabilities: set after writes are seen at once, and a later write drops them as locally', async () => {
    // The kernel asks for security.capability before every write; twinfs's native layer
    // answers "none" from memory once the primary said so. It must forget that when a
    // capability is set, and the kernel must then see it (and remove it on the next write).
    // A VFS_CAP_REVISION_2 value: effective, permitted CAP_NET_RAW.
    const cap = '0x0100000200200000000000000000000000000000';
    const script = `echo one > capf && for i in 1 2 3 4 5; do echo more >> capf; done &&
      setfattr -n security.capability -v ${cap} capf && getfattr -n security.capability -e hex capf &&
      echo again >> capf && (getfattr -n security.capability capf 2>&1; echo "after write: $?") &&
      setfattr -n security.capability -v ${cap} capf && mv capf capg && echo x > capf &&
      (getfattr -n security.capability capf 2>&1; echo "new file: $?") &&
      getfattr -n security.capability -e hex capg`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain(`security.capability=${cap}\n`);
    expect(a.mnt.stdout).toContain('capf: security.capability: No such attribute\nafter write: 1');
    expect(a.mnt.stdout).toContain('capf: security.capability: No such attribute\nnew file: 1');
    expect(a.mnt.stdout.split(`security.capability=${cap}`).length).toBe(3);
  });

  it('getxattr, setxattr flags, removexattr and listxattr give the local errnos', async () => {
    for (const dir of [fx.plain, fx.mnt]) await shInOk(dir, 'mkdir xe && echo f > xe/f');
    const steps: Array<[string, string, string]> = [
      ['get missing', "os.getxattr('f', 'user.none')", 'ENODATA'],
      ['remove missing', "os.removexattr('f', 'user.none')", 'ENODATA'],
      ['replace missing', "os.setxattr('f', 'user.a', b'1', os.XATTR_REPLACE)", 'ENODATA'],
      ['create', "os.setxattr('f', 'user.a', b'1', os.XATTR_CREATE)", 'OK'],
      ['create existing', "os.setxattr('f', 'user.a', b'2', os.XATTR_CREATE)", 'EEXIST'],
      [
        'replace existing',
        "os.setxattr('f', 'user.a', b'3', os.XATTR_REPLACE); assert os.getxattr('f', 'user.a') == b'3'",
        'OK',
      ],
      [
        'large value',
        "os.setxattr('f', 'user.big', bytes(range(256)) * 15); assert os.getxattr('f', 'user.big') == bytes(range(256)) * 15",
        'OK',
      ],
      ['list', "assert sorted(os.listxattr('f')) == ['user.a', 'user.big'], os.listxattr('f')", 'OK'],
      ['get on missing file', "os.getxattr('nope', 'user.a')", 'ENOENT'],
      ['unknown namespace', "os.setxattr('f', 'bogus.a', b'1')", 'ENOTSUP'], // = EOPNOTSUPP on Linux
      ['name too long', "os.setxattr('f', 'user.' + 'n' * 300, b'1')", 'ERANGE'],
      [
        'buffer too small (ERANGE)',
        [
          'import ctypes',
          'libc = ctypes.CDLL(None, use_errno=True)',
          'buf = ctypes.create_string_buffer(2)',
          "n = libc.getxattr(b'f', b'user.big', buf, 2)",
          'assert n == -1',
          "raise OSError(ctypes.get_errno(), 'getxattr')",
        ].join('\n'),
        'ERANGE',
      ],
      [
        'size query returns the size',
        "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.getxattr(b'f', b'user.big', None, 0) == 3840",
        'OK',
      ],
      ['remove', "os.removexattr('f', 'user.a'); assert os.listxattr('f') == ['user.big']", 'OK'],
    ];
    const expected = Object.fromEntries(steps.map(([l, , e]) => [l, e]));
    const run = steps.map(([l, c]): [string, string] => [l, c]);
    expect(await probe(path.join(fx.plain, 'xe'), run)).toEqual(expected);
    expect(await probe(path.join(fx.mnt, 'xe'), run)).toEqual(expected);
  });

  it('act on a symlink itself with -h, on its target without', async () => {
    const script = `mkdir xs && cd xs && echo t > target && ln -s target link && ln -s nowhere dangling &&
      setfattr -n user.via -v link link && getfattr -n user.via target &&
      setfattr -h -n trusted.own -v mine link && getfattr -h -d -m - link && getfattr -d -m trusted target; echo "target: $?" &&
      (setfattr -h -n user.x -v 1 link 2>&1; echo "user on link: $?") &&
      getfattr -h -d -m - dangling; echo "dangling: $?" && setfattr -h -n trusted.d -v 1 dangling && getfattr -h -d -m - dangling &&
      setfattr -h -x trusted.d dangling && getfattr -h -d -m - dangling; echo "done: $?"`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain('# file: link\ntrusted.own="mine"');
    expect(a.mnt.stdout).toContain('Operation not permitted\nuser on link: 1');
    expect(a.mnt.stdout).toContain('# file: dangling\ntrusted.d="1"');
    expect(a.mnt.stdout).toMatch(/dangling: 0\n/);
  });
});

describe('fifos', () => {
  it('mkfifo and mknod p create fifos that carry data between processes', async () => {
    const script = `mkdir ff && cd ff && mkfifo -m 640 p1 && mknod p2 p && stat -c '%n %F %a %s' p1 p2 &&
      (echo through-the-fifo > p1 &) && cat p1 &&
      (seq 1 20000 > p2 &) && wc -l < p2 && (mkfifo p1 2>&1; true)`;
    const a = await inBoth(fx, script, { timeoutMs: 15_000 });
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toBe(
      "p1 fifo 640 0\np2 fifo 644 0\nthrough-the-fifo\n20000\nmkfifo: cannot create fifo 'p1': File exists\n",
    );
    expect(await shInOk(path.join(fx.primary, 'ff'), 'stat -c %F p1')).toBe('fifo\n');
  });

  it('a fifo can be renamed, linked and removed like any entry', async () => {
    const script = `mkdir ff2 && cd ff2 && mkfifo a && mv a b && ln b c && stat -c '%n %F %i' b c | uniq -f2 | cut -d' ' -f1,2 && rm b c && ls -A | wc -l`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toBe('b fifo\n0\n');
  });
});

describe('statfs', () => {
  it('df on the mount reports the primary’s filesystem', async () => {
    const fields = "stat -f -c '%S %b %a %f %c %d %l' .";
    const [m, p] = [await shInOk(fx.mnt, fields), await shInOk(fx.primary, fields)];
    const [mBs, mBlocks, mAvail, mFree, mFiles, mFfree, mNamemax] = m.trim().split(' ').map(Number);
    const [pBs, pBlocks, pAvail, pFree, pFiles, pFfree, pNamemax] = p.trim().split(' ').map(Number);
    // Sizes in bytes: the mount may report bigger blocks (fuse-native's statfs is 32-bit).
    expect(mBs! * mBlocks!).toBe(pBs! * pBlocks!);
    const slack = 512 * 1024 * 1024; // other tests write to the same filesystem meanwhile
    expect(Math.abs(mBs! * mAvail! - pBs! * pAvail!)).toBeLessThan(slack);
    expect(Math.abs(mBs! * mFree! - pBs! * pFree!)).toBeLessThan(slack);
    expect(mFiles).toBe(Math.min(pFiles!, 0xffffffff));
    expect(Math.abs(mFfree! - pFfree!)).toBeLessThan(100_000);
    expect(mNamemax).toBe(pNamemax);
    const df = await shIn(fx.mnt, 'df -P . | tail -1');
    expect(df.code).toBe(0);
    expect(df.stdout).toMatch(/^twinfs\s+\d+\s+\d+\s+\d+\s+\d+%/);
  });

  it('statvfs through a descriptor and on subdirectories agrees', async () => {
    await shInOk(fx.mnt, 'mkdir -p sv/deep && echo x > sv/deep/f');
    const program = `
import os
a = os.statvfs('.'); b = os.statvfs('sv/deep'); fd = os.open('sv/deep/f', os.O_RDONLY); c = os.fstatvfs(fd)
print(a.f_frsize * a.f_blocks == b.f_frsize * b.f_blocks == c.f_frsize * c.f_blocks, a.f_namemax)
`;
    expect(await pyIn(fx.mnt, program)).toBe('True 255\n');
  });
});
