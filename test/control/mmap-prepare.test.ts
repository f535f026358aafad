import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import type { PrepareResult } from '../../src/control/protocol.js';
import { shOk } from '../helpers/proc.js';
import { type ControlFixture, FIXTURES, startControlFixture, status } from './control-fixture.js';

/**
 * Invariant 1 for data written through a shared writable mmap: the kernel holds such dirty pages
 * and sends them as WRITE requests on its own schedule (30 s by default), so a prepare that only
 * inhibits and flushes twinfs's cache splits a copy without them. Real FUSE, a real server, and
 * python3 children that dirty a mapping and keep it mapped without msync.
 */

const MiB = 1024 * 1024;
/**
 * The budget of the failure test only, whose write-back is held by a freeze and so always runs
 * into it: short to keep that test quick. The tests of a write-back that succeeds run with the
 * product's default budget (--kernel-sync-timeout-ms, 30 s), the one a user gets: a short budget
 * there fails them whenever the machine is busy, which says nothing about prepare.
 */
const KERNEL_SYNC_TIMEOUT_MS = 1500;
/** How long the failure test waits, after the thaw, for the stuck write-back to end. */
const UNSTUCK_WAIT_MS = 40_000;

/** A python3 child holding a dirty MAP_SHARED mapping of file (fixtures/mmap-writer.py). */
class MmapWriter {
  private out = '';
  private err = '';
  private readonly exited: Promise<void>;

