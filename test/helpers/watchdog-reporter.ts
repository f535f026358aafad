import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Reporter, TestCase, TestModule } from 'vitest/node';

/**
 * A test file whose fork never ends turns into a failure with a diagnosis, not a run that waits
 * for the CI's own limit. Two ways a fork hangs for good:
 * - its worker is blocked in a system call, so its testTimeout and hookTimeout (timers of its
 *   own event loop) never fire, and vitest waits for the file forever;
 * - its tests ended, but it cannot exit: a thread waits in the kernel for the answer to a FUSE
 *   request the process itself was to give (a mount it served). SIGKILL does not end that wait;
 *   vitest prints "Timeout terminating forks worker" and waits for the exit at the end of the run.
 *
 * This reporter runs in vitest's main process. Every file runs in a fork of its own (pool
 * 'forks', isolated); each test reports its fork's pid (fork-pid.ts, a setup file), and until a
 * file's first test has, the fork whose age matches how long the file has been running is taken
 * for the file's (two files started together once had it take a long file's running fork for a
 * short file's exited one, and stop it). A file that runs TWINFS_TEST_FILE_LIMIT_S (600 s; the longest takes ~215 s here), or a
 * fork alive TWINFS_TEST_EXIT_LIMIT_S (90 s) after its file ended, is stopped: the account
 * names the file's unfinished tests, its processes with their states and wait channels, each
 * blocked thread's system call and the file it names (read from /proc), the FUSE connections
 * and their waiting requests. The fork's tree is killed, and the connection of the mount a
 * remaining thread waits on is aborted. The run then fails (vitest reports a killed running file;
 * a fork that outlived its file fails the run when it needed that abort, a fork SIGKILL ended
 * was only slow to stop), and the accounts are printed again after vitest's summary, where a CI
 * log's tail shows them.
 *
 * It only reads /proc and /sys: the main process never touches a mount.
 */
export class HangWatchdog implements Reporter {
  private readonly limitMs = Number(process.env.TWINFS_TEST_FILE_LIMIT_S ?? 600) * 1000;
  private readonly exitLimitMs = Number(process.env.TWINFS_TEST_EXIT_LIMIT_S ?? 90) * 1000;
  private readonly running = new Map<string, { since: number; last: string; module: TestModule }>();
  /**
   * The fork each running file's tests reported (fork-pid.ts). Without one (a file with no test
   * run yet), a file's fork is the one whose age matches how long the file has run: a guess that
   * two files started together can mislead.
   */
  private readonly forks = new Map<string, number>();
  /** Forks whose file ended, until they exit. */
  private readonly ended = new Map<number, { file: string; at: number }>();
  private readonly accounts: string[] = [];
  private timer: NodeJS.Timeout | undefined;

  onTestRunStart(): void {
    const every = Math.min(15_000, Math.max(1000, Math.min(this.limitMs, this.exitLimitMs) / 2));
    this.timer ??= setInterval(() => this.check(), every);
    // Never what keeps vitest alive; it still fires while vitest waits for a fork to exit.
    this.timer.unref();
  }

  onTestModuleQueued(m: TestModule): void {
    this.running.set(key(m), { since: Date.now(), last: 'loading the file', module: m });
  }

  onTestModuleCollected(m: TestModule): void {
    const r = this.running.get(key(m));
    if (r) r.module = m;
  }

  onTestModuleStart(m: TestModule): void {
    const r = this.running.get(key(m));
    if (r) {
      r.module = m;
      r.last = 'collected; running its hooks and tests';
    }
  }

  /** The fork a test of the file reported running in (fork-pid.ts), when one has. */
  onTestCaseResult(t: TestCase): void {
    const pid = (t.meta() as { forkPid?: unknown }).forkPid;
    if (typeof pid === 'number') this.forks.set(key(t.module), pid);
  }

  onTestCaseReady(t: TestCase): void {
    const r = this.running.get(key(t.module));
    if (r) {
      r.module = t.module;
      r.last = `test "${t.fullName}"`;
    }
  }

