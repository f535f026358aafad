import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorSettledExact,
  startControlFixture,
} from '../control/control-fixture.js';
import { FIXTURES as FUSE_FIXTURES, mountTmpfs, unmountAll } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { sh, shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/**
 * fallocate(2) through a real mount (twinfs's handler, fuse-native patch level 13): each mode the
 * kernel passes on (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE) does on the mount what it does on a plain
 * directory of the same filesystem, the mirror gets the same bytes (and holes where it punched),
 * and a primary that cannot do it answers the errno of its own filesystem with nothing changed.
 * Every access to the mount is a child process (fixtures/falloc.py, cp, head, sha256sum).
 */
const FALLOC = path.join(FUSE_FIXTURES, 'falloc.py');
const KEEP = 0x01;
const PUNCH = 0x02;
const COLLAPSE = 0x08;
const ZERO = 0x10;
const INSERT = 0x20;
const MiB = 1024 * 1024;

interface Falloc {
  res: string;
  size: number;
  blocks: number;
  /** The first hole (SEEK_HOLE): the size when there is none. */
  hole: number;
}

async function falloc(file: string, mode: number, off: number, len: number): Promise<Falloc> {
  const r = await sh(`${PYTHON} '${FALLOC}' '${file}' ${mode} ${off} ${len}`, { timeoutMs: 30_000 });
  expect(r.code, r.stderr).toBe(0);
  const [res, st] = r.stdout.trim().split('\n');
  const [size, blocks, hole] = st!.split(' ').map(Number);
  return { res: res!, size: size!, blocks: blocks!, hole: hole! };
}

/** Size, blocks and first hole of a file, which is opened read-only and not changed. */
async function probe(file: string): Promise<Falloc> {
  const r = await sh(`${PYTHON} '${FALLOC}' '${file}' stat`, { timeoutMs: 30_000 });
  expect(r.code, r.stderr).toBe(0);
  const [size, blocks, hole] = r.stdout.trim().split('\n')[1]!.split(' ').map(Number);
  return { res: 'ok', size: size!, blocks: blocks!, hole: hole! };
}

const sha = async (file: string) => (await shOk(`sha256sum '${file}'`, { timeoutMs: 30_000 })).split(' ')[0];

describe('fallocate(2) through a mount with the mirror on', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  let ref: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    ref = await tempDirs('ref');
    fx = await startControlFixture();
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
    await ref?.cleanup();
  });

  it('every mode does on the mount what it does on a plain ext4 directory; the mirror has the bytes and the holes', async () => {
    const src = path.join(ref.dirs.ref!, 'src');
    await fsp.writeFile(src, randomBytes(2 * MiB));
    const onMount = path.join(fx.mnt, 'f');
    const onRef = path.join(ref.dirs.ref!, 'f');
    await shOk(`cp '${src}' '${onMount}' && cp '${src}' '${onRef}'`, { timeoutMs: 30_000 });
    const steps: Array<[string, number, number, number]> = [
      ['punch a page-aligned hole', PUNCH | KEEP, 4096, 65536],
      ['punch an unaligned range (partial pages zeroed)', PUNCH | KEEP, 1_000_001, 333_333],
      ['zero a range across the end (the file grows)', ZERO, 1.5 * MiB, MiB],
      ['zero a range across the end, size kept', ZERO | KEEP, 2_516_582, MiB],
      ['allocate past the end (the file grows, zeros)', 0, 3 * MiB, MiB],
      ['allocate past the end, size kept', KEEP, 5 * MiB, MiB],
      ['allocate inside the file (nothing to see)', 0, 200_000, 8192],
    ];
    for (const [what, mode, off, len] of steps) {
      const a = await falloc(onMount, mode, off, len);
      const b = await falloc(onRef, mode, off, len);
      expect({ what, res: a.res, size: a.size }).toEqual({ what, res: 'ok', size: b.size });
      expect({ what, sha: await sha(onMount) }).toEqual({ what, sha: await sha(onRef) });
    }
    await expectMirrorSettledExact(fx, c, 30_000);
    const want = await sha(onRef);
    expect(await sha(path.join(fx.primary, 'f'))).toBe(want);
    expect(await sha(path.join(fx.mirrorRoot, 'f'))).toBe(want);
    // The mirror punched where the primary did: its first hole is the first one punched (zeros
    // written instead would leave it at the file's end).
    expect((await probe(path.join(fx.mirrorRoot, 'f'))).hole).toBe(4096);
    expect((await probe(path.join(fx.primary, 'f'))).hole).toBe(4096);
  }, 120_000);

  it('a split copy keeps its bytes while a hole is punched in the file; the mirror has the hole after the release', async () => {
    const onMount = path.join(fx.mnt, 'g');
    await shOk(`head -c ${MiB} /dev/urandom > '${onMount}'`, { timeoutMs: 30_000 });
    const before = await sha(onMount);
    const p = await c.prepare({ paths: ['/g'] });
    const item = p.items.find((i) => i.path === '/g')!;
    const split = path.join(p.mirrorRoot, item.mirrorPath);
    try {
      expect(await sha(split)).toBe(before);
      expect((await falloc(onMount, PUNCH | KEEP, 0, MiB / 2)).res).toBe('ok');
      expect((await falloc(onMount, ZERO, MiB - 100, 200)).res).toBe('ok');
      expect(await sha(split)).toBe(before);
    } finally {
      await c.release(p.backupId);
    }
    await expectMirrorSettledExact(fx, c, 30_000);
    const after = await sha(onMount);
    expect(after).not.toBe(before);
    expect(await sha(path.join(fx.mirrorRoot, 'g'))).toBe(after);
  }, 120_000);

  it('modes the kernel does not pass on are EOPNOTSUPP, and the file is unchanged', async () => {
    const onMount = path.join(fx.mnt, 'h');
    await shOk(`head -c ${MiB} /dev/urandom > '${onMount}'`, { timeoutMs: 30_000 });
    const before = await sha(onMount);
    for (const mode of [COLLAPSE, INSERT, PUNCH /* without KEEP_SIZE */]) {
      const r = await falloc(onMount, mode, 0, 65536);
      expect({ mode, res: r.res, size: r.size }).toEqual({ mode, res: 'err EOPNOTSUPP', size: MiB });
    }
    expect(await sha(onMount)).toBe(before);
  }, 60_000);
});

