import { TwinError } from '../common/errors.js';
import { ControlClient } from '../control/client.js';
import { readToken } from '../control/token.js';

export interface ConnectArgs {
  server?: string;
  tokenFile?: string;
  client?: string;
}

/**
 * Resolves where and how to connect: --server or $TWINFS_SERVER; the token from $TWINFS_TOKEN
 * (secrets belong in the environment, not on command lines) or --token-file.
 */
export async function resolveConnection(a: ConnectArgs): Promise<{ url: string; token: string }> {
  const url = a.server ?? process.env.TWINFS_SERVER;
  if (!url)
    throw new TwinError('ETWIN_USAGE', 'no server: pass --server ws://HOST:PORT or set TWINFS_SERVER');
  if (!/^wss?:\/\//.test(url))
    throw new TwinError('ETWIN_USAGE', `--server must be a ws:// or wss:// URL, not "${url}"`);
  let token = process.env.TWINFS_TOKEN;
  if (!token) {
    if (!a.tokenFile)
      throw new TwinError('ETWIN_USAGE', 'no token: pass --token-file FILE or set TWINFS_TOKEN');
    token = await readToken(a.tokenFile);
  }
  return { url, token };
}

export async function connect(a: ConnectArgs): Promise<ControlClient> {
  const { url, token } = await resolveConnection(a);
  return ControlClient.connect(url, { token, client: a.client ?? 'twinfs-cli' });
}