  onTestModuleEnd(m: TestModule): void {
    const r = this.running.get(key(m));
    this.running.delete(key(m));
    const known = this.forks.get(key(m));
    this.forks.delete(key(m));
    if (!r) return;
    const fork = known ?? forkOf(processTable(), Date.now() - r.since);
    if (fork !== undefined) this.ended.set(fork, { file: key(m), at: Date.now() });
  }

  onTestRunEnd(): void {
    // The timer goes on: vitest waits for the forks to exit after this.
    if (this.accounts.length === 0) return;
    process.stderr.write(`\n[watchdog] ${this.accounts.length} file(s) were stopped:\n`);
    for (const a of this.accounts) process.stderr.write(`${a}\n`);
  }

  private check(): void {
    const now = Date.now();
    const procs = processTable();
    for (const [k, r] of this.running) {
      const ranMs = now - r.since;
      if (ranMs < this.limitMs) continue;
      this.running.delete(k);
      const fork = this.forks.get(k) ?? forkOf(procs, ranMs);
      this.forks.delete(k);
      const pending = unfinished(r.module);
      const last =
        pending.length > 0 ? `${r.last}; unfinished tests: "${pending.slice(0, 3).join('", "')}"` : r.last;
      this.report(`[watchdog] ${k} ran ${Math.round(ranMs / 1000)} s; last seen: ${last}`, fork);
    }
    for (const [pid, e] of this.ended) {
      if (!alive(pid)) this.ended.delete(pid);
      else if (now - e.at >= this.exitLimitMs) {
        this.ended.delete(pid);
        const secs = Math.round((now - e.at) / 1000);
        const stuck = this.report(
          `[watchdog] ${e.file} ended ${secs} s ago; its fork (pid ${pid}) never exited`,
          pid,
        );
        // Its tests passed. A fork that SIGKILL ended was only slow to stop (vitest gives up after
        // 60 s without killing it; seen at load 25) and is reported; one that could not end until
        // its FUSE connection was aborted is a fault of the code: the run must not pass.
        if (stuck > 0) process.exitCode = 1;
      }
    }
  }

  /** Stops the fork and prints the account; returns how many of its processes needed an abort. */
  private report(header: string, fork: number | undefined): number {
    const { account, stuck } =
      fork === undefined
        ? { account: `${header}\n[watchdog] no fork of vitest matches; nothing stopped`, stuck: 0 }
        : this.stop(header, fork);
    this.accounts.push(account);
    process.stderr.write(`\n${account}\n`);
    return stuck;
  }

  /** Diagnoses a fork, kills its tree, aborts the FUSE connections it is stuck on. */
  private stop(header: string, fork: number): { account: string; stuck: number } {
    const lines = [header];
    const procs = processTable();
    const tree = treeOf(procs, fork);
    for (const p of tree) {
      const info = procs.get(p);
      lines.push(`  pid ${p} ${info?.state ?? '?'} ${wchan(p)} ${info?.args.slice(0, 160) ?? ''}`);
      for (const t of blockedThreads(p))
        lines.push(
          `    task ${t.tid} ${t.state} ${t.wchan} ${t.call}${t.stack ? `\n${indent(t.stack, 6)}` : ''}`,
        );
    }
    lines.push(...fuseConnections().map((c) => `  fuse ${c.dev} waiting ${c.waiting} ${c.mountpoint ?? ''}`));
    for (const p of tree) kill(p);
    // Threads in an uninterruptible FUSE wait outlive SIGKILL until their connection is aborted.
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline && tree.some(alive)) spawnSync('sleep', ['0.2']);
    const stuck = tree.filter(alive);
    if (stuck.length > 0) {
      // The connections of the mounts the stuck threads wait on; when no call can be resolved
      // to a path, every connection with a request waiting.
      const paths = stuck.flatMap((p) => blockedThreads(p).map((t) => t.path)).filter((p) => p !== undefined);
      const all = fuseConnections();
      const onPaths = all.filter((c) => c.mountpoint && paths.some((p) => within(p, c.mountpoint!)));
      if (onPaths.length === 0)
        lines.push('  no blocked call resolved to a mount: aborting every waiting connection');
      for (const c of onPaths.length > 0 ? onPaths : all) {
        if (c.waiting === 0 && onPaths.length === 0) continue;
        abort(c.dev);
        lines.push(`  aborted fuse connection ${c.dev} (${c.waiting} waiting) ${c.mountpoint ?? ''}`);
        if (c.mountpoint) spawnSync('fusermount', ['-uz', c.mountpoint], { timeout: 10_000 });
      }
    }
    lines.push(`[watchdog] killed ${tree.length} process(es); ${stuck.length} needed an abort`);
    return { account: lines.join('\n'), stuck: stuck.length };
  }
}

