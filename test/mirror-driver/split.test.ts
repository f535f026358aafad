import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll } from '../helpers/mounts.js';
import { tempDirs } from '../helpers/server.js';
import { fingerprint, type InProcess, MIXED, mountInProcess, run, sha } from './mirror-helpers.js';

const MiB = 1024 * 1024;

/**
 * Split semantics with the driver in this process. The mount is touched only by child processes
 * (run()); the test reads the primary and the mirror directly.
 */
describe('split: frozen mirror copies, tracked changes, exact resync', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess;
  let P: string;
  let M: string;
  let mnt: string;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    P = t.dirs.primary!;
    mnt = t.dirs.mnt!;
    m = await mountInProcess({ primary: P, mount: mnt, mirror: t.dirs.mirror!, stateDir: t.dirs.state! });
    M = m.driver.dataRoot;
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await unmountAll(mnt);
    await t?.cleanup();
  });

  it('a split file stays frozen through writes, truncate, rename (also of its directory) and unlink', async () => {
    await run(
      `set -e; cd '${mnt}'; mkdir -p a; head -c 3000000 /dev/urandom >a/frozen; head -c 100000 /dev/urandom >a/other`,
    );
    await m.settle();
    const frozen = await sha(`${M}/a/frozen`);
    expect(frozen).toBe(await sha(`${P}/a/frozen`));
    const mst = await fsp.stat(`${M}/a/frozen`);

    const s = await m.driver.split({ paths: ['/a/frozen'] });
    expect(m.driver.stateOf('/a/frozen')).toBe('SPLIT');
    expect(m.driver.stateOf('/a/other')).toBe('PAIR');

    await run(`set -e; cd '${mnt}'; dd if=/dev/urandom of=a/frozen bs=4k seek=10 count=5 conv=notrunc status=none;
      truncate -s 2000000 a/frozen; chmod 600 a/frozen; head -c 5000 /dev/urandom >>a/other`);
    await m.settle();
    expect(await sha(`${M}/a/frozen`)).toBe(frozen);
    // Files outside the split keep mirroring.
    expect(await sha(`${M}/a/other`)).toBe(await sha(`${P}/a/other`));

    // Its new name is still part of the split; then its directory is renamed, then it is removed.
    await run(
      `set -e; cd '${mnt}'; mv a/frozen a/renamed; dd if=/dev/urandom of=a/renamed bs=4k count=3 conv=notrunc status=none`,
    );
    await m.settle();
    expect(await sha(`${M}/a/frozen`)).toBe(frozen);
    await run(
      `set -e; cd '${mnt}'; mv a b; head -c 1000 /dev/urandom >>b/other; dd if=/dev/zero of=b/renamed bs=1k count=1 seek=5 conv=notrunc status=none`,
    );
    await m.settle();
    expect(await sha(`${M}/a/frozen`)).toBe(frozen);
    expect(await sha(`${M}/b/other`)).toBe(await sha(`${P}/b/other`));
    await run(`rm '${mnt}/b/renamed'`);
    await m.settle();
    const after = await fsp.stat(`${M}/a/frozen`);
    expect(await sha(`${M}/a/frozen`)).toBe(frozen);
    expect([after.size, after.mtimeMs, after.mode]).toEqual([mst.size, mst.mtimeMs, mst.mode]);
    expect((await m.driver.verify()).ok).toBe(true);

    const r = await m.driver.resync(s.splitId);
    expect(r.splitId).toBe(s.splitId);
    expect(m.driver.stateOf('/a/frozen')).toBe('PAIR');
    const v = await m.driver.verify();
    expect(v.differences).toEqual([]);
    expect(await fsp.stat(`${M}/a`).catch(() => null)).toBeNull();
  });

  it('a split subtree stays frozen when its parent directory is renamed; its siblings keep mirroring', async () => {
    await run(`set -e; cd '${mnt}'; mkdir -p t/keep/sub; head -c 200000 /dev/urandom >t/keep/sub/x;
      head -c 300000 /dev/urandom >t/keep/y; head -c 50000 /dev/urandom >t/out; ln -s y t/keep/link`);
    await m.settle();
    const before = await fingerprint(`${M}/t/keep`);
    expect(before).toEqual(await fingerprint(`${P}/t/keep`));
    const s = await m.driver.split({ subtrees: ['/t/keep'] });

    await run(`set -e; cd '${mnt}'; mv t t2; dd if=/dev/urandom of=t2/keep/y bs=1k seek=100 count=20 conv=notrunc status=none;
      echo new >t2/keep/new; rm t2/keep/sub/x; truncate -s 10 t2/keep/y; setfattr -n user.k -v v t2/keep/sub;
      head -c 7000 /dev/urandom >>t2/out; echo fresh >t2/fresh`);
    await m.settle();
    expect(await fingerprint(`${M}/t/keep`)).toEqual(before);
    expect(await sha(`${M}/t2/out`)).toBe(await sha(`${P}/t2/out`));
    expect(await sha(`${M}/t2/fresh`)).toBe(await sha(`${P}/t2/fresh`));

    await m.driver.resync(s.splitId);
    const v = await m.driver.verify();
    expect(v.differences).toEqual([]);
    expect(await fsp.stat(`${M}/t`).catch(() => null)).toBeNull();
  });

  it('a volume split freezes the whole mirror through a mixed workload; resync makes it equal again', async () => {
    await run(
      `set -e; cd '${mnt}'; mkdir -p v/d; head -c 400000 /dev/urandom >v/d/f; ln v/d/f v/hard; echo x >v/small`,
    );
    await m.settle();
    const before = await fingerprint(M);
    const s = await m.driver.split({ volume: true });
    expect(m.driver.stateOf('/anything')).toBe('SPLIT');
    await run(`set -e; '${MIXED}' '${mnt}/v/mixed' 5; cd '${mnt}'; mv v/d v/d2; echo more >>v/hard; rm v/small;
      chmod 700 v; chown 7:8 v/d2/f; touch -m -d 2000-01-01 v/d2/f`);
    await m.settle();
    expect(await fingerprint(M)).toEqual(before);
    const info = m.driver.getSplit(s.splitId)!;
    expect(info.trackedFiles).toBeGreaterThan(10);

    const r = await m.driver.resync(s.splitId);
    expect(r.bytesCopied).toBeGreaterThan(0);
    const v = await m.driver.verify();
    expect(v.differences).toEqual([]);
    // The hard link survives in the mirror.
    const [a, b] = await Promise.all([fsp.stat(`${M}/v/d2/f`), fsp.stat(`${M}/v/hard`)]);
    expect(a.ino).toBe(b.ino);
  });

  it('resync copies only the tracked bytes: 1 MiB changed in a 64 MiB file, and nothing for an untouched split', async () => {
    // Big writes: 4-8 KiB requests (head -c) crawl through the mount at ~10 MB/s.
    await run(`dd if=/dev/urandom of='${mnt}/big' bs=1M count=64 status=none`, 120_000);
    await m.settle();
    const frozen = await sha(`${M}/big`);
    expect(frozen).toBe(await sha(`${P}/big`));

    const s = await m.driver.split({ paths: ['/big'] });
    await run(`dd if=/dev/urandom of='${mnt}/big' bs=1M seek=10 count=1 conv=notrunc status=none`);
    await m.settle();
    const info = m.driver.getSplit(s.splitId)!;
    expect(info.trackedBytes).toBe(MiB);
    expect(await sha(`${M}/big`)).toBe(frozen);
    const before = m.driver.status().stats.resyncBytes;
    const r = await m.driver.resync(s.splitId);
    expect(r.bytesCopied).toBe(info.trackedBytes);
    expect(m.driver.status().stats.resyncBytes - before).toBe(MiB);
    expect(await sha(`${M}/big`)).toBe(await sha(`${P}/big`));

    const idle = await m.driver.split({ paths: ['/big'] });
    expect((await m.driver.resync(idle.splitId)).bytesCopied).toBe(0);
    expect((await m.driver.verify()).differences).toEqual([]);
  });

  it('a truncate and re-extension under a split reads as zeros after resync (no write marks those bytes)', async () => {
    await run(`head -c 300000 /dev/urandom >'${mnt}/tr'`);
    await m.settle();
    const s = await m.driver.split({ paths: ['/tr'] });
    await run(
      `set -e; cd '${mnt}'; truncate -s 1000 tr; truncate -s 300000 tr; dd if=/dev/urandom of=tr bs=1k seek=200 count=1 conv=notrunc status=none`,
    );
    await m.settle();
    const r = await m.driver.resync(s.splitId);
    expect(r.bytesCopied).toBe(1024);
    expect(await sha(`${M}/tr`)).toBe(await sha(`${P}/tr`));
  });

  it('a hard link made to a split file is followed: writes through it are tracked, and the mirror links it', async () => {
    await run(`head -c 100000 /dev/urandom >'${mnt}/hl'`);
    await m.settle();
    const frozen = await sha(`${M}/hl`);
    const s = await m.driver.split({ paths: ['/hl'] });
    await run(
      `set -e; cd '${mnt}'; ln hl alias; dd if=/dev/urandom of=alias bs=1k count=4 conv=notrunc status=none`,
    );
    await m.settle();
    expect(await sha(`${M}/hl`)).toBe(frozen);
    expect(await fsp.stat(`${M}/alias`).catch(() => null)).toBeNull();
    await m.driver.resync(s.splitId);
    expect((await m.driver.verify()).differences).toEqual([]);
    const [a, b] = await Promise.all([fsp.stat(`${M}/hl`), fsp.stat(`${M}/alias`)]);
    expect(a.ino).toBe(b.ino);
  });

  // A hard link made before the split, one name inside it and one outside: a write through the
  // outside name must not reach the frozen copy (invariant 4). The mirror gives that name its own
  // copy (copy-on-write) and links the two again at resync.
  it('a write through a hard link outside the split is tracked: the frozen file (every name of it) stays until the resync', async () => {
    await run(`set -e; cd '${mnt}'; head -c 10000 /dev/urandom >ha; ln ha hb`);
    await m.settle();
    const frozen = await sha(`${M}/ha`);
    const s = await m.driver.split({ paths: ['/ha'] });
    try {
      await run(`dd if=/dev/zero of='${mnt}/hb' bs=1k count=1 conv=notrunc status=none`);
      await m.settle();
      expect(await sha(`${M}/ha`)).toBe(frozen);
      // In the mirror both names are the frozen file (no copy of its own for hb, which would
      // have to be linked again and miss what came through the other names meanwhile).
      expect(await sha(`${M}/hb`)).toBe(frozen);
      expect(m.driver.stateOf('/hb')).toBe('SPLIT');
    } finally {
      await m.driver.resync(s.splitId);
    }
    await m.settle();
    expect(await sha(`${M}/ha`)).toBe(await sha(`${P}/ha`));
    const [a, b] = await Promise.all([fsp.stat(`${M}/ha`), fsp.stat(`${M}/hb`)]);
    expect(a.ino).toBe(b.ino);
    expect((await m.driver.verify()).differences).toEqual([]);
  });

  it('overlapping splits: a path stays frozen until the last holder resyncs', async () => {
    await run(
      `set -e; cd '${mnt}'; mkdir -p o; head -c 100000 /dev/urandom >o/f; head -c 100000 /dev/urandom >o/g`,
    );
    await m.settle();
    const f0 = await sha(`${M}/o/f`);
    const outer = await m.driver.split({ subtrees: ['/o'] });
    const inner = await m.driver.split({ paths: ['/o/f'] });
    await run(
      `set -e; cd '${mnt}'; dd if=/dev/urandom of=o/f bs=1k count=8 conv=notrunc status=none; echo g >>o/g`,
    );
    await m.settle();
    await m.driver.resync(inner.splitId);
    expect(await sha(`${M}/o/f`)).toBe(f0);
    expect(m.driver.stateOf('/o/f')).toBe('SPLIT');
    await m.driver.resync(outer.splitId);
    expect(await sha(`${M}/o/f`)).toBe(await sha(`${P}/o/f`));
    expect((await m.driver.verify()).differences).toEqual([]);
  });

  it('leaves nothing split and the mirror equal after unmount and dispose', async () => {
    await m.close();
    const r = await run(
      `'${process.execPath}' '${path.resolve('dist/cli/main.js')}' verify --primary '${P}' --mirror '${t.dirs.mirror}'`,
    );
    expect(r).toMatch(/entries match/);
  });
});
