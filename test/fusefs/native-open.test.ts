import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorClean,
  nativeChangeStats,
  startControlFixture,
  status,
} from '../control/control-fixture.js';
import { pyIn, shIn } from '../helpers/posix.js';

/**
 * The libfuse3 path answers read-only OPENs in libfuse's threads (native-open.h in the fuse-native
 * patch, level 26; the default, TWINFS_NATIVE_OPEN=0 turns it off), with their READs (pread on the
 * primary) while JS holds no data of the file the primary lacks, and their RELEASE. What must
 * hold: a read returns what the file holds, cached data JS has not written back included; a
 * handle JS takes (any op that reaches it takes the queue) keeps working through JS and natively;
 * a file opened natively can still be opened for writing and written (the cache adopts the
 * native descriptor as its own, read-write where the primary allows); renames, unlinks and writes
 * of files open natively, by other processes at once, change nothing a reader must not see.
 */

/**
 * One worker (argv: N, rounds): files r<N>/f<i> rewritten whole through a held read-write
 * descriptor (small writes: the cache holds them) while a read-only descriptor opened before
 * (natively, the file clean) is open, then read through it and through a fresh open, and
 * compared; every other round the file is written back (fsync); a copy read through a
 * descriptor held across a rename and an unlink of its name.
 */
const STORM = `
import os, sys
w, rounds = sys.argv[1], int(sys.argv[2])
d = 'r' + w
os.makedirs(d, exist_ok=True)
def rd(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        out = b''
        while True:
            b = os.read(fd, 65536)
            if not b: return out
            out += b
    finally:
        os.close(fd)
keep = {}
for i in range(6):
    p = '%s/f%d' % (d, i)
    with open(p, 'wb') as f: f.write(b'start %d\\n' % i)
    keep[i] = os.open(p, os.O_RDWR)
bad = 0
for r in range(rounds):
    for i in range(6):
        p = '%s/f%d' % (d, i)
        want = (b'%s round %d file %d;' % (w.encode(), r, i)) * (1 + (r * 7 + i) % 40)
        fd = keep[i]
        # Opened while the file is clean (natively), then rewritten through JS's cache: the
        # reader's READs must see the cached bytes.
        h0 = os.open(p, os.O_RDONLY)
        os.ftruncate(fd, 0)
        os.pwrite(fd, want, 0)
        got0 = os.pread(h0, len(want) + 10, 0)
        os.close(h0)
        got = rd(p)
        if got != want or got0 != want:
            bad += 1
            print('MISMATCH', p, r, len(got), len(got0), len(want), flush=True)
        # Written back on every other round: the next round's open is native again.
        if r % 2 == 0: os.fsync(fd)
        # A read-only descriptor held across a rename and an unlink of its name.
        q = p + '.old'
        with open(q, 'wb') as f: f.write(want)
        h = os.open(q, os.O_RDONLY)
        os.rename(q, q + '2')
        if i % 2 == 0: os.unlink(q + '2')
        if os.pread(h, len(want) + 10, 0) != want:
            bad += 1
            print('MISMATCH held', q, r, flush=True)
        os.close(h)
        if i % 2 == 1: os.unlink(q + '2')
print('bad', bad)
`;

