import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorClean,
  nativeChangeStats,
  nativeStorm,
  startControlFixture,
  volumeGeneration,
} from '../control/control-fixture.js';
import { pyIn, shIn } from '../helpers/posix.js';

/**
 * The libfuse3 path answers mkdir, symlink and rmdir in libfuse's threads (native-entries.h in
 * the fuse-native patch, level 22; TWINFS_NATIVE_ENTRIES=0 turns it off) when no owner change is
 * needed and, for rmdir, the directory is empty, and hands each change to JS through the native
 * unlinks' queue. The entries (modes, owners, symlink targets and times) must reach the primary,
 * the mount, the mirror of a prepare and the change record in the primary's order; another user's
 * mkdir, an rmdir of a directory holding libfuse's hidden name of an open file, and anything
 * during a freeze go to JS; errors are the syscall's.
 */

/** mkdir/symlink/rmdir storm of one worker in e<N> (argv: N, rounds). */
const STORM = `
import os, sys
w, rounds = int(sys.argv[1]), int(sys.argv[2])
d = 'e%d' % w
os.makedirs(d, exist_ok=True)
for r in range(rounds):
    for i in range(4):
        p = '%s/d%d' % (d, i)
        os.mkdir(p, 0o700 + (r + i) % 8 * 0o10)
        os.mkdir(p + '/sub')
        os.symlink('../t%d-%d' % (r, i), p + '/sub/ln')
        open(p + '/sub/f', 'w').write('%d %d %d' % (w, r, i))
    for i in range(3):
        p = '%s/d%d' % (d, i)
        os.unlink(p + '/sub/ln')
        os.unlink(p + '/sub/f')
        os.rmdir(p + '/sub')
        os.rmdir(p)
    if r < rounds - 1:
        for n in ('sub/ln', 'sub/f'):
            os.unlink('%s/d3/%s' % (d, n))
        os.rmdir('%s/d3/sub' % d)
        os.rmdir('%s/d3' % d)
`;

