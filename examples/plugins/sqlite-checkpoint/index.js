// @ts-check
import * as path from 'node:path';
import { dotArg, SqliteShell } from './sqlite-shell.js';

/**
 * Application-consistent backups of SQLite databases kept on the volume, the way a VSS writer
 * gives them to Windows backups:
 *
 *  - onWillFreeze (before twinfs inhibits writes, not counted in the write stall): for every
 *    configured database the freeze covers, take SQLite's write lock (BEGIN IMMEDIATE, waiting up
 *    to busyTimeoutMs for a running write transaction), then checkpoint the WAL into the main
 *    database file from a second connection. The freeze waits for this through waitUntil; when it
 *    resolves, the main file alone is a complete, consistent database.
 *  - onDidThaw: release the lock; the application's writers go on (they waited in their busy
 *    handler, or got SQLITE_BUSY and retried).
 *
 * Readers are never blocked. A holder is released after maxHoldMs even if no thaw arrives.
 * @param {import('twinfs').PluginContext} context
 */
export function activate(context) {
  const { twinfs, configuration: c, logger } = context;
  const mount = c.get('mount', '') ?? '';
  const databases = /** @type {string[]} */ (c.get('databases', []) ?? []);
  const binary = c.get('sqlite3', 'sqlite3') ?? 'sqlite3';
  const busyMs = c.get('busyTimeoutMs', 5000) ?? 5000;
  const maxHoldMs = c.get('maxHoldMs', 120_000) ?? 120_000;
  for (const db of databases) twinfs.volumePathParts(db); // a bad path fails activation, named
  if (databases.length && !path.isAbsolute(mount))
    throw new Error('"mount" must be the absolute mount point');

  /** Databases held for the freeze in progress. @type {Map<string, { shell: SqliteShell, timer: NodeJS.Timeout }>} */
  const held = new Map();

  /** @param {string} db */
  async function quiesce(db) {
    const file = path.join(mount, ...twinfs.volumePathParts(db));
    const shell = new SqliteShell(binary, file);
    const timer = setTimeout(() => {
      logger.warn(`${db}: no thaw after ${maxHoldMs} ms; letting its writers go`);
      void release(db);
    }, maxHoldMs);
    held.set(db, { shell, timer });
    await shell.run(`.timeout ${busyMs}\nBEGIN IMMEDIATE;`);
    // Writers are now held off; fold the WAL into the main file. PASSIVE, from a second
    // connection: the stronger modes would wait for the writer, which is us.
    for (const started = Date.now(); ; ) {
      const out = await shell.run(
        `.connection 1\n.open ${dotArg(file)}\n.timeout ${busyMs}\nPRAGMA wal_checkpoint(PASSIVE);\n.connection 0`,
      );
      const [busy, log, done] = out.trim().split('|').map(Number);
      // log -1: not in WAL mode, nothing to fold in.
      if (busy === 0 && (log === -1 || log === done)) return;
      // A reader still on an older snapshot pins frames: give it a moment.
      if (Date.now() - started > busyMs)
        throw new Error(
          `${db}: checkpoint incomplete (${done} of ${log} WAL frames; a reader holds an old snapshot)`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** @param {string} db */
  async function release(db) {
    const h = held.get(db);
    if (!h) return;
    held.delete(db);
    clearTimeout(h.timer);
    await h.shell.run('COMMIT;').catch(() => undefined);
    await h.shell.close();
  }

  const releaseAll = async () => {
    await Promise.all([...held.keys()].map(release));
  };

  context.subscriptions.push(
    twinfs.onWillFreeze((e) => {
      const mine = databases.filter((db) => covers(e.selector, db));
      if (mine.length === 0) return;
      e.waitUntil(
        Promise.all(
          mine.map((db) =>
            quiesce(db).catch(async (err) => {
              await release(db);
              throw err;
            }),
          ),
        ).then(() => logger.info(`checkpointed and paused ${mine.join(', ')}`)),
      );
    }),
    twinfs.onDidThaw(() => releaseAll()),
    { dispose: () => releaseAll() },
  );
}

/**
 * Whether a freeze covers a database (or its -wal/-shm companions).
 * @param {import('twinfs').Selector} s
 * @param {string} db
 */
function covers(s, db) {
  if (s.volume) return true;
  const files = [db, `${db}-wal`, `${db}-shm`];
  if (s.paths?.some((p) => files.includes(p))) return true;
  return s.subtrees?.some((t) => t === '/' || db.startsWith(`${t.replace(/\/+$/, '')}/`)) ?? false;
}
