import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, tempDirs } from '../helpers/server.js';

/**
 * The installed command's launcher (the head of dist/cli/twinfs.cjs, scripts/bundle-cli.mjs) and
 * src/cli/extra-ca-certs.cts: node starts without NODE_EXTRA_CA_CERTS (it parses that file
 * before any script runs), and the command still trusts the file's certificates for its TLS and
 * hands the variable to its children. A real TLS server on loopback with a certificate of a
 * private CA, named only through NODE_EXTRA_CA_CERTS; the command's wss:// connection to it is
 * seen from the server's side (a finished handshake, or the client's refusal).
 */
describe('NODE_EXTRA_CA_CERTS through the launcher', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: string;
  let server: https.Server;
  let url: string;
  const seen = { secure: 0, refused: 0 };

  beforeAll(async () => {
    t = await tempDirs('tls');
    d = t.dirs.tls!;
    await run(
      'sh',
      [
        '-c',
        `cd '${d}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=twinfs test CA' 2>&1 &&
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>&1 &&
         printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf &&
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>&1 &&
         printf 'x\\n' > token && chmod 600 token`,
      ],
      {},
    );
    // The bundle of a machine that names its system bundle there: the system's and the CA's.
    const system = await fsp.readFile('/etc/ssl/certs/ca-certificates.crt', 'utf8').catch(() => '');
    await fsp.writeFile(
      path.join(d, 'bundle.pem'),
      system + (await fsp.readFile(path.join(d, 'ca.pem'), 'utf8')),
    );
    // A preload that reports the environment node started with and the one the command left.
    await fsp.writeFile(
      path.join(d, 'env.cjs'),
      `const at = (k) => process.env[k] ?? null;
       const start = { node: at('NODE_EXTRA_CA_CERTS'), moved: at('TWINFS_NODE_EXTRA_CA_CERTS') };
       process.on('exit', () => process.stderr.write('@@env ' + JSON.stringify({ start,
         end: { node: at('NODE_EXTRA_CA_CERTS'), moved: at('TWINFS_NODE_EXTRA_CA_CERTS') } }) + '\\n'));`,
    );
    server = https.createServer(
      {
        cert: await fsp.readFile(path.join(d, 'server.pem')),
        key: await fsp.readFile(path.join(d, 'server.key')),
      },
      (_req, res) => res.writeHead(404).end(),
    );
    server.on('secureConnection', () => seen.secure++);
    server.on('tlsClientError', () => seen.refused++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `wss://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
    await t?.cleanup();
  });

  /** `twinfs status` against the TLS server, run as the installed command (the file itself). */
  async function status(env: Record<string, string | undefined>) {
    seen.secure = 0;
    seen.refused = 0;
    const base = { ...process.env };
    delete base.NODE_EXTRA_CA_CERTS;
    delete base.TWINFS_NODE_EXTRA_CA_CERTS;
    const r = await run(CLI, ['status', '--server', url, '--token-file', path.join(d, 'token'), '--json'], {
      ...base,
      TWINFS_SERVER: undefined,
      TWINFS_TOKEN: undefined,
      TWINFS_CONFIG: undefined,
      NODE_OPTIONS: `--require ${path.join(d, 'env.cjs')}`,
      ...env,
    });
    const m = /^@@env (.*)$/m.exec(r.stderr);
    expect(m, r.stderr).not.toBeNull();
    return { ...r, env: JSON.parse(m![1]!), ...seen };
  }

  it('node starts without the file; the command trusts its certificates and gives the variable back', {
    timeout: 30_000,
  }, async () => {
    const bundle = path.join(d, 'bundle.pem');
    const r = await status({ NODE_EXTRA_CA_CERTS: bundle });
    expect(r.env).toEqual({ start: { node: null, moved: bundle }, end: { node: bundle, moved: null } });
    expect({ secure: r.secure, refused: r.refused }, r.stderr).toEqual({ secure: 1, refused: 0 });
    expect(r.stderr).not.toMatch(/certificate/i);
  });

  it('without the file the same connection is refused (the CA is trusted through it alone)', {
    timeout: 30_000,
  }, async () => {
    const r = await status({});
    expect(r.env.start).toEqual({ node: null, moved: null });
    expect({ secure: r.secure, refused: r.refused }).toEqual({ secure: 0, refused: 1 });
  });

  it('an unreadable file: the warning node gives, and the bundled certificates alone', {
    timeout: 30_000,
  }, async () => {
    const missing = path.join(d, 'missing.pem');
    const r = await status({ NODE_EXTRA_CA_CERTS: missing });
    expect(r.env.start).toEqual({ node: null, moved: missing });
    expect(r.stderr).toContain(`Ignoring extra certs from \`${missing}\`, load failed`);
    expect({ secure: r.secure, refused: r.refused }).toEqual({ secure: 0, refused: 1 });
  });

  it('NODE_OPTIONS with --use-openssl-ca: left to node, which loads the file itself', {
    timeout: 30_000,
  }, async () => {
    const bundle = path.join(d, 'bundle.pem');
    const r = await status({
      NODE_EXTRA_CA_CERTS: bundle,
      NODE_OPTIONS: `--use-openssl-ca --require ${path.join(d, 'env.cjs')}`,
    });
    expect(r.env).toEqual({ start: { node: bundle, moved: null }, end: { node: bundle, moved: null } });
    expect({ secure: r.secure, refused: r.refused }, r.stderr).toEqual({ secure: 1, refused: 0 });
  });
});

function run(
  cmd: string,
  args: string[],
  env: Record<string, string | undefined>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { env: Object.keys(env).length ? (env as NodeJS.ProcessEnv) : process.env, timeout: 20_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}
