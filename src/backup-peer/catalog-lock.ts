import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import { delay } from '../common/async.js';
import { errnoCode, TwinError } from '../common/errors.js';

/**
 * An exclusive lock file (O_EXCL) for a catalog directory. nedb keeps its whole datastore in
 * memory and rewrites the file on every load, so two processes with the same catalog open would
 * lose each other's changes; the peer therefore holds the lock only for short catalog
 * transactions, never across a copy. A lock left by a process that died on this host is taken
 * over.
 */
export class LockFile {
  private constructor(private readonly file: string) {}

  static async acquire(file: string, opts: { timeoutMs?: number } = {}): Promise<LockFile> {
    const until = Date.now() + (opts.timeoutMs ?? 30_000);
    const me = JSON.stringify({ pid: process.pid, host: os.hostname(), since: new Date().toISOString() });
    for (let wait = 20; ; wait = Math.min(wait * 2, 500)) {
      try {
        await fsp.writeFile(file, me, { flag: 'wx', mode: 0o600 });
        return new LockFile(file);
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw err;
      }
      const holder = await readHolder(file);
      if (holder && holder.host === os.hostname() && !isAlive(holder.pid)) {
        await fsp.rm(file, { force: true });
        continue;
      }
      if (Date.now() > until)
        throw new TwinError(
          'ETWIN_CATALOG_LOCKED',
          `the catalog is in use by ${holder ? `pid ${holder.pid} on ${holder.host}` : 'another process'} (${file})`,
          { file, holder },
        );
      await delay(wait);
    }
  }

  async release(): Promise<void> {
    await fsp.rm(this.file, { force: true });
  }
}

async function readHolder(file: string): Promise<{ pid: number; host: string } | undefined> {
  try {
    const h = JSON.parse(await fsp.readFile(file, 'utf8'));
    return typeof h?.pid === 'number' ? h : undefined;
  } catch {
    // Being written right now, or garbage: treat as held until the timeout.
    return undefined;
  }
}

/** Whether a process with this pid exists on this host. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}
