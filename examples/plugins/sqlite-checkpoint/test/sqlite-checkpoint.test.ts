import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type LoadedPlugin, loadTargetPlugin } from 'twinfs/conformance';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteShell } from '../sqlite-shell.js';

const PLUGIN = new URL('..', import.meta.url);

/** Rows a copy of the main database file alone holds (what a backup of it would restore). */
async function rowsInMainFileOnly(db: string): Promise<number | string> {
  const copy = path.join(path.dirname(db), `copy-${Date.now()}.sqlite`);
  await fsp.copyFile(db, copy);
  try {
    return Number(execFileSync('sqlite3', [copy, 'SELECT count(*) FROM t'], { stdio: 'pipe' }).toString());
  } catch (err) {
    return String((err as { stderr?: Buffer }).stderr ?? err).trim();
  } finally {
    await fsp.rm(copy, { force: true });
  }
}

describe('sqlite-checkpoint example plugin (onWillFreeze / onDidThaw)', () => {
  let mount: string;
  let db: string;
  let app: SqliteShell;
  let plugin: LoadedPlugin;

  beforeEach(async () => {
    mount = await fsp.mkdtemp(path.join(os.tmpdir(), 'sqlite-checkpoint-'));
    await fsp.mkdir(path.join(mount, 'app'));
    db = path.join(mount, 'app', 'data.db');
    // The application: WAL mode, no automatic checkpoints, a connection that stays open (the last
    // close would checkpoint by itself), writers that wait 100 ms for a lock.
    app = new SqliteShell('sqlite3', db);
    await app.run(
      'PRAGMA journal_mode=WAL;\nPRAGMA wal_autocheckpoint=0;\n.timeout 100\nCREATE TABLE t(x);\n' +
        'INSERT INTO t SELECT value FROM generate_series(1, 500);',
    );
    plugin = await loadTargetPlugin(PLUGIN, {
      configuration: { mount, databases: ['/app/data.db'], busyTimeoutMs: 2000 },
    });
  });

  afterEach(async () => {
    await plugin?.dispose();
    await app?.close();
    await fsp.rm(mount, { recursive: true, force: true });
  });

  it('checkpoints the WAL into the main file before the freeze returns, holds writers, and lets them go on thaw', async () => {
    expect((await fsp.stat(`${db}-wal`)).size).toBeGreaterThan(0);
    expect(await rowsInMainFileOnly(db)).toMatch(/no such table/);

    const failures = await plugin.host.willFreeze({ selector: { subtrees: ['/app'] } }, 10_000);
    expect(failures).toEqual([]);
    expect(plugin.info().state).toBe('active');
    // The main database file alone now has every committed row.
    expect(await rowsInMainFileOnly(db)).toBe(500);
    // Writers are held off while frozen...
    await expect(app.run('INSERT INTO t VALUES (501);')).rejects.toThrow(/database is locked/);
    app = new SqliteShell('sqlite3', db);
    await app.run('.timeout 100');
    // ...readers are not.
    expect((await app.run('SELECT count(*) FROM t;')).trim()).toBe('500');

    await plugin.host.emit('onDidThaw', { selector: { subtrees: ['/app'] }, backupId: 'b1' });
    await app.run('INSERT INTO t VALUES (501);');
    expect((await app.run('SELECT count(*) FROM t;')).trim()).toBe('501');
  });

  it('leaves databases the freeze does not cover alone', async () => {
    const failures = await plugin.host.willFreeze({ selector: { paths: ['/elsewhere/file'] } }, 10_000);
    expect(failures).toEqual([]);
    expect(await rowsInMainFileOnly(db)).toMatch(/no such table/);
    await app.run('INSERT INTO t VALUES (501);');
  });

  it('reports, against the plugin, a database it cannot quiesce in time; the freeze goes on', async () => {
    // A long write transaction the application does not finish.
    const writer = new SqliteShell('sqlite3', db);
    await writer.run('BEGIN IMMEDIATE;\nINSERT INTO t VALUES (0);');
    try {
      const failures = await plugin.host.willFreeze({ selector: { volume: true } }, 500);
      expect(failures).toEqual([
        { plugin: 'twinfs-example-sqlite-checkpoint', message: 'onWillFreeze: did not finish within 500 ms' },
      ]);
      expect(plugin.info().problems).toEqual(['onWillFreeze: did not finish within 500 ms']);
    } finally {
      await writer.run('COMMIT;');
      await writer.close();
    }
    await plugin.host.emit('onDidThaw', { selector: { volume: true } });
    await app.run('INSERT INTO t VALUES (502);');
  });
});
