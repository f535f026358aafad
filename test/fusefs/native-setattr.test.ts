import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorClean,
  nativeChangeStats,
  startControlFixture,
  stormFromBase,
  volumeGeneration,
  waitUntil,
} from '../control/control-fixture.js';
import { pyIn, shIn } from '../helpers/posix.js';

/**
 * The libfuse3 path answers chmod, chown (root's: level 23) and utimens by path in libfuse's
 * threads (native-setattr.h in the fuse-native patch, level 20; TWINFS_NATIVE_SETATTR=0 turns it
 * off) for a regular file with one name or a directory, and hands each change to JS through the native unlinks' queue. The
 * mode and the times (to the ns, `touch`'s "now" included) must reach the primary, the mount, the
 * mirror of a prepare and the change record, in the primary's order with every other change; a
 * file with two names, a utimens of a file the cache holds data of, and anything during a freeze
 * go to JS.
 */

/** Times in ns of a path as a child process sees it through the mount: [mode, atime, mtime]. */
const STAT_NS = `
import os, sys
for p in sys.argv[1:]:
    st = os.lstat(p)
    print(oct(st.st_mode & 0o7777), st.st_atime_ns, st.st_mtime_ns)
`;

/** chmod/utime storm of one worker over files made in d<N> (argv: N, rounds). */
const STORM = `
import os, sys
w, rounds = int(sys.argv[1]), int(sys.argv[2])
d = 'd%d' % w
os.makedirs(d, exist_ok=True)
for i in range(6):
    open('%s/f%d' % (d, i), 'ab').close()
for r in range(rounds):
    for i in range(6):
        p = '%s/f%d' % (d, i)
        os.chmod(p, 0o600 | ((r + i) % 8) << 3)
        os.chown(p, 1000 + r, 2000 + i)
        t = (1_600_000_000 + w * 100_000 + r * 1000 + i) * 10**9 + 123_456_789
        os.utime(p, ns=(t, t + 1))
    os.chmod(d, 0o750 if r % 2 else 0o755)
`;

