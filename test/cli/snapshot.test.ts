import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type MirroredVolume, mirroredVolume, ROOT, tempDirs } from '../helpers/server.js';
import { pairedVolume, waitForEvent } from '../mirror-driver/mirror-helpers.js';

/**
 * The CLI's start-up snapshot (src/cli/snapshot.cts, scripts/build-snapshot.mjs, the launcher
 * scripts/cli-launcher.sh; docs/architecture.md "The start-up snapshot"): `npm run build` writes
 * dist/cli-bundle/twinfs.blob, the installed command (the file itself, through its launcher)
 * starts node from it, and says so with TWINFS_DEBUG_SNAPSHOT=1 (`twinfs: snapshot used`,
 * `none` when node started without it, `not used (why)` when the entry found it stale). Every
 * command is run both ways (TWINFS_SNAPSHOT=off: the launcher passes no blob) and must print and
 * exit the same.
 */
const INSTALLED = path.join(ROOT, 'dist/cli/twinfs.cjs');
const BLOB = path.join(ROOT, 'dist/cli-bundle/twinfs.blob');

type Run = { code: number | null; stdout: string; stderr: string; said: string | undefined };

/** Runs an installed command (a file run as a program) with env's additions, NODE_OPTIONS unset. */
function run(cli: string, args: string[], extra: Record<string, string> = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, TWINFS_DEBUG_SNAPSHOT: '1', ...extra };
  // The launcher passes no blob under NODE_OPTIONS (flags the snapshot was not built with).
  delete env.NODE_OPTIONS;
  return new Promise((resolve) => {
    const p = spawn(cli, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.on('exit', (code) => {
      clearTimeout(t);
      const said = /^twinfs: snapshot (.*)\n/m.exec(stderr)?.[1];
      resolve({ code, stdout, stderr: stderr.replace(/^twinfs: snapshot .*\n/m, ''), said });
    });
  });
}

/** The same command with and without the snapshot; both runs. */
async function both(args: string[], extra: Record<string, string> = {}) {
  const snap = await run(INSTALLED, args, extra);
  const plain = await run(INSTALLED, args, { ...extra, TWINFS_SNAPSHOT: 'off' });
  return { snap, plain };
}

describe('the start-up snapshot', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('cache', 'copy');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('the build wrote the blob, for the node that built it', async () => {
    expect((await fsp.stat(BLOB)).size).toBeGreaterThan(1_000_000);
    const node = (await fsp.readFile(`${BLOB}.node`, 'utf8')).trim();
    const [a, b] = await Promise.all([fsp.stat(node), fsp.stat(process.execPath)]);
    expect([a.dev, a.ino]).toEqual([b.dev, b.ino]);
  });

  it('the installed command starts from it and prints and exits as without it', async () => {
    const cases = [
      ['--version'],
      ['--help'],
      ['backup', '--help'],
      ['bogus'],
      ['backup', '--bogus-option'],
      // Loads the backup's chunks and fails at its connection: an error path through them.
      ['backup', '--server', 'ws://127.0.0.1:9', '--token', 'x', '--target', `dir:${t.dirs.copy}/none`],
    ];
    for (const args of cases) {
      const { snap, plain } = await both(args);
      expect(snap.said, args.join(' ')).toBe('used');
      expect(plain.said, args.join(' ')).toBe('none');
      expect({ code: snap.code, stdout: snap.stdout, stderr: snap.stderr }, args.join(' ')).toEqual({
        code: plain.code,
        stdout: plain.stdout,
        stderr: plain.stderr,
      });
    }
  }, 120_000);

  it('from the snapshot no file of the bundle is read and compiled; without it, they are', async () => {
    const cache = { TWINFS_CACHE_DIR: t.dirs.cache!, TWINFS_DEBUG_CODE_CACHE: '1' };
    const { snap, plain } = await both(['--version'], cache);
    expect(plain.stderr).toMatch(/^twinfs: code cache main\.cjs: /m);
    expect(snap.stderr).not.toMatch(/code cache/);
  });

  it('a blob built elsewhere, for another node, older than node or than the bundle is not used', async () => {
    // A copy of the package's dist/cli, dist/cli-bundle (the blob with it) and the build step.
    const pkg = t.dirs.copy!;
    await fsp.cp(path.join(ROOT, 'dist/cli'), path.join(pkg, 'dist/cli'), {
      recursive: true,
      preserveTimestamps: true,
    });
    await fsp.cp(path.join(ROOT, 'dist/cli-bundle'), path.join(pkg, 'dist/cli-bundle'), {
      recursive: true,
      preserveTimestamps: true,
    });
    await fsp.cp(path.join(ROOT, 'scripts/build-snapshot.mjs'), path.join(pkg, 'scripts/build-snapshot.mjs'));
    const cli = path.join(pkg, 'dist/cli/twinfs.cjs');
    const blob = path.join(pkg, 'dist/cli-bundle/twinfs.blob');
    const expected = await run(INSTALLED, ['--help'], { TWINFS_SNAPSHOT: 'off' });
    const help = async (said: string | RegExp) => {
      const r = await run(cli, ['--help']);
      expect(r.said).toMatch(said);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: expected.code, stdout: expected.stdout });
    };
    // The blob of the package it was copied from: its modules are those of other files.
    await help(`not used (built for ${path.join(ROOT, 'dist/cli-bundle')})`);
    // Built for the copy: used.
    const built = await new Promise<number | null>((resolve) =>
      spawn(process.execPath, [path.join(pkg, 'scripts/build-snapshot.mjs')], { stdio: 'inherit' }).on(
        'exit',
        resolve,
      ),
    );
    expect(built).toBe(0);
    await help('used');
    // Another node named: the launcher does not pass it.
    const named = await fsp.readFile(`${blob}.node`, 'utf8');
    await fsp.writeFile(`${blob}.node`, '/bin/sh\n');
    await help('none');
    await fsp.writeFile(`${blob}.node`, named);
    await help('used');
    // Older than the node named (node replaced after the build): not passed.
    const st = await fsp.stat(blob);
    await fsp.utimes(blob, new Date('2000-01-01'), new Date('2000-01-01'));
    await help('none');
    await fsp.utimes(blob, st.atime, st.mtime);
    await help('used');
    // A file of the bundle changed after the blob was built: the files are loaded instead.
    const main = path.join(pkg, 'dist/cli-bundle/main.cjs');
    await fsp.appendFile(main, '\n// changed\n');
    await help('not used (main.cjs changed)');
  }, 120_000);
});

