import { type ChildProcess, spawn } from 'node:child_process';
import { CLI } from './server.js';

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
