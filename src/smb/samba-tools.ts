import { execFile } from 'node:child_process';
import { constants as fsc, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import type { SmbUser } from './settings.js';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program (no shell) with a hard timeout; never rejects. */
export function run(
  file: string,
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      {
        timeout: opts.timeoutMs ?? 30_000,
        env: opts.env,
        maxBuffer: 16 * 1024 * 1024,
        killSignal: 'SIGKILL',
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: unknown }) | null;
        const code = !e ? 0 : typeof e.code === 'number' ? e.code : null;
        resolve({
          code,
          stdout: String(stdout),
          stderr: String(stderr || (e && code === null ? e.message : '')),
        });
      },
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

/** The first executable named `name` on PATH (the PATH of env), or undefined. */
export async function which(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  for (const dir of (env.PATH ?? '').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      await fsp.access(p, fsc.X_OK);
      if ((await fsp.stat(p)).isFile()) return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

/** The Samba programs the service runs; found on PATH once, at start. */
export interface SambaTools {
  smbd: string;
  smbpasswd: string;
  pdbedit: string;
  /** From the smbclient package: used to check smbd really answers. Optional. */
  smbclient?: string;
  /** Lists connected clients. Optional (status shows no clients without it). */
  smbstatus?: string;
  /** util-linux setpriv: lets smbd die with us (parent-death signal). Optional. */
  setpriv?: string;
}

/** Finds the Samba programs on PATH or throws ETWIN_SMB_NOT_INSTALLED naming what is missing. */
export async function findSambaTools(env: NodeJS.ProcessEnv = process.env): Promise<SambaTools> {
  const [smbd, smbpasswd, pdbedit, smbclient, smbstatus, setpriv] = await Promise.all(
    ['smbd', 'smbpasswd', 'pdbedit', 'smbclient', 'smbstatus', 'setpriv'].map((n) => which(n, env)),
  );
  const missing = Object.entries({ smbd, smbpasswd, pdbedit })
    .filter(([, p]) => !p)
    .map(([n]) => n);
  if (missing.length > 0)
    throw new TwinError(
      'ETWIN_SMB_NOT_INSTALLED',
      `Samba is not installed (${missing.join(', ')} not on PATH): install the Debian packages samba and smbclient (scripts/setup.sh does)`,
      { missing },
    );
  return { smbd: smbd!, smbpasswd: smbpasswd!, pdbedit: pdbedit!, smbclient, smbstatus, setpriv };
}

/** The name of the Unix account with this uid, or undefined. */
export async function userNameOf(uid: number): Promise<string | undefined> {
  const r = await run('getent', ['passwd', String(uid)], { timeoutMs: 10_000 });
  return r.code === 0 ? r.stdout.split(':')[0] || undefined : undefined;
}

async function unixUserExists(name: string): Promise<boolean> {
  return (await run('getent', ['passwd', name], { timeoutMs: 10_000 })).code === 0;
}

/** GECOS of the accounts twinfs creates, so an operator can find (and remove) them. */
export const CREATED_USER_COMMENT = 'twinfs SMB user';

/**
 * Samba authenticates only users that also exist as Unix accounts. Missing ones are created as
 * system accounts without home, shell or password (they never log in to the machine; file
 * access runs as `force user` anyway). Existing accounts are used as they are. Returns the
 * names created.
 */
export async function ensureUnixUsers(names: string[]): Promise<string[]> {
  const created: string[] = [];
  for (const name of names) {
    if (await unixUserExists(name)) continue;
    const useradd =
      (await which('useradd', { PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` })) ?? 'useradd';
    const args = [
      '--system',
      '--no-create-home',
      '--home-dir',
      '/nonexistent',
      '--shell',
      '/usr/sbin/nologin',
    ];
    let r = await run(useradd, [...args, '--comment', CREATED_USER_COMMENT, name], { timeoutMs: 30_000 });
    // useradd fails at once when another process holds /etc/passwd's lock: transient, retry.
    for (let i = 0; i < 10 && r.code !== 0 && /lock/i.test(r.stderr); i++) {
      await new Promise((res) => setTimeout(res, 200));
      r = await run(useradd, [...args, '--comment', CREATED_USER_COMMENT, name], { timeoutMs: 30_000 });
    }
    // Another twinfs may have created it meanwhile.
    if (r.code !== 0 && !(await unixUserExists(name)))
      throw new TwinError(
        'ETWIN_SMB_USER',
        `cannot create the Unix account for SMB user "${name}": ${(r.stderr || r.stdout).trim()}`,
        { user: name },
      );
    created.push(name);
  }
  return created;
}

/**
 * Makes Samba's passdb (tdbsam inside the state directory) hold exactly `users` with their
 * passwords: adds or re-sets each (the password goes through stdin, never argv) and removes
 * accounts the config no longer lists.
 */
export async function syncPassdb(tools: SambaTools, conf: string, users: SmbUser[]): Promise<void> {
  const listed = await run(tools.pdbedit, ['-s', conf, '-L'], { timeoutMs: 30_000 });
  const existing =
    listed.code === 0
      ? listed.stdout
          .split('\n')
          .map((l) => l.split(':')[0]!)
          .filter(Boolean)
      : [];
  const wanted = new Set(users.map((u) => u.name));
  for (const name of existing)
    if (!wanted.has(name)) await run(tools.pdbedit, ['-s', conf, '-x', '-u', name], { timeoutMs: 30_000 });
  for (const u of users) {
    const r = await run(tools.smbpasswd, ['-c', conf, '-a', '-s', u.name], {
      input: `${u.password}\n${u.password}\n`,
      timeoutMs: 30_000,
    });
    if (r.code !== 0)
      throw new TwinError(
        'ETWIN_SMB_USER',
        `cannot set the Samba password of "${u.name}": ${(r.stderr || r.stdout).trim()}`,
        { user: u.name },
      );
  }
}

/** A session of an SMB client, as smbstatus reports it. */
export interface SmbClientSession {
  user: string;
  /** Client address (`ipv4:127.0.0.1:36144`). */
  address: string;
  dialect: string;
  pid: number;
  encrypted: boolean;
}

/** Connected clients (`smbstatus --json` with the service's own config); [] without smbstatus. */
export async function listSessions(tools: SambaTools, conf: string): Promise<SmbClientSession[]> {
  if (!tools.smbstatus) return [];
  const r = await run(tools.smbstatus, ['-s', conf, '--json'], { timeoutMs: 15_000 });
  if (r.code !== 0) return [];
  try {
    const j = JSON.parse(r.stdout) as { sessions?: Record<string, any> };
    return Object.values(j.sessions ?? {}).map((s) => ({
      user: String(s.username ?? ''),
      address: String(s.hostname ?? s.remote_machine ?? ''),
      dialect: String(s.session_dialect ?? ''),
      pid: Number(s.server_id?.pid ?? 0),
      encrypted: (s.encryption?.degree ?? 'none') !== 'none',
    }));
  } catch {
    return [];
  }
}

/**
 * Processes started with exactly this Samba config (smbd and the samba-dcerpcd helpers it
 * spawns in their own session). Matching the full `--configfile=PATH` argument finds only the
 * processes of this one service, never another Samba.
 */
export async function processesUsingConf(conf: string): Promise<number[]> {
  const pids: number[] = [];
  const want = [`--configfile=${conf}`, conf];
  for (const entry of await fsp.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmd = await fsp.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const args = cmd.split('\0');
    const i = args.findIndex((a) => a === want[0] || a === '--configfile' || a === '-s');
    if (i < 0) continue;
    if (args[i] === want[0] || args[i + 1] === want[1]) {
      const exe = path.basename(args[0] ?? '');
      if (/^(smbd|samba-dcerpcd|rpcd_\w+|setpriv)$/.test(exe)) pids.push(Number(entry));
    }
  }
  return pids;
}
