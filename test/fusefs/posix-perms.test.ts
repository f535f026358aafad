import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inBoth, mountFixture, type PosixFixture, probe, pyIn, shInOk } from '../helpers/posix.js';

// Permissions and ownership as an ordinary user (nobody, uid 65534) on a mount served by root,
// against the same steps on a plain directory. The server runs as root and creates everything
// itself: ownership of new entries and every permission check must still be the caller's.

const NOBODY = 65534;

let fx: PosixFixture;
const SETUP = `umask 022 && echo root > rootf && chmod 644 rootf && mkdir pub && chmod 1777 pub &&
  mkdir priv && chmod 700 priv && echo secret > priv/s && echo shared > pub/byroot && chmod 666 pub/byroot &&
  mkdir sg && chgrp 100 sg && chmod 2777 sg && echo x > exe && chmod 700 exe && mkdir ro && chmod 555 ro &&
  echo t > pub/tx && chmod 644 pub/tx && setfattr -n trusted.t -v 1 pub/tx && setfattr -n user.u -v 1 pub/tx`;

beforeAll(async () => {
  fx = await mountFixture();
  for (const dir of [fx.plain, fx.mnt]) await shInOk(dir, SETUP);
});
afterAll(async () => {
  await fx?.close();
});

/** The probe as nobody in plain dir and mount; both must give the expected results. */
async function expectAsNobody(steps: Array<[string, string, string]>) {
  const expected = Object.fromEntries(steps.map(([l, , e]) => [l, e]));
  const run = steps.map(([l, c]): [string, string] => [l, c]);
  expect(await probe(fx.plain, run, { nobody: true })).toEqual(expected);
  expect(await probe(fx.mnt, run, { nobody: true })).toEqual(expected);
}

