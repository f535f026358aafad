import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMounted, mountTmpfs, runSteps, unmountAll } from '../helpers/mounts.js';
import { sh } from '../helpers/proc.js';
import { CLI, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, sha, waitForEvent } from '../mirror-driver/mirror-helpers.js';
import { bytes } from './fixtures/bytes.mjs';

const MiB = 1024 * 1024;
const shaOf = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Writes len bytes (seed) to a new file through the mount in 4 KiB write(2)s, then fsync and/or close. */
function writeSteps(file: string, len: number, seed: number, fsync: boolean) {
  return [
    { op: 'open', path: file, flags: 'w' },
    { op: 'write', off: 0, len, seed, chunk: 4096 },
    ...(fsync ? [{ op: 'fsync' }] : []),
    { op: 'close' },
  ];
}

/** Fills the filesystem of dir (directly, not through the mount) until ENOSPC. */
async function fill(file: string): Promise<void> {
  await sh(`dd if=/dev/zero of='${file}' bs=64k status=none 2>/dev/null; true`, { timeoutMs: 30_000 });
}

/**
 * Invariant 10 (issue 11, row 1): what write() and close() acknowledged is never discarded, even
 * when the primary's disk is full at shutdown. The primary is a small tmpfs; the server is a
 * real process stopped with SIGTERM and started again.
 */