describe('fallocate(2) on a primary that cannot: its errno, nothing changed, the mirror the same', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    // tmpfs: 8 MiB of room, and no ZERO_RANGE (shmem_fallocate answers EOPNOTSUPP).
    await mountTmpfs(t.dirs.primary!, 'size=8m');
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!, t.dirs.primary!);
    await t?.cleanup();
  });

  it('ENOSPC for more than the primary holds, EOPNOTSUPP for a mode it lacks; the server goes on', async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      mirror: { dir: t.dirs.mirror!, stateDir: t.dirs.state! },
    });
    const f = path.join(t.dirs.mnt!, 'f');
    await shOk(`head -c ${MiB} /dev/urandom > '${f}'`, { timeoutMs: 30_000 });
    const before = await sha(f);
    const full = await falloc(f, 0, 0, 64 * MiB);
    expect({ res: full.res, size: full.size }).toEqual({ res: 'err ENOSPC', size: MiB });
    const zero = await falloc(f, ZERO, 0, 4096);
    expect({ res: zero.res, size: zero.size }).toEqual({ res: 'err EOPNOTSUPP', size: MiB });
    expect(await sha(f)).toBe(before);
    // What does fit still works, and reaches the mirror.
    expect((await falloc(f, 0, MiB, MiB)).res).toBe('ok');
    expect((await falloc(f, PUNCH | KEEP, 0, 8192)).res).toBe('ok');
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const want = await sha(path.join(t.dirs.primary!, 'f'));
    expect(want).not.toBe(before);
    expect(await sha(path.join(t.dirs.mirror!, 'data', 'f'))).toBe(want);
    expect((await fsp.stat(path.join(t.dirs.mirror!, 'data', 'f'))).size).toBe(2 * MiB);
  }, 120_000);
});
