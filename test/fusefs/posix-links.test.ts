import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/mounts.js';
import { inBoth, mountFixture, type PosixFixture, probe, pyIn, shInOk } from '../helpers/posix.js';

// Symlinks, hard links and inode numbers, against a plain directory as the oracle.

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture();
});
afterAll(async () => {
  await fx?.close();
});

describe('symbolic links', () => {
  it('symlink and readlink keep any target, and the kernel follows them through the mount', async () => {
    const long = 'x'.repeat(4000);
    const script = `mkdir sl && cd sl && echo data > f && mkdir d && echo in > d/g &&
      ln -s f rel && ln -s /etc/hostname abs && ln -s nowhere dangling && ln -s 'with space/../f' odd &&
      ln -s d dirlink && ln -s ${long} long && ln -s rel chain &&
      readlink rel abs dangling odd dirlink chain && readlink long | wc -c &&
      cat rel chain dirlink/g && stat -c '%n %F %s' rel dangling long && stat -L -c '%n %F' chain dirlink &&
      (cat dangling 2>&1 || true) && ls dirlink/ && cat abs > /dev/null && echo ok`;
    const a = await inBoth(fx, script);
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt.stdout).toContain('f\n/etc/hostname\nnowhere\nwith space/../f\nd\nrel\n4001\n');
    expect(a.mnt.stdout).toContain('long symbolic link 4000');
    expect(a.mnt.stdout).toContain('No such file or directory');
    // The primary holds the same links.
    expect(await fsp.readlink(path.join(fx.primary, 'sl/odd'))).toBe('with space/../f');
  });

  it('symlink, readlink and lstat fail with the local errno', async () => {
    const setup = 'mkdir -p slerr/d && cd slerr && echo f > f && ln -s f l';
    await shInOk(fx.plain, setup);
    await shInOk(fx.mnt, setup);
    const steps: Array<[string, string, string]> = [
      ['symlink over a file', "os.symlink('x', 'f')", 'EEXIST'],
      ['symlink over a link', "os.symlink('x', 'l')", 'EEXIST'],
      ['symlink in a missing dir', "os.symlink('x', 'nope/l')", 'ENOENT'],
      ['symlink below a file', "os.symlink('x', 'f/l')", 'ENOTDIR'],
      ['readlink a file', "os.readlink('f')", 'EINVAL'],
      ['readlink a dir', "os.readlink('d')", 'EINVAL'],
      ['readlink missing', "os.readlink('nope')", 'ENOENT'],
      ['lstat a link', "assert stat.S_ISLNK(os.lstat('l').st_mode)", 'OK'],
      ['unlink a link', "os.unlink('l'); assert os.path.exists('f')", 'OK'],
    ];
    const expected = Object.fromEntries(steps.map(([l, , e]) => [l, e]));
    const run = steps.map(([l, c]): [string, string] => [l, c]);
    expect(await probe(path.join(fx.plain, 'slerr'), run)).toEqual(expected);
    expect(await probe(path.join(fx.mnt, 'slerr'), run)).toEqual(expected);
  });

  it('ls -l lists a dangling symlink without errors', async () => {
    // ls -l reads the link's ACL xattrs: they must be the link's own, not its missing target's.
    const a = await inBoth(fx, "mkdir lsl && cd lsl && ln -s nowhere dl && ls -l dl | awk '{print $1, $NF}'");
    expect(a.mnt).toEqual(a.plain);
    expect(a.mnt).toEqual({ code: 0, stdout: 'lrwxrwxrwx nowhere\n', stderr: '' });
  });
});

