import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorClean,
  type NativeChangeStats,
  nativeChangeStats,
  nativeStorm,
  startControlFixture,
  volumeGeneration,
} from '../control/control-fixture.js';
import { pyIn, shIn } from '../helpers/posix.js';

/**
 * The libfuse3 path answers the rename of a file in libfuse's threads (native-rename.h in the
 * fuse-native patch, level 21; TWINFS_NATIVE_RENAME=0 turns it off) when the source is a
 * non-directory with one name the cache holds no data of, onto nothing or onto such a file, and
 * hands each change to JS through the native unlinks' queue. The names must reach the primary,
 * the mount, the mirror of a prepare and the change record in the primary's order with every
 * other change (writes through a handle opened before the rename included); a directory, a file
 * with two names, a file with cached data, a rename onto an open file, RENAME_NOREPLACE and
 * anything during a freeze go to JS.
 */

/** The names in a directory as a child process sees them through the mount, sorted. */
const LIST = `
import os, sys
print(' '.join(sorted(os.listdir(sys.argv[1]))))
`;

/** renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) through glibc; prints the errno or 0. */
const NOREPLACE = `
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
r = libc.renameat2(-100, sys.argv[1].encode(), -100, sys.argv[2].encode(), 1)
print(0 if r == 0 else ctypes.get_errno())
`;

/**
 * One worker's renames in r<N> (argv: N, rounds): files written, renamed to a new name, renamed
 * over another file, written through a descriptor opened before its rename, and unlinked.
 */
const STORM = `
import os, sys
w, rounds = int(sys.argv[1]), int(sys.argv[2])
d = 'r%d' % w
os.makedirs(d, exist_ok=True)
for r in range(rounds):
    for i in range(5):
        with open('%s/t%d' % (d, i), 'wb') as f:
            f.write(b'%d-%d-%d ' % (w, r, i) * (50 + i))
    for i in range(5):
        os.rename('%s/t%d' % (d, i), '%s/f%d' % (d, i))
    os.rename('%s/f4' % d, '%s/f3' % d)
    fd = os.open('%s/f0' % d, os.O_WRONLY | os.O_APPEND)
    os.rename('%s/f0' % d, '%s/g0' % d)
    os.write(fd, b'after %d' % r)
    os.close(fd)
    os.rename('%s/g0' % d, '%s/f0' % d)
    os.symlink('f1', '%s/l%d' % (d, r))
    os.rename('%s/l%d' % (d, r), '%s/link' % d)
    if r % 3 == 2:
        os.unlink('%s/f2' % d)
`;

