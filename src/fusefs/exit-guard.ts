import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

/**
 * Makes the FUSE connection a process serves end when that process ends, however it ends
 * (process.exit, SIGTERM, SIGKILL, a crash).
 *
 * Why (docs/reliability.md, finding 43): a process that dies normally closes /dev/fuse, and the
 * kernel aborts the connection: every request still waiting fails with ENOTCONN. But a thread of
 * the serving process may be inside the kernel in an uninterruptible wait on the mount itself:
 * an invalidation helper (fuse_invalidate_path) waiting for the lock of a page that a client's
 * write(2) holds until its WRITE is answered. Once the JavaScript thread is gone nobody answers
 * that WRITE, the helper never returns, /dev/fuse is never closed, the connection never ends,
 * and the process never exits (SIGKILL does not end that wait); its client hangs with it. Only
 * aborting the connection (/sys/fs/fuse/connections/N/abort) frees both.
 *
 * The guard is a small shell started at mount with the connection's abort file open as fd 3
 * and a pipe from this process as its stdin. It waits on that pipe; it wakes when this process's
 * main thread ends (the parent-death signal set by setpriv: sent when the thread that spawned
 * it exits, so even when another thread of this process can never exit) or when the pipe ends,
 * and then writes 1 to fd 3. The open file stays bound to this connection: once the connection
 * is gone, the kernel detaches it, and a write to it aborts nothing (the number N, taken by a
 * later mount, is never written by name). Without permission on /sys/fs/fuse/connections (not
 * root) there is no guard; a root server mounts fusectl there first when it is not mounted
 * (mountFusectl).
 */
export interface ExitGuard {
  /** Whether the connection has ended (its control files are detached from it). */
  connectionEnded(): boolean;
  /** Stops the guard without aborting anything (for a connection that has ended). */
  dispose(): void;
}

const GUARD_SCRIPT = [
  // TERM (the parent-death signal) interrupts the read; so does the end of the pipe.
  'trap : TERM',
  // The parent died before the parent-death signal was set: the connection is unattended.
  '[ "$PPID" = "$1" ] && read -r _',
  'echo 1 >&3',
].join('\n');

/**
 * Where fusectl shows the FUSE connections. TWINFS_FUSE_CONNECTIONS_DIR names another directory:
 * a test's stand-in for a machine where fusectl is not mounted (test/fusefs/exit-guard-missing).
 */
const FUSECTL_DIR = '/sys/fs/fuse/connections';

function connectionsDir(): string {
  return process.env.TWINFS_FUSE_CONNECTIONS_DIR || FUSECTL_DIR;
}

/**
 * Mounts fusectl on /sys/fs/fuse/connections when this process is root and it is not mounted
 * (a machine booted without Debian's `fuse` service, which mounts it, or a container), as that
 * service does: without it the guard has no abort file. True when it is mounted afterwards.
 */
function mountFusectl(): boolean {
  if (process.env.TWINFS_FUSE_CONNECTIONS_DIR || process.getuid?.() !== 0) return false;
  try {
    if (fs.readdirSync(FUSECTL_DIR).length > 0) return true;
  } catch {
    return false; // no /sys/fs/fuse (no fuse module): nothing to mount on
  }
  spawnSync('mount', ['-t', 'fusectl', 'none', FUSECTL_DIR], { stdio: 'ignore', timeout: 5000 });
  return fs.readdirSync(FUSECTL_DIR).length > 0;
}

/**
 * @param noFusectl told why, when the connection's directory is not there (fusectl not mounted,
 *   or not in this mount namespace): without the guard a server stuck on its own mount cannot end
 */
export function startExitGuard(minor: number, noFusectl?: (why: string) => void): ExitGuard | undefined {
  if (!Number.isInteger(minor) || minor <= 0) return undefined;
  const dir = `${connectionsDir()}/${minor}`;
  let abortFd: number;
  let dirFd: number;
  try {
    // The directory first: the abort file then certainly belongs to the same connection.
    dirFd = openDir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return undefined;
    try {
      if (!mountFusectl()) throw err;
      dirFd = openDir(dir);
    } catch {
      noFusectl?.(`${dir} does not exist (fusectl is not mounted on ${connectionsDir()})`);
      return undefined;
    }
  }
  try {
    abortFd = fs.openSync(`${dir}/abort`, fs.constants.O_WRONLY);
  } catch {
    fs.closeSync(dirFd);
    return undefined; // not permitted (not root)
  }
  let child: ChildProcess | undefined;
  try {
    child = spawn(
      'setpriv',
      ['--pdeathsig', 'TERM', '--', '/bin/sh', '-c', GUARD_SCRIPT, 'twinfs-exit-guard', String(process.pid)],
      { stdio: ['pipe', 'ignore', 'ignore', abortFd] },
    );
    child.on('error', () => undefined);
    child.stdin?.on('error', () => undefined);
    child.unref();
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  } catch {
    child = undefined;
  } finally {
    // The guard has its own copy.
    fs.closeSync(abortFd);
  }
  if (!child) {
    fs.closeSync(dirFd);
    return undefined;
  }
  let disposed = false;
  return {
    connectionEnded() {
      if (disposed) return true;
      try {
        // The kernel removes the connection's directory when the connection ends (a later
        // connection with the same number gets a new one).
        return fs.fstatSync(dirFd).nlink === 0;
      } catch {
        return true;
      }
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      // SIGKILL: it must not write (nothing to abort; the connection has ended).
      child.kill('SIGKILL');
      fs.closeSync(dirFd);
    },
  };
}

function openDir(dir: string): number {
  return fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
}
