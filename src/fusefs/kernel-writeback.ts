import { type ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';

export interface KernelWritebackOptions {
  /** The mount whose dirty pages are written back. */
  mountPoint: string;
  /** Longest one write-back may take, ms (default 30000). */
  timeoutMs?: number;
  /** The program run for it (default coreutils `sync`, called as `sync -d -- FILE...`). */
  syncCommand?: string;
}

/** Rounds of a write-back whose names moved under it (a rename between listing and opening). */
const ROUNDS = 3;

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
   * Writes back the pages of the names names() gives (volume paths, asked again when a round
   * fails: a name may have been renamed meanwhile). Resolves with the time it took, ms, and the
   * names of the last round; rejects with ETWIN_KERNEL_WRITEBACK.
   */
  async sync(names: () => string[]): Promise<{ ms: number; names: number }> {
    const t0 = performance.now();
    let last: TwinError | undefined;
    // Names the kernel said do not exist (unlinked meanwhile, e.g. answered in libfuse's threads
    // before twinfs's name list heard of it): no split can hold them, so the next round skips
    // them; a name renamed meanwhile comes back from names() under its new name.
    const gone = new Set<string>();
    // Names written back by a round that failed only on names gone meanwhile (sync goes on past
    // a name it cannot open): not listed again. Such a round made progress and does not count
    // as a failed one (a create/unlink storm can make every round meet a vanished name), but
    // the rounds stay bounded.
    const done = new Set<string>();
    let failed = 0;
    for (let round = 0; failed < ROUNDS && round < ROUNDS * 4; round++) {
      const list = names().filter((n) => !gone.has(n) && !done.has(n));
      if (list.length === 0) return { ms: performance.now() - t0, names: done.size };
      try {
        await this.run(list);
        return { ms: performance.now() - t0, names: done.size + list.length };
      } catch (err) {
        last = err as TwinError;
        // A timeout leaves a stuck child: another round would only wait behind it.
        if (this.stuck) break;
        for (const n of (last.data?.missing as string[] | undefined) ?? []) gone.add(n);
        if (last.data?.onlyMissing === true) {
          for (const n of list) if (!gone.has(n)) done.add(n);
        } else failed++;
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
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, ['-d', '--', ...files], {
        // Never inside the mount: the child's cwd would be one more reference to it.
        cwd: '/',
        env: { ...process.env, LC_ALL: 'C' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
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
        if (code === 0) {
          settle();
          return;
        }
        // The names it could not open because they do not exist (sync runs with LC_ALL=C).
        const missing = names.filter((n) =>
          stderr.includes(`error opening '${path.join(mount, n)}': No such file or directory`),
        );
        const lines = stderr.trim().split('\n').filter(Boolean);
        fail(
          `${cmd} -d of ${names.length} file(s) in ${mount} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`,
          {
            exitCode: code,
            signal,
            missing,
            // Nothing failed but opening names that are gone: every other name was written back.
            onlyMissing:
              code === 1 &&
              stderr.length < 4096 &&
              lines.length === missing.length &&
              lines.every((l) => l.endsWith(': No such file or directory')),
          },
        );
      });
    });
  }
}
