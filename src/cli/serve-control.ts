import { promises as fsp } from 'node:fs';
import { isIP } from 'node:net';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { ControlServer } from '../control/control-server.js';
import { TokenStore } from '../control/token-store.js';
import { defaultStateDir } from '../mirror-driver/index.js';
import { StatusHttpServer } from '../observe/status-http.js';
import type { ServeConfig } from './config.js';

/** The control channel of `twinfs serve`, bound and with its tokens, not yet serving a volume. */
export interface ControlSetup {
  server: ControlServer;
  tokens: TokenStore;
  /** The token files (operator, and read-only when there is one). */
  tokenFile: string;
  readTokenFile?: string;
  /** The status page (--http), bound with the control channel. */
  http?: StatusHttpServer;
  dispose(): Promise<void>;
}

/**
 * Validates and binds the control channel before anything is mounted, so every mistake in its
 * settings is a coded error with nothing to undo: the TLS pair (ETWIN_USAGE when one half is
 * missing, ETWIN_TLS when unreadable or invalid), a non-loopback address without TLS
 * (ETWIN_INSECURE_BIND unless insecureBind), the token files (ETWIN_TOKEN,
 * ETWIN_TOKEN_PERMISSIONS), the address (ETWIN_CONTROL_LISTEN). The status page (--http) is
 * bound here too, under the same rules (ETWIN_INSECURE_BIND, ETWIN_HTTP_LISTEN), with the same
 * tokens. SIGHUP re-reads the token files (they are also polled for changes).
 */
export async function openControl(
  cfg: ServeConfig,
  log: (msg: string) => void,
): Promise<ControlSetup | undefined> {
  if (!cfg.control) return undefined;
  const [host, port] = parseHostPort(cfg.control);
  if (Boolean(cfg.tlsCert) !== Boolean(cfg.tlsKey))
    throw new TwinError(
      'ETWIN_USAGE',
      cfg.tlsCert
        ? '--tls-cert needs --tls-key (the private key of the certificate)'
        : '--tls-key needs --tls-cert (the certificate of the key)',
      { option: cfg.tlsCert ? '--tls-key' : '--tls-cert' },
    );
  const tls =
    cfg.tlsCert && cfg.tlsKey
      ? { cert: await readPem(cfg.tlsCert, 'certificate'), key: await readPem(cfg.tlsKey, 'key') }
      : undefined;
  if (!tls && !isLoopback(host) && !cfg.insecureBind)
    throw new TwinError(
      'ETWIN_INSECURE_BIND',
      `--control ${cfg.control} is reachable from other hosts: the token would cross the network in clear. ` +
        'Serve wss:// with --tls-cert and --tls-key, bind 127.0.0.1, or pass --insecure-bind to accept the risk',
      { host },
    );
  const httpAddr = cfg.http ? parseHostPort(cfg.http, '--http') : undefined;
  if (httpAddr && !tls && !isLoopback(httpAddr[0]) && !cfg.insecureBind)
    throw new TwinError(
      'ETWIN_INSECURE_BIND',
      `--http ${cfg.http} is reachable from other hosts: the token and session cookie would cross the network in clear. ` +
        'Serve https:// with --tls-cert and --tls-key, bind 127.0.0.1, or pass --insecure-bind to accept the risk',
      { host: httpAddr[0] },
    );
  const stateDir = cfg.stateDir ?? defaultStateDir();
  const tokenFile = cfg.tokenFile ?? path.join(stateDir, 'control.token');
  const tokens = await TokenStore.open({
    operatorFile: tokenFile,
    readFile: cfg.readTokenFile,
    log: (m) => log(`control: ${m}`),
  });
  let server: ControlServer;
  try {
    server = await ControlServer.listen({
      host,
      port,
      tokens,
      tls,
      limits: { maxConnections: cfg.controlMaxConnections },
      log,
    });
  } catch (err) {
    tokens.dispose();
    throw err;
  }
  let http: StatusHttpServer | undefined;
  if (httpAddr)
    try {
      http = await StatusHttpServer.listen({ host: httpAddr[0], port: httpAddr[1], tls, tokens });
    } catch (err) {
      tokens.dispose();
      await server.dispose();
      throw err;
    }
  const onHup = () => void tokens.reload();
  process.on('SIGHUP', onHup);
  return {
    server,
    tokens,
    tokenFile,
    readTokenFile: cfg.readTokenFile,
    http,
    async dispose() {
      process.off('SIGHUP', onHup);
      tokens.dispose();
      await http?.dispose();
      await server.dispose();
    },
  };
}

async function readPem(file: string, what: string): Promise<Buffer> {
  try {
    return await fsp.readFile(file);
  } catch (err) {
    const errno = (err as NodeJS.ErrnoException).code;
    throw new TwinError('ETWIN_TLS', `cannot read the TLS ${what} ${file}: ${errno}`, { file, errno });
  }
}

/** 127.0.0.0/8, ::1 and localhost: addresses only this host reaches. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

export function parseHostPort(spec: string, option = '--control'): [string, number] {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(spec) ?? /^()()(\d+)$/.exec(spec);
  if (!m)
    throw new TwinError('ETWIN_USAGE', `${option} must be HOST:PORT or PORT, not "${spec}"`, { option });
  const port = Number(m[3]);
  if (port > 65535) throw new TwinError('ETWIN_USAGE', `${option} port ${port} is out of range`, { option });
  return [m[1] || m[2] || '127.0.0.1', port];
}
