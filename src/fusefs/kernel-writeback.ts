import { type ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { bytesOf, hasRawBytes } from '../posix/byte-names.js';

export interface KernelWritebackOptions {
  /** The mount whose dirty pages are written back. */
  mountPoint: string;
  /** Longest one write-back may take, ms (default 30000). */
  timeoutMs?: number;
  /** The program run for it (default coreutils `sync`, called as `sync -d -- FILE...`). */
  syncCommand?: string;
}

/** Failed rounds of a write-back before it gives up (a name moved between listing and opening). */
const ROUNDS = 3;
/** Rounds in all, those that failed only on names gone meanwhile included. */
const MAX_ROUNDS = 8;

/** A volume path to write back, or the path and the file's inode (to follow it through a rename). */
export type SyncName = string | { path: string; ino: number };

/**
 * Makes the kernel write back the dirty pages it holds for some names of the mount — pages of
 * shared writable mmaps, which reach twinfs as WRITE requests only when the kernel decides
 * (dirty_expire, 30 s by default) — and waits until twinfs has answered them, by running
 * `sync -d -- MOUNT/NAME...` (fdatasync per name) in a child process.
 *
 * Why a child: the WRITE requests it causes are answered by this process's JS thread, so the
 * serving process must never wait on its own mount; the child does, and we await its exit.
 * Why fdatasync per name and not syncfs of the mount: on this kernel (6.x, since FUSE dropped its
 * temporary writeback pages) syncfs starts the write-back of FUSE pages but does not wait for
 * the replies — measured: `sync -f` returned in 50 ms while the WRITEs it caused were held by a
 * freeze — whereas fsync waits for every WRITE of its kernel inode. High-level libfuse keeps a
 * kernel inode per name, so the caller passes every name the pages may sit under (open-names.ts).
 *
 * A child that outlives the timeout is waiting in the kernel for WRITEs twinfs holds (a freeze)
 * or cannot answer; it sleeps uninterruptibly and cannot be killed until they are answered. It
 * is remembered, and every write-back until it exits fails at once instead of piling up more.
 */
export class KernelWriteback {
  readonly timeoutMs: number;
  private stuck: ChildProcess | null = null;

  constructor(private readonly opts: KernelWritebackOptions) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  /**
   * Writes back the pages of the names names() gives (volume paths, with the file's inode where
   * the caller knows it). A name the kernel says does not exist when the child opens it was
   * unlinked meanwhile (no longer open: nothing of it to write back; an unlink answered in
   * libfuse's threads may not be in the caller's list yet) or renamed: the names are asked
   * again, and a file of the first list found under a name not yet synced (a rename) is synced
   * under it; a file opened after the first list is not waited for. Other failures are tried
   * again up to ROUNDS times. Resolves with the time it took, ms, and the names synced; rejects
   * with ETWIN_KERNEL_WRITEBACK.
   */
  async sync(names: () => SyncName[]): Promise<{ ms: number; names: number }> {
    const t0 = performance.now();
    let last: TwinError | undefined;
    const synced = new Set<string>();
    const gone = new Set<string>();
    /** Inodes of the first list: later rounds follow those files only (null: paths only, no inodes). */
    let wanted: Set<number> | null = null;
    let failures = 0;
    for (let round = 0; round < MAX_ROUNDS && failures < ROUNDS; round++) {
      const entries = names().map((n) => (typeof n === 'string' ? { path: n, ino: undefined } : n));
      if (round === 0) wanted = new Set(entries.flatMap((e) => (e.ino === undefined ? [] : [e.ino])));
      const list = entries
        .filter((e) => !synced.has(e.path) && !gone.has(e.path))
        .filter((e) => round === 0 || e.ino === undefined || wanted!.has(e.ino))
        .map((e) => e.path);
      if (list.length === 0) return { ms: performance.now() - t0, names: synced.size };
      try {
        await this.run(list);
        for (const n of list) synced.add(n);
        return { ms: performance.now() - t0, names: synced.size };
      } catch (err) {
        last = err as TwinError;
        // A timeout leaves a stuck child: another round would only wait behind it.
        if (this.stuck) break;
        const missing = new Set((last.data?.missing as string[] | undefined) ?? []);
        for (const n of missing) gone.add(n);
        // coreutils sync goes on past a name it cannot open: when every failure was a missing
        // name, the others are written back, and the next round only looks for renames.
        if (last.data?.onlyMissing === true) {
          for (const n of list) if (!missing.has(n)) synced.add(n);
        } else failures++;
      }
    }
    throw last!;
  }

  private run(names: string[]): Promise<void> {
    const mount = this.opts.mountPoint;
    if (this.stuck)
      return Promise.reject(
        new TwinError(
          'ETWIN_KERNEL_WRITEBACK',
          `an earlier write-back of dirty mapped pages in ${mount} (pid ${this.stuck.pid}) has not finished; it waits for WRITE requests that are held or unanswered`,
          { mount, pid: this.stuck.pid, stuck: true },
        ),
      );
    const cmd = this.opts.syncCommand ?? 'sync';
    const files = names.map((n) => path.join(mount, n));
    // A name that is not UTF-8 (src/posix/byte-names.ts) cannot be an argument of spawn, which
    // encodes strings as UTF-8: such names go to the command through xargs -0, as their bytes.
    const raw = files.some(hasRawBytes);
    return new Promise((resolve, reject) => {
      const child = spawn(
        raw ? 'xargs' : cmd,
        raw ? ['-0', '-r', '--', cmd, '-d', '--'] : ['-d', '--', ...files],
        {
          // Never inside the mount: the child's cwd would be one more reference to it.
          cwd: '/',
          env: { ...process.env, LC_ALL: 'C' },
          stdio: [raw ? 'pipe' : 'ignore', 'ignore', 'pipe'],
        },
      );
      if (raw) {
        child.stdin!.on('error', () => {}); // a child that died: its exit says why
        child.stdin!.end(Buffer.concat(files.flatMap((f) => [bytesOf(f), Buffer.from([0])])));
      }
      let stderr = '';
      let settled = false;
      const settle = (err?: TwinError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const fail = (message: string, data: Record<string, unknown>, cause?: unknown) =>
        settle(new TwinError('ETWIN_KERNEL_WRITEBACK', message, { mount, ...data }, { cause }));
      const timer = setTimeout(() => {
        this.stuck = child;
        child.kill('SIGKILL');
        fail(
          `the kernel did not write back the dirty mapped pages of ${names.length} file(s) in ${mount} within ${this.timeoutMs} ms; a snapshot taken now could miss data written through mmap`,
          { timeoutMs: this.timeoutMs, pid: child.pid, files: names.slice(0, 20) },
        );
      }, this.timeoutMs);
      child.stderr!.on('data', (d: Buffer) => {
        if (stderr.length < 4096) stderr += d.toString();
      });
      child.on('error', (err) => fail(`cannot run ${cmd}: ${err.message}`, {}, err));
      child.on('close', (code, signal) => {
        if (this.stuck === child) this.stuck = null;
        if (code === 0) return settle();
        // The names it could not open because they do not exist (sync runs with LC_ALL=C), and
        // whether those were all its errors (it syncs the other names all the same).
        const lines = stderr.trim().split('\n');
        const missingOf = (line: string) =>
          /: error opening '(.*)': No such file or directory$/.exec(line.trim())?.[1];
        const missing = names.filter((n) => lines.some((line) => missingOf(line) === path.join(mount, n)));
        // xargs exits 123 when the command exited 1 to 125. (sync quotes a name that is not
        // UTF-8 in shell style, so such a name gone meanwhile is not recognised as missing: the
        // round fails and is tried again, and the write-back fails loudly after ROUNDS.)
        const onlyMissing =
          (code === 1 || (raw && code === 123)) &&
          missing.length > 0 &&
          lines.every((line) => files.includes(missingOf(line) ?? '\0'));
        fail(
          `${cmd} -d of ${names.length} file(s) in ${mount} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`,
          {
            exitCode: code,
            signal,
            missing,
            onlyMissing,
          },
        );
      });
    });
  }
}