describe('an ordinary user', () => {
  it('cannot write, truncate, chmod, chown, retime or remove what root owns', async () => {
    await expectAsNobody([
      ['read root’s 0644 file', "os.close(os.open('rootf', os.O_RDONLY))", 'OK'],
      ['open root’s 0644 file for writing', "os.open('rootf', os.O_WRONLY)", 'EACCES'],
      ['open it O_APPEND', "os.open('rootf', os.O_WRONLY | os.O_APPEND)", 'EACCES'],
      ['truncate it', "os.truncate('rootf', 0)", 'EACCES'],
      ['chmod it', "os.chmod('rootf', 0o666)", 'EPERM'],
      ['chown it to themselves', `os.chown('rootf', ${NOBODY}, -1)`, 'EPERM'],
      ['chgrp it', `os.chown('rootf', -1, ${NOBODY})`, 'EPERM'],
      ['set its times', "os.utime('rootf', (1, 1))", 'EPERM'],
      ['touch it (times = now)', "os.utime('rootf', None)", 'EACCES'],
      ['unlink it from root’s 755 dir', "os.unlink('rootf')", 'EACCES'],
      ['rename it', "os.rename('rootf', 'pub/stolen')", 'EACCES'],
      ['create in root’s 755 dir', "os.open('mine', os.O_CREAT | os.O_WRONLY, 0o644)", 'EACCES'],
      ['mkdir in root’s 755 dir', "os.mkdir('mydir')", 'EACCES'],
      ['symlink in root’s 755 dir', "os.symlink('x', 'mylink')", 'EACCES'],
      ['mkfifo in root’s 755 dir', "os.mkfifo('myfifo')", 'EACCES'],
      ['create in a 555 dir', "os.open('ro/x', os.O_CREAT | os.O_WRONLY)", 'EACCES'],
      ['list a 0700 dir', "os.listdir('priv')", 'EACCES'],
      ['read in a 0700 dir', "os.open('priv/s', os.O_RDONLY)", 'EACCES'],
      ['stat in a 0700 dir', "os.stat('priv/s')", 'EACCES'],
      ['run a 0700 file', "os.execv('./exe', ['exe'])", 'EACCES'],
      ['set a user xattr on root’s file', "os.setxattr('rootf', 'user.a', b'1')", 'EACCES'],
      ['set a trusted xattr', "os.setxattr('pub/byroot', 'trusted.a', b'1')", 'EPERM'],
      // ext4 lists trusted.* to CAP_SYS_ADMIN only; the kernel's FUSE code passes the server's
      // list on as it is, so twinfs leaves them out for others (bench/handle-diff.py --user).
      [
        'list xattrs: user.* but no trusted.*',
        "if sorted(os.listxattr('pub/tx')) != ['user.u']: raise OSError(errno.EEXIST, 'listed')",
        'OK',
      ],
      ['read a trusted xattr', "os.getxattr('pub/tx', 'trusted.t')", 'ENODATA'],
      ['remove root’s file from a sticky dir', "os.unlink('pub/byroot')", 'EPERM'],
      ['rename root’s file in a sticky dir', "os.rename('pub/byroot', 'pub/moved')", 'EPERM'],
      ['append to a 0666 file', "os.close(os.open('pub/byroot', os.O_WRONLY | os.O_APPEND))", 'OK'],
    ]);
  });

  it('owns what it creates in a 1777 dir, and may change it', async () => {
    await expectAsNobody([
      ['create a file', "os.close(os.open('pub/mine', os.O_CREAT | os.O_WRONLY, 0o644))", 'OK'],
      [
        'owned by nobody',
        `s = os.stat('pub/mine'); assert (s.st_uid, s.st_gid) == (${NOBODY}, ${NOBODY}), s`,
        'OK',
      ],
      [
        'mkdir',
        `os.mkdir('pub/md'); s = os.stat('pub/md'); assert (s.st_uid, s.st_gid) == (${NOBODY}, ${NOBODY})`,
        'OK',
      ],
      [
        'symlink',
        `os.symlink('x', 'pub/ms'); s = os.lstat('pub/ms'); assert (s.st_uid, s.st_gid) == (${NOBODY}, ${NOBODY})`,
        'OK',
      ],
      [
        'mkfifo',
        `os.mkfifo('pub/mf'); s = os.stat('pub/mf'); assert (s.st_uid, s.st_gid) == (${NOBODY}, ${NOBODY})`,
        'OK',
      ],
      [
        'hard link keeps the owner',
        "os.link('pub/mine', 'pub/mine2'); assert os.stat('pub/mine2').st_uid == 65534",
        'OK',
      ],
      [
        'chmod own file',
        "os.chmod('pub/mine', 0o600); assert os.stat('pub/mine').st_mode & 0o7777 == 0o600",
        'OK',
      ],
      [
        'set own file’s times',
        "os.utime('pub/mine', (1, 2)); assert os.stat('pub/mine').st_mtime == 2",
        'OK',
      ],
      [
        'user xattr on own file',
        "os.setxattr('pub/mine', 'user.a', b'1'); assert os.getxattr('pub/mine', 'user.a') == b'1'",
        'OK',
      ],
      ['give own file to root', "os.chown('pub/mine', 0, -1)", 'EPERM'],
      ['give own file to group 0', "os.chown('pub/mine', -1, 0)", 'EPERM'],
      ['chown to itself (no-op)', `os.chown('pub/mine', ${NOBODY}, ${NOBODY})`, 'OK'],
      [
        'umask 077 gives 0600',
        "os.umask(0o077); os.close(os.open('pub/um', os.O_CREAT | os.O_WRONLY, 0o666)); assert os.stat('pub/um').st_mode & 0o777 == 0o600",
        'OK',
      ],
      [
        'umask 027 dir gives 0750',
        "os.umask(0o027); os.mkdir('pub/umd'); assert os.stat('pub/umd').st_mode & 0o777 == 0o750",
        'OK',
      ],
      [
        'write and read back own file',
        "fd = os.open('pub/mine', os.O_RDWR); os.write(fd, b'mine'); assert os.pread(fd, 4, 0) == b'mine'; os.close(fd)",
        'OK',
      ],
      ['remove own file from sticky dir', "os.unlink('pub/mine2')", 'OK'],
    ]);
    // The primary holds the same owners.
    expect(await shInOk(fx.primary, 'stat -c "%n %u:%g %a" pub/mine pub/md pub/mf pub/um pub/umd')).toBe(
      'pub/mine 65534:65534 600\npub/md 65534:65534 755\npub/mf 65534:65534 644\npub/um 65534:65534 600\npub/umd 65534:65534 750\n',
    );
    expect(await shInOk(fx.primary, 'stat -c "%u:%g" pub/ms')).toBe('65534:65534\n');
  });

  it('inherits the group of a setgid directory, and subdirectories stay setgid', async () => {
    const script = `echo q > sg/f && mkdir sg/d && stat -c '%n %u %g %A' sg/f sg/d`;
    const a = await inBoth(fx, script, { nobody: true });
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toBe('sg/f 65534 100 -rw-r--r--\nsg/d 65534 100 drwxr-sr-x\n');
  });

  it('sees the same access(2) answers as on a local directory', async () => {
    const program = `
import os
for p in ('rootf', 'priv', 'priv/s', 'pub', 'pub/byroot', 'exe', 'ro', 'nope'):
    print(p, [os.access(p, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)])
`;
    const plain = await pyIn(fx.plain, program, { nobody: true });
    expect(await pyIn(fx.mnt, program, { nobody: true })).toBe(plain);
    expect(plain).toContain('rootf [True, True, False, False]');
  });
});

