import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { watchCli } from '../helpers/cli.js';
import { isMounted, unmountAll, waitFor } from '../helpers/mounts.js';
import { sh } from '../helpers/proc.js';
import { CLI, startServer } from '../helpers/server.js';
import { jsonLines, twinfs } from '../repl/fixtures.js';

/**
 * Every operator subcommand of the CLI against a real server: the success path, the text and
 * the --json shape. (Error exits: cli-errors.test.ts.)
 */
describe('twinfs operator subcommands', () => {
  let fx: ControlFixture;
  let conn: string[];
  let catalog: string;
  let backups: string;
  let snapshotId = '';

  const ok = async (args: string[], opts: Parameters<typeof twinfs>[1] = {}) => {
    const r = await twinfs(args, opts);
    expect(r.code, `twinfs ${args.join(' ')}\n${r.stderr}${r.stdout}`).toBe(0);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    return r;
  };
  const okJson = async (args: string[]) => {
    const r = await ok([...args, '--json']);
    const lines = jsonLines(r.stdout);
    expect(lines.length, r.stdout).toBeGreaterThan(0);
    return { lines, last: lines.at(-1) };
  };

  beforeAll(async () => {
    fx = await startControlFixture();
    conn = ['--server', fx.url, '--token-file', fx.tokenFile];
    catalog = path.join(fx.base, 'catalog');
    backups = path.join(fx.base, 'backups');
    await fsp.mkdir(path.join(fx.mnt, 'docs'));
    await fsp.writeFile(path.join(fx.mnt, 'docs/a.txt'), 'alpha\n');
    await fsp.writeFile(path.join(fx.mnt, 'docs/big.bin'), Buffer.alloc(3 << 20, 7));
  }, 60_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('status: text, and --json with the server status and the last backups', async () => {
    const r = await ok(['status', ...conn]);
    expect(r.stdout).toMatch(/^volume\s+\S+ at \S+/m);
    expect(r.stdout).toMatch(/^mirror\s+PAIR device /m);
    expect(r.stdout).toMatch(/^stall\s+\d+ prepare\(s\)/m);
    const { lines, last } = await okJson(['status', ...conn, '--catalog', catalog]);
    expect(lines).toHaveLength(1);
    expect(last).toMatchObject({
      fs: { primary: fx.primary, cache: { dirtyBytes: expect.any(Number) } },
      mirror: { state: 'PAIR', deviceId: fx.deviceId, splits: [], broken: [] },
      backup: {
        stall: { prepares: expect.any(Number), maxStallMs: expect.any(Number) },
        freezes: [],
        backups: [],
      },
      lastBackups: { catalog, snapshots: [] },
    });
  });

  it('freeze holds until thaw; thaw ends it (--json: frozen first, thawed last)', async () => {
    const f = watchCli(['freeze', '/docs/a.txt', '--timeout', '60', ...conn, '--json'], 30_000);
    expect(await waitFor(() => f.lines.length > 0, 10_000)).toBe(true);
    expect(f.lines[0]).toMatchObject({
      event: 'frozen',
      freezeId: expect.stringMatching(/^fz-/),
      timeoutMs: 60_000,
    });
    const { last } = await okJson(['thaw', '/docs/a.txt', ...conn]);
    expect(last).toEqual([{ freezeId: f.lines[0].freezeId, heldMs: expect.any(Number) }]);
    expect(await f.exited).toBe(0);
    expect(f.lines.at(-1)).toMatchObject({ event: 'thawed', freezeId: f.lines[0].freezeId, reason: 'thaw' });
  });

  it('freeze: text mode, and Ctrl-C (SIGINT) thaws', async () => {
    const f = spawn(process.execPath, [CLI, 'freeze', '--subtree', '/docs', ...conn], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    f.stdout.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => f.on('exit', r));
    expect(await waitFor(() => out.includes('holding the freeze'), 10_000)).toBe(true);
    expect(out).toMatch(/^frozen \/docs\/\*\* \(fz-/m);
    f.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(out).toMatch(/thawed fz-\S+ after [\d.]+ s \(thaw\)/);
    const { last } = await okJson(['status', ...conn]);
    expect(last.backup.freezes).toEqual([]);
  });

  it('pairs, split (held, lease renewed) and resync', async () => {
    const { last: p0 } = await okJson(['pairs', ...conn]);
    expect(p0).toEqual({ path: null, state: 'PAIR', splits: [], broken: [] });
    const s = watchCli(['split', '/docs/a.txt', '--lease', '2', ...conn, '--json'], 30_000);
    expect(await waitFor(() => s.lines.length > 0, 10_000)).toBe(true);
    const made = s.lines[0];
    expect(made).toMatchObject({
      event: 'split',
      backupId: expect.stringMatching(/^bk-/),
      deviceId: fx.deviceId,
      mirrorRoot: fx.mirrorRoot,
      items: [expect.objectContaining({ path: '/docs/a.txt', type: 'file' })],
      stallMs: expect.any(Number),
    });
    // Held past its 2 s lease: the command renews it.
    await new Promise((r) => setTimeout(r, 3000));
    const { last: p1 } = await okJson(['pairs', '/docs/a.txt', ...conn]);
    expect(p1).toMatchObject({ path: '/docs/a.txt', state: 'SPLIT', splits: [expect.any(Object)] });
    const text = await ok(['pairs', '/docs/a.txt', ...conn]);
    expect(text.stdout).toMatch(/^\/docs\/a\.txt: SPLIT$/m);
    const { last: r } = await okJson(['resync', made.backupId, ...conn]);
    expect(r).toMatchObject({
      backupId: made.backupId,
      bytesCopied: expect.any(Number),
      entries: expect.any(Number),
    });
    expect(await s.exited).toBe(0);
    expect(s.lines.at(-1)).toMatchObject({ event: 'resynced', backupId: made.backupId });
  });

  it('verify online and offline, mirror repair, flush', async () => {
    const v = await ok(['verify', ...conn]);
    expect(v.stdout).toMatch(/^verify: \d+ entries match$/m);
    const { last: vj } = await okJson(['verify', ...conn, '--no-content']);
    expect(vj).toMatchObject({ ok: true, checked: expect.any(Number), differences: [] });
    await ok(['flush', ...conn]);
    const { last: off } = await okJson(['verify', '--primary', fx.primary, '--mirror', fx.mirror]);
    expect(off).toMatchObject({ ok: true, differences: [] });
    const { last: rep } = await okJson(['mirror', 'repair', ...conn]);
    expect(rep).toMatchObject({ bytes: expect.any(Number), remaining: [] });
    const { last: fl } = await okJson(['flush', ...conn]);
    expect(fl).toEqual({ flushed: true });
  });

  it('backup (progress lines with bytes, totals, files and ETA), snapshots, restore, check, forget', async () => {
    const target = `dir:${backups}`;
    const { lines, last } = await okJson([
      'backup',
      ...conn,
      '--subtree',
      '/docs',
      '--target',
      target,
      '--catalog',
      catalog,
    ]);
    const progress = lines.filter((l) => l.event === 'progress');
    expect(progress.length).toBeGreaterThan(0);
    for (const p of progress)
      expect(p).toMatchObject({
        phase: expect.any(String),
        files: expect.any(Number),
        filesTotal: expect.any(Number),
        bytes: expect.any(Number),
        bytesTotal: expect.any(Number),
      });
    expect(progress.every((p) => 'etaSec' in p && (p.etaSec === null || typeof p.etaSec === 'number'))).toBe(
      true,
    );
    expect(last).toMatchObject({ event: 'done', snapshotId: expect.any(String), totals: { files: 2 } });
    // A subtree is walked by the peer: the split copy is sized before the copy, so the copy's
    // totals are fixed from its first line on and the bar never goes backwards.
    const copy = progress.filter((p) => p.phase === 'copy');
    expect(copy.length).toBeGreaterThan(0);
    for (const p of copy) expect(p).toMatchObject({ bytesTotal: (3 << 20) + 6, filesTotal: 3 });
    const pct = progress.map((p) => p.percent);
    for (let i = 1; i < pct.length; i++)
      if (progress[i].phase === progress[i - 1].phase) expect(pct[i]).toBeGreaterThanOrEqual(pct[i - 1]);
    snapshotId = last.snapshotId;

    // Without --json and with stdout and stderr piped: the result line only, no progress bar.
    const quiet = await ok([
      'backup',
      ...conn,
      '--subtree',
      '/docs',
      '--target',
      target,
      '--catalog',
      catalog,
    ]);
    expect(quiet.stdout.trim().split('\n')).toEqual([
      expect.stringMatching(/^snapshot \S+ complete: 2 files/),
    ]);
    expect(quiet.stderr).toBe('');

    const { last: list } = await okJson(['snapshots', '--catalog', catalog]);
    expect(list).toHaveLength(2);
    expect(list[0]).toMatchObject({ id: snapshotId, state: 'complete', target, totals: { files: 2 } });
    expect((await ok(['snapshots', '--catalog', catalog])).stdout).toMatch(/2 snapshot\(s\), 2 complete/);

    const { last: st } = await okJson(['status', ...conn, '--catalog', catalog]);
    expect(st.lastBackups.snapshots).toHaveLength(2);
    expect(st.lastBackups.snapshots[1]).toMatchObject({ id: snapshotId, state: 'complete', files: 2 });
    expect((await ok(['status', ...conn, '--catalog', catalog])).stdout).toContain(`backups  `);

    const to = path.join(fx.base, 'restored');
    const { lines: rl, last: res } = await okJson(['restore', snapshotId, '--to', to, '--catalog', catalog]);
    expect(res).toMatchObject({ event: 'done', snapshotId, entries: expect.any(Number), failures: [] });
    expect(rl.filter((l) => l.event === 'progress').every((p) => 'etaSec' in p)).toBe(true);
    expect(await fsp.readFile(path.join(to, 'docs/a.txt'), 'utf8')).toBe('alpha\n');

    const { last: chk } = await okJson(['check', 'latest', '--catalog', catalog]);
    expect(chk).toMatchObject({ event: 'done', ok: true, problems: [] });

    const { last: fg } = await okJson(['forget', '--keep-last', '1', '--dry-run', '--catalog', catalog]);
    expect(fg).toMatchObject({ event: 'done', dryRun: true, removed: [snapshotId] });
    const { last: fg2 } = await okJson(['forget', '--keep-last', '1', '--catalog', catalog]);
    expect(fg2).toMatchObject({ event: 'done', dryRun: false, removed: [snapshotId] });
  });

  it('on a terminal, backup and restore draw a progress bar on stderr', async () => {
    const cmd = (args: string[]) => [process.execPath, CLI, ...args].map((w) => `'${w}'`).join(' ');
    const b = await sh(
      `script -q -e -c ${JSON.stringify(cmd(['backup', ...conn, '--subtree', '/docs', '--target', `dir:${backups}`, '--catalog', catalog, '--full']))} /dev/null`,
      { timeoutMs: 30_000 },
    );
    expect(b.code, b.stdout).toBe(0);
    expect(b.stdout).toMatch(
      /copy +\d+% \[[#-]{20}\] [\d.]+ \S+ of [\d.]+ \S+, \S+, \d+\/\d+ files, ETA \S+/,
    );
    expect(b.stdout).toMatch(/snapshot \S+ complete/);
    const r = await sh(
      `script -q -e -c ${JSON.stringify(cmd(['restore', 'latest', '--to', path.join(fx.base, 'tty-restore'), '--catalog', catalog]))} /dev/null`,
      { timeoutMs: 30_000 },
    );
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(/restore 100% \[#{20}\]/);
  });

  it('plugins list', async () => {
    const { last } = await okJson(['plugins', 'list']);
    expect(last).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ name: 'twinfs-dir', targets: ['dir'], state: expect.any(String) }),
      ]),
    );
  });

  it('repl with piped stdin: commands in order, exit status of the last failure, --json lines', async () => {
    const r = await twinfs(['repl', ...conn], {
      input: 'pairs /docs/a.txt\n# a comment\nflush\nverify --no-content\n',
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter(Boolean)).toEqual([
      '/docs/a.txt: PAIR',
      'flushed',
      expect.stringMatching(/^verify: \d+ entries match$/),
    ]);
    // A failure in the middle does not stop the script; the status is the last failure's.
    // Thaw with nothing frozen is not a failure (idempotent).
    const f = await twinfs(['repl', ...conn], { input: 'frobnicate\npairs\nthaw\npairs\n' });
    expect(f.code).toBe(2);
    expect(f.stdout.split('\n').filter(Boolean)).toEqual([
      'volume: PAIR',
      'nothing is frozen',
      'volume: PAIR',
    ]);
    expect(f.stderr.split('\n').filter(Boolean)).toEqual([
      expect.stringMatching(/^twinfs: error ETWIN_USAGE: unknown command "frobnicate"/),
    ]);
    const u = await twinfs(['repl', ...conn], { input: 'pairs\nfreeze\n' });
    expect(u.code).toBe(2);
    const j = await twinfs(['repl', ...conn, '--json'], { input: 'pairs\nthaw\n' });
    expect(jsonLines(j.stdout)).toEqual([{ path: null, state: 'PAIR', splits: [], broken: [] }, []]);
    // Nothing held after the script ends (freezes die with the connection).
    const h = await twinfs(['repl', ...conn], { input: 'freeze /docs/a.txt\n' });
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^frozen \/docs\/a\.txt \(fz-/);
    const { last } = await okJson(['status', ...conn]);
    expect(last.backup.freezes).toEqual([]);
  });

  it('a config file instead of --server and --token-file: operator section, serve section, $TWINFS_CONFIG', async () => {
    const op = path.join(fx.base, 'etc/operator.json');
    await fsp.writeFile(
      op,
      JSON.stringify({ operator: { server: fx.url, tokenFile: 'control.token', catalog: '../catalog' } }),
    );
    const { last } = await okJson(['status', '--config', op]);
    expect(last.mirror.deviceId).toBe(fx.deviceId);
    expect(last.lastBackups.catalog).toBe(catalog);
    // The serve config of the same server: the URL comes from "control", the token from "tokenFile".
    const port = new URL(fx.url).port;
    const serveCfg = path.join(fx.base, 'etc/serve.json');
    await fsp.writeFile(
      serveCfg,
      JSON.stringify({
        serve: { primary: fx.primary, mount: fx.mnt, control: `0.0.0.0:${port}`, tokenFile: fx.tokenFile },
      }),
    );
    const viaEnv = await ok(['pairs'], { env: { TWINFS_CONFIG: serveCfg } });
    expect(viaEnv.stdout).toBe('volume: PAIR\n');
    // The command line wins over the file.
    const r = await twinfs(['status', '--config', op, '--server', 'ws://127.0.0.1:1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_CONTROL_UNREACHABLE: .*127\.0\.0\.1:1/);
    // The REPL takes the config too.
    const p = await twinfs(['repl', '--config', op], { input: 'snapshots\n' });
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout).toMatch(/complete/);
  });

  it('unmount clears a stale mount', async () => {
    const mnt = path.join(fx.base, 'stale');
    const prim = path.join(fx.base, 'stale-primary');
    await fsp.mkdir(mnt);
    await fsp.mkdir(prim);
    const srv = await startServer({ primary: prim, mount: mnt });
    srv.proc.kill('SIGKILL');
    await srv.exited;
    const r = await ok(['unmount', mnt]);
    expect(r.stdout).toMatch(new RegExp(`^twinfs: unmounted ${mnt} \\(`));
    expect(await isMounted(mnt)).toBe(false);
  });

  it("unmount takes fusermount3 where Debian's fuse3 replaced fuse (no fusermount on the PATH)", async () => {
    const mnt = path.join(fx.base, 'fuse3-only');
    const prim = path.join(fx.base, 'fuse3-only-primary');
    const bin = path.join(fx.base, 'fuse3-bin');
    await Promise.all([mnt, prim, bin].map((d) => fsp.mkdir(d)));
    // The only programs on this PATH: node, fallocate (the server's space reserve) and
    // fusermount3 (Debian's fuse3 installs it under that name; here it is the fuse package's
    // fusermount, which does the same for -uz).
    await fsp.symlink('/usr/bin/fusermount', path.join(bin, 'fusermount3'));
    await fsp.symlink(process.execPath, path.join(bin, 'node'));
    await fsp.symlink('/usr/bin/fallocate', path.join(bin, 'fallocate'));
    try {
      // A server stopping on such a machine unmounts (fuse-native's unmount) and exits 0.
      const first = await startServer({ primary: prim, mount: mnt, env: { ...process.env, PATH: bin } });
      expect(await first.stop()).toBe(0);
      expect(await isMounted(mnt)).toBe(false);
      // twinfs unmount clears a stale mount.
      const srv = await startServer({ primary: prim, mount: mnt });
      srv.proc.kill('SIGKILL');
      await srv.exited;
      const r = await ok(['unmount', mnt], { env: { PATH: bin } });
      expect(r.stdout).toBe(`twinfs: unmounted ${mnt} (fusermount3 -uz)\n`);
      expect(await isMounted(mnt)).toBe(false);
    } finally {
      await unmountAll(mnt);
    }
  });
});
