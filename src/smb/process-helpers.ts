import type { ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import { TwinError } from '../common/errors.js';

/**
 * Process and socket helpers of the SMB service: port checks, readiness probes, stopping a
 * process tree, and reading what smbd logged while starting.
 */

/** The address a local client reaches a listener on. */
export function connectHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

/**
 * Fails with a clear error when the address is taken or not on this machine. smbd would fail
 * too, but only with a panic in its log.
 */
export async function assertPortFree(host: string, port: number): Promise<void> {
  const err = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const srv = net.createServer();
    srv.once('error', (e) => resolve(e as NodeJS.ErrnoException));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(undefined)));
  });
  if (!err) return;
  if (err.code === 'EADDRINUSE')
    throw new TwinError('ETWIN_SMB_PORT_BUSY', `SMB port ${host}:${port} is already in use`, { host, port });
  throw new TwinError(
    'ETWIN_SMB_CONFIG',
    `cannot listen on ${host}:${port} for SMB: ${err.code ?? err.message}`,
    {
      host,
      port,
    },
  );
}

export function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export async function stopProcess(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  let t: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    gone.then(() => false),
    new Promise<boolean>((r) => (t = setTimeout(() => r(true), graceMs))),
  ]);
  clearTimeout(t);
  if (timedOut) {
    // Its own process group (detached): take the forked children along.
    signal(-child.pid, 'SIGKILL');
    await gone;
  }
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function readFrom(file: string, offset: number): Promise<string> {
  try {
    const fh = await fsp.open(file, 'r');
    try {
      const size = (await fh.stat()).size;
      const start = Math.max(offset, size - 16_384);
      const buf = Buffer.alloc(Math.max(0, size - start));
      await fh.read(buf, 0, buf.length, start);
      return buf.toString('utf8');
    } finally {
      await fh.close();
    }
  } catch {
    return '';
  }
}

/** The last n meaningful lines (Samba's log headers `[date] file:line(fn)` dropped). */
export function lastLines(text: string, n: number): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('[') && !l.startsWith('#') && !/^=+$/.test(l))
    .slice(-n)
    .join(' | ');
}
