import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { privatePluginState, runCli } from '../helpers/cli.js';
import { sh } from '../helpers/proc.js';
import { controlServeArgs, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, waitForEvent } from '../mirror-driver/mirror-helpers.js';

/**
 * Backups in O(changes), end to end: a real `twinfs serve` (restarted cleanly, stopped while its
 * primary is edited, killed) and real `twinfs backup` processes with a `dir:` target. The peer's
 * report (`changes`) says what it carried over unread, looked at and read from the mirror; every
 * snapshot is compared with the primary byte for byte (diff -r), so a carried-over entry that
 * should not have been is caught.
 */
privatePluginState('changes-e2e', { cache: true });

const FILES = 200;
const BIG = 24 << 20;

describe('incrementals driven by the server change record (real server, real peer processes)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let url = '';
  let targetDir: string;
  let catalog: string;
  let tokenFile: string;
  const m = (p: string) => path.join(t.dirs.mnt!, p);
  const backup = async (ok = true) => {
    const r = await runCli(
      [
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
      ],
      { timeoutMs: 120_000 },
    );
    if (!ok) return r;
    expect(r.code, r.stderr).toBe(0);
    // The byte total progress went by (the largest any progress line gave).
    const totals = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{"event":"progress"'))
      .map((l) => JSON.parse(l).bytesTotal as number);
    return { ...r.last, bytesTotal: Math.max(0, ...totals) };
  };
  /** The snapshot, restored, holds exactly the primary's names and bytes (the repository keeps chunks, not trees). */
  const exact = async (id: string) => {
    const to = path.join(t.base, `exact-${id}`);
    const rr = await runCli(['restore', id, '--to', to, '--catalog', catalog, '--json'], {
      timeoutMs: 120_000,
    });
    expect(rr.code, rr.stderr).toBe(0);
    const r = await sh(`diff -r --no-dereference '${t.dirs.primary}' '${to}'`, { timeoutMs: 60_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    await fsp.rm(to, { recursive: true, force: true });
  };
  const start = async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: controlServeArgs(t.dirs, tokenFile),
    });
    url = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
    await waitForEvent(srv, pairedVolume, 60_000);
  };
  /** Entries changed within CTIME_MARGIN_MS (2 s) of a shutdown are stamped as changed after it. */
  const quiet = () => new Promise((r) => setTimeout(r, 2500));

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc');
    targetDir = path.join(t.base, 'backups');
    catalog = path.join(t.base, 'catalog');
    tokenFile = path.join(t.dirs.etc!, 'control.token');
    // Created before the server starts: its initial copy brings them to the mirror.
    for (let d = 0; d < 10; d++) {
      await fsp.mkdir(path.join(t.dirs.primary!, `d${d}`));
      for (let i = 0; i < FILES / 10; i++)
        await fsp.writeFile(path.join(t.dirs.primary!, `d${d}`, `f${i}`), `file ${d}/${i}\n`.repeat(20));
    }
    const big = Buffer.alloc(BIG);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
    await fsp.writeFile(path.join(t.dirs.primary!, 'big.img'), big);
    await start();
  }, 120_000);
  afterAll(async () => {
    await srv?.kill();
    await t?.cleanup();
  });

  it('an unchanged volume: every entry carried over unread, nothing read from the mirror', async () => {
    const first = await backup();
    expect(first.totals).toMatchObject({ files: FILES + 1, reusedFiles: 0 });
    await exact(first.snapshotId);
    const second = await backup();
    expect(second.changes).toMatchObject({
      carried: FILES + 1 + 11,
      looked: 0,
      walked: 0,
      byReference: true,
    });
    expect(second.totals).toMatchObject({ files: FILES + 1, reusedFiles: FILES + 1, copiedBytes: 0 });
    expect(second.bytesTotal).toBe(second.totals.bytes);
    await exact(second.snapshotId);
    // The catalog records it as a reference to the first snapshot's entries (a delta of none),
    // and a restore from it, which reads the entries through that reference, is whole.
    const list = await runCli(['snapshots', '--catalog', catalog, '--json'], { timeoutMs: 60_000 });
    const recs = JSON.parse(list.stdout);
    expect(recs.find((x: any) => x.id === second.snapshotId)).toMatchObject({
      entriesBase: first.snapshotId,
    });
    const to = path.join(t.base, 'restored');
    const rr = await runCli(['restore', second.snapshotId, '--to', to, '--catalog', catalog, '--json'], {
      timeoutMs: 120_000,
    });
    expect(rr.code, rr.stderr).toBe(0);
    const d = await sh(`diff -r --no-dereference '${t.dirs.primary}' '${to}'`, { timeoutMs: 60_000 });
    expect(d.code, d.stdout + d.stderr).toBe(0);
    await fsp.rm(to, { recursive: true, force: true });
  }, 180_000);

  it('10 files changed among many: exactly those copied; deletions, a rename and a new file followed', async () => {
    for (let i = 0; i < 10; i++) await fsp.writeFile(m(`d${i}/f3`), `changed ${i}\n`);
    await fsp.rm(m('d1/f5'));
    await fsp.rename(m('d2'), m('d2-renamed'));
    await fsp.writeFile(m('d3/new'), 'new\n');
    await fsp.chmod(m('d4/f7'), 0o600);
    const r = await backup();
    // The old and the new name of d2 walked (the new one's files copied: stored under d2 before);
    // the 10 changed files, the new one and d4/f7 (its mode changed: stored again) copied.
    expect(r.changes).toMatchObject({ walked: 2, byReference: true });
    expect(r.totals.files).toBe(FILES + 1);
    const sum = (xs: string[]) => xs.reduce((n, x) => n + x.length, 0);
    const changed = sum(Array.from({ length: 10 }, (_, i) => `changed ${i}\n`));
    const d2Unchanged =
      sum(Array.from({ length: FILES / 10 }, (_, i) => `file 2/${i}\n`.repeat(20))) -
      `file 2/3\n`.repeat(20).length;
    expect(r.totals.copiedBytes).toBe(
      changed + 'new\n'.length + d2Unchanged + 'file 4/7\n'.repeat(20).length,
    );
    expect(r.totals.reusedFiles).toBe(FILES + 1 - 10 - 1 - (FILES / 10 - 1) - 1);
    // Progress had the run's byte total from the start (the parent's and the lstat of the
    // named paths, no walk of the volume).
    expect(r.bytesTotal).toBe(r.totals.bytes);
    await exact(r.snapshotId);
  }, 180_000);

  it('1 MiB rewritten inside a large file: only that range read from the mirror', async () => {
    const fh = await fsp.open(m('big.img'), 'r+');
    await fh.write(Buffer.alloc(1 << 20, 0x5a), 0, 1 << 20, 10 << 20);
    await fh.close();
    const r = await backup();
    expect(r.changes).toMatchObject({ rangedFiles: 1, rangedMirrorBytes: 1 << 20 });
    expect(r.totals.copiedBytes).toBe(1 << 20);
    await exact(r.snapshotId);
  }, 180_000);

  it('a clean restart between two backups: the second still carries over, and is exact', async () => {
    await fsp.writeFile(m('d5/f1'), 'before the restart\n');
    await quiet();
    expect(await srv!.stop()).toBe(0);
    await start();
    const r = await backup();
    expect(r.unknownSince).toBeUndefined();
    expect(r.changes.carried).toBeGreaterThan(FILES);
    expect(r.totals.copiedBytes).toBe('before the restart\n'.length);
    await exact(r.snapshotId);
  }, 180_000);

  it('names that are not UTF-8: new, changed, renamed and removed ones are followed by the change-driven incrementals, byte for byte', async () => {
    // The test process takes such names as their bytes (test/helpers/byte-paths.ts): \udcXX is
    // the byte XX (docs/architecture.md, "Names are bytes"); diff -r compares the bytes.
    await fsp.mkdir(m('raw\udcff'));
    await fsp.writeFile(m('raw\udcff/caf\udce9'), 'latin-1\n');
    await fsp.writeFile(m('raw\udcff/n\udcfe'), 'to be renamed\n');
    await fsp.writeFile(m('raw\udcff/gone\udcfb'), 'to be removed\n');
    const first = await backup();
    expect(first.changes).toMatchObject({ byReference: true });
    // Exactly the three new files were copied: the change record named them by their bytes.
    expect(first.totals.copiedBytes).toBe('latin-1\nto be renamed\nto be removed\n'.length);
    await exact(first.snapshotId);
    await fsp.writeFile(m('raw\udcff/caf\udce9'), 'latin-1, changed\n');
    await fsp.rename(m('raw\udcff/n\udcfe'), m('raw\udcff/m\udcfd'));
    await fsp.rm(m('raw\udcff/gone\udcfb'));
    await fsp.writeFile(m('raw\udcff/new\udcfc'), 'new\n');
    const second = await backup();
    expect(second.changes).toMatchObject({ byReference: true });
    await exact(second.snapshotId);
  }, 180_000);

  it('a file changed at the primary while the server was stopped is caught', async () => {
    await quiet();
    expect(await srv!.stop()).toBe(0);
    const f = path.join(t.dirs.primary!, 'd6/f2');
    const st = await fsp.stat(f);
    await fsp.writeFile(f, 'X'.repeat(st.size));
    await fsp.utimes(f, st.atime, st.mtime);
    await start();
    const r = await backup();
    expect(r.changes.looked).toBeGreaterThan(0);
    expect(r.totals.copiedBytes).toBe(st.size);
    await exact(r.snapshotId);
  }, 180_000);

  it('an answer larger than one control message comes in pages, and every changed path is copied', async () => {
    // 2,500 names of ~120 bytes: ~300 KB of paths, more than one page of the answer.
    const long = 'n'.repeat(100);
    const made = await sh(
      `mkdir '${m('many')}' && cd '${m('many')}' && i=0; while [ $i -lt 2500 ]; do echo $i > ${long}-$i; i=$((i+1)); done`,
      { timeoutMs: 120_000 },
    );
    expect(made.code, made.stderr).toBe(0);
    const r = await backup();
    expect(r.changes).toBeDefined();
    expect(r.changes.looked).toBeGreaterThan(2500);
    const bytes = Array.from({ length: 2500 }, (_, i) => `${i}\n`.length).reduce((a, b) => a + b, 0);
    expect(r.totals.copiedBytes).toBe(bytes);
    await exact(r.snapshotId);
  }, 240_000);

  it('after a kill -9 the server vouches for nothing: a full compare, still exact', async () => {
    await fsp.writeFile(m('d7/f0'), 'before the kill\n');
    await srv!.kill();
    await start();
    const r = await backup();
    expect(r.unknownSince).toMatchObject({ reason: expect.stringMatching(/unclean/) });
    expect(r.changes).toBeUndefined();
    await exact(r.snapshotId);
    const next = await backup();
    expect(next.changes).toMatchObject({ looked: 0, walked: 0 });
    await exact(next.snapshotId);
  }, 180_000);
  it("an unchanged volume is backed up by a new process without reading the index, a changed one from the peer's index cache: with the index objects unreadable (all, those the cache holds) both succeed; without the cache the changed one fails with ETWIN_REPO_CORRUPT", async () => {
    // A parent committed by this version (it records the stamp of the index objects).
    await backup();
    const dir = path.join(targetDir, 'index');
    const names = await fsp.readdir(dir);
    const kept = new Map<string, Buffer>();
    for (const n of names) {
      kept.set(n, await fsp.readFile(path.join(dir, n)));
      await fsp.writeFile(path.join(dir, n), 'not an index object');
    }
    try {
      const r = await backup();
      expect(r.changes).toMatchObject({ looked: 0, walked: 0, byReference: true });
      expect(r.totals.copiedBytes).toBe(0);
      // The index objects the peer's cache holds stay unreadable; the few it does not (the
      // last changed runs' own, fewer than 8, are read from the target rather than the cache
      // rewritten every run) are readable again. A changed file's chunk is looked up in the cache.
      const cacheDir = path.join(process.env.TWINFS_CACHE_DIR!, 'index');
      const [file, ...others] = await fsp.readdir(cacheDir);
      expect(others).toEqual([]);
      const cache = await fsp.readFile(path.join(cacheDir, file!));
      const held = JSON.parse(cache.toString('utf8', 41, 41 + cache.readUInt32BE(37))).names as string[];
      expect(held.length).toBeGreaterThan(names.length - 8);
      for (const [n, b] of kept) if (!held.includes(`index/${n}`)) await fsp.writeFile(path.join(dir, n), b);
      await fsp.writeFile(m('d8/f1'), 'changed with the index unreadable\n');
      const changed = await backup();
      expect(changed.totals.copiedBytes).toBe('changed with the index unreadable\n'.length);
      await fsp.writeFile(m('d8/f2'), 'changed without the cache\n');
      await fsp.rm(path.join(process.env.TWINFS_CACHE_DIR!, 'index'), { recursive: true });
      const bad = await backup(false);
      expect(bad.code).not.toBe(0);
      expect(bad.stdout + bad.stderr).toContain('ETWIN_REPO_CORRUPT');
    } finally {
      for (const [n, b] of kept) await fsp.writeFile(path.join(dir, n), b);
    }
    // The index readable again: the change is stored, and the snapshot is exact.
    const after = await backup();
    expect(after.totals.copiedBytes).toBe('changed without the cache\n'.length);
    await exact(after.snapshotId);
  }, 180_000);
});