describe("mkdir, symlink and rmdir answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const stats = () => nativeChangeStats(c);
  const py = (code: string) => pyIn(fx.mnt, `import os, errno\n${code}\n`);

  beforeAll(async () => {
    fx = await startControlFixture({ args: ['--fuse', '3'] });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('directories and symlinks made and removed: the mount, the primary, the mirror of a prepare and the change record have them', async () => {
    await py("os.mkdir('m')\nos.mkdir('m/gone')\nos.mkdir('m/sg')\nos.chmod('m/sg', 0o2775)");
    await c.request('flush');
    const since = await volumeGeneration(c);
    const before = await stats();
    expect(before.enabled).toBe(true);
    await py(
      [
        "os.mkdir('m/a', 0o751)",
        "os.mkdir('m/sg/in', 0o700)",
        "os.symlink('a/../target with spaces', 'm/ln')",
        "os.symlink(b'\\xff-not-utf8', b'm/bytes')",
        "os.rmdir('m/gone')",
        // Errors are the syscall's, and change nothing.
        'try:\n    os.mkdir("m/a")\n    raise SystemExit("mkdir of an existing name")\nexcept FileExistsError: pass',
        'try:\n    os.rmdir("m/missing")\n    raise SystemExit("rmdir of a missing name")\nexcept FileNotFoundError: pass',
      ].join('\n'),
    );
    const after = await stats();
    expect(after.entries - before.entries, JSON.stringify([before, after])).toBe(5);
    expect(after.busy).toBe(0);

    const seen = (
      await py(
        "import stat\nfor p in ('m/a', 'm/sg/in', 'm/ln'):\n    st = os.lstat(p)\n    print(oct(st.st_mode), st.st_uid)\nprint(os.readlink('m/ln'))\nprint(sorted(os.listdir('m')))",
      )
    )
      .trim()
      .split('\n');
    expect(seen.slice(0, 4)).toEqual(['0o40751 0', '0o42700 0', '0o120777 0', 'a/../target with spaces']);
    expect(seen[4]).toContain("'a', 'bytes', 'ln', 'sg'");

    const p = await c.prepare({ volume: true }, { since });
    try {
      const ch = p.changes!;
      expect(ch.unknown).toBeUndefined();
      expect(ch.changed).toEqual(expect.arrayContaining(['/m/a', '/m/sg/in', '/m/ln']));
      expect(ch.deleted).toContain('/m/gone');
      for (const f of ['m/a', 'm/sg/in', 'm/ln']) {
        const [a, m] = await Promise.all([
          fsp.lstat(path.join(fx.primary, f), { bigint: true }),
          fsp.lstat(path.join(p.mirrorRoot, f), { bigint: true }),
        ]);
        expect([m.mode, m.uid, m.gid, m.mtimeNs], f).toEqual([a.mode, a.uid, a.gid, a.mtimeNs]);
      }
      expect(await fsp.readlink(path.join(p.mirrorRoot, 'm/ln'))).toBe('a/../target with spaces');
      const raw = await fsp.readlink(Buffer.from(path.join(p.mirrorRoot, 'm/bytes')), { encoding: 'buffer' });
      expect(raw.toString('latin1')).toBe('\xff-not-utf8');
      await expect(fsp.lstat(path.join(p.mirrorRoot, 'm/gone'))).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await c.release(p.backupId);
    }
    await expectMirrorClean(c);
  });

  it("another user's mkdir and symlink get that user as owner, natively; an rmdir over a hidden name, a non-empty rmdir and a freeze go to JS", async () => {
    await py(
      "os.mkdir('pub')\nos.chmod('pub', 0o777)\nos.mkdir('full')\nopen('full/f', 'w').close()\nos.mkdir('held')\nopen('held/open', 'w').write('x')",
    );
    await c.request('flush');
    const s0 = await stats();
    const r = await shIn(
      path.join(fx.mnt, 'pub'),
      "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'mkdir mine && ln -s x theirs'",
      { timeoutMs: 30_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    const made = await stats();
    expect(made.entries - s0.entries, JSON.stringify([s0, made])).toBe(2);
    // On the primary here; on the mirror, the verify at the end (owners included).
    for (const f of ['pub/mine', 'pub/theirs']) {
      const st = await fsp.lstat(path.join(fx.primary, f));
      expect([st.uid, st.gid], f).toEqual([65534, 65534]);
    }
    // Not empty: ENOTEMPTY (JS's answer). Holding only libfuse's hidden name of an open file
    // unlinked: JS drops the hidden name and removes the directory, as ext4 would.
    await py(
      [
        'try:\n    os.rmdir("full")\n    raise SystemExit("rmdir of a full directory")\nexcept OSError as e:\n    assert e.errno == errno.ENOTEMPTY, e',
        "fd = os.open('held/open', os.O_RDONLY)",
        "os.unlink('held/open')",
        "os.rmdir('held')",
        "assert os.read(fd, 10) == b'x'",
        'os.close(fd)',
      ].join('\n'),
    );
    const s1 = await stats();
    expect(s1.entries, JSON.stringify([made, s1])).toBe(made.entries);
    // Counted after the lock: the full directory and the one holding a hidden name.
    expect(s1.entryFallbacks - made.entryFallbacks).toBeGreaterThanOrEqual(2);
    await expect(fsp.lstat(path.join(fx.primary, 'held'))).rejects.toMatchObject({ code: 'ENOENT' });

    await py("open('fz', 'w').write('frozen')");
    await c.request('flush');
    const f: any = await c.request('freeze', { selector: { paths: ['/fz'] }, timeoutMs: 60_000 });
    try {
      expect((await stats()).enabled).toBe(false);
      const s2 = await stats();
      const r2 = await shIn(fx.mnt, 'mkdir frozen-time && ln -s a frozen-link && rmdir frozen-time', {
        timeoutMs: 30_000,
      });
      expect(r2.code).toBe(0);
      const s3 = await stats();
      expect([s3.entries, s3.entryFallbacks]).toEqual([s2.entries, s2.entryFallbacks]);
    } finally {
      await c.request('thaw', { freezeId: f.freezeId });
    }
    await expectMirrorClean(c);
  });

  it('mkdir, symlink and rmdir storms from child processes during prepare loops: the mirror and the change record follow the primary', async () => {
    const WORKERS = 3;
    // Most go to JS: a JS change of another worker in flight, and above all the loop's splits
    // (natively only while the mirror follows: native-changes.ts, setStructural). Some do not.
    await nativeStorm(
      fx,
      c,
      { script: STORM, workers: WORKERS, rounds: 10, minNative: 1 },
      (s) => s.entries,
      async (last, r) => {
        for (let w = 0; w < WORKERS; w++) {
          expect((await fsp.readdir(path.join(last.mirrorRoot, `e${w}`))).sort()).toEqual(['d3']);
          const d3 = await fsp.lstat(path.join(last.mirrorRoot, `e${w}/d3`));
          expect(d3.mode & 0o7777).toBe(0o700 + ((r + 3) % 8) * 0o10);
          expect(await fsp.readlink(path.join(last.mirrorRoot, `e${w}/d3/sub/ln`))).toBe(`../t${r}-3`);
          expect(last.changes!.changed).toEqual(expect.arrayContaining([`/e${w}/d3`, `/e${w}/d3/sub/ln`]));
        }
      },
    );
  });
});