function key(m: TestModule): string {
  const file = path.relative(process.cwd(), m.moduleId);
  return m.project.name ? `${m.project.name} ${file}` : file;
}

/** The file's tests without a result yet, in order: the first is the one that was running. */
function unfinished(m: TestModule): string[] {
  const out: string[] = [];
  for (const t of m.children.allTests()) if (t.result().state === 'pending') out.push(t.fullName);
  return out;
}

interface Proc {
  ppid: number;
  state: string;
  ageMs: number;
  args: string;
}

function processTable(): Map<number, Proc> {
  const out = new Map<number, Proc>();
  const hz = 100;
  const uptimeMs = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const f = statFields(stat);
      const args = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      out.set(Number(d), {
        state: f[0],
        ppid: Number(f[1]),
        ageMs: uptimeMs - (Number(f[19]) / hz) * 1000,
        args,
      });
    } catch {
      // It ended while listed.
    }
  }
  return out;
}

/** The direct child of this process (a vitest fork) whose age is closest above ranMs. */
function forkOf(procs: Map<number, Proc>, ranMs: number): number | undefined {
  let best: number | undefined;
  let bestGap = Number.POSITIVE_INFINITY;
  for (const [pid, p] of procs) {
    if (p.ppid !== process.pid || !p.args.includes('node')) continue;
    // A fork is started just before its file is queued: allow a little on either side.
    const gap = Math.abs(p.ageMs - ranMs);
    if (gap < bestGap && p.ageMs >= ranMs - 30_000) {
      best = pid;
      bestGap = gap;
    }
  }
  return best;
}

function treeOf(procs: Map<number, Proc>, root: number): number[] {
  const out = [root];
  for (let i = 0; i < out.length; i++)
    for (const [pid, p] of procs) if (p.ppid === out[i] && !out.includes(pid)) out.push(pid);
  return out;
}

/** The fields of a /proc stat line after the command name (which may hold spaces and parentheses). */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

function read(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return '';
  }
}

function wchan(pid: number): string {
  return read(`/proc/${pid}/wchan`) || '-';
}

/**
 * Threads in an uninterruptible wait, or waiting for a FUSE answer (the first part of that wait
 * is interruptible: state S), with their kernel stacks.
 */
function blockedThreads(pid: number): Blocked[] {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const out: Blocked[] = [];
  for (const tid of tids) {
    const stat = read(`/proc/${pid}/task/${tid}/stat`);
    const state = statFields(stat)[0] ?? '';
    const wchan = read(`/proc/${pid}/task/${tid}/wchan`);
    if (state !== 'D' && !/fuse|request_wait_answer/.test(wchan)) continue;
    const { call, path } = blockedCall(pid, tid);
    out.push({
      tid,
      state,
      wchan,
      call,
      path,
      stack: read(`/proc/${pid}/task/${tid}/stack`) || '(no stack)',
    });
  }
  return out;
}

interface Blocked {
  tid: string;
  state: string;
  wchan: string;
  /** The system call and the file it names, as far as it resolves ("nr 257 /tmp/.../mnt/x"). */
  call: string;
  path?: string;
  /** The kernel stack, where the kernel lets root read it ('' otherwise). */
  stack: string;
}

// x86_64 system call numbers: calls on a descriptor (its first argument), calls on a path (the
// first), calls on a path relative to a directory descriptor (the first and the second).
const FD_CALLS = new Set([0, 1, 5, 17, 18, 19, 20, 74, 75, 77, 78, 217]);
const PATH_CALLS = new Set([2, 4, 6, 21, 76, 82, 83, 84, 87, 89, 90, 92, 188, 191, 194, 197]);
const AT_CALLS = new Set([257, 258, 259, 260, 262, 263, 264, 265, 266, 267, 268, 269, 280, 316, 332, 439]);