describe('a no-change backup from the start-up snapshot', () => {
  let v: MirroredVolume;
  let args: string[];
  beforeAll(async () => {
    v = await mirroredVolume({ extraDirs: ['work'], args: ['--control', '127.0.0.1:0'] });
    const srv = await v.start();
    const url = (srv.events.find((e) => e.event === 'mounted') as { control: { url: string } }).control.url;
    await waitForEvent(srv, pairedVolume, 30_000);
    await fsp.mkdir(path.join(v.dirs.mnt!, 'd'));
    await fsp.writeFile(path.join(v.dirs.mnt!, 'd/a.txt'), 'alpha\n');
    await fsp.writeFile(path.join(v.dirs.mnt!, 'b.bin'), Buffer.alloc(100_000, 7));
    args = [
      'backup',
      '--server',
      url,
      '--token-file',
      path.join(v.dirs.state!, 'control.token'),
      '--target',
      `dir:${path.join(v.dirs.work!, 'target')}`,
      '--catalog',
      path.join(v.dirs.work!, 'catalog'),
      '--json',
    ];
  }, 60_000);
  afterAll(async () => {
    await v?.close();
  });

  it('runs with no bundle file loaded from disk and the same events and totals as without', async () => {
    const cache = { TWINFS_CACHE_DIR: path.join(v.dirs.work!, 'cache'), TWINFS_DEBUG_CODE_CACHE: '1' };
    const first = await run(INSTALLED, args, { TWINFS_SNAPSHOT: 'off' });
    expect(first.code, first.stderr).toBe(0);
    const runs: Run[] = [];
    for (const snapshot of ['on', 'off', 'on'])
      runs.push(await run(INSTALLED, args, { ...cache, TWINFS_SNAPSHOT: snapshot }));
    const lines = (r: Run) =>
      r.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    // What a run says, without what differs between any two runs (ids, times, rates).
    const shape = (r: Run) =>
      lines(r).map((e) =>
        Object.fromEntries(
          Object.entries(e).filter(
            ([k]) =>
              !['snapshotId', 'backupId', 'time', 'rate', 'etaSec', 'stallMs', 'freezeHookMs'].includes(k),
          ),
        ),
      );
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    expect(runs.map((r) => r.said)).toEqual(['used', 'none', 'used']);
    expect(shape(runs[0]!)).toEqual(shape(runs[1]!));
    expect(shape(runs[2]!)).toEqual(shape(runs[1]!));
    expect(lines(runs[0]!).at(-1)).toMatchObject({ totals: { files: 2, copiedBytes: 0, reusedFiles: 2 } });
    // The snapshot holds every chunk a backup runs (src/cli/snapshot.cts, PRELOAD).
    expect(runs[0]!.stderr).not.toMatch(/code cache/);
    expect(runs[1]!.stderr).toMatch(/code cache backup-run-/);
    // Random state is the process's, not the build's: every run its own ids.
    const ids = runs.map((r) => lines(r).at(-1)!.backupId);
    expect(new Set(ids).size).toBe(3);
  }, 120_000);
});
