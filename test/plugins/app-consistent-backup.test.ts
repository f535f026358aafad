import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteShell } from '../../examples/plugins/sqlite-checkpoint/sqlite-shell.js';
import type { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { runCli } from '../helpers/cli.js';
import { ROOT } from '../helpers/server.js';

/**
 * Application-consistent backups end to end: a real `twinfs serve --mirror --control
 * --plugin-dir` process, real `twinfs backup --plugin-dir` processes, the example
 * sqlite-checkpoint plugin quiescing a database kept on the mount (onWillFreeze in the peer,
 * before prepare), plugins hearing the backup's events on both sides, and onWillFreeze hooks
 * that hang: the backup goes on crash-consistent after the hook timeout, or fails if told to,
 * and the write stall the server reports stays small either way.
 */

const SQLITE_PLUGIN = path.join(ROOT, 'examples/plugins/sqlite-checkpoint');

/** Records every plugin event it hears in STORAGE/events.jsonl; on the server it also misbehaves. */
const RECORDER = `
import { appendFileSync } from 'node:fs';
import * as path from 'node:path';
export function activate(context) {
  const file = path.join(context.storagePath, 'events.jsonl');
  const misbehave = process.env.RECORDER_MISBEHAVE === '1';
  const t = context.twinfs;
  const rec = (name) => (e) => appendFileSync(file, JSON.stringify({ name, ...e }) + '\\n');
  context.subscriptions.push(
    t.onWillBackup(rec('onWillBackup')),
    t.onWillFreeze(rec('onWillFreeze')),
    t.onDidFreeze((e) => {
      rec('onDidFreeze')(e);
      if (misbehave) throw new Error('recorder misbehaves');
    }),
    t.onDidSplit((e) => {
      rec('onDidSplit')(e);
      if (misbehave) return new Promise(() => {});
    }),
    t.onDidThaw(rec('onDidThaw')),
    t.onDidResync(rec('onDidResync')),
    t.onDidCompleteBackup(rec('onDidCompleteBackup')),
    t.onDidFail(rec('onDidFail')),
  );
}
`;

/** An application that never quiesces: its onWillFreeze promise never settles. */
const HANG = `
export function activate(context) {
  context.subscriptions.push(context.twinfs.onWillFreeze((e) => e.waitUntil(new Promise(() => {}))));
}
`;

async function writePlugin(dir: string, name: string, code: string): Promise<string> {
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(
    path.join(dir, 'package.json'),
    JSON.stringify({
      name,
      version: '1.0.0',
      type: 'module',
      main: 'index.js',
      engines: { twinfs: '^1.0.0' },
      activationEvents: ['onStartup'],
    }),
  );
  await fsp.writeFile(path.join(dir, 'index.js'), code);
  return dir;
}

/** A twinfs command run to its end, with this environment. */
const cli = (args: string[], env: NodeJS.ProcessEnv, timeoutMs?: number) => runCli(args, { env, timeoutMs });

async function readEvents(stateRoot: string): Promise<any[]> {
  const text = await fsp
    .readFile(path.join(stateRoot, 'storage/recorder/events.jsonl'), 'utf8')
    .catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

/** Rows a copy of the database file alone (no -wal beside it) holds, or sqlite3's complaint. */
async function rowsInFileAlone(file: string, scratch: string): Promise<number | string> {
  const dir = await fsp.mkdtemp(path.join(scratch, 'db-'));
  await fsp.copyFile(file, path.join(dir, 'data.db'));
  try {
    return Number(
      execFileSync('sqlite3', [path.join(dir, 'data.db'), 'SELECT count(*) FROM t'], {
        stdio: 'pipe',
      }).toString(),
    );
  } catch (err) {
    return String((err as { stderr?: Buffer }).stderr ?? err).trim();
  }
}

describe('application-consistent backups through plugins (real server, real peer processes)', () => {
  let fx: ControlFixture;
  let client: ControlClient;
  let work: string;
  let app: SqliteShell;
  let common: string[];
  let peerEnv: NodeJS.ProcessEnv;
  let recorderDir: string;
  let hangDir: string;
  const serverState = () => path.join(work, 'server-plugin-state');
  const peerState = () => path.join(work, 'peer-plugin-state');

  beforeAll(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-app-consistent-'));
    recorderDir = await writePlugin(path.join(work, 'plugins/recorder'), 'recorder', RECORDER);
    hangDir = await writePlugin(path.join(work, 'plugins-hang/hang'), 'hang-on-freeze', HANG);
    await fsp.mkdir(path.join(work, 'no-user-plugins'));
    // The server's plugin host: this test file's process is a fork of its own, so its env is ours to set.
    process.env.TWINFS_PLUGIN_STATE = serverState();
    process.env.TWINFS_PLUGIN_PATH = path.join(work, 'no-user-plugins');
    process.env.RECORDER_MISBEHAVE = '1';
    fx = await startControlFixture({ args: ['--plugin-dir', path.join(work, 'plugins')] });
    client = await fx.connect();
    const settings = path.join(work, 'plugin-settings.json');
    await fsp.writeFile(
      settings,
      JSON.stringify({
        plugins: {
          'twinfs-example-sqlite-checkpoint': {
            mount: fx.mnt,
            databases: ['/app/data.db'],
            busyTimeoutMs: 2000,
          },
        },
      }),
    );
    peerEnv = {
      ...process.env,
      TWINFS_PLUGIN_STATE: peerState(),
      TWINFS_PLUGIN_CONFIG: settings,
      RECORDER_MISBEHAVE: '0',
    };
    common = [
      'backup',
      '--server',
      fx.url,
      '--token-file',
      fx.tokenFile,
      '--target',
      `dir:${path.join(work, 'backups')}`,
      '--catalog',
      path.join(work, 'catalog'),
      '--subtree',
      '/app',
      '--json',
    ];
    // The application: a database on the mount in WAL mode, automatic checkpoints off, and a
    // connection kept open (the last close would checkpoint by itself). Every committed row is in
    // the -wal file; the database file alone has not even the table.
    await fsp.mkdir(path.join(fx.mnt, 'app'));
    app = new SqliteShell('sqlite3', path.join(fx.mnt, 'app/data.db'));
    await app.run(
      'PRAGMA journal_mode=WAL;\nPRAGMA wal_autocheckpoint=0;\n.timeout 2000\nCREATE TABLE t(x);\n' +
        'INSERT INTO t SELECT value FROM generate_series(1, 500);',
    );
  }, 60_000);

  afterAll(async () => {
    await app?.close();
    await fx?.close();
    if (work) await fsp.rm(work, { recursive: true, force: true });
  });

  /** The database file as the snapshot holds it, restored from the repository. */
  const snapshotFile = async (snapshotId: string) => {
    const to = path.join(work, `restored-${snapshotId}`);
    const r = await runCli([
      'restore',
      snapshotId,
      '/app/data.db',
      '--to',
      to,
      '--catalog',
      path.join(work, 'catalog'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    return path.join(to, 'app/data.db');
  };

  it('without the plugin the database file alone is not a database yet; with it, it holds every committed row', async () => {
    const plain = await cli([...common, '--plugin-dir', recorderDir], peerEnv);
    expect(plain.code, plain.stderr).toBe(0);
    expect(await rowsInFileAlone(await snapshotFile(plain.last.snapshotId), work)).toMatch(/no such table/);
    const heard = (await readEvents(peerState())).length;

    const r = await cli([...common, '--plugin-dir', recorderDir, '--plugin-dir', SQLITE_PLUGIN], peerEnv);
    expect(r.code, r.stderr).toBe(0);
    expect(r.last).toMatchObject({ event: 'done', hookFailures: [] });
    expect(await rowsInFileAlone(await snapshotFile(r.last.snapshotId), work)).toBe(500);
    // The plugin let the application go: it writes again.
    await app.run('INSERT INTO t VALUES (501);');
    expect((await app.run('SELECT count(*) FROM t;')).trim()).toBe('501');

    // The peer's plugins heard the run, in order; onWillFreeze came before prepare.
    const peer = (await readEvents(peerState())).slice(heard);
    expect(peer.map((e) => e.name)).toEqual([
      'onWillBackup',
      'onWillFreeze',
      'onDidFreeze',
      'onDidSplit',
      'onDidThaw',
      'onDidResync',
      'onDidCompleteBackup',
    ]);
    const byName = Object.fromEntries(peer.map((e) => [e.name, e]));
    expect(byName.onWillBackup).toMatchObject({
      snapshotId: r.last.snapshotId,
      selector: { subtrees: ['/app'] },
      target: r.last.target,
    });
    expect(byName.onWillFreeze).toEqual({ name: 'onWillFreeze', selector: { subtrees: ['/app'] } });
    expect(byName.onDidSplit).toMatchObject({ backupId: r.last.backupId, deviceId: fx.deviceId });
    expect(byName.onDidThaw).toMatchObject({ backupId: r.last.backupId, stallMs: r.last.stallMs });
    expect(byName.onDidCompleteBackup.totals).toEqual(r.last.totals);

    // The server's plugins heard the same backup from the backup service — although the
    // recorder throws in onDidFreeze and never settles in onDidSplit there, the stall stayed small.
    const server = (await readEvents(serverState())).filter((e) => e.backupId === r.last.backupId);
    expect(server.map((e) => e.name)).toEqual(['onDidFreeze', 'onDidSplit', 'onDidThaw', 'onDidResync']);
    expect(server[0]).toMatchObject({ selector: { subtrees: ['/app'] } });
    expect(server[1]).toMatchObject({ deviceId: fx.deviceId });
    expect(fx.srv.stderr()).toMatch(/recorder: onDidFreeze listener threw: recorder misbehaves/);
    expect(r.last.stallMs).toBeLessThan(500);
  });

  it("the server's plugins hear an operator freeze and thaw too", async () => {
    const { freezeId } = (await client.request('freeze', { selector: { subtree: '/app' } })) as {
      freezeId: string;
    };
    await client.request('thaw', { freezeId });
    const want = [
      { name: 'onDidFreeze', freezeId, selector: { subtrees: ['/app'] } },
      { name: 'onDidThaw', freezeId, selector: { subtrees: ['/app'] }, reason: 'thaw' },
    ];
    // Delivered after the reply, never in its way: wait for them.
    for (let i = 0; i < 100; i++) {
      const got = (await readEvents(serverState())).filter((e) => e.freezeId === freezeId);
      if (got.length >= 2) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect((await readEvents(serverState())).filter((e) => e.freezeId === freezeId)).toEqual(want);
  });

  it('a hook that hangs: crash-consistent after the hook timeout by default, no backup with --on-hook-failure fail; the stall stays small', async () => {
    const hang = [...common, '--plugin-dir', hangDir, '--freeze-hook-timeout-sec', '1'];
    const t0 = Date.now();
    const r = await cli(hang, peerEnv);
    expect(r.code, r.stderr).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(r.last).toMatchObject({
      event: 'done',
      hookFailures: [{ plugin: 'hang-on-freeze', message: 'onWillFreeze: did not finish within 1000 ms' }],
    });
    expect(r.last.freezeHookMs).toBeGreaterThanOrEqual(950);
    // The hook's second is not part of the write stall.
    expect(r.last.stallMs).toBeLessThan(500);
    expect(r.lines.find((l) => l.event === 'warning')).toMatchObject({
      code: 'ETWIN_PLUGIN_FAILED',
      plugin: 'hang-on-freeze',
    });
    expect(r.stderr).toMatch(/warning: plugin hang-on-freeze: .*going on crash-consistent/);

    const f = await cli([...hang, '--on-hook-failure', 'fail'], peerEnv);
    expect(f.code).toBe(1);
    expect(f.last).toMatchObject({ event: 'error', code: 'ETWIN_PLUGIN_FAILED' });
    expect(f.last.message).toMatch(/hang-on-freeze: onWillFreeze: did not finish within 1000 ms/);

    const s = (await client.request('status')) as any;
    expect(s.backup.backups).toEqual([]); // nothing left split
    expect(s.backup.stall.failedPrepares).toBe(0);
    expect(s.backup.stall.maxStallMs).toBeLessThan(500);
    const snaps = await cli(['snapshots', '--catalog', path.join(work, 'catalog'), '--json'], peerEnv);
    // The failed run ended before anything was recorded or split.
    const list = snaps.lines[0] as Array<{ id: string; state: string }>;
    expect(list.every((x) => x.state === 'complete')).toBe(true);
    expect(list.at(-1)!.id).toBe(r.last.snapshotId);
  });
});