/** What a blocked thread waits in (/proc/PID/task/TID/syscall), and the file it names. */
function blockedCall(pid: number, tid: string): { call: string; path?: string } {
  const f = read(`/proc/${pid}/task/${tid}/syscall`).split(' ');
  const nr = Number(f[0]);
  if (!Number.isInteger(nr) || nr < 0) return { call: f[0] ?? '?' };
  const arg = (i: number) => BigInt.asIntN(64, BigInt(f[1 + i] ?? '0'));
  const link = (p: string) => {
    try {
      return fs.readlinkSync(p);
    } catch {
      return undefined;
    }
  };
  let file: string | undefined;
  // The thread's own view: once the leader exited (a zombie), /proc/PID/mem and cwd are gone.
  const task = `/proc/${pid}/task/${tid}`;
  if (FD_CALLS.has(nr)) file = link(`${task}/fd/${arg(0)}`);
  else if (PATH_CALLS.has(nr)) file = absolute(stringAt(task, arg(0)), link(`${task}/cwd`));
  else if (AT_CALLS.has(nr)) {
    const dirfd = arg(0);
    const base = dirfd === -100n ? link(`${task}/cwd`) : link(`${task}/fd/${dirfd}`);
    file = absolute(stringAt(task, arg(1)), base);
  }
  return { call: `syscall ${nr}${file ? ` ${file}` : ''}`, path: file };
}

/** A NUL-terminated string of another thread's memory (root reads /proc/PID/task/TID/mem). */
function stringAt(task: string, address: bigint): string | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(`${task}/mem`, 'r');
    const buf = Buffer.alloc(4096);
    const n = fs.readSync(fd, buf, 0, buf.length, Number(address));
    const end = buf.subarray(0, n).indexOf(0);
    return buf.toString('utf8', 0, end < 0 ? n : end);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function absolute(p: string | undefined, base: string | undefined): string | undefined {
  if (p === undefined) return undefined;
  if (p.startsWith('/')) return p;
  return base === undefined ? undefined : path.join(base, p);
}

function within(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir.endsWith('/') ? dir : `${dir}/`);
}

function indent(text: string, n: number): string {
  return text
    .split('\n')
    .slice(0, 12)
    .map((l) => ' '.repeat(n) + l)
    .join('\n');
}

const CONNECTIONS = '/sys/fs/fuse/connections';

function fuseConnections(): { dev: string; waiting: number; mountpoint?: string }[] {
  if (!fs.existsSync(`${CONNECTIONS}/`) || fs.readdirSync(CONNECTIONS).length === 0)
    spawnSync('mount', ['-t', 'fusectl', 'none', CONNECTIONS], { timeout: 5000 });
  const mounts = new Map<string, string>();
  for (const l of read('/proc/self/mountinfo').split('\n')) {
    const f = l.split(' ');
    const fstype = f[f.indexOf('-') + 1] ?? '';
    if (!fstype.startsWith('fuse') || fstype === 'fusectl') continue;
    const [major, minor] = f[2].split(':');
    if (major === '0') mounts.set(minor, f[4]);
  }
  let devs: string[] = [];
  try {
    devs = fs.readdirSync(CONNECTIONS);
  } catch {
    return [];
  }
  return devs.map((dev) => ({
    dev,
    waiting: Number(read(`${CONNECTIONS}/${dev}/waiting`) || 0),
    mountpoint: mounts.get(dev),
  }));
}

function abort(dev: string): void {
  try {
    fs.writeFileSync(`${CONNECTIONS}/${dev}/abort`, '1');
  } catch {
    // Gone already.
  }
}

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Gone already.
  }
}

/**
 * Whether any thread of the process is left: a leader that exited is a zombie while another
 * thread still waits (in a FUSE request, say), and the process has not exited.
 */
function alive(pid: number): boolean {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tids.some((tid) => {
    const stat = read(`/proc/${pid}/task/${tid}/stat`);
    return stat !== '' && !/^[ZX]/.test(statFields(stat)[0] ?? '');
  });
}
