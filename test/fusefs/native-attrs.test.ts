import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  sleep,
  startControlFixture,
  startWriter,
  status,
  type Writer,
  waitUntil,
} from '../control/control-fixture.js';
import { traceFuseRequests } from '../helpers/fuse-trace.js';
import { pyIn } from '../helpers/posix.js';

/**
 * The libfuse3 path answers getattr (so lookups) and getxattr in libfuse's threads, from the
 * primary plus the attributes of data twinfs still caches (native-attrs.h in the fuse-native
 * patch). What a stat shows must stay exactly what the JS path shows: cached writes count,
 * and the frozen file's write still waits in twinfs while its stat is answered.
 */

const REC = 4096;
type Attrs = { size: number; mtimeNs: string; nlink: number };

const STAT = `
import json, os, sys
st = os.lstat(sys.argv[1])
print(json.dumps({'size': st.st_size, 'mtimeNs': str(st.st_mtime_ns), 'nlink': st.st_nlink}))
`;

describe('getattr and getxattr answered natively (libfuse3)', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const writers: Writer[] = [];
  const native = async () => (await status(c)).fs.kernelCache.native as Record<string, number>;
  /** lstat through the mount, from a process of its own. */
  const statIn = async (name: string): Promise<Attrs> =>
    JSON.parse(await pyIn(fx.mnt, STAT, { args: [name] })) as Attrs;
  /** Python statements (os imported) in the mount, in a process of their own. */
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);
  const primary = async (name: string) => fsp.lstat(path.join(fx.primary, name), { bigint: true });

  beforeAll(async () => {
    // Cached data stays cached until fsync: the overlay is what the stats below must show.
    // Writes through opens of files at rest are done in libfuse's threads since level 29 and never
    // cached; this test is about data JS's cache holds, so its writes go to JS (native-open-writes.test.ts
    // covers the native path). Every writer's close sends its FLUSH too (TWINFS_NATIVE_NOFLUSH=0):
    // the tests below count the FLUSHes answered natively (native-noflush.test.ts covers the rest).
    fx = await startControlFixture({
      args: ['--fuse', '3', '--writeback-ms', '600000'],
      env: { TWINFS_NATIVE_OPEN: 'open', TWINFS_NATIVE_NOFLUSH: '0' },
    });
    c = await fx.connect();
  });
  afterAll(async () => {
    for (const w of writers) await w.kill();
    await fx?.close();
  });

  it('a stat right after a cached write shows its size and the mtime the primary gets when it is written back', async () => {
    // Created first: a new file's writes go to the primary until JS takes its create
    // (native-create.h); the open(2) that follows is JS's, so its write is cached.
    await py("open('w', 'wb').close(); f = open('w', 'wb'); f.write(b'x' * 5000); f.close()");
    const before = await native();
    const seen = await statIn('w');
    const after = await native();
    // The primary does not have the data yet; the answer came from libfuse's thread.
    expect((await primary('w')).size).toBe(0n);
    expect(after.cached).toBeGreaterThanOrEqual(1);
    expect(after.answered).toBeGreaterThan(before.answered!);
    expect(seen.size).toBe(5000);
    // Truncated while cached: the overlay shrinks with it.
    await py("os.truncate('w', 1000)");
    expect((await statIn('w')).size).toBe(1000);
    await py("f = open('w', 'r+b'); f.seek(3000); f.write(b'y' * 10); f.close()");
    const grown = await statIn('w');
    expect(grown.size).toBe(3010);
    // Written back: the primary now has what the stat showed, to the ns.
    await py("fd = os.open('w', os.O_RDONLY); os.fsync(fd); os.close(fd)");
    const p = await primary('w');
    expect({ size: Number(p.size), mtimeNs: String(p.mtimeNs) }).toEqual({
      size: grown.size,
      mtimeNs: grown.mtimeNs,
    });
    expect((await native()).cached).toBe(0);
    expect(await statIn('w')).toEqual({ size: 3010, mtimeNs: String(p.mtimeNs), nlink: 1 });
  });

  it('cached data follows its file through rename, link and unlink of other names', async () => {
    await py(
      "open('r1', 'wb').close(); f = open('r1', 'wb'); f.write(b'r' * 7000); f.close(); os.rename('r1', 'r2')",
    );
    expect((await primary('r2')).size).toBe(0n);
    expect(await statIn('r2')).toMatchObject({ size: 7000, nlink: 1 });
    // Two names: every stat of them goes to JS (which learns the names), both exact.
    await py("os.link('r2', 'r3')");
    expect(await statIn('r2')).toMatchObject({ size: 7000, nlink: 2 });
    expect(await statIn('r3')).toMatchObject({ size: 7000, nlink: 2 });
    // Appended through r3, then r3 unlinked: r2, a name the kernel was told of, takes the
    // cached data over (nothing is written back for the unlink).
    await py("f = open('r3', 'ab'); f.write(b's' * 1000); f.close(); os.unlink('r3')");
    expect((await primary('r2')).size).toBe(0n);
    await py("f = open('r2', 'ab'); f.write(b't' * 500); f.close()");
    // One name again, still cached: answered natively, the append through r2 included.
    const before = await native();
    const seen = await statIn('r2');
    expect(seen).toMatchObject({ size: 8500, nlink: 1 });
    expect((await native()).answered).toBeGreaterThan(before.answered!);
    expect((await primary('r2')).size).toBe(0n);
    // Written back under r2: the primary and the mirror get every byte, with the mtime shown.
    await py("fd = os.open('r2', os.O_RDONLY); os.fsync(fd); os.close(fd)");
    const want = Buffer.concat([Buffer.alloc(7000, 'r'), Buffer.alloc(1000, 's'), Buffer.alloc(500, 't')]);
    expect((await fsp.readFile(path.join(fx.primary, 'r2'))).equals(want)).toBe(true);
    expect(String((await primary('r2')).mtimeNs)).toBe(seen.mtimeNs);
    await waitUntil(
      async () =>
        (await fsp.readFile(path.join(fx.mirrorRoot, 'r2')).catch(() => Buffer.alloc(0))).equals(want),
      10_000,
      'the mirror has r2 written back',
    );
    await expect(fsp.lstat(path.join(fx.mirrorRoot, 'r3'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a write-back leaves a name alone only while the kernel took none of its attributes since the last write', async () => {
    const names = ['wb-stat', 'wb/list', 'wb-none'];
    const FULL = `
import json, os, sys
print(json.dumps([[st.st_ctime_ns, st.st_blocks, st.st_size, st.st_mtime_ns] for st in map(os.lstat, sys.argv[1:])]))
`;
    const shown = async () => JSON.parse(await pyIn(fx.mnt, FULL, { args: names })) as number[][];
    const onPrimary = () =>
      Promise.all(
        names.map(async (n) => {
          const st = await primary(n);
          return [Number(st.ctimeNs), Number(st.blocks), Number(st.size), Number(st.mtimeNs)];
        }),
      );
    const unseen = async () => Number((await status(c)).fs.kernelCache.writeBacksUnseen);
    const before = await unseen();
    // Each file cached, then its attributes taken after the write: by a stat (answered
    // natively, with the cached size and times), by a readdirplus (answered by JS), or not at
    // all (wb-none is written after both); then written back by fsync, which moves the
    // primary's ctime behind the kernel's back.
    await py(`
os.mkdir('wb')
def put(n, b):
    os.close(os.open(n, os.O_WRONLY | os.O_CREAT, 0o644))  # the write below: to JS's cache
    fd = os.open(n, os.O_WRONLY | os.O_CREAT, 0o644); os.write(fd, b * 5000); os.close(fd)
put('wb-stat', b's'); put('wb/list', b'l')
os.lstat('wb-stat')
os.listdir('wb')
put('wb-none', b'n')
for n in ${JSON.stringify(names)}:
    fd = os.open(n, os.O_RDONLY); os.fsync(fd); os.close(fd)
`);
    // Every name shows exactly what the primary has now: the ctime of the write-back.
    expect(await shown()).toEqual(await onPrimary());
    // Only wb-none's write-back went without an invalidation.
    expect(await unseen()).toBe(before + 1);
  });

  it('close(2) is answered natively while no write-back error waits to be reported', async () => {
    const before = await native();
    await py("for i in range(3):\n  f = open(f'c{i}', 'wb'); f.write(b'c'); f.close()");
    expect((await native()).flushes).toBeGreaterThanOrEqual(before.flushes! + 3);
  });

  it('close(2) of a read-only descriptor sends no FLUSH at all (no_rofd_flush)', async () => {
    await py("for i in range(10):\n  f = open(f'ro{i}', 'wb'); f.write(b'r' * 100); f.close()");
    const before = await native();
    // Ten read-only opens, each read and closed: no FLUSH reaches the server (the kernel's own
    // count of the requests it sent, and the server's of those it answered natively).
    const trace = traceFuseRequests(fx.mnt);
    let out: string;
    let sent: Map<string, number>;
    try {
      out = await py("print(sum(len(open(f'ro{i}', 'rb').read()) for i in range(10)))");
      sent = trace.counts();
    } finally {
      trace.stop();
    }
    expect(out).toBe('1000\n');
    expect(sent.get('FUSE_OPEN')).toBe(10);
    expect(sent.get('FUSE_FLUSH') ?? 0).toBe(0);
    expect((await native()).flushes).toBe(before.flushes);
    // A descriptor open for writing still sends one at its close (nothing cached: native).
    await py("for i in range(3): os.close(os.open(f'ro{i}', os.O_RDWR))");
    expect((await native()).flushes).toBe(before.flushes! + 3);
  });

  it('lookups of missing names and of every entry of a directory are answered without JS', async () => {
    await py("os.mkdir('d')\nfor i in range(20): open(f'd/f{i}', 'w').close()");
    const before = await native();
    const out = await py(
      "try:\n  os.lstat('d/missing')\nexcept FileNotFoundError:\n  print('ENOENT')\nprint(sum(os.lstat(f'd/f{i}').st_size for i in range(20)))",
    );
    expect(out).toBe('ENOENT\n0\n');
    expect((await native()).answered).toBeGreaterThan(before.answered!);
  });

  it('getxattr is answered natively, ENODATA and ERANGE included', async () => {
    await py("open('x', 'w').close(); os.setxattr('x', 'user.k', b'v' * 200)");
    const before = await native();
    const out = await py(
      [
        'import errno, ctypes',
        "print(len(os.getxattr('x', 'user.k')))",
        'try:',
        "  os.getxattr('x', 'user.none')",
        'except OSError as e:',
        '  print(e.errno == errno.ENODATA)',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'buf = ctypes.create_string_buffer(16)',
        "r = libc.getxattr(b'x', b'user.k', buf, 16)",
        'print(r, ctypes.get_errno() == errno.ERANGE)',
      ].join('\n'),
    );
    expect(out).toBe('200\nTrue\n-1 True\n');
    expect((await native()).xattrs).toBeGreaterThanOrEqual(before.xattrs! + 3);
    await py("os.removexattr('x', 'user.k')");
    expect(await py("print(os.listxattr('x'))")).toBe('[]\n');
    const gone = await py(
      "import errno\ntry:\n  os.getxattr('x', 'user.k')\nexcept OSError as e:\n  print(e.errno == errno.ENODATA)",
    );
    expect(gone).toBe('True\n');
  });

  it("a write to a frozen file still waits in twinfs while the file's stat is answered", async () => {
    await fsp.writeFile(path.join(fx.mnt, 'fz'), 'z'.repeat(100));
    const f: any = await c.request('freeze', { selector: { paths: ['/fz'] }, timeoutMs: 60_000 });
    const held = startWriter({
      file: path.join(fx.mnt, 'fz'),
      size: REC,
      fsync: false,
      count: 1,
      keep: true,
    });
    writers.push(held);
    await waitUntil(() => held.opened, 5000, 'writer to open fz');
    await sleep(1000);
    const before = await native();
    const during = await statIn('fz');
    expect((await native()).answered).toBeGreaterThan(before.answered!);
    expect(held.acked).toBe(0);
    expect(during.size).toBe(100);
    await c.request('thaw', { freezeId: f.freezeId });
    await held.waitFor(1, 5000);
    expect(held.error).toBeNull();
    expect((await statIn('fz')).size).toBe(REC);
  });
});