  private constructor(readonly proc: ChildProcess) {
    proc.stdout!.on('data', (d: Buffer) => (this.out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
    this.exited = new Promise((r) => proc.on('exit', () => r()));
  }

  static async start(file: string, size: number, byte: string, mode: 'create' | 'keep' = 'create') {
    const proc = spawn('python3', [path.join(FIXTURES, 'mmap-writer.py'), file, String(size), byte, mode], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const w = new MmapWriter(proc);
    await w.ready(1);
    return w;
  }

  /** Fills the whole mapping with byte again (dirtying every page) and waits until it did. */
  async fill(byte: string): Promise<void> {
    const n = this.out.split('ready').length;
    this.proc.stdin!.write(`fill ${byte}\n`);
    await this.ready(n);
  }

  private async ready(n: number): Promise<void> {
    const end = Date.now() + 20_000;
    while (this.out.split('ready').length - 1 < n) {
      if (this.proc.exitCode !== null) throw new Error(`mmap writer exited: ${this.err}`);
      if (Date.now() > end) throw new Error(`mmap writer not ready: ${this.err}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }
}

async function mirrorCopy(p: PrepareResult, volumePath: string): Promise<Buffer> {
  const item = p.items.find((i) => i.path === volumePath);
  if (!item) throw new Error(`prepare reply lists no ${volumePath}: ${JSON.stringify(p.items)}`);
  return fsp.readFile(path.join(p.mirrorRoot, item.mirrorPath));
}

/** How many bytes of buf are not byte (0 when buf is byte all along). */
function countOther(buf: Buffer, byte: string): number {
  const b = byte.charCodeAt(0);
  let n = 0;
  for (const x of buf) if (x !== b) n++;
  return n;
}

/**
 * A served volume (our own write-back only on demand: whatever reaches the mirror came through
 * prepare), a client, and mmap writers stopped at the end; args adds serve options.
 */
function mmapFixture(args: string[] = []) {
  const s = {} as { fx: ControlFixture; c: ControlClient };
  const writers: MmapWriter[] = [];
  beforeAll(async () => {
    s.fx = await startControlFixture({ args: ['--writeback-ms', '60000', ...args] });
    s.c = await s.fx.connect();
  });
  afterAll(async () => {
    for (const w of writers) await w.stop();
    await s.fx?.close();
  });
  const writer = async (...a: Parameters<typeof MmapWriter.start>) => {
    const w = await MmapWriter.start(...a);
    writers.push(w);
    return w;
  };
  return { s, writer };
}

describe('prepare writes back the kernel dirty pages of shared writable mappings', () => {
  const { s, writer } = mmapFixture();
  let fx: ControlFixture;
  let c: ControlClient;
  beforeAll(() => {
    ({ fx, c } = s);
  });

  it('a new 1 MiB file filled with Z through a mapping that stays mapped is 1 MiB of Z in the split copy', async () => {
    const w = await writer(path.join(fx.mnt, 'm.dat'), MiB, 'Z');
    const p = await c.prepare({ paths: ['/m.dat'] });
    try {
      const copy = await mirrorCopy(p, '/m.dat');
      expect(copy.length).toBe(MiB);
      expect(countOther(copy, 'Z')).toBe(0);
    } finally {
      await c.release(p.backupId);
    }
    // Dirtied again after the release: the next prepare takes the new pages, not the old copy.
    await w.fill('Y');
    const p2 = await c.prepare({ paths: ['/m.dat'] });
    try {
      const copy = await mirrorCopy(p2, '/m.dat');
      expect(copy.length).toBe(MiB);
      expect(countOther(copy, 'Y')).toBe(0);
    } finally {
      await c.release(p2.backupId);
    }
  });

  it('pages dirtied through another name of a hard-linked file are in the copy of the selected name', async () => {
    // High-level libfuse keeps a kernel inode per name: the pages of h2 are not h1's pages.
    await shOk(`head -c ${MiB} /dev/zero > '${fx.mnt}/h1' && ln '${fx.mnt}/h1' '${fx.mnt}/h2'`, {
      timeoutMs: 20_000,
    });
    await writer(path.join(fx.mnt, 'h2'), MiB, 'L', 'keep');
    const p = await c.prepare({ paths: ['/h1'] });
    try {
      const copy = await mirrorCopy(p, '/h1');
      expect(copy.length).toBe(MiB);
      expect(countOther(copy, 'L')).toBe(0);
    } finally {
      await c.release(p.backupId);
    }
  });

  it('a subtree selection takes the pages of a name outside it that links to a file inside', async () => {
    await shOk(
      `mkdir '${fx.mnt}/sub' && head -c ${MiB} /dev/zero > '${fx.mnt}/sub/s1' && ln '${fx.mnt}/sub/s1' '${fx.mnt}/s2'`,
      { timeoutMs: 20_000 },
    );
    await writer(path.join(fx.mnt, 's2'), MiB, 'S', 'keep');
    const p = await c.prepare({ subtree: '/sub' });
    try {
      const copy = await mirrorCopy(p, '/sub/s1');
      expect(copy.length).toBe(MiB);
      expect(countOther(copy, 'S')).toBe(0);
    } finally {
      await c.release(p.backupId);
    }
  });

  it('a subtree prepare writes back data cached under a name outside it of a file inside it', async () => {
    // Not mmap: our cache keeps one name per inode, here the outside one the data came through.
    await shOk(
      `mkdir '${fx.mnt}/sub2' && : > '${fx.mnt}/sub2/t1' && ln '${fx.mnt}/sub2/t1' '${fx.mnt}/t2' && head -c ${MiB} /dev/zero | tr '\\0' T > '${fx.mnt}/t2'`,
      { timeoutMs: 20_000 },
    );
    const p = await c.prepare({ subtree: '/sub2' });
    try {
      const copy = await mirrorCopy(p, '/sub2/t1');
      expect(copy.length).toBe(MiB);
      expect(countOther(copy, 'T')).toBe(0);
    } finally {
      await c.release(p.backupId);
    }
  });

  it('an operator freeze writes back mapped pages too: the primary holds them while frozen', async () => {
    await writer(path.join(fx.mnt, 'fz.dat'), MiB, 'F');
    const fz: any = await c.request('freeze', { selector: { paths: ['/fz.dat'] } });
    try {
      const onPrimary = await fsp.readFile(path.join(fx.primary, 'fz.dat'));
      expect(onPrimary.length).toBe(MiB);
      expect(countOther(onPrimary, 'F')).toBe(0);
    } finally {
      await c.request('thaw', { freezeId: fz.freezeId });
    }
  });
});

describe('a kernel write-back that cannot finish within its budget', () => {
  const { s, writer } = mmapFixture(['--kernel-sync-timeout-ms', String(KERNEL_SYNC_TIMEOUT_MS)]);
  let fx: ControlFixture;
  let c: ControlClient;
  beforeAll(() => {
    ({ fx, c } = s);
  });

  it('a kernel write-back that cannot finish in time fails prepare with ETWIN_KERNEL_WRITEBACK and leaves nothing split or held', async () => {
    // Real cause: an operator freeze holds the WRITE requests of the selected file's dirty
    // mapping, so the fsync through the mount waits for them (as it would behind a hung disk).
    await shOk(`head -c 4096 /dev/zero > '${fx.mnt}/other.dat'`, { timeoutMs: 20_000 });
    const held = await writer(path.join(fx.mnt, 'held.dat'), 64 * 1024, '0');
    const fz: any = await c.request('freeze', { selector: { paths: ['/held.dat'] } });
    let thawed = false;
    try {
      await held.fill('H');
      const err: any = await c.prepare({ paths: ['/held.dat'] }).catch((e) => e);
      expect(err?.code).toBe('ETWIN_KERNEL_WRITEBACK');
      // It ran out of its budget (not refused behind an earlier stuck one, nor a failed sync).
      expect(err?.data?.timeoutMs).toBe(KERNEL_SYNC_TIMEOUT_MS);
      expect(err?.data?.stuck).toBeUndefined();
      // The stuck write-back still waits: the next prepare refuses at once (no new sync child
      // that would wait out another budget) instead of piling up.
      const again: any = await c.prepare({ paths: ['/held.dat'] }).catch((e) => e);
      expect(again?.code).toBe('ETWIN_KERNEL_WRITEBACK');
      expect(again?.data?.stuck).toBe(true);
      const st = await status(c);
      expect(st.backup.backups).toEqual([]);
      expect(st.mirror.splits).toEqual([]);
      expect(st.backup.stall.kernelSync.failures).toBe(2);
      // Files outside were never held by it.
      await shOk(`echo x >> '${fx.mnt}/other.dat'`, { timeoutMs: 15_000 });
      await c.request('thaw', { freezeId: fz.freezeId });
      thawed = true;
      // Once its WRITEs are answered the stuck write-back ends and prepare works again.
      const end = Date.now() + UNSTUCK_WAIT_MS;
      let p: PrepareResult | undefined;
      while (!p) {
        p = await c.prepare({ paths: ['/held.dat'] }).catch((e) => {
          if (e?.code !== 'ETWIN_KERNEL_WRITEBACK' || Date.now() > end) throw e;
          return undefined;
        });
        if (!p) await new Promise((r) => setTimeout(r, 100));
      }
      const copy = await mirrorCopy(p, '/held.dat');
      expect(copy.length).toBe(64 * 1024);
      expect(countOther(copy, 'H')).toBe(0);
      await c.release(p.backupId);
    } finally {
      if (!thawed) await c.request('thaw', { freezeId: fz.freezeId }).catch(() => undefined);
    }
  });
});
