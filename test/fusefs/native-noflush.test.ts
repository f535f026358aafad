import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  expectMirrorClean,
  startControlFixture,
  status,
} from '../control/control-fixture.js';
import { pyIn } from '../helpers/posix.js';

/**
 * Since fuse-native level 30 a file created or opened in libfuse's threads with one name is
 * opened with FOPEN_NOFLUSH while JS's flush would do nothing: its close(2) sends no FLUSH (one
 * round trip less per close). What must hold: those closes really send none (the same program
 * against a server with TWINFS_NATIVE_NOFLUSH=0 makes one FLUSH per writer's close, answered
 * natively; a read-only open has FOPEN_NOFLUSH from libfuse's no_rofd_flush in any case); a
 * file with a second name, an open JS answers and a server that writes back at close keep their
 * FLUSH; the bytes of a close without FLUSH, also those written through a shared mapping, reached
 * the server (the primary once its cache is written back, and the mirror) when munmap, msync and
 * close returned.
 */

/**
 * One program's 20 closes of writers: creates, then opens for writing of those one-name files
 * (a read-only open's close sends no FLUSH in any case, no_rofd_flush: not counted here).
 */
const CLOSES = [
  "os.mkdir('c')",
  'for i in range(10):',
  "  fd = os.open('c/n%d' % i, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)",
  "  os.write(fd, b'%d' % i * 1000)",
  '  os.close(fd)',
  'time.sleep(0.3)',
  'for i in range(10):',
  "  fd = os.open('c/n%d' % i, os.O_RDWR if i % 2 else os.O_WRONLY)",
  "  os.pwrite(fd, b'W', 5)",
  '  os.close(fd)',
].join('\n');

interface NativeCounts {
  flushes: number;
  noflushOpens: number;
  creates: number;
  opens: number;
}

async function counts(c: ControlClient): Promise<NativeCounts> {
  const k = (await status(c)).fs.kernelCache;
  return {
    flushes: k.native.flushes,
    noflushOpens: k.native.noflushOpens,
    creates: k.nativeUnlink.creates,
    opens: k.nativeUnlink.opens,
  };
}

function delta(a: NativeCounts, b: NativeCounts): NativeCounts {
  return {
    flushes: b.flushes - a.flushes,
    noflushOpens: b.noflushOpens - a.noflushOpens,
    creates: b.creates - a.creates,
    opens: b.opens - a.opens,
  };
}

function server(env: NodeJS.ProcessEnv, args: string[] = []) {
  const s: { fx?: ControlFixture; c?: ControlClient } = {};
  beforeAll(async () => {
    s.fx = await startControlFixture({ args: ['--fuse', '3', ...args], env });
    s.c = await s.fx.connect();
  });
  afterAll(async () => {
    await s.fx?.close();
  });
  return s;
}

const py = (fx: ControlFixture, code: string) =>
  pyIn(fx.mnt, `import os, time, mmap\n${code}\n`, { timeoutMs: 60_000 });

describe('closes without FLUSH (libfuse3, level 30)', () => {
  const on = server({});
  const off = server({ TWINFS_NATIVE_NOFLUSH: '0' });

  it('the closes of files created and opened natively with one name send no FLUSH; with TWINFS_NATIVE_NOFLUSH=0 each sends one', async () => {
    const got: Record<string, NativeCounts> = {};
    for (const [name, s] of [
      ['on', on],
      ['off', off],
    ] as const) {
      const before = await counts(s.c!);
      await py(s.fx!, CLOSES);
      got[name] = delta(before, await counts(s.c!));
    }
    // Most creates and opens are answered natively (one may reach JS: a JS op in flight).
    for (const d of [got.on!, got.off!]) expect(d.creates + d.opens).toBeGreaterThanOrEqual(18);
    // Without FOPEN_NOFLUSH the kernel sends a FLUSH at each writer's close (answered natively).
    expect(got.off!.flushes).toBe(20);
    expect(got.off!.noflushOpens).toBe(0);
    // With it, every create and open answered natively skips its FLUSH; those JS answered keep it.
    expect(got.on!.noflushOpens).toBe(got.on!.creates + got.on!.opens);
    expect(got.on!.flushes).toBe(20 - got.on!.noflushOpens);
    for (const s of [on, off]) {
      // A write JS answered is in its cache until the write-back: written back first.
      await s.c!.request('flush');
      for (let i = 0; i < 10; i++) {
        const want = Buffer.from(String(i).repeat(1000));
        want.write('W', 5);
        expect(await fsp.readFile(path.join(s.fx!.primary, 'c', `n${i}`))).toEqual(want);
      }
      await expectMirrorClean(s.c!);
    }
  });

  it('a file with two names keeps its FLUSH', async () => {
    const fx = on.fx!;
    const c = on.c!;
    await py(fx, "open('two', 'wb').write(b'x' * 100)\nos.link('two', 'two2')");
    await c.request('flush');
    const before = await counts(c);
    await py(fx, "time.sleep(0.3)\nfd = os.open('two', os.O_RDWR)\nos.read(fd, 10)\nos.close(fd)");
    const d = delta(before, await counts(c));
    expect(d.opens).toBe(1);
    expect(d.noflushOpens).toBe(0);
    expect(d.flushes).toBe(1);
  });

  it('bytes written through a shared mapping before a close without FLUSH reached the server once the munmap or msync returned', async () => {
    const fx = on.fx!;
    const c = on.c!;
    await py(fx, "open('m', 'wb').write(b'.' * 65536)");
    await c.request('flush');
    const before = await counts(c);
    // munmap before close (the pages go back at the munmap), then a mapping still alive at the
    // close, synced with msync afterwards; the primary is read by this process after each step.
    await py(
      fx,
      [
        'time.sleep(0.3)',
        "fd = os.open('m', os.O_RDWR)",
        'mm = mmap.mmap(fd, 65536)',
        "mm[100:116] = b'A' * 16",
        'mm.close()',
        'os.close(fd)',
      ].join('\n'),
    );
    // What reached the server (natively on the primary, or in JS's cache if JS took the handle)
    // is on the primary after the control flush; pages the kernel still held would not be.
    const primary = path.join(fx.primary, 'm');
    await c.request('flush');
    expect((await fsp.readFile(primary)).subarray(100, 116).toString()).toBe('A'.repeat(16));
    const d = delta(before, await counts(c));
    expect(d.noflushOpens).toBe(1);
    expect(d.flushes).toBe(0);
    await py(
      fx,
      [
        'time.sleep(0.3)',
        "fd = os.open('m', os.O_RDWR)",
        'mm = mmap.mmap(fd, 65536)',
        'os.close(fd)',
        "mm[4096:4112] = b'B' * 16",
        'mm.flush()',
        "print(open('m', 'rb').read()[4096:4112])",
        'mm.close()',
      ].join('\n'),
    );
    await c.request('flush');
    expect((await fsp.readFile(primary)).subarray(4096, 4112).toString()).toBe('B'.repeat(16));
    await expectMirrorClean(c);
  });
});

describe('closes that the server writes back at keep their FLUSH (--flush-on-close)', () => {
  const s = server({}, ['--flush-on-close']);

  it('no create or open is answered with FOPEN_NOFLUSH', async () => {
    const before = await counts(s.c!);
    await py(s.fx!, CLOSES);
    const d = delta(before, await counts(s.c!));
    expect(d.creates + d.opens).toBeGreaterThan(0);
    expect(d.noflushOpens).toBe(0);
  });
});
