import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { CLI } from './server.js';

/**
 * For a test file whose servers and peers are children of its (forked) process: their plugin
 * hosts keep their state in a temporary folder of this file's and see no user plugins (and,
 * with cache, the peers' index caches live there too). Registers its own beforeAll/afterAll.
 */
export function privatePluginState(prefix: string, opts: { cache?: boolean } = {}): void {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), `twinfs-${prefix}-plugins-`));
    process.env.TWINFS_PLUGIN_STATE = path.join(dir, 'state');
    process.env.TWINFS_PLUGIN_PATH = path.join(dir, 'user');
    if (opts.cache) process.env.TWINFS_CACHE_DIR = path.join(dir, 'cache');
  });
  afterAll(async () => {
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });
}

export interface WatchedCli {
  proc: ChildProcess;
  /** The JSON lines the command printed so far. */
  lines: any[];
  exited: Promise<number | null>;
  stderr(): string;
}

/**
 * Starts a `twinfs` command and collects its JSON lines as they come (for commands that hold
 * something or run long). Killed with SIGKILL after killAfterMs if it is still running.
 */
export function watchCli(args: string[], killAfterMs?: number): WatchedCli {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: any[] = [];
  let buf = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (l.startsWith('{')) lines.push(JSON.parse(l));
    }
  });
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const timer = killAfterMs === undefined ? undefined : setTimeout(() => proc.kill('SIGKILL'), killAfterMs);
  const exited = new Promise<number | null>((r) =>
    proc.on('exit', (code) => {
      clearTimeout(timer);
      r(code);
    }),
  );
  return { proc, lines, exited, stderr: () => err };
}

/** stdout's JSON lines (objects, arrays, and `null` results). */
export const jsonLines = (stdout: string): any[] =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{') || l.startsWith('[') || l === 'null')
    .map((l) => JSON.parse(l));

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout's JSON lines. */
  lines: any[];
  last: any;
}

/** Runs a `twinfs` command to its end (SIGKILL after timeoutMs) and collects its output. */
export function runCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CliRun> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d) => (stdout += d));
    p.stderr!.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    p.on('exit', (code) => {
      clearTimeout(t);
      const lines = jsonLines(stdout);
      resolve({ code, stdout, stderr, lines, last: lines.at(-1) });
    });
  });
}