describe("chmod and utimens answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const stats = () => nativeChangeStats(c);
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);
  const seen = async (...paths: string[]) =>
    (await pyIn(fx.mnt, STAT_NS, { args: paths, timeoutMs: 30_000 })).trim().split('\n');

  beforeAll(async () => {
    // Writes through opens of files at rest are done in libfuse's threads since level 29 and never
    // cached; this test is about data JS's cache holds, so its writes go to JS (native-open-writes.test.ts
    // covers the native path).
    fx = await startControlFixture({ args: ['--fuse', '3'], env: { TWINFS_NATIVE_OPEN: 'open' } });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('of files with one name and of a directory: the mount, the primary, the mirror of a prepare and the change record have them, to the ns', async () => {
    await py("os.mkdir('s')\nfor i in range(4): open('s/f%d' % i, 'wb').close()");
    // Settled: the files' creates reported, their (empty) data nowhere but on the primary.
    await c.request('flush');
    const since = await volumeGeneration(c);
    const before = await stats();
    expect(before.enabled).toBe(true);
    await py(
      [
        "os.chmod('s/f0', 0o640)",
        "os.chmod('s/f1', 0o2751)",
        'os.utime("s/f2", ns=(1_500_000_000_111_222_333, 1_400_000_000_444_555_666))',
        "os.chmod('s', 0o750)",
        "os.chown('s/f0', 1234, 5678)",
        "os.chown('s', -1, 4321)",
        'os.utime("s", ns=(1_300_000_000_000_000_001, 1_300_000_000_000_000_002))',
      ].join('\n'),
    );
    // Both times to the filesystem's now (utimensat with no times: UTIME_NOW), by path: resolved
    // where it is made. (`touch` of an existing file sets them through its descriptor: JS's.)
    await py("os.utime('s/f3')");
    const after = await stats();
    expect(after.setattrs - before.setattrs, JSON.stringify([before, after])).toBe(8);
    expect(after.busy).toBe(0);

    const [f0, f1, f2, dir] = await seen('s/f0', 's/f1', 's/f2', 's');
    expect(f0!.split(' ')[0]).toBe('0o640');
    expect(f1!.split(' ')[0]).toBe('0o2751');
    expect(f2!.split(' ').slice(1)).toEqual(['1500000000111222333', '1400000000444555666']);
    expect(dir!.split(' ')).toEqual(['0o750', '1300000000000000001', '1300000000000000002']);

    const p = await c.prepare({ subtree: '/s' }, { since: since });
    try {
      expect(p.changes?.unknown).toBeUndefined();
      for (const f of ['/s/f0', '/s/f1', '/s/f2', '/s/f3']) expect(p.changes?.changed).toContain(f);
      for (const f of ['s/f0', 's/f1', 's/f2', 's/f3', 's']) {
        const [a, m] = await Promise.all([
          fsp.lstat(path.join(fx.primary, f), { bigint: true }),
          fsp.lstat(path.join(p.mirrorRoot, f), { bigint: true }),
        ]);
        expect([m.mode, m.uid, m.gid, m.mtimeNs], f).toEqual([a.mode, a.uid, a.gid, a.mtimeNs]);
      }
      const [f0p, dirp] = await Promise.all([
        fsp.lstat(path.join(fx.primary, 's/f0')),
        fsp.lstat(path.join(fx.primary, 's')),
      ]);
      expect([f0p.uid, f0p.gid, dirp.uid, dirp.gid]).toEqual([1234, 5678, 0, 4321]);
      const f3 = await fsp.lstat(path.join(p.mirrorRoot, 's/f3'), { bigint: true });
      // The touch's now, not the file's creation time and not an omitted time.
      expect(f3.mtimeNs).toBeGreaterThan(BigInt(Date.now() - 120_000) * 1_000_000n);
      const f2m = await fsp.lstat(path.join(p.mirrorRoot, 's/f2'), { bigint: true });
      expect(f2m.atimeNs).toBe(1_500_000_000_111_222_333n);
    } finally {
      await c.release(p.backupId);
    }
  });

  it('setxattr of user.* names too (level 27): the primary answers EEXIST and ENODATA, the mirror of a prepare and the change record have them; other names and a file with two names go to JS', async () => {
    await py(
      "os.mkdir('x')\nfor i in range(3): open('x/f%d' % i, 'wb').close()\nos.link('x/f2', 'x/f2.lnk')",
    );
    await c.request('flush');
    const since = await volumeGeneration(c);
    const before = await stats();
    const r = await py(
      [
        "os.setxattr('x/f0', 'user.a', b'1')",
        "os.setxattr('x/f0', 'user.b', bytes(range(256)) * 4)",
        "os.setxattr('x/f1', 'user.empty', b'')",
        "os.setxattr('x', 'user.dir', b'd')",
        'errs = []',
        "for args in (('x/f0', 'user.a', b'2', os.XATTR_CREATE), ('x/f0', 'user.none', b'2', os.XATTR_REPLACE)):",
        '  try: os.setxattr(*args)',
        '  except OSError as e: errs.append(e.errno)',
        // Not user.*, and a file with a second name: JS's.
        "os.setxattr('x/f1', 'trusted.t', b't')",
        "os.setxattr('x/f2', 'user.two', b'2')",
        "print(errs, os.getxattr('x/f0', 'user.a'), len(os.getxattr('x/f0', 'user.b')), os.getxattr('x/f1', 'user.empty'), os.getxattr('x/f2.lnk', 'user.two'))",
      ].join('\n'),
    );
    expect(r.trim()).toBe("[17, 61] b'1' 1024 b'' b'2'");
    const after = await stats();
    expect(after.setattrs - before.setattrs).toBe(4);
    expect(after.setattrFallbacks - before.setattrFallbacks).toBe(1);
    const attrsAt = (root: string) =>
      pyIn(
        root,
        "import os\nfor p, n in (('x/f0', 'user.a'), ('x/f0', 'user.b'), ('x/f1', 'user.empty'), ('x', 'user.dir'), ('x/f1', 'trusted.t'), ('x/f2', 'user.two')):\n  import hashlib; print(p, n, hashlib.sha256(os.getxattr(p, n)).hexdigest()[:16])",
      );
    const onPrimary = await attrsAt(fx.primary);
    const p = await c.prepare({ subtree: '/x' }, { since });
    try {
      expect(p.changes?.unknown).toBeUndefined();
      for (const f of ['/x/f0', '/x/f1']) expect(p.changes?.changed).toContain(f);
      expect(await attrsAt(p.mirrorRoot)).toBe(onPrimary);
    } finally {
      await c.release(p.backupId);
    }
    await expectMirrorClean(c);
  });

  it("through a descriptor (tar's fchown, fchmod and futimens of each file it writes) too, with the same results", async () => {
    await py("os.mkdir('t')");
    await c.request('flush');
    const before = await stats();
    await py(
      [
        'for i in range(5):',
        "    fd = os.open('t/f%d' % i, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)",
        "    os.write(fd, b'%d' % i * 100)",
        '    os.utime(fd, ns=(1_000_000_000_000_000_000 + i, 1_100_000_000_000_000_000 + i))',
        '    os.fchown(fd, 500 + i, 600 + i)',
        '    os.fchmod(fd, 0o640 + i)',
        '    os.close(fd)',
      ].join('\n'),
    );
    const after = await stats();
    // chown and chmod always (nothing else in flight); the utimens unless JS took the file's
    // create before it and holds its data.
    expect(after.setattrs - before.setattrs, JSON.stringify([before, after])).toBeGreaterThanOrEqual(10);
    const p = await c.prepare({ subtree: '/t' });
    try {
      for (let i = 0; i < 5; i++) {
        const f = `t/f${i}`;
        for (const root of [fx.primary, p.mirrorRoot]) {
          const st = await fsp.lstat(path.join(root, f), { bigint: true });
          expect([Number(st.mode) & 0o7777, st.uid, st.gid, st.mtimeNs, st.size], `${root} ${f}`).toEqual([
            0o640 + i,
            BigInt(500 + i),
            BigInt(600 + i),
            1_100_000_000_000_000_000n + BigInt(i),
            100n,
          ]);
        }
      }
    } finally {
      await c.release(p.backupId);
    }
  });

  it('a file with two names, a utimens of a file with cached data, and changes during a freeze go to JS', async () => {
    await py("open('h1', 'wb').close()\nos.link('h1', 'h2')\nopen('cached', 'wb').close()");
    await c.request('flush');
    let s0 = await stats();
    await py("os.chmod('h1', 0o604)");
    let s1 = await stats();
    expect(s1.setattrs).toBe(s0.setattrs);
    expect(s1.setattrFallbacks).toBeGreaterThan(s0.setattrFallbacks);
    // JS refreshed the other name's kernel inode: its mode through h2 is the new one.
    expect((await seen('h2'))[0]!.split(' ')[0]).toBe('0o604');
    // So is its owner after a chown through h1.
    s0 = await stats();
    await py(
      "os.chown('h1', 4242, 4343)\nst = os.lstat('h2')\nassert (st.st_uid, st.st_gid) == (4242, 4343), st",
    );
    s1 = await stats();
    expect(s1.setattrs).toBe(s0.setattrs);

    // Data cached by JS (an existing file, written in a second open): the write-back would move
    // the mtime, which JS puts back; so its utimens is JS's.
    s0 = await stats();
    await py(
      "fd = os.open('cached', os.O_WRONLY)\nos.write(fd, b'x' * 5000)\nos.close(fd)\nos.utime('cached', ns=(1_200_000_000_000_000_000, 1_200_000_000_000_000_007))",
    );
    s1 = await stats();
    expect(s1.setattrs).toBe(s0.setattrs);
    await c.request('flush');
    const st = await fsp.lstat(path.join(fx.primary, 'cached'), { bigint: true });
    expect([st.size, st.mtimeNs]).toEqual([5000n, 1_200_000_000_000_000_007n]);

    await py("open('fz', 'wb').close()");
    const f: any = await c.request('freeze', { selector: { paths: ['/fz'] }, timeoutMs: 60_000 });
    try {
      expect((await stats()).enabled).toBe(false);
      s0 = await stats();
      const r = await shIn(fx.mnt, 'chmod 0640 h1 && touch -d @1000000000 fz2', { timeoutMs: 30_000 });
      expect(r.code).toBe(0);
      s1 = await stats();
      expect(s1.setattrs).toBe(s0.setattrs);
      expect(s1.setattrFallbacks).toBe(s0.setattrFallbacks);
    } finally {
      await c.request('thaw', { freezeId: f.freezeId });
    }
    await waitUntil(async () => (await stats()).enabled, 5000, 'native changes back on');
  });

  it('the last of a run of native changes reaches the mirror by itself, with no request after it', async () => {
    // A run engages the timer that takes the queue (no wake per change); the timer turns off only
    // with the queue empty. Nothing here asks the server anything until the mirror has the last
    // change: a change left queued and unwoken would stay off the mirror.
    await py("os.mkdir('run')\nfor i in range(40): open('run/f%d' % i, 'wb').close()");
    await c.request('flush');
    const before = await stats();
    for (let round = 0; round < 3; round++) {
      await py(
        `for i in range(1, 40): os.chmod('run/f%d' % i, 0o600 + ${round})\nos.unlink('run/f0') if ${round} == 0 else None`,
      );
      const last = path.join(fx.mirrorRoot, 'run/f39');
      // (Not there yet is "not yet": the mirror makes the files after the flush answered.)
      await waitUntil(
        async () => (((await fsp.lstat(last).catch(() => undefined))?.mode ?? 0) & 0o777) === 0o600 + round,
        3000,
        `round ${round}: the mirror has the last chmod`,
      );
      await waitUntil(
        async () =>
          !(await fsp.lstat(path.join(fx.mirrorRoot, 'run/f0')).then(
            () => true,
            () => false,
          )),
        3000,
        'the mirror has the unlink',
      );
      // Idle long enough for the timer to find the queue empty and turn itself off.
      await new Promise((r) => setTimeout(r, 100));
    }
    const after = await stats();
    expect(after.setattrs - before.setattrs).toBeGreaterThanOrEqual(3 * 39);
  });

  it('chmod and utime storms from child processes during prepare loops: the mirror and the change record follow the primary', async () => {
    const WORKERS = 3;
    const ROUNDS = 15;
    const { since, before, after } = await stormFromBase(
      fx,
      c,
      { script: STORM, workers: WORKERS, args: [String(ROUNDS)], pauseMs: 20 },
      stats,
    );
    expect(after.setattrs - before.setattrs).toBeGreaterThan(WORKERS * 6);
    expect(after.busy).toBe(0);

    const last = await c.prepare({ volume: true }, { since: since });
    try {
      const ch = last.changes!;
      expect(ch.unknown).toBeUndefined();
      const r = ROUNDS - 1;
      for (let w = 0; w < WORKERS; w++) {
        const dm = await fsp.lstat(path.join(last.mirrorRoot, `d${w}`));
        expect(dm.mode & 0o777).toBe(r % 2 ? 0o750 : 0o755);
        for (let i = 0; i < 6; i++) {
          const p = `d${w}/f${i}`;
          expect(ch.changed).toContain(`/${p}`);
          const m = await fsp.lstat(path.join(last.mirrorRoot, p), { bigint: true });
          const t = BigInt(1_600_000_000 + w * 100_000 + r * 1000 + i) * 1_000_000_000n + 123_456_789n;
          expect([Number(m.mode) & 0o777, m.uid, m.gid, m.atimeNs, m.mtimeNs], p).toEqual([
            0o600 | (((r + i) % 8) << 3),
            BigInt(1000 + r),
            BigInt(2000 + i),
            t,
            t + 1n,
          ]);
        }
      }
    } finally {
      await c.release(last.backupId);
    }
    await expectMirrorClean(c);
  });
});