describe('hard links', () => {
  it('share one inode number, and nlink is right immediately after ln and rm', async () => {
    const script = `mkdir hl && cd hl && echo x > a && stat -c %h a && ln a b && stat -c '%h %i' a b &&
      ln b c && stat -c %h a && rm b && stat -c %h a c && rm a && stat -c %h c`;
    const a = await inBoth(fx, script);
    const [n1, sa, sb, n3, ra, rc, last] = a.mnt.stdout.trim().split('\n');
    expect(n1).toBe('1');
    expect(sa!.split(' ')[1]).toBe(sb!.split(' ')[1]);
    expect([sa!.split(' ')[0], sb!.split(' ')[0]]).toEqual(['2', '2']);
    expect([n3, ra, rc, last]).toEqual(['3', '2', '2', '1']);
    expect(a.mnt.stdout.replace(/ \d+\n/g, '\n')).toBe(a.plain.stdout.replace(/ \d+\n/g, '\n'));
  });

  it('a write through one name is visible through the other at once', async () => {
    // Each step runs in its own process, as separate programs would.
    await shInOk(fx.mnt, 'mkdir hw && cd hw && : > one && ln one two && stat -c %s two');
    await pyIn(
      path.join(fx.mnt, 'hw'),
      "import os\nfd = os.open('one', os.O_WRONLY)\nos.write(fd, b'via one')\nos.close(fd)",
    );
    expect(await shInOk(fx.mnt, 'cat hw/two; echo; stat -c %s hw/two')).toBe('via one\n7\n');
    await shInOk(fx.mnt, 'echo " and two" >> hw/two');
    expect(await shInOk(fx.mnt, 'cat hw/one; stat -c %s hw/one')).toBe('via one and two\n16\n');
    await shInOk(fx.mnt, 'rm hw/one');
    expect(await shInOk(fx.mnt, 'cat hw/two; stat -c %h hw/two')).toBe('via one and two\n1\n');
  });

  it('removing or replacing one name of a freshly written file leaves no descriptor open in the server', async () => {
    // Descriptors of the server process that point into the test's directory on the primary.
    const open = async () => {
      const dir = `/proc/${fx.srv.proc.pid}/fd`;
      let n = 0;
      for (const fd of await fsp.readdir(dir)) {
        const target = await fsp.readlink(path.join(dir, fd)).catch(() => '');
        if (target.startsWith(`${fx.primary}/leak/`)) n++;
      }
      return n;
    };
    await shInOk(fx.mnt, 'mkdir leak');
    // Written (cached), closed, linked, then one name removed or replaced: the cache writes the
    // data back under the surviving name (at once, or on libfuse3, where the surviving name is
    // known, with the next background write-back, 3 s) and must then let go of the file. (The
    // replacing file is synced first: a cached file legitimately keeps its descriptor until
    // written back.)
    await shInOk(
      path.join(fx.mnt, 'leak'),
      `for i in $(seq 1 10); do echo data > a$i && ln a$i b$i && rm a$i;
        echo new > n$i && sync n$i && echo old > c$i && ln c$i d$i && mv n$i c$i; done`,
    );
    expect(await waitFor(async () => (await open()) === 0, 8000)).toBe(true);
    expect(await shInOk(path.join(fx.mnt, 'leak'), 'cat b1 b10 c1 d1')).toBe('data\ndata\nnew\nold\n');
  });

  it('link fails with the local errno', async () => {
    const setup = 'mkdir -p lnerr/d && cd lnerr && echo f > f && echo g > g';
    await shInOk(fx.plain, setup);
    await shInOk(fx.mnt, setup);
    const steps: Array<[string, string, string]> = [
      ['link a dir', "os.link('d', 'd2')", 'EPERM'],
      ['link onto an existing name', "os.link('f', 'g')", 'EEXIST'],
      ['link a missing file', "os.link('nope', 'x')", 'ENOENT'],
      ['link into a missing dir', "os.link('f', 'nope/x')", 'ENOENT'],
      ['link below a file', "os.link('f', 'g/x')", 'ENOTDIR'],
      ['link into a subdir', "os.link('f', 'd/f')", 'OK'],
      ['rename between links of one inode', "os.rename('f', 'd/f'); assert os.path.exists('f')", 'OK'],
    ];
    const expected = Object.fromEntries(steps.map(([l, , e]) => [l, e]));
    const run = steps.map(([l, c]): [string, string] => [l, c]);
    expect(await probe(path.join(fx.plain, 'lnerr'), run)).toEqual(expected);
    expect(await probe(path.join(fx.mnt, 'lnerr'), run)).toEqual(expected);
  });
});

describe('inode numbers', () => {
  it('are the primary’s, distinct per entry, and stable across rename', async () => {
    await shInOk(fx.mnt, 'mkdir ino && cd ino && echo a > f && mkdir d && ln -s f l && mkfifo p && ln f h');
    const names = ['f', 'd', 'l', 'p', 'h'];
    const q = names.join(' ');
    const viaMount = await shInOk(path.join(fx.mnt, 'ino'), `stat -c '%n %i' ${q}`);
    const onPrimary = await shInOk(path.join(fx.primary, 'ino'), `stat -c '%n %i' ${q}`);
    expect(viaMount).toBe(onPrimary);
    const inos = new Map(
      viaMount
        .trim()
        .split('\n')
        .map((l) => l.split(' ') as [string, string]),
    );
    expect(inos.get('f')).toBe(inos.get('h'));
    expect(new Set(inos.values()).size).toBe(4);
    await shInOk(fx.mnt, 'cd ino && mv f f2 && mv d d2');
    expect(await shInOk(path.join(fx.mnt, 'ino'), 'stat -c %i f2 d2')).toBe(
      `${inos.get('f')}\n${inos.get('d')}\n`,
    );
    // readdir's d_ino agrees with stat for ls -i.
    const lsi = await shInOk(path.join(fx.mnt, 'ino'), 'ls -i1 f2 h');
    expect(lsi).toBe(`${inos.get('f')} f2\n${inos.get('f')} h\n`);
  });
});
