import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { delay } from '../common/async.js';
import { errnoCode, TwinError } from '../common/errors.js';

/**
 * An exclusive lock file for a catalog directory. nedb keeps its whole datastore in memory and
 * rewrites the file on every load, so two processes with the same catalog open would lose each
 * other's changes; the peer therefore holds the lock only for short catalog transactions, never
 * across a copy. A lock left by a process that died on this host is taken over.
 *
 * The lock file appears with its holder already in it: the holder is written to a file of this
 * process first, which is then hard-linked to the lock's name (link fails with EEXIST when the
 * lock is held). A create (O_EXCL) followed by a write left an empty lock file when the process
 * was killed in between, and an empty file names no holder to find dead: every later process
 * waited its whole timeout and failed with ETWIN_CATALOG_LOCKED (a peer killed at a random moment
 * did it). An empty or unreadable lock file older than STALE_UNNAMED_MS (left by that older code)
 * is taken over too.
 */
const STALE_UNNAMED_MS = 10_000;

export class LockFile {
  private constructor(private readonly file: string) {}

  static async acquire(file: string, opts: { timeoutMs?: number } = {}): Promise<LockFile> {
    const until = Date.now() + (opts.timeoutMs ?? 30_000);
    const me = JSON.stringify({ pid: process.pid, host: os.hostname(), since: new Date().toISOString() });
    const mine = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
    await fsp.writeFile(mine, me, { mode: 0o600 });
    try {
      for (let wait = 20; ; wait = Math.min(wait * 2, 500)) {
        try {
          await fsp.link(mine, file);
          await removeLeftTakers(file);
          return new LockFile(file);
        } catch (err) {
          if (errnoCode(err) !== 'EEXIST') throw err;
        }
        const holder = await readHolder(file);
        const stale = holder
          ? holder.host === os.hostname() && !isAlive(holder.pid)
          : await olderThan(file, STALE_UNNAMED_MS);
        if (stale) {
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
    } finally {
      await fsp.rm(mine, { force: true });
    }
  }

  async release(): Promise<void> {
    await fsp.rm(this.file, { force: true });
  }
}

/** Removes the files of takers killed before they removed their own (`lock.PID.RANDOM`). */
async function removeLeftTakers(file: string): Promise<void> {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    const m = /^(.+)\.(\d+)\.[0-9a-f]{8}$/.exec(n);
    if (m && m[1] === base && Number(m[2]) !== process.pid && !isAlive(Number(m[2])))
      await fsp.rm(path.join(dir, n), { force: true });
  }
}

/** Whether the file was last changed longer than ms ago (false when it is gone). */
async function olderThan(file: string, ms: number): Promise<boolean> {
  try {
    return Date.now() - (await fsp.stat(file)).mtimeMs > ms;
  } catch {
    return false;
  }
}

async function readHolder(file: string): Promise<{ pid: number; host: string } | undefined> {
  try {
    const h = JSON.parse(await fsp.readFile(file, 'utf8'));
    return typeof h?.pid === 'number' ? h : undefined;
  } catch {
    // Garbage, or left empty by older code (see olderThan above).
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
