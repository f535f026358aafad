import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { posix } from './native.js';

/** What a lock covers, for the message of a refused one. */
export type LockedPart = 'primary' | 'mirror' | 'state';

interface Held {
  part: LockedPart;
  path: string;
  fd: number;
}

export interface VolumeLockOptions {
  primary: string;
  /** The mirror root (created if missing, as the mirror driver would). */
  mirror?: string;
  /** The server's state directory (shared by the volumes of a host: one lock file per volume in it). */
  stateDir: string;
  /** Where holders are listed (default /proc/locks). */
  procLocks?: string;
}

/**
 * One owner per volume: exclusive flock(2)s held for the server's life on the primary
 * directory, the mirror root and a per-volume lock file in the state directory
 * (STATE/locks/<sha256 of the primary's real path>.lock, which also holds the owner's pid).
 *
 * flock and not a pid file with a staleness timeout: the kernel drops the locks when the
 * process dies (kill -9 included), and never while it lives, however long it is stopped, so a
 * stopped server's volume is never handed to another. The locks sit on the directories
 * themselves (flock works on a directory descriptor), so nothing is added to the primary,
 * which the mount shows. Descriptors are O_CLOEXEC (Node's default): children (smbd, mknod)
 * never inherit them. Taken non-blocking, before the journal is read or anything is mounted;
 * a refusal names the holder's pid (from /proc/locks, else the lock file).
 */
export class VolumeLock {
  private constructor(private readonly held: Held[]) {}

  static acquire(o: VolumeLockOptions): VolumeLock {
    const held: Held[] = [];
    try {
      const primary = path.resolve(o.primary);
      held.push(lockPath('primary', primary, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, o));
      if (o.mirror) {
        const mirror = path.resolve(o.mirror);
        fs.mkdirSync(mirror, { recursive: true });
        held.push(lockPath('mirror', mirror, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, o));
      }
      const dir = path.join(path.resolve(o.stateDir), 'locks');
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const key = createHash('sha256').update(fs.realpathSync(primary)).digest('hex').slice(0, 32);
      const file = path.join(dir, `${key}.lock`);
      const state = lockPath('state', file, fs.constants.O_RDWR | fs.constants.O_CREAT, o);
      held.push(state);
      // The pid, for a refused server's message when /proc/locks is not readable.
      fs.ftruncateSync(state.fd, 0);
      fs.writeSync(
        state.fd,
        `${JSON.stringify({ pid: process.pid, primary, mirror: o.mirror ?? null })}\n`,
        0,
      );
      return new VolumeLock(held);
    } catch (err) {
      for (const h of held) fs.closeSync(h.fd);
      throw err;
    }
  }

  /** What is held (for status and tests). */
  get parts(): Array<{ part: LockedPart; path: string }> {
    return this.held.map(({ part, path }) => ({ part, path }));
  }

  /** Releases every lock (closing the descriptors). Idempotent. */
  release(): void {
    for (const h of this.held.splice(0)) fs.closeSync(h.fd);
  }
}

function lockPath(part: LockedPart, p: string, flags: number, o: VolumeLockOptions): Held {
  const fd = fs.openSync(p, flags, 0o600);
  const r = posix().flock(fd, true, true);
  if (r === 0) return { part, path: p, fd };
  try {
    if (r !== -11 /* EWOULDBLOCK */) {
      const e = new Error(`flock ${p}: errno ${-r}`) as NodeJS.ErrnoException;
      e.errno = r;
      throw e;
    }
    const st = fs.fstatSync(fd);
    const pid = holderPid(st, o.procLocks) ?? pidFromFile(part === 'state' ? fd : undefined);
    throw new TwinError(
      'ETWIN_VOLUME_LOCKED',
      `the ${part} ${p} is in use by another twinfs server${pid ? ` (pid ${pid})` : ''}; ` +
        'one server per volume: stop it first',
      { part, path: p, pid },
    );
  } finally {
    fs.closeSync(fd);
  }
}

/** The pid holding a flock on the file with this dev/ino, from /proc/locks. */
function holderPid(st: fs.Stats, procLocks = '/proc/locks'): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(procLocks, 'utf8');
  } catch {
    return undefined;
  }
  const dev = st.dev;
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  for (const line of text.split('\n')) {
    // "1: FLOCK  ADVISORY  WRITE 13527 fe:00:2151344 0 EOF" (a "->" line is a waiter)
    const m = /^\d+:\s+FLOCK\s+\S+\s+WRITE\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/.exec(line);
    if (!m) continue;
    if (
      Number.parseInt(m[2]!, 16) === major &&
      Number.parseInt(m[3]!, 16) === minor &&
      Number(m[4]) === st.ino
    )
      return Number(m[1]);
  }
  return undefined;
}

function pidFromFile(fd: number | undefined): number | undefined {
  if (fd === undefined) return undefined;
  try {
    const pid = JSON.parse(fs.readFileSync(fd, 'utf8'))?.pid;
    return typeof pid === 'number' ? pid : undefined;
  } catch {
    return undefined;
  }
}
