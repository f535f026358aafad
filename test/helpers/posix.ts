import { closeSync, existsSync, openSync } from 'node:fs';
import { posix } from '../../src/posix/native.js';
import { asNobody, type RunResult, sh } from './proc.js';
import { type ServerHandle, startServer, tempDirs } from './server.js';

/**
 * Helpers for the POSIX-surface suites (test/fusefs/posix-*.test.ts): a mount with a plain
 * directory beside it as the oracle, and probes that run the same syscalls in both.
 */

/** The system python (pyenv shims under /root are not executable by nobody). */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/**
 * How many pages of a file the page cache holds (cachestat(2), the posix addon's cachedPages;
 * a negative errno where the kernel has no cachestat). Opened read-only, never from a mount.
 */
export function cachedPages(file: string): number {
  const fd = openSync(file, 'r');
  try {
    return posix().cachedPages(fd, 0, 0);
  } finally {
    closeSync(fd);
  }
}

export interface PosixFixture {
  /** The mount point. */
  mnt: string;
  /** The primary directory served by the mount. */
  primary: string;
  /** A plain directory on the primary's filesystem: the oracle. */
  plain: string;
  srv: ServerHandle;
  /** Kills the server and clears the mount and the temp dirs. */
  close(): Promise<void>;
}

/** Serves a fresh primary directory (for beforeAll; pair with close() in afterAll). */
export async function mountFixture(args: string[] = [], env?: NodeJS.ProcessEnv): Promise<PosixFixture> {
  const t = await tempDirs('primary', 'mnt', 'plain');
  let srv: ServerHandle;
  try {
    srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, args, env });
  } catch (err) {
    await t.cleanup();
    throw err;
  }
  return {
    mnt: t.dirs.mnt!,
    primary: t.dirs.primary!,
    plain: t.dirs.plain!,
    srv,
    async close() {
      await srv.kill();
      await t.cleanup();
    },
  };
}

export interface RunOpts {
  /** Run as the unprivileged user nobody. */
  nobody?: boolean;
  timeoutMs?: number;
  input?: string;
}

/** Runs a shell snippet in dir (as root, or as nobody). */
export function shIn(dir: string, script: string, opts: RunOpts = {}): Promise<RunResult> {
  const cmd = `cd '${dir}' && ${script}`;
  const o = { timeoutMs: opts.timeoutMs ?? 30_000, input: opts.input };
  return opts.nobody ? asNobody(cmd, o) : sh(cmd, o);
}

/** Runs a shell snippet in dir and throws (with its output) unless it exits 0. */
export async function shInOk(dir: string, script: string, opts: RunOpts = {}): Promise<string> {
  const r = await shIn(dir, script, opts);
  if (r.code !== 0) throw new Error(`in ${dir}: exit ${r.code}: ${script}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs a python program in dir (the program text goes through stdin). Throws unless it exits 0. */
export async function pyIn(
  dir: string,
  program: string,
  opts: Omit<RunOpts, 'input'> & { args?: string[] } = {},
): Promise<string> {
  const args = (opts.args ?? []).map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const r = await shIn(dir, `${PYTHON} - ${args}`, { ...opts, input: program });
  if (r.code !== 0) throw new Error(`python in ${dir} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** One syscall-level step of a probe: a label and a python statement (os, errno, stat imported). */
export type ProbeStep = [label: string, statement: string];

const PROBE = `
import errno, json, os, stat, sys
steps = json.loads(sys.stdin.readline())
out = {}
for label, code in steps:
    try:
        exec(code)
        out[label] = 'OK'
    except OSError as e:
        out[label] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
`;

/**
 * Runs each statement in order in dir and reports 'OK' or the errno name (ENOENT...) of the
 * OSError it raised. Steps share one python process, so they may build on each other.
 */
export async function probe(
  dir: string,
  steps: ProbeStep[],
  opts: Omit<RunOpts, 'input'> = {},
): Promise<Record<string, string>> {
  const program = `${JSON.stringify(steps)}\n`;
  const cmd = `${PYTHON} -c '${PROBE.replace(/'/g, `'\\''`)}'`;
  const r = await shIn(dir, cmd, { ...opts, input: program });
  if (r.code !== 0) throw new Error(`probe in ${dir} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as Record<string, string>;
}

/** Runs the same shell snippet in the plain directory and in the mount; paths are shown as '.'. */
export async function inBoth(
  fx: PosixFixture,
  script: string,
  opts: RunOpts = {},
): Promise<{ plain: RunResult; mnt: RunResult }> {
  const scrub = (r: RunResult, dir: string): RunResult => ({
    code: r.code,
    stdout: r.stdout.split(dir).join('.'),
    stderr: r.stderr.split(dir).join('.'),
  });
  const plain = scrub(await shIn(fx.plain, script, opts), fx.plain);
  const mnt = scrub(await shIn(fx.mnt, script, opts), fx.mnt);
  return { plain, mnt };
}
