import { promises as fsp } from 'node:fs';
import { TwinError } from '../common/errors.js';
import { ControlClient } from '../control/client.js';
import { readToken } from '../control/token.js';
import { type OperatorConfig, operatorConfigFrom } from './operator-config.js';

export interface ConnectArgs {
  /** --server */
  server?: string;
  /** --token-file */
  tokenFile?: string;
  /** --ca-file */
  caFile?: string;
  /** --config (else $TWINFS_CONFIG); or the config already loaded. */
  config?: string | OperatorConfig;
  client?: string;
}

export interface Connection {
  url: string;
  token: string;
  ca?: Buffer;
  config: OperatorConfig;
}

/**
 * Resolves where and how to connect. The URL: --server, else $TWINFS_SERVER, else the config's
 * server. The token: --token-file, else $TWINFS_TOKEN (secrets belong in the environment, not on
 * command lines), else the config's tokenFile.
 */
export async function resolveConnection(a: ConnectArgs): Promise<Connection> {
  const config = typeof a.config === 'object' ? a.config : await operatorConfigFrom(a.config);
  const url = a.server ?? process.env.TWINFS_SERVER ?? config.server;
  if (!url)
    throw new TwinError(
      'ETWIN_USAGE',
      'no server: pass --server ws://HOST:PORT, set TWINFS_SERVER, or name "server" in the config (--config)',
    );
  if (!/^wss?:\/\//.test(url))
    throw new TwinError('ETWIN_USAGE', `--server must be a ws:// or wss:// URL, not "${url}"`);
  let token: string | undefined;
  if (a.tokenFile) token = await readToken(a.tokenFile);
  else if (process.env.TWINFS_TOKEN) token = process.env.TWINFS_TOKEN.trim();
  else if (config.tokenFile) token = await readToken(config.tokenFile);
  if (!token)
    throw new TwinError(
      'ETWIN_USAGE',
      'no token: pass --token-file FILE, set TWINFS_TOKEN, or name "tokenFile" in the config (--config)',
    );
  const caFile = a.caFile ?? config.caFile;
  let ca: Buffer | undefined;
  if (caFile) {
    ca = await fsp.readFile(caFile).catch((err: NodeJS.ErrnoException) => {
      throw new TwinError('ETWIN_USAGE', `cannot read --ca-file ${caFile}: ${err.code ?? err.message}`);
    });
  }
  return { url, token, ca, config };
}

export async function connect(a: ConnectArgs): Promise<ControlClient> {
  const { url, token, ca } = await resolveConnection(a);
  return ControlClient.connect(url, { token, ca, client: a.client ?? 'twinfs-cli' });
}
