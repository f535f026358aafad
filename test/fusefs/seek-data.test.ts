import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/**
 * lseek(2) SEEK_DATA / SEEK_HOLE through a real mount (libfuse3, fuse-native patch level 17/18,
 * VolumeOps.lseek): a sparse file at rest shows the holes it has on the primary, as the same
 * writes give on a plain directory of the same filesystem; a file whose bytes the primary may
 * not all hold yet (cached writes, a shared writable mapping with dirty pages) is all data up
 * to its end, never a hole over written bytes. Every access to the mount is a child process.
 */
const MAP = path.join(FIXTURES, 'seek-map.py');
const KiB = 1024;
const MiB = 1024 * KiB;

interface SeekMap {
  size: number;
  spans: Array<[number, number]>;
  past: string;
}

async function seekMap(file: string): Promise<SeekMap> {
  return JSON.parse(await shOk(`${PYTHON} '${MAP}' '${file}'`, { timeoutMs: 30_000 })) as SeekMap;
}

/** A 16 MiB file with data at 0, 4 MiB and its last KiB; holes elsewhere (dd seek=, conv=notrunc). */
const sparseWrites = (f: string) =>
  `truncate -s 16M '${f}' && ` +
  `dd if=/dev/urandom of='${f}' bs=64K count=1 conv=notrunc status=none && ` +
  `dd if=/dev/urandom of='${f}' bs=64K seek=64 count=2 conv=notrunc status=none && ` +
  `dd if=/dev/urandom of='${f}' bs=1K seek=16383 count=1 conv=notrunc status=none`;

describe('SEEK_DATA and SEEK_HOLE through the mount (libfuse3)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let server: ServerHandle;
  let mnt: string;
  let ref: string;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'ref');
    mnt = t.dirs.mnt!;
    ref = t.dirs.ref!;
    // The write-back waits for a sync (no background write-back during a check of cached data).
    server = await startServer({
      primary: t.dirs.primary!,
      mount: mnt,
      args: ['--fuse', '3', '--writeback-ms', '600000'],
      // Writes through opens of files at rest are done in libfuse's threads since level 29 and never
      // cached; this test is about data JS's cache holds, so its writes go to JS (native-open-writes.test.ts
      // covers the native path).
      env: { TWINFS_NATIVE_OPEN: 'open' },
    });
  });
  afterAll(async () => {
    await server?.stop();
    await t?.cleanup();
  });

  it('a sparse file at rest shows the holes a plain directory shows; ENXIO at the end', async () => {
    const m = path.join(mnt, 'img');
    const r = path.join(ref, 'img');
    // Made and written in one go (created through the mount: the bytes reach the primary at
    // once), then synced.
    await shOk(`${sparseWrites(m)} && sync '${m}'`, { timeoutMs: 30_000 });
    await shOk(`${sparseWrites(r)} && sync '${r}'`, { timeoutMs: 30_000 });
    const a = await seekMap(m);
    const b = await seekMap(r);
    expect(b.spans.length).toBeGreaterThan(1);
    expect(a).toEqual(b);
    expect(a.past).toBe('ENXIO');
  });

  it('cached writes and a dirty shared mapping: all data to the end, never a hole over written bytes', async () => {
    const m = path.join(mnt, 'later');
    // The file exists first: the writes of a second open go through the write-back cache.
    await shOk(`truncate -s 8M '${m}' && sync '${m}'`, { timeoutMs: 30_000 });
    const idle = await seekMap(m);
    expect(idle.spans).toEqual([]);
    await shOk(`dd if=/dev/urandom of='${m}' bs=4K seek=512 count=1 conv=notrunc status=none`, {
      timeoutMs: 30_000,
    });
    const cached = await seekMap(m);
    expect(cached.spans).toEqual([[0, 8 * MiB]]);
    // Written back: the data where it was written, holes around it.
    await shOk(`sync '${m}'`, { timeoutMs: 30_000 });
    const back = await seekMap(m);
    expect(back.spans).toEqual([[2 * MiB, 2 * MiB + 4 * KiB]]);

    // A shared writable mapping with a dirty page in a hole (no msync): the kernel has not sent
    // it, so the primary has a hole there; the answer must not say so while the mapping lives.
    const hold = spawn(PYTHON, [MAP, m, 'hold', String(6 * MiB)], { stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the mapping did not start')), 20_000);
        hold.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('held')) {
            clearTimeout(timer);
            resolve();
          }
        });
        hold.on('exit', (code) => reject(new Error(`hold exited ${code}`)));
      });
      const mapped = await seekMap(m);
      expect(mapped.spans).toEqual([[0, 8 * MiB]]);
    } finally {
      hold.stdin.end('\n');
      await new Promise((resolve) => hold.once('exit', resolve));
    }
    await shOk(`sync '${m}'`, { timeoutMs: 30_000 });
    const after = await seekMap(m);
    expect(after.spans).toEqual([
      [2 * MiB, 2 * MiB + 4 * KiB],
      [6 * MiB, 6 * MiB + 4 * KiB],
    ]);
  });

  it('a descriptor whose node has no path left (unlinked, its directory removed) still seeks', async () => {
    // High-level libfuse builds a path for LSEEK; such a node has none (patch level 18 answers
    // it by the handle, as READ is: before, ESTALE).
    const dir = path.join(mnt, 'gone');
    const m = path.join(dir, 'img');
    await shOk(`mkdir '${dir}' && ${sparseWrites(m)} && sync '${m}'`, { timeoutMs: 30_000 });
    const out = JSON.parse(await shOk(`${PYTHON} '${MAP}' '${m}' orphan`, { timeoutMs: 30_000 })) as {
      before: SeekMap;
      after: SeekMap | { error: string };
    };
    expect(out.before.spans.length).toBeGreaterThan(1);
    expect(out.after).toEqual(out.before);
  });
});
