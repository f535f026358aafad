import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { privatePluginState, runCli } from '../helpers/cli.js';
import { sh } from '../helpers/proc.js';
import { controlServeArgs, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, waitForEvent } from '../mirror-driver/mirror-helpers.js';
import { dataPacks } from './peer-fixture.js';

/**
 * Incrementals that cannot lie, end to end: a real `twinfs serve` (restarted cleanly, killed
 * with SIGKILL, and its primary edited while it is stopped) and real `twinfs backup|check`
 * processes with a `dir:` target. A file is shared with the previous snapshot only when the
 * server's change record vouches it did not change since that snapshot's split, and never when
 * its stored copy was damaged.
 */
privatePluginState('incr-e2e');

describe('incremental backups across restarts (real server, real peer processes)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let url = '';
  let targetDir: string;
  let catalog: string;
  let tokenFile: string;
  let lastId = '';
  const cli = (args: string[]) => runCli(args, { timeoutMs: 60_000 });
  const backup = async (...extra: string[]) => {
    const r = await cli([
      'backup',
      '--server',
      url,
      '--token-file',
      tokenFile,
      '--target',
      `dir:${targetDir}`,
      '--catalog',
      catalog,
      '--json',
      ...extra,
    ]);
    expect(r.code, r.stderr).toBe(0);
    return r.last;
  };
  const start = async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: controlServeArgs(t.dirs, tokenFile),
    });
    url = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
    // Backups are refused until the start-up comparison is done (and the record vouches only then).
    await waitForEvent(srv, pairedVolume, 30_000);
  };
  /** A file as a snapshot holds it, restored from the repository by the CLI. */
  let restores = 0;
  const storedText = async (id: string, p: string) => {
    const to = path.join(t.base, `restored-${restores++}`);
    const r = await cli(['restore', id, p, '--to', to, '--target', `dir:${targetDir}`, '--catalog', catalog]);
    expect(r.code, r.stderr).toBe(0);
    return fsp.readFile(path.join(to, p), 'utf8');
  };
  /** The data pack holding a chunk of rawLength bytes (whose stored bytes start with `starts`). */
  const packOf = async (rawLength: number, starts?: string) => {
    for (const pack of await dataPacks(targetDir)) {
      const bytes = await fsp.readFile(pack.file);
      for (const [, type, offset, length, raw] of pack.rows)
        if (
          type === 'data' &&
          raw === rawLength &&
          (!starts ||
            bytes
              .subarray(offset, offset + length)
              .toString()
              .startsWith(starts))
        )
          return { file: pack.file, offset, bytes };
    }
    throw new Error(`no chunk of ${rawLength} bytes`);
  };
  /** Same size, same mtime (to the ns, by touch in a child process), other bytes: what size+mtime reuse cannot see. */
  const rewriteKeepingMtime = async (file: string, content: string) => {
    const st = await fsp.stat(file, { bigint: true });
    await fsp.writeFile(file, content);
    const ns = st.mtimeNs;
    const r = await sh(
      `touch -m -d @${ns / 1_000_000_000n}.${(ns % 1_000_000_000n).toString().padStart(9, '0')} '${file}'`,
      { timeoutMs: 10_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect((await fsp.stat(file, { bigint: true })).mtimeNs).toBe(ns);
  };
  /** Entries changed within CTIME_MARGIN_MS (2 s) of a shutdown are stamped as changed after it. */
  const quiet = () => new Promise((r) => setTimeout(r, 2500));

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc');
    targetDir = path.join(t.base, 'backups');
    catalog = path.join(t.base, 'catalog');
    tokenFile = path.join(t.dirs.etc!, 'control.token');
    await start();
    const m = t.dirs.mnt!;
    await fsp.mkdir(path.join(m, 'd'));
    await fsp.writeFile(path.join(m, 'a.txt'), 'alpha alpha\n');
    await fsp.writeFile(path.join(m, 'b.bin'), Buffer.alloc(300_000, 9));
    await fsp.writeFile(path.join(m, 'd/c.txt'), 'charlie\n');
  }, 60_000);
  afterAll(async () => {
    await srv?.kill();
    await t?.cleanup();
  });

  it('shares what the server vouches for, and copies a change that kept size and mtime', async () => {
    const first = await backup();
    expect(first.totals).toMatchObject({ files: 3, reusedFiles: 0 });
    expect(first.generation).toMatchObject({ log: expect.any(String), generation: expect.any(Number) });
    const second = await backup();
    expect(second.totals).toMatchObject({ files: 3, reusedFiles: 3, copiedBytes: 0 });
    expect(second.generation.generation).toBeGreaterThanOrEqual(first.generation.generation);

    await rewriteKeepingMtime(path.join(t.dirs.mnt!, 'a.txt'), 'ALPHA ALPHA\n');
    const third = await backup();
    expect(third.totals).toMatchObject({ reusedFiles: 2, copiedBytes: 12 });
    expect(third.refused.notVouched).toBe(1);
    expect(await storedText(third.snapshotId, '/a.txt')).toBe('ALPHA ALPHA\n');
  }, 120_000);

  it('a clean restart keeps vouching for what did not change', async () => {
    await quiet();
    expect(await srv!.stop()).toBe(0);
    await start();
    const r = await backup();
    expect(r.unknownSince).toBeUndefined();
    expect(r.totals).toMatchObject({ files: 3, reusedFiles: 3, copiedBytes: 0 });
  }, 120_000);

  it('a file changed at the primary while the server was stopped is caught by the next backup', async () => {
    await quiet();
    expect(await srv!.stop()).toBe(0);
    await rewriteKeepingMtime(path.join(t.dirs.primary!, 'd/c.txt'), 'CHARLIE\n');
    await start();
    const r = await backup();
    expect(r.totals).toMatchObject({ reusedFiles: 2, copiedBytes: 8 });
    expect(await storedText(r.snapshotId, '/d/c.txt')).toBe('CHARLIE\n');
    const c = await cli(['check', r.snapshotId, '--catalog', catalog, '--json']);
    expect(c.code, c.stdout + c.stderr).toBe(0);
  }, 120_000);

  it('after a kill -9 the server vouches for nothing before it ("unknown since G"), and the backup copies all', async () => {
    await srv!.kill();
    await start();
    const r = await backup();
    expect(r.unknownSince).toMatchObject({
      since: expect.any(Number),
      reason: expect.stringMatching(/unclean shutdown/),
    });
    expect(r.totals).toMatchObject({ files: 3, reusedFiles: 0 });
    // And the one after vouches again.
    const next = await backup();
    expect(next.totals).toMatchObject({ reusedFiles: 3 });
  }, 120_000);

  it('a stored copy whose pack changed at the target is never shared again: stored anew, and the new snapshot checks clean', async () => {
    const prev = await backup();
    // b.bin's chunk (300,000 bytes of 9) lives in the first backup's pack; that pack grows by a
    // byte (a copy rewritten in place). Only b.bin's current chunk is in it.
    const { file } = await packOf(300_000);
    await fsp.appendFile(file, 'x');
    const r = await backup();
    expect(r.refused.atTarget).toBe(1);
    expect(r.totals).toMatchObject({ reusedFiles: 2, copiedBytes: 300_000 });
    const c = await cli(['check', r.snapshotId, '--catalog', catalog, '--json']);
    expect(c.code, c.stdout + c.stderr).toBe(0);
    // The earlier snapshot names the same chunk, which has an intact copy again.
    const healed = await cli(['check', prev.snapshotId, '--catalog', catalog, '--metadata-only', '--json']);
    expect(healed.code, healed.stdout + healed.stderr).toBe(0);
  }, 120_000);

  it('by reference too: a copy a check flagged is stored anew, not carried, and the new snapshot checks clean', async () => {
    // Two new files, stored in one pack.
    const m = t.dirs.mnt!;
    await fsp.writeFile(path.join(m, 'e1.txt'), 'echo one\n');
    await fsp.writeFile(path.join(m, 'e2.txt'), 'echo two\n');
    await backup();
    // Nothing changed: the run keeps the parent's entries at the target and reads none of them.
    const before = await backup();
    expect(before.changes).toMatchObject({ byReference: true });
    // e1.txt's stored copy damaged in place, its pack's size kept: only a check that reads the
    // data finds it (and records it, in the catalog and the repository index).
    const e1 = await packOf(9, 'echo one');
    e1.bytes[e1.offset + 2] = 'X'.charCodeAt(0);
    await fsp.writeFile(e1.file, e1.bytes);
    const found = await cli(['check', before.snapshotId, '--catalog', catalog, '--json']);
    expect(found.code).not.toBe(0);
    expect(found.lines.find((l) => l.event === 'done')).toMatchObject({
      ok: false,
      problems: [{ path: '/e1.txt', kind: 'hash' }],
    });
    const r = await backup();
    // Not carried: e1.txt copied from the mirror again, the other four shared.
    expect(r.changes?.byReference).toBeUndefined();
    expect(r.refused.flagged).toBe(1);
    expect(r.totals).toMatchObject({ files: 5, reusedFiles: 4, copiedBytes: 9 });
    expect(await storedText(r.snapshotId, '/e1.txt')).toBe('echo one\n');
    const clean = await cli(['check', r.snapshotId, '--catalog', catalog, '--json']);
    expect(clean.code, clean.stdout + clean.stderr).toBe(0);
    // Healed: the next quiet run goes by reference again (e2.txt's chunk still lives in the
    // pack that holds the flagged copy), and checks clean.
    const next = await backup();
    expect(next.changes).toMatchObject({ byReference: true });
    expect(next.totals).toMatchObject({ files: 5, reusedFiles: 5, copiedBytes: 0 });
    const again = await cli(['check', next.snapshotId, '--catalog', catalog, '--json']);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    await fsp.rm(path.join(m, 'e1.txt'));
    await fsp.rm(path.join(m, 'e2.txt'));
  }, 240_000);

  it('backup --check-source compares the snapshot with the split copy it came from', async () => {
    const r = await backup('--check-source', 'data');
    expect(r.sourceCheck).toEqual({ checked: 5, bytes: 2 * (12 + 300_000 + 8), ok: true });
  }, 120_000);

  it('a change through one name of a hard link is a change of every name', async () => {
    const m = t.dirs.mnt!;
    await fsp.writeFile(path.join(m, 'h1'), 'hotel one\n');
    await fsp.link(path.join(m, 'h1'), path.join(m, 'd/h2'));
    await backup();
    const quietRun = await backup();
    // The second name met of the inode is stored as a hard link of the first (faithful restore),
    // whose copy was reused.
    expect(quietRun.totals).toMatchObject({ files: 5, reusedFiles: 4, hardLinks: 1 });
    // Written through the second name, size and mtime kept: only the server knows the first
    // name changed too.
    await rewriteKeepingMtime(path.join(m, 'd/h2'), 'HOTEL ONE\n');
    const r = await backup();
    expect(r.totals).toMatchObject({ files: 5, reusedFiles: 3, hardLinks: 1 });
    // The first name met was not vouched for, so it was copied; the other links to that copy.
    expect(r.refused.notVouched).toBe(1);
    expect(await storedText(r.snapshotId, '/h1')).toBe('HOTEL ONE\n');
    lastId = r.snapshotId;
  }, 120_000);

  it('a hole punched and a range zeroed inside a large file, its mtime put back: the next snapshot has them', async () => {
    const MiB = 1024 * 1024;
    const big = path.join(t.dirs.mnt!, 'big.bin');
    const r0 = await sh(`head -c ${9 * MiB} /dev/urandom > '${big}'`, { timeoutMs: 30_000 });
    expect(r0.code, r0.stderr).toBe(0);
    await backup();
    const mtimeNs = (await fsp.stat(big, { bigint: true })).mtimeNs;
    // fallocate(1) in a child process: a 64 KiB hole at 4 MiB, 5,000 bytes zeroed at 6 MiB + 100
    // (size kept). Then the old mtime back: size and mtime are what the last snapshot saw, and
    // the file is past the ranged copy's 8 MiB, so only the ranges the server recorded are read.
    const r1 = await sh(
      `fallocate -p -o ${4 * MiB} -l 65536 '${big}' && fallocate -z -n -o ${6 * MiB + 100} -l 5000 '${big}' && ` +
        `touch -m -d @${mtimeNs / 1_000_000_000n}.${(mtimeNs % 1_000_000_000n).toString().padStart(9, '0')} '${big}'`,
      { timeoutMs: 30_000 },
    );
    expect(r1.code, r1.stderr).toBe(0);
    const want = await fsp.readFile(big);
    expect(want.subarray(4 * MiB, 4 * MiB + 65536).equals(Buffer.alloc(65536))).toBe(true);
    const r = await backup();
    const to = path.join(t.base, `restored-${restores++}`);
    const rr = await cli([
      'restore',
      r.snapshotId,
      '/big.bin',
      '--to',
      to,
      '--target',
      `dir:${targetDir}`,
      '--catalog',
      catalog,
    ]);
    expect(rr.code, rr.stderr).toBe(0);
    const got = await fsp.readFile(path.join(to, 'big.bin'));
    expect(got.length).toBe(want.length);
    expect(got.equals(want)).toBe(true);
  }, 120_000);

  it('check --source compares an earlier snapshot with the mirror, for the files unchanged since', async () => {
    const check = () =>
      cli([
        'check',
        lastId,
        '--source',
        '--server',
        url,
        '--token-file',
        tokenFile,
        '--catalog',
        catalog,
        '--json',
      ]);
    const all = await check();
    expect(all.code, all.stdout + all.stderr).toBe(0);
    // 5 files compared, the 2 directories skipped.
    expect(all.lines.find((l) => l.event === 'done')).toMatchObject({ ok: true, checked: 5, skipped: 2 });
    await fsp.writeFile(path.join(t.dirs.mnt!, 'a.txt'), 'changed after the snapshot\n');
    const fewer = await check();
    expect(fewer.code, fewer.stdout + fewer.stderr).toBe(0);
    expect(fewer.lines.find((l) => l.event === 'done')).toMatchObject({ ok: true, checked: 4, skipped: 3 });
    // A stored copy damaged in place, size and mtime kept: the content comparison finds it.
    const c = await packOf(8, 'CHARLIE\n');
    c.bytes[c.offset + 6] = 'X'.charCodeAt(0);
    await fsp.writeFile(c.file, c.bytes);
    const bad = await check();
    expect(bad.code).not.toBe(0);
    expect(bad.lines.find((l) => l.event === 'done')).toMatchObject({
      ok: false,
      problems: [{ path: '/d/c.txt', kind: 'target' }],
    });
  }, 120_000);
});