describe('POSIX ACLs', () => {
  // libfuse2 has no FUSE_POSIX_ACL: the kernel checks mode bits only. An ACL stored anyway
  // would be shown (ls -l '+', getfacl) but not enforced, and its mask would open the group
  // bits to the whole owning group. twinfs refuses them like a filesystem without ACL support.
  const ACL = `
import os, struct
e = lambda tag, perm, id=0xffffffff: struct.pack('<HHI', tag, perm, id)
acl = struct.pack('<I', 2) + e(1, 6) + e(2, 6, 65534) + e(4, 0) + e(0x10, 6) + e(0x20, 0)  # u::rw u:nobody:rw g::- m::rw o::-
with open('aclf', 'w') as f: f.write('x')
os.chmod('aclf', 0o600)
try:
    os.setxattr('aclf', 'system.posix_acl_access', acl); print('set')
except OSError as e:
    print(os.strerror(e.errno))
print(oct(os.stat('aclf').st_mode & 0o777))
`;

  it('setting an ACL fails with EOPNOTSUPP and leaves the mode alone', async () => {
    expect(await pyIn(fx.mnt, ACL)).toBe('Operation not supported\n0o600\n');
    expect(await shInOk(fx.primary, "getfattr -m - -d aclf | grep -c posix_acl; stat -c '%a' aclf")).toBe(
      '0\n600\n',
    );
  });

  it('an ACL already on the primary is not shown: EOPNOTSUPP, as without ACL support', async () => {
    await pyIn(fx.primary, `${ACL}\nos.mkdir('acld')\nfor i in range(5): open('acld/f%d' % i, 'w').close()`);
    expect(await shInOk(fx.primary, 'getfattr -m - -d aclf | grep -c posix_acl')).toBe('1\n');
    const program = `
import os
def get(name):
    try: return os.getxattr('aclf', name)
    except OSError as e: return os.strerror(e.errno)
print(get('system.posix_acl_access'), get('system.posix_acl_default'))
print([n for n in os.listxattr('aclf') if 'acl' in n])
try: os.removexattr('aclf', 'system.posix_acl_access')
except OSError as e: print(os.strerror(e.errno))
`;
    expect(await pyIn(fx.mnt, program)).toBe(
      'Operation not supported Operation not supported\n[]\nOperation not supported\n',
    );
    // ls -l shows no '+', and asks the filesystem for an ACL once, not for each entry (GNU ls
    // stops asking on a device that answers EOPNOTSUPP).
    expect(await shInOk(fx.mnt, 'ls -l aclf | cut -c11')).toBe(' \n');
    expect(
      await shInOk(fx.mnt, 'strace -qq -e trace=getxattr ls -lR acld 2>&1 >/dev/null | grep -c posix_acl'),
    ).toBe('1\n');
    // Still on the primary, untouched.
    expect(await shInOk(fx.primary, 'getfattr -m - -d aclf | grep -c posix_acl')).toBe('1\n');
  });

  it('cp -p and cp -a still copy permissions (they fall back to chmod)', async () => {
    const script = `echo x > aclsrc && chmod 640 aclsrc && cp -p aclsrc aclcp && cp -a aclsrc aclca && stat -c '%n %a' aclcp aclca`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toBe('aclcp 640\naclca 640\n');
  });
});