describe("renames answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const stats = () => nativeChangeStats(c);
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);
  const list = async (dir: string) => (await pyIn(fx.mnt, LIST, { args: [dir], timeoutMs: 30_000 })).trim();
  const text = (root: string, p: string) => fsp.readFile(path.join(root, p), 'utf8');

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

  it('of files to new names and over others: the mount, the primary, the mirror of a prepare and the change record have them', async () => {
    await py(
      [
        "os.mkdir('a')",
        "os.mkdir('b')",
        "for i in range(4): open('a/f%d' % i, 'w').write('file %d' % i)",
        "open('b/old', 'w').write('replaced')",
        "os.symlink('f0', 'a/sl')",
      ].join('\n'),
    );
    // Settled: the files' data on the primary, nothing of them cached.
    await c.request('flush');
    const since = await volumeGeneration(c);
    const before = await stats();
    expect(before.enabled).toBe(true);
    await py(
      [
        "os.rename('a/f0', 'a/g0')",
        "os.rename('a/f1', 'b/f1')",
        "os.rename('a/f2', 'b/old')",
        "os.rename('a/sl', 'b/sl')",
        "os.rename('a/f3', 'a/h3')",
        "os.rename('a/h3', 'a/f3')",
      ].join('\n'),
    );
    const after = await stats();
    expect(after.renames - before.renames, JSON.stringify([before, after])).toBe(6);
    expect(after.busy).toBe(0);

    expect(await list('a')).toBe('f3 g0');
    expect(await list('b')).toBe('f1 old sl');
    const p = await c.prepare({ volume: true }, { since });
    try {
      const ch = p.changes!;
      expect(ch.unknown).toBeUndefined();
      expect(ch.renamed).toEqual(
        expect.arrayContaining([
          { from: '/a/f0', to: '/a/g0' },
          { from: '/a/f1', to: '/b/f1' },
          { from: '/a/f2', to: '/b/old' },
        ]),
      );
      for (const root of [fx.primary, p.mirrorRoot]) {
        expect((await fsp.readdir(path.join(root, 'a'))).sort(), root).toEqual(['f3', 'g0']);
        expect((await fsp.readdir(path.join(root, 'b'))).sort(), root).toEqual(['f1', 'old', 'sl']);
        expect([await text(root, 'a/g0'), await text(root, 'b/f1'), await text(root, 'b/old')]).toEqual([
          'file 0',
          'file 1',
          'file 2',
        ]);
        expect(await fsp.readlink(path.join(root, 'b/sl'))).toBe('f0');
      }
    } finally {
      await c.release(p.backupId);
    }
    await expectMirrorClean(c);
  });

  it('a directory, a file with two names, cached data, an open target, RENAME_NOREPLACE and a freeze go to JS, with the same results', async () => {
    await py(
      [
        "os.mkdir('j')",
        "os.mkdir('j/dir')",
        "open('j/h1', 'w').write('linked')",
        "os.link('j/h1', 'j/h2')",
        "open('j/cached', 'w').write('')",
        "open('j/target', 'w').write('open target')",
        "open('j/src', 'w').write('source')",
        "open('j/n1', 'w').write('n1')",
        "open('j/n2', 'w').write('n2')",
      ].join('\n'),
    );
    await c.request('flush');
    const s0 = await stats();
    await py(
      [
        "os.rename('j/dir', 'j/dir2')",
        "os.rename('j/h1', 'j/h3')",
        // Data cached by JS (an existing file, written in a second open, not flushed).
        "fd = os.open('j/cached', os.O_WRONLY)",
        "os.write(fd, b'c' * 5000)",
        'os.close(fd)',
        "os.rename('j/cached', 'j/cached2')",
        // An open target: libfuse hides it first, in the same request.
        "fd = os.open('j/target', os.O_RDONLY)",
        "os.rename('j/src', 'j/target')",
        "assert os.read(fd, 100) == b'open target'",
        'os.close(fd)',
      ].join('\n'),
    );
    expect((await pyIn(fx.mnt, NOREPLACE, { args: ['j/n1', 'j/n2'] })).trim()).toBe('17');
    const s1 = await stats();
    expect(s1.renames, JSON.stringify([s0, s1])).toBe(s0.renames);
    // Counted: the directory, the file with two names, the cached file (the others are refused before the lock).
    expect(s1.renameFallbacks - s0.renameFallbacks).toBeGreaterThanOrEqual(3);
    expect(await list('j')).toBe('cached2 dir2 h2 h3 n1 n2 target');
    await c.request('flush');
    expect((await fsp.stat(path.join(fx.primary, 'j/cached2'))).size).toBe(5000);
    expect(await text(fx.primary, 'j/target')).toBe('source');

    await py("open('j/fz', 'w').write('frozen')\nopen('j/other', 'w').write('other')");
    await c.request('flush');
    const f: any = await c.request('freeze', { selector: { paths: ['/j/fz'] }, timeoutMs: 60_000 });
    let s2: NativeChangeStats;
    try {
      expect((await stats()).enabled).toBe(false);
      s2 = await stats();
      const r = await shIn(fx.mnt, 'mv j/other j/other2', { timeoutMs: 30_000 });
      expect(r.code).toBe(0);
      const s3 = await stats();
      expect(s3.renames).toBe(s2.renames);
      expect(s3.renameFallbacks).toBe(s2.renameFallbacks);
    } finally {
      await c.request('thaw', { freezeId: f.freezeId });
    }
    await expectMirrorClean(c);
  });

  it('while a split is held and until its resync is done, renames and mkdirs go to JS; then natively again', async () => {
    await py("os.mkdir('h')\nfor i in range(3): open('h/f%d' % i, 'w').write('held %d' % i)");
    await c.request('flush');
    const p = await c.prepare({ subtree: '/h' });
    let s0: NativeChangeStats;
    try {
      s0 = await stats();
      await py("os.rename('h/f0', 'h/g0')\nos.rename('h/f1', 'x1')\nos.mkdir('h/d')");
      const s1 = await stats();
      expect(s1.renames, JSON.stringify([s0, s1])).toBe(s0.renames);
      expect(s1.entries).toBe(s0.entries);
      // The split's copy keeps the names it had.
      expect((await fsp.readdir(path.join(p.mirrorRoot, 'h'))).sort()).toEqual(['f0', 'f1', 'f2']);
    } finally {
      await c.release(p.backupId);
    }
    // Once the resync is done the mirror follows again: the next renames are native.
    let n = 0;
    for (; n < 50; n++) {
      await py(`os.rename('h/f2', 'h/f2.${n}')\nos.rename('h/f2.${n}', 'h/f2')`);
      if ((await stats()).renames > s0!.renames) break;
    }
    expect(n).toBeLessThan(50);
    await expectMirrorClean(c);
    expect(await text(fx.mirrorRoot, 'h/g0')).toBe('held 0');
    expect(await text(fx.mirrorRoot, 'x1')).toBe('held 1');
  });

  it('writes through a handle across its rename, of a file created in the same breath, land under the new name', async () => {
    // Create, write, rename, write, close with no pause: the create, its writes, the rename and
    // the release are done natively and often taken by JS in one batch, where the writes after
    // the rename must be reported under the new name.
    const rounds = 40;
    const before = await stats();
    await py(
      [
        "os.mkdir('w')",
        `for i in range(${rounds}):`,
        "    fd = os.open('w/n%d' % i, os.O_CREAT | os.O_WRONLY, 0o644)",
        "    os.write(fd, b'first %d;' % i)",
        "    os.rename('w/n%d' % i, 'w/m%d' % i)",
        "    os.write(fd, b'second %d;' % i)",
        '    os.close(fd)',
      ].join('\n'),
    );
    const after = await stats();
    // Most of them natively (a create that went to JS leaves its file's data cached: its rename is JS's).
    expect(after.renames - before.renames).toBeGreaterThan(rounds / 2);
    const p = await c.prepare({ subtree: '/w' });
    try {
      const names = (await fsp.readdir(path.join(p.mirrorRoot, 'w'))).sort();
      expect(names).toEqual(Array.from({ length: rounds }, (_, i) => `m${i}`).sort());
      for (let i = 0; i < rounds; i++)
        expect(await text(p.mirrorRoot, `w/m${i}`), `m${i}`).toBe(`first ${i};second ${i};`);
    } finally {
      await c.release(p.backupId);
    }
    await expectMirrorClean(c);
  });

  it('rename storms from child processes during prepare loops: the mirror and the change record follow the primary', async () => {
    const WORKERS = 3;
    // Most go to JS: a JS change of another worker in flight, and above all the loop's splits
    // (natively only while the mirror follows: native-changes.ts, setStructural). Some do not.
    await nativeStorm(
      fx,
      c,
      { script: STORM, workers: WORKERS, rounds: 12, minNative: 1 },
      (s) => s.renames,
      async (last, r) => {
        for (let w = 0; w < WORKERS; w++) {
          const names = (await fsp.readdir(path.join(last.mirrorRoot, `r${w}`))).sort();
          expect(names).toEqual(['f0', 'f1', 'f3', 'link']);
          expect(await text(last.mirrorRoot, `r${w}/f3`)).toBe(`${w}-${r}-4 `.repeat(54));
          expect(await text(last.mirrorRoot, `r${w}/f0`)).toBe(`${`${w}-${r}-0 `.repeat(50)}after ${r}`);
          expect(await fsp.readlink(path.join(last.mirrorRoot, `r${w}/link`))).toBe('f1');
          expect(last.changes!.changed).toEqual(expect.arrayContaining([`/r${w}/f0`, `/r${w}/f3`]));
        }
      },
    );
  });
});