describe("read-only opens answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const stats = () => nativeChangeStats(c);
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`, { timeoutMs: 60_000 });
  /** Runs `code` through the mount, writes everything back (JS holds nothing), and gives the counts then. */
  const atRest = async (code: string) => {
    await py(code);
    await c.request('flush');
    return stats();
  };

  beforeAll(async () => {
    // Write-backs far off: data written through JS stays in its cache for the whole test.
    fx = await startControlFixture({ args: ['--fuse', '3', '--writeback-ms', '600000'] });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('opens, reads and closes of files at rest never reach JS, and read what the primary has', async () => {
    const before = await atRest(
      "os.mkdir('rest')\nfor i in range(30): open('rest/f%d' % i, 'wb').write(bytes([i]) * (1000 * i + 7))",
    );
    expect(before.enabled).toBe(true);
    const out = await py(
      "import hashlib\nfor i in range(30):\n  fd = os.open('rest/f%d' % i, os.O_RDONLY)\n  b = os.read(fd, 1 << 20)\n  os.close(fd)\n  print(i, len(b), hashlib.sha256(b).hexdigest())",
    );
    const after = await stats();
    for (const [k, line] of out.trim().split('\n').entries()) {
      const want = Buffer.alloc(1000 * k + 7, k);
      // What the reads through the mount returned, against the bytes the file was written with.
      expect(line).toBe(`${k} ${want.length} ${createHash('sha256').update(want).digest('hex')}`);
    }
    expect(after.opens - before.opens).toBe(30);
    // The kernel kept no pages of them (written through the mount, the pages were dropped at the
    // write-back's invalidation) or kept them: READs natively, none to JS.
    expect(after.openReadFallbacks).toBe(before.openReadFallbacks);
    // Nothing else reached JS between an open and its close: every release dropped its entry.
    expect(after.openReleases - before.openReleases).toBe(30);
    expect(after.busy).toBe(0);
  });

  it('a read sees data JS holds and the primary lacks; the handle JS took keeps reading, and a writer can open the file after', async () => {
    const before = await atRest("open('held', 'wb').write(b'a' * 10000)");
    const r = await py(
      [
        // Opened natively (JS holds nothing of the file yet).
        "fd = os.open('held', os.O_RDONLY)",
        // A writer's write while the file has a second name reaches JS (which takes the reader's
        // handle first) and stays in its cache (nothing written back): the reader's READs go to
        // JS from now on.
        "w = os.open('held', os.O_RDWR)",
        "os.link('held', 'held.2')",
        "os.pwrite(w, b'B' * 3000, 2000)",
        "os.unlink('held.2')",
        'a = os.pread(fd, 20000, 0)',
        // A second reader while JS holds data: its open goes to JS.
        "g = os.open('held', os.O_RDONLY)",
        'a2 = os.pread(g, 20000, 0)',
        'os.close(g)',
        'os.fsync(w)',
        "os.pwrite(w, b'C' * 10, 0)",
        'b = os.pread(fd, 20000, 0)',
        // SEEK_DATA goes to JS with the native handle.
        'e = os.lseek(fd, 0, os.SEEK_DATA)',
        'os.close(fd)',
        'os.close(w)',
        // A read-write open after a native read-only one (the cache's descriptor is read-write).
        "x = os.open('held', os.O_RDONLY)",
        "y = os.open('held', os.O_RDWR)",
        "os.pwrite(y, b'D', 9999)",
        'z = os.pread(x, 20000, 0)',
        'os.close(y)',
        'os.close(x)',
        "print(a == b'a' * 2000 + b'B' * 3000 + b'a' * 5000, a2 == a, b == b'C' * 10 + a[10:], e, z == b[:9999] + b'D')",
      ].join('\n'),
    );
    expect(r.trim()).toBe('True True True 0 True');
    const s = await stats();
    expect(s.openReadFallbacks).toBeGreaterThan(before.openReadFallbacks);
    expect(s.openFallbacks).toBeGreaterThan(before.openFallbacks);
    await c.request('flush');
    const want = Buffer.alloc(10000, 'a');
    want.fill('B', 2000, 5000);
    want.fill('C', 0, 10);
    want.write('D', 9999);
    expect(await fsp.readFile(path.join(fx.primary, 'held'))).toEqual(want);
  });

  it('opens for writing of files at rest are answered natively (not O_APPEND); what is written through them reaches the primary and the mirror, and one closed without writing never reaches JS', async () => {
    const before = await atRest(
      "os.mkdir('w')\nfor i in range(20): open('w/f%d' % i, 'wb').write(b'%02d' % i * 100)",
    );
    const r = await py(
      [
        // Ten writers: O_WRONLY and O_RDWR, a write each, one through a shared mapping.
        'import mmap',
        'for i in range(10):',
        "  fd = os.open('w/f%d' % i, os.O_WRONLY if i % 2 else os.O_RDWR)",
        '  if i == 4:',
        '    m = mmap.mmap(fd, 200)',
        "    m[10:20] = b'M' * 10",
        '    m.close()',
        "  else: os.pwrite(fd, b'W%d' % i * 5, 50)",
        '  os.close(fd)',
        // An append goes to JS (it places the write at its own end of the file).
        "fd = os.open('w/f0', os.O_WRONLY | os.O_APPEND)",
        "os.write(fd, b'END')",
        'os.close(fd)',
      ].join('\n'),
    );
    expect(r).toBe('');
    const mid = await atRest('');
    expect(mid.opens - before.opens).toBe(10);
    expect(mid.openFallbacks - before.openFallbacks).toBe(1);
    // JS takes the queue on a timer only while changes keep coming: quiet now, so ten opens for
    // writing closed without a write leave the queue at their RELEASE without reaching JS.
    await new Promise((r) => setTimeout(r, 200));
    const got = await py(
      "for i in range(10, 20):\n  fd = os.open('w/f%d' % i, os.O_RDWR)\n  if i == 10: got = os.pread(fd, 4, 0)\n  os.close(fd)\nprint(got)",
    );
    expect(got.trim()).toBe("b'1010'");
    const after = await stats();
    expect(after.opens - mid.opens).toBe(10);
    expect(after.openReleases - mid.openReleases).toBe(10);
    await c.request('flush');
    for (let i = 0; i < 20; i++) {
      const want = Buffer.from(`${String(i).padStart(2, '0')}`.repeat(100));
      if (i === 4) want.fill('M', 10, 20);
      else if (i < 10) want.write(`W${i}`.repeat(5), 50);
      const got = await fsp.readFile(path.join(fx.primary, 'w', `f${i}`));
      expect(got.toString()).toBe(i === 0 ? `${want}END` : want.toString());
    }
    await expectMirrorClean(c);
  });

  it("a writer's open of a file JS holds data of is answered natively too; reads through it see the cached bytes", async () => {
    await atRest("open('wh', 'wb').write(b'a' * 8000)");
    const before = await stats();
    const r = await py(
      [
        "fd = os.open('wh', os.O_RDWR)",
        // A write while the file has a second name goes to JS and stays in its cache (nothing
        // written back: the write-back is far off). With one name it would be done natively
        // (levels 29-31, native-open-writes.test.ts), before and after JS took the handle.
        "os.link('wh', 'wh.2')",
        "os.pwrite(fd, b'B' * 100, 1000)",
        "os.unlink('wh.2')",
        "g = os.open('wh', os.O_RDWR)",
        'a = os.pread(g, 9000, 0)',
        "os.pwrite(g, b'C' * 100, 7950)",
        'b = os.pread(fd, 9000, 0)',
        'os.close(g)',
        'os.close(fd)',
        "print(a == b'a' * 1000 + b'B' * 100 + b'a' * 6900, b == a[:7950] + b'C' * 100)",
      ].join('\n'),
    );
    expect(r.trim()).toBe('True True');
    const after = await stats();
    // Both opens natively: the second while JS held data of the file.
    expect(after.opens - before.opens).toBe(2);
    expect(after.openReadFallbacks).toBeGreaterThan(before.openReadFallbacks);
    await c.request('flush');
    const want = Buffer.alloc(8050, 'a');
    want.fill('B', 1000, 1100);
    want.fill('C', 7950, 8050);
    expect(await fsp.readFile(path.join(fx.primary, 'wh'))).toEqual(want);
  });

  it('a file the cache holds read-only (the primary said ETXTBSY) takes the read-write descriptor of a later native open for writing, and its writes reach the primary', async () => {
    // A program run from the primary itself: while it runs, the server's open(O_RDWR) of it
    // fails with ETXTBSY, so a reader's native open gets a read-only descriptor, which the cache
    // adopts when JS takes the handle (SEEK_DATA reaches JS). Once it has exited, a writer's
    // native open gets a read-write one: the cache's node must write back through that.
    const prog = path.join(fx.primary, 'prog');
    await fsp.copyFile('/bin/sleep', prog);
    await fsp.chmod(prog, 0o755);
    const r = await py(
      [
        'import subprocess, time',
        `p = subprocess.Popen([${JSON.stringify(prog)}, '60'])`,
        'time.sleep(0.3)',
        "fd = os.open('prog', os.O_RDONLY)",
        'os.lseek(fd, 0, os.SEEK_DATA)',
        'p.kill()',
        'p.wait()',
        "w = os.open('prog', os.O_RDWR)",
        "os.pwrite(w, b'XYZ', 0)",
        // Written back through the cache's descriptor: it must be the read-write one.
        'os.fsync(w)',
        'os.close(w)',
        'print(os.pread(fd, 3, 0))',
        'os.close(fd)',
      ].join('\n'),
    );
    expect(r.trim()).toBe("b'XYZ'");
    expect((await fsp.readFile(prog)).subarray(0, 3).toString()).toBe('XYZ');
  });

  it('reads through a descriptor survive a rename and an unlink of its name', async () => {
    const before = await atRest("open('ren', 'wb').write(b'x' * 5000)");
    const r = await py(
      "fd = os.open('ren', os.O_RDONLY)\nos.rename('ren', 'ren2')\na = os.pread(fd, 9000, 0)\nos.unlink('ren2')\nb = os.pread(fd, 9000, 100)\nos.close(fd)\nprint(len(a), len(b), os.path.exists('ren2'))",
    );
    expect(r.trim()).toBe('5000 4900 False');
    const after = await stats();
    expect(after.opens - before.opens).toBe(1);
    const left = (await fsp.readdir(fx.primary)).filter((n) => n.startsWith('.fuse_hidden'));
    expect(left).toEqual([]);
  });

  it("readlink is answered natively with the primary's target bytes (not UTF-8, cut to the caller's buffer); a missing name or a file goes to JS", async () => {
    const readlinks = async (): Promise<number> => (await status(c)).fs.kernelCache.native.readlinks;
    const before = await readlinks();
    const r = await py(
      [
        "os.symlink(b'tgt-\\xff\\xfe/' + b'x' * 300, b'l1')",
        "os.symlink('plain', 'l2')",
        "open('notlink', 'w').close()",
        "a = os.readlink(b'l1')",
        "b = os.readlink('l2')",
        'errs = []',
        "for p in ('missing', 'notlink'):",
        '  try: os.readlink(p)',
        '  except OSError as e: errs.append(e.errno)',
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = ctypes.create_string_buffer(16)\nn = libc.readlink(b'l1', buf, 16)",
        "print(a == b'tgt-\\xff\\xfe/' + b'x' * 300, b, errs, n, buf.raw[:n])",
      ].join('\n'),
    );
    expect(r.trim()).toBe("True plain [2, 22] 16 b'tgt-\\xff\\xfe/xxxxxxxxx'");
    expect(await fsp.readlink(path.join(fx.primary, 'l2'))).toBe('plain');
    // Two readlinks answered here (plus the cut one: three); the errors went to JS.
    expect((await readlinks()) - before).toBe(3);
  });

  it('storms of rewrites, renames and unlinks of files read through native opens read exactly what was written', async () => {
    const before = await stats();
    const runs = [1, 2, 3].map((w) => pyIn(fx.mnt, STORM, { args: [String(w), '60'], timeoutMs: 240_000 }));
    const outs = await Promise.all(runs);
    for (const o of outs) expect(o.trim().split('\n').at(-1)).toBe('bad 0');
    const after = await stats();
    expect(after.opens - before.opens).toBeGreaterThan(100);
    expect(after.openReadFallbacks - before.openReadFallbacks).toBeGreaterThan(0);
    await expectMirrorClean(c);
    const left = (await shIn(fx.primary, 'find . -name ".fuse_hidden*" | wc -l')).stdout.trim();
    expect(left).toBe('0');
  });
});