describe('root', () => {
  it('may chown, chgrp and chmod anything, and the primary shows it', async () => {
    const script = `echo r > owned && chown 123:456 owned && stat -c '%u:%g' owned && chgrp 789 owned &&
      chmod 4751 owned && stat -c '%u:%g %a' owned && chown 1000 owned && stat -c '%u:%g %a' owned &&
      ln -s owned lk && chown -h 321:654 lk && stat -c '%u:%g' lk owned`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toBe('123:456\n123:789 4751\n1000:789 751\n321:654\n1000:789\n');
    expect(await shInOk(fx.primary, `stat -c '%u:%g %a' owned`)).toBe('1000:789 751\n');
  });

  /** setup as root in the mount and the plain directory, then script as nobody in both. */
  async function asNobodyAfter(setup: string, script: string) {
    for (const dir of [fx.mnt, fx.plain]) await shInOk(dir, setup);
    const a = await inBoth(fx, script, { nobody: true });
    expect(a.mnt).toEqual(a.plain);
    return a.mnt.stdout;
  }

  it('writing to a setuid file as its owner clears the setuid bit', async () => {
    const setup = 'echo x > pub/suid && chmod 4755 pub/suid && chown 65534 pub/suid && chmod 4777 pub/suid';
    expect(await asNobodyAfter(setup, "echo more >> pub/suid && stat -c '%a' pub/suid")).toBe('777\n');
  });

  it('a user who wrote root’s world-writable setuid file loses the setuid bit (the kernel’s own chmod)', async () => {
    const setup = 'echo x > pub/rsuid && chmod 4777 pub/rsuid';
    expect(await asNobodyAfter(setup, "echo more >> pub/rsuid && stat -c '%u %a' pub/rsuid")).toBe('0 777\n');
  });

  it('taking a file back through one hard link leaves its other names no owner’s rights to it', async () => {
    // One kernel inode per name: after root's chown through A, the kernel still had B's inode
    // with the user as owner, let the user's chmod through B pass its check, and twinfs (root on
    // the primary) made root's file setuid; in the sticky directory the user could also rename
    // and remove B (bench/handle-diff.py --user found the stale owner).
    const program = `
import errno, os, sys
for p in ('A', 'B'):
    if os.path.lexists(p): os.unlink(p)
with open('A', 'w') as f: f.write('#!/bin/sh\\nid -u\\n')
os.chown('A', ${NOBODY}, ${NOBODY})
os.link('A', 'B')
os.stat('B'); os.stat('A')       # both names' inodes cached, the user as owner
os.chown('A', 0, 0)              # root takes the file back through A
os.chmod('A', 0o755)
pid = os.fork()
if pid == 0:
    os.setgroups([]); os.setgid(${NOBODY}); os.setuid(${NOBODY})
    out = []
    # rename and unlink first: the chown's kill of setuid makes the kernel fetch B's attributes.
    for what, fn in (('rename', lambda: os.rename('B', 'C')), ('unlink', lambda: os.unlink('B')),
                     ('chmod', lambda: os.chmod('B', 0o4755)), ('chown', lambda: os.chown('B', ${NOBODY}, -1))):
        try:
            fn(); out.append(what + ' ok')
        except OSError as e:
            out.append(what + ' ' + errno.errorcode[e.errno])
    print(' '.join(out)); sys.stdout.flush(); os._exit(0)
os.waitpid(pid, 0)
st = os.stat('A')
print(oct(st.st_mode & 0o7777), st.st_uid)
`;
    const want = 'rename EPERM unlink EPERM chmod EPERM chown EPERM\n0o755 0\n';
    expect(await pyIn(path.join(fx.plain, 'pub'), program)).toBe(want);
    expect(await pyIn(path.join(fx.mnt, 'pub'), program)).toBe(want);
  });
});
