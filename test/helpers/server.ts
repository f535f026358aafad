import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fusermountUz, sh } from './proc.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The installed command's entry (dist/cli/twinfs.cjs sizes libuv's pool, then loads main.js). */
export const CLI = path.join(ROOT, 'dist/cli/twinfs.cjs');

/** A temporary directory tree for one test file, removed (after unmounting anything in it) by cleanup(). */
export async function tempDirs(
  ...names: string[]
): Promise<{ base: string; dirs: Record<string, string>; cleanup(): Promise<void> }> {
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-test-'));
  const dirs: Record<string, string> = {};
  for (const n of names) {
    dirs[n] = path.join(base, n);
    await fsp.mkdir(dirs[n]!, { recursive: true });
  }
  await fsp.chmod(base, 0o755);
  return {
    base,
    dirs,
    async cleanup() {
      for (const d of Object.values(dirs)) await sh(`${fusermountUz(d)} 2>/dev/null`, { timeoutMs: 10_000 });
      await fsp.rm(base, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}

export interface ServerHandle {
  proc: ChildProcess;
  mount: string;
  primary: string;
  /** JSON event lines the server printed. */
  events: Array<Record<string, unknown>>;
  /** The server log's lines (pino JSON: level, time, event, msg), apart from the events. */
  log: Array<Record<string, unknown>>;
  stderr(): string;
  /** SIGTERM and wait for exit; returns the exit status. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** SIGKILL, then clear the mount. */
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

/**
 * Starts `twinfs serve --json` as a separate process and waits until it reports "mounted".
 * Rejects (and clears the mount) if it exits first or takes longer than timeoutMs.
 */
export async function startServer(opts: {
  primary: string;
  mount: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** A command the server runs under, e.g. ['prlimit', '--nofile=1024:1024']. */
  prefix?: string[];
  /** Serve with a mirror: `--mirror DIR --state-dir STATEDIR` ahead of args. */
  mirror?: { dir: string; stateDir: string };
}): Promise<ServerHandle> {
  const argv = [
    CLI,
    'serve',
    '--primary',
    opts.primary,
    '--mount',
    opts.mount,
    '--json',
    ...(opts.mirror ? ['--mirror', opts.mirror.dir, '--state-dir', opts.mirror.stateDir] : []),
    ...(opts.args ?? []),
  ];
  const proc = spawn(
    opts.prefix?.[0] ?? process.execPath,
    opts.prefix ? [...opts.prefix.slice(1), process.execPath, ...argv] : argv,
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    },
  );
  const events: Array<Record<string, unknown>> = [];
  const log: Array<Record<string, unknown>> = [];
  let err = '';
  proc.stderr!.on('data', (d) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  const mounted = new Promise<void>((resolve, reject) => {
    let buf = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const ev = JSON.parse(line);
          // The server log (pino) writes JSON lines to the same stdout: level and time tell them apart.
          if (typeof ev.level === 'number' && 'time' in ev) {
            log.push(ev);
            continue;
          }
          events.push(ev);
          if (ev.event === 'mounted') resolve();
        } catch {
          /* ignore */
        }
      }
    });
    void exited.then((code) => reject(new Error(`twinfs serve exited (${code}) before mounting: ${err}`)));
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      mounted,
      new Promise((_, rej) => {
        timer = setTimeout(
          () => rej(new Error(`twinfs serve did not mount within ${opts.timeoutMs ?? 20_000} ms: ${err}`)),
          opts.timeoutMs ?? 20_000,
        );
      }),
    ]);
  } catch (e) {
    proc.kill('SIGKILL');
    await sh(`${fusermountUz(opts.mount)} 2>/dev/null`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
  const handle: ServerHandle = {
    proc,
    mount: opts.mount,
    primary: opts.primary,
    events,
    log,
    stderr: () => err,
    exited,
    async stop(timeoutMs = 30_000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill('SIGTERM');
      let t: NodeJS.Timeout | undefined;
      const code = await Promise.race([
        exited,
        new Promise<'timeout'>((r) => {
          t = setTimeout(() => r('timeout'), timeoutMs);
        }),
      ]);
      clearTimeout(t);
      if (code === 'timeout') {
        await handle.kill();
        // What the server said is what tells a hang in its shutdown steps from a slow machine.
        throw new Error(`twinfs serve did not stop within ${timeoutMs} ms; its stderr: ${err.slice(-4000)}`);
      }
      return code;
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
      await sh(`${fusermountUz(opts.mount)} 2>/dev/null`);
    },
  };
  return handle;
}

/**
 * `twinfs serve` arguments for a volume with a mirror, its own state dir and a control channel on
 * a free loopback port: for tests that start (and restart) the server on the same directories.
 */
export function controlServeArgs(
  dirs: { mirror?: string; state?: string },
  tokenFile: string,
  extra: string[] = [],
): string[] {
  return [
    '--mirror',
    dirs.mirror!,
    '--state-dir',
    dirs.state!,
    '--control',
    '127.0.0.1:0',
    '--token-file',
    tokenFile,
    ...extra,
  ];
}

/** `twinfs verify --json` of a primary and its mirror (the server stopped): exit status and report. */
export async function verifyPair(
  primary: string,
  mirror: string,
): Promise<{ code: number | null; report: Record<string, unknown> }> {
  const v = await sh(`node '${CLI}' verify --primary '${primary}' --mirror '${mirror}' --json`, {
    timeoutMs: 60_000,
  });
  return { code: v.code, report: JSON.parse(v.stdout.trim().split('\n').at(-1) ?? '{}') };
}

export interface MirroredVolume {
  /** primary, mirror, mnt, state and the extra directories asked for. */
  dirs: Record<string, string>;
  /** The running server, if any. */
  readonly srv: ServerHandle | undefined;
  /** Starts the server on the volume (again, after stopServer). */
  start(): Promise<ServerHandle>;
  /** SIGTERM; returns the exit status. */
  stopServer(): Promise<number | null>;
  /** verifyPair of the primary and the mirror. */
  verify(): ReturnType<typeof verifyPair>;
  /** Kills the server, clears the mount, removes the directories. For afterAll: never throws. */
  close(): Promise<void>;
}

/**
 * A volume served with a mirror, in a fresh temporary tree (primary, mirror, mnt, state, plus
 * `extraDirs`): the start-up that tests of mirrored mounts share. Nothing runs until start().
 */
export async function mirroredVolume(
  o: { extraDirs?: string[]; args?: string[]; timeoutMs?: number } = {},
): Promise<MirroredVolume> {
  const t = await tempDirs('primary', 'mirror', 'mnt', 'state', ...(o.extraDirs ?? []));
  const d = t.dirs as Record<'primary' | 'mirror' | 'mnt' | 'state', string>;
  let srv: ServerHandle | undefined;
  return {
    dirs: t.dirs,
    get srv() {
      return srv;
    },
    async start() {
      if (srv) throw new Error('mirroredVolume: the server is already running');
      srv = await startServer({
        primary: d.primary,
        mount: d.mnt,
        mirror: { dir: d.mirror, stateDir: d.state },
        args: o.args,
        timeoutMs: o.timeoutMs,
      });
      return srv;
    },
    async stopServer() {
      const code = srv ? await srv.stop() : null;
      srv = undefined;
      return code;
    },
    verify: () => verifyPair(d.primary, d.mirror),
    async close() {
      await srv?.kill().catch(() => undefined);
      srv = undefined;
      await t.cleanup();
    },
  };
}
