import { execFile } from 'node:child_process';
import * as net from 'node:net';
import { CREATED_USER_COMMENT, processesUsingConf } from '../../src/smb/samba-tools.js';
import type { RunResult } from '../helpers/proc.js';
import type { ServerHandle } from '../helpers/server.js';

/**
 * Helpers for the SMB suites: a real smbclient against a real smbd on loopback. Each suite uses
 * its own SMB user names (suites run in parallel, and afterAll removes the Unix accounts that
 * twinfs created for them).
 */

export interface SmbLogin {
  port: number;
  share?: string;
  user?: string;
  password?: string;
}

/** Runs smbclient commands (`-c`) against //127.0.0.1/SHARE; the password goes through $PASSWD. */
export function smbclient(login: SmbLogin, cmds: string, timeoutMs = 60_000): Promise<RunResult> {
  const args = [
    `//127.0.0.1/${login.share ?? 'twinfs'}`,
    '-p',
    String(login.port),
    '-m',
    'SMB3',
    ...(login.user ? ['-U', login.user] : ['-N']),
    '-c',
    cmds,
  ];
  return new Promise((resolve) => {
    execFile(
      'smbclient',
      args,
      { timeout: timeoutMs, env: { ...process.env, PASSWD: login.password ?? '' }, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as any).code === 'number' ? (err as any).code : null) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** smbclient, failing the test (with its output) on a non-zero exit or any NT_STATUS error. */
export async function smbOk(login: SmbLogin, cmds: string, timeoutMs?: number): Promise<string> {
  const r = await smbclient(login, cmds, timeoutMs);
  const out = r.stdout + r.stderr;
  if (r.code !== 0 || /NT_STATUS_/.test(out))
    throw new Error(`smbclient -c '${cmds}' failed (${r.code}):\n${out}`);
  return out;
}

/** Waits for a `--json` event of the server (smb-started, smb-failed, ...). */
export async function waitEvent(
  srv: ServerHandle,
  event: string,
  timeoutMs = 30_000,
  from = 0,
): Promise<any> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const e = srv.events.slice(from).find((x) => x.event === event);
    if (e) return e;
    if (Date.now() > end)
      throw new Error(
        `no "${event}" event within ${timeoutMs} ms; events: ${JSON.stringify(srv.events)}\n${srv.stderr()}`,
      );
    if (srv.proc.exitCode !== null) throw new Error(`server exited (${srv.proc.exitCode}): ${srv.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A TCP port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function run(file: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve) =>
    execFile(file, args, (err, stdout, stderr) =>
      resolve({
        code: err ? ((err as any).code ?? null) : 0,
        stdout: String(stdout),
        stderr: String(stderr),
      }),
    ),
  );
}

/** Removes the Unix accounts twinfs created for these SMB users (only those it created). */
export async function removeCreatedUsers(names: string[]): Promise<void> {
  for (const n of names) {
    const r = await run('getent', ['passwd', n]);
    if (r.code === 0 && r.stdout.split(':')[4] === CREATED_USER_COMMENT) await run('userdel', [n]);
  }
}

/** Pids still running with this Samba config (smbd, samba-dcerpcd helpers). */
export const sambaProcesses = processesUsingConf;
