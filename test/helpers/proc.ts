import { execFile, spawn } from 'node:child_process';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a shell command in a child process with a hard timeout. Tests touch mounts only this
 * way or with async fs from a process that does not serve the mount.
 */
export function sh(
  cmd: string,
  opts: { timeoutMs?: number; cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      '/bin/sh',
      ['-c', cmd],
      {
        timeout: opts.timeoutMs ?? 30_000,
        cwd: opts.cwd,
        env: opts.env ?? process.env,
        maxBuffer: 64 * 1024 * 1024,
        killSignal: 'SIGKILL',
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as any).code === 'number' ? (err as any).code : null) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

/** Like sh, but throws with the output when the command fails. */
export async function shOk(cmd: string, opts: Parameters<typeof sh>[1] = {}): Promise<string> {
  const r = await sh(cmd, opts);
  if (r.code !== 0) throw new Error(`command failed (${r.code}): ${cmd}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs a command as the unprivileged user nobody (uid 65534). */
export function asNobody(cmd: string, opts: Parameters<typeof sh>[1] = {}): Promise<RunResult> {
  const q = cmd.replace(/'/g, `'\\''`);
  return sh(`setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh -c '${q}'`, opts);
}

export { spawn };

/**
 * Shell command that detaches the FUSE mount on dir lazily: fusermount from Debian's `fuse`,
 * or fusermount3 where the `fuse3` package replaced it.
 */
export function fusermountUz(dir: string): string {
  return `"$(command -v fusermount || echo fusermount3)" -uz '${dir}'`;
}