describe('write-back at shutdown onto a full primary: the spill journal', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'primary2', 'mnt2', 'mirror2');
    await mountTmpfs(t.dirs.primary!, 'size=20m');
    await mountTmpfs(t.dirs.primary2!, 'size=20m');
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!, t.dirs.mnt2!, t.dirs.primary!, t.dirs.primary2!);
    await t?.cleanup();
  });

  const args = (mirror = t.dirs.mirror!) => [
    '--mirror',
    mirror,
    '--state-dir',
    t.dirs.state!,
    // Only fsync and shutdown write back: what close() acknowledged stays cached.
    '--writeback-ms',
    '600000',
  ];

  it('keeps acknowledged data in the journal, refuses to mount until it can be written back, then writes it back', async () => {
    srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, args: args() });
    await waitForEvent(srv, pairedVolume, 20_000);
    const mnt = t.dirs.mnt!;
    // A: written and fsynced. C: written and closed (every call succeeds), still in the cache.
    const a = await runSteps(writeSteps(path.join(mnt, 'A'), 12 * MiB, 1, true));
    expect(a.every((r) => r.ok)).toBe(true);
    const c = await runSteps(writeSteps(path.join(mnt, 'C'), 3 * MiB, 3, false));
    expect(c.every((r) => r.ok)).toBe(true);
    // Its mtime set to the ns while the data is cached (cp -p, tar): kept through the journal.
    const setMtime = `TZ=UTC touch -m -d '2009-09-09 09:09:09.123456789' '${path.join(mnt, 'C')}'`;
    expect((await sh(setMtime)).code).toBe(0);
    // Now the primary's disk fills up behind the server's back.
    await fill(path.join(t.dirs.primary!, 'filler'));

    const code = await srv.stop();
    const stderr = srv.stderr();
    srv = undefined;
    expect(code).toBe(1);
    expect(stderr).not.toMatch(/unmount failed/);
    const m =
      /twinfs: error ETWIN_WRITEBACK_SPILLED: (\d+) byte\(s\) of 1 file\(s\) .*\(ENOSPC\); they are kept in (\S+\.journal)/.exec(
        stderr,
      );
    expect(m, stderr).not.toBeNull();
    expect(Number(m![1])).toBe(3 * MiB);
    const journal = m![2]!;
    expect(journal.startsWith(path.join(t.dirs.state!, 'spill') + '/')).toBe(true);
    expect(await isMounted(mnt)).toBe(false);
    const want = shaOf(bytes(3 * MiB, 3));
    expect(await sha(path.join(t.dirs.primary!, 'C'))).not.toBe(want);

    // Still full: the next start cannot write the journal back, and mounts nothing.
    const again = await sh(
      `'${process.execPath}' '${CLI}' serve --primary '${t.dirs.primary}' --mount '${mnt}' ${args()
        .map((a) => `'${a}'`)
        .join(' ')}`,
      { timeoutMs: 30_000 },
    );
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/twinfs: error ETWIN_SPILL_REPLAY: .*ENOSPC/);
    expect(await isMounted(mnt)).toBe(false);
    expect((await fsp.stat(journal)).size).toBeGreaterThan(3 * MiB);

    // Reservations left by servers killed on volumes that are gone are collected at start;
    // a journal holding data never is.
    const spillDir = path.dirname(journal);
    const gone = path.join(t.base, 'deleted-volume');
    await fsp.writeFile(path.join(spillDir, 'orphan.journal'), Buffer.alloc(4096));
    await fsp.writeFile(path.join(spillDir, 'orphan.journal.primary'), `${gone}\n`);
    await fsp.writeFile(path.join(spillDir, 'kept.journal'), await fsp.readFile(journal));
    await fsp.writeFile(path.join(spillDir, 'kept.journal.primary'), `${gone}\n`);

    // Space returns: the start writes the data back before mounting.
    await fsp.rm(path.join(t.dirs.primary!, 'filler'));
    srv = await startServer({ primary: t.dirs.primary!, mount: mnt, args: args() });
    expect(srv.stderr()).toMatch(/wrote back 3145728 byte\(s\) of 1 file\(s\) from the spill journal/);
    await waitForEvent(srv, pairedVolume, 20_000);
    expect(
      (await fsp.readdir(spillDir)).filter((n) => n.startsWith('orphan') || n.startsWith('kept')).sort(),
    ).toEqual(['kept.journal', 'kept.journal.primary']);
    const read = await runSteps([{ op: 'read', path: path.join(mnt, 'C') }]);
    expect(read[0]).toMatchObject({ ok: true, size: 3 * MiB, sha: want });
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    expect(await sha(path.join(t.dirs.primary!, 'C'))).toBe(want);
    expect(await sha(path.join(t.dirs.primary!, 'A'))).toBe(shaOf(bytes(12 * MiB, 1)));
    // The mirror heard the replayed data too.
    expect(await sha(path.join(t.dirs.mirror!, 'data', 'C'))).toBe(want);
    const mtimeNs = BigInt(Date.parse('2009-09-09T09:09:09Z')) * 1_000_000n + 123_456_789n;
    for (const root of [t.dirs.primary!, path.join(t.dirs.mirror!, 'data')])
      expect((await fsp.stat(path.join(root, 'C'), { bigint: true })).mtimeNs).toBe(mtimeNs);
    // A clean shutdown gives the reservation back.
    await expect(fsp.stat(journal)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('the reported case (A 12 MiB fsynced, B 12 MiB, C 4 MiB, 4 KiB writes): a write the primary cannot take fails at once; everything acknowledged is on the primary after SIGTERM and restart', async () => {
    const primary = t.dirs.primary2!;
    const mnt = t.dirs.mnt2!;
    srv = await startServer({ primary, mount: mnt, args: args(t.dirs.mirror2!) });
    await waitForEvent(srv, pairedVolume, 20_000);
    const a = await runSteps(writeSteps(path.join(mnt, 'A'), 12 * MiB, 1, true));
    expect(a.map((r) => r.code ?? 'ok')).toEqual(['ok', 'ok', 'ok', 'ok']);
    // 20 MiB hold A and part of B: B's writes are acknowledged while the primary has room for
    // them, then write() itself says ENOSPC; what was acknowledged fits, so fsync succeeds.
    const b = await runSteps(writeSteps(path.join(mnt, 'B'), 12 * MiB, 2, true));
    expect(b.map((r) => r.code ?? 'ok')).toEqual(['ok', 'ENOSPC', 'ok', 'ok']);
    const bAcked = b[1]!.bytes!;
    expect(bAcked).toBeGreaterThan(4 * MiB);
    expect(bAcked).toBeLessThan(8 * MiB);
    // C: nothing fits any more: the first write fails, nothing is acknowledged.
    const c = await runSteps(writeSteps(path.join(mnt, 'C'), 4 * MiB, 3, false));
    expect(c.map((r) => r.code ?? 'ok')).toEqual(['ok', 'ENOSPC', 'ok']);
    expect(c[1]!.bytes).toBe(0);

    // Nothing is left that the primary cannot take: a clean stop, and a clean restart.
    expect(await srv.stop()).toBe(0);
    expect(srv.stderr()).not.toMatch(/error/);
    srv = await startServer({ primary, mount: mnt, args: args(t.dirs.mirror2!) });
    expect(srv.stderr()).not.toMatch(/spill journal/);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    expect(await sha(path.join(primary, 'A'))).toBe(shaOf(bytes(12 * MiB, 1)));
    expect(await sha(path.join(primary, 'B'))).toBe(shaOf(bytes(12 * MiB, 2).subarray(0, bAcked)));
    expect((await fsp.stat(path.join(primary, 'C'))).size).toBe(0);
  });

  it('on that full primary, overwriting bytes a file already has needs no new space and is accepted', async () => {
    const primary = t.dirs.primary2!;
    const mnt = t.dirs.mnt2!;
    srv = await startServer({ primary, mount: mnt, args: args(t.dirs.mirror2!) });
    const r = await runSteps([
      { op: 'open', path: path.join(mnt, 'A'), flags: 'r+' },
      { op: 'write', off: 0, len: 2 * MiB, seed: 9, chunk: 4096 },
      { op: 'fsync' },
      { op: 'close' },
      // Growing a file still needs space the primary does not have.
      { op: 'open', path: path.join(mnt, 'A'), flags: 'r+' },
      { op: 'write', off: 12 * MiB, len: 1 * MiB, seed: 10, chunk: 4096 },
      { op: 'close' },
    ]);
    expect(r.map((x) => x.code ?? 'ok')).toEqual(['ok', 'ok', 'ok', 'ok', 'ok', 'ENOSPC', 'ok']);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const want = Buffer.concat([bytes(2 * MiB, 9), bytes(12 * MiB, 1).subarray(2 * MiB)]);
    expect(await sha(path.join(primary, 'A'))).toBe(shaOf(want.subarray(0, 12 * MiB)));
  });
});
