import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { ControlClient } from '../../src/control/client.js';
import { type CliRun, runCli } from '../helpers/cli.js';
import { controlServeArgs, type ServerHandle, startServer } from '../helpers/server.js';
import { pairedVolume, waitForEvent } from '../mirror-driver/mirror-helpers.js';

/** A served volume as the observe tests see it: the server, its addresses and tokens. */
export interface ObservedServer {
  srv: ServerHandle;
  controlUrl: string;
  /** The status port's URL ('' without http). */
  httpUrl: string;
  /** The mirror's data root. */
  mirrorData: string;
  tokenFile: string;
  operatorToken: string;
  /** The read-only token ('' without http). */
  readToken: string;
  /** A control connection with the operator token. */
  connect(client: string): Promise<ControlClient>;
  /** A `twinfs backup --json` process of /d to the dir target at target, cataloged in catalog. */
  backupOfD(target: string, catalog: string): Promise<CliRun>;
}

/**
 * A real `twinfs serve` (separate process, real mount and mirror) on dirs primary, mnt, mirror
 * and state, with a control channel (token in state/control.token) and, with http, a read-only
 * token (state/read.token) and a status port on 127.0.0.1; resolves once the mirror is paired.
 */
export async function startObservedServer(
  dirs: Record<string, string>,
  o: { http?: boolean } = {},
): Promise<ObservedServer> {
  const tokenFile = path.join(dirs.state!, 'control.token');
  const readTokenFile = path.join(dirs.state!, 'read.token');
  const http = o.http ? ['--read-token-file', readTokenFile, '--http', '127.0.0.1:0'] : [];
  const srv = await startServer({
    primary: dirs.primary!,
    mount: dirs.mnt!,
    args: controlServeArgs(dirs, tokenFile, http),
    // A loaded 2-core machine took longer than startServer's default to mount.
    timeoutMs: 60_000,
  });
  const mounted = srv.events.find((e) => e.event === 'mounted') as any;
  const operatorToken = (await fsp.readFile(tokenFile, 'utf8')).trim();
  const readToken = o.http ? (await fsp.readFile(readTokenFile, 'utf8')).trim() : '';
  await waitForEvent(srv, pairedVolume, 30_000);
  const controlUrl: string = mounted.control.url;
  return {
    srv,
    controlUrl,
    httpUrl: mounted.http?.url ?? '',
    mirrorData: mounted.mirror.mirrorRoot,
    tokenFile,
    operatorToken,
    readToken,
    connect: (client) =>
      ControlClient.connect(controlUrl, { token: operatorToken, client, requestTimeoutMs: 60_000 }),
    backupOfD: (target, catalog) =>
      runCli(
        [
          'backup',
          '--server',
          controlUrl,
          '--token-file',
          tokenFile,
          '--subtree',
          '/d',
          '--target',
          target,
          '--catalog',
          catalog,
          '--json',
        ],
        { timeoutMs: 60_000 },
      ),
  };
}
