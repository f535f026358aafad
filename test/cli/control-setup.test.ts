import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { CLEAN_ENV, expectCoded, serveRefusals } from '../helpers/coded.js';
import { unmountAll } from '../helpers/mounts.js';
import { shOk } from '../helpers/proc.js';
import { startServer, tempDirs } from '../helpers/server.js';
import { twinfs } from '../repl/fixtures.js';

/**
 * Issue 11, rows 4–8 and 14: the control channel's settings are checked and the port bound
 * before anything is mounted, every mistake is one coded line with no stack trace and nothing
 * mounted; token files are refused when others can read them; a non-loopback address needs TLS
 * or --insecure-bind; the shared flat config works for serve and the operator commands.
 */

describe('twinfs serve: the control channel is validated and bound before mounting', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: Record<string, string>;
  let busy: net.Server;
  let busyPort: number;
  const { serveArgs, expectServeRefused } = serveRefusals(() => d);

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc', 'tls');
    d = t.dirs;
    busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    busyPort = (busy.address() as net.AddressInfo).port;
    await shOk(
      `cd '${d.tls}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj '/CN=127.0.0.1' 2>&1 &&
       openssl genrsa -out other.key 2048 2>&1 && printf 'not a certificate\\n' > garbage.pem`,
    );
  });
  afterAll(async () => {
    busy?.close();
    await unmountAll(d.mnt!);
    await t?.cleanup();
  });

  it('row 4: a port in use, or an address that cannot be bound: ETWIN_CONTROL_LISTEN, nothing mounted', async () => {
    await expectServeRefused(['--control', `127.0.0.1:${busyPort}`], 1, 'ETWIN_CONTROL_LISTEN', /EADDRINUSE/);
    // 192.0.2.1 (TEST-NET-1) is on no interface here.
    await expectServeRefused(
      ['--control', '192.0.2.1:0', '--insecure-bind'],
      1,
      'ETWIN_CONTROL_LISTEN',
      /EADDRNOTAVAIL/,
    );
  });

  it('row 5: --tls-cert without --tls-key, and the reverse, are usage errors', async () => {
    const cert = path.join(d.tls!, 'cert.pem');
    const key = path.join(d.tls!, 'key.pem');
    await expectServeRefused(['--control', '127.0.0.1:0', '--tls-cert', cert], 2, 'ETWIN_USAGE', /--tls-key/);
    await expectServeRefused(['--control', '127.0.0.1:0', '--tls-key', key], 2, 'ETWIN_USAGE', /--tls-cert/);
  });

  it('row 6: a garbage PEM, a key of another certificate, a missing file: ETWIN_TLS', async () => {
    const f = (n: string) => path.join(d.tls!, n);
    const tls = (cert: string, key: string) => [
      '--control',
      '127.0.0.1:0',
      '--tls-cert',
      f(cert),
      '--tls-key',
      f(key),
    ];
    await expectServeRefused(tls('garbage.pem', 'key.pem'), 1, 'ETWIN_TLS', /PEM/);
    await expectServeRefused(tls('cert.pem', 'garbage.pem'), 1, 'ETWIN_TLS');
    await expectServeRefused(tls('cert.pem', 'other.key'), 1, 'ETWIN_TLS');
    await expectServeRefused(tls('nope.pem', 'key.pem'), 1, 'ETWIN_TLS', /ENOENT/);
  });

  it('row 8: a token file others can read is refused (serve and CLI); 0600 works', async () => {
    const tokenFile = path.join(d.etc!, 'control.token');
    await fsp.writeFile(tokenFile, 'a-token-of-sufficient-length\n', { mode: 0o644 });
    await fsp.chmod(tokenFile, 0o644);
    await expectServeRefused(['--control', '127.0.0.1:0'], 1, 'ETWIN_TOKEN_PERMISSIONS', /0644.*chmod 600/);
    await fsp.chmod(tokenFile, 0o640);
    await expectServeRefused(['--control', '127.0.0.1:0'], 1, 'ETWIN_TOKEN_PERMISSIONS', /0640/);
    expectCoded(
      await twinfs(['status', '--server', 'ws://127.0.0.1:1', '--token-file', tokenFile], { env: CLEAN_ENV }),
      1,
      'ETWIN_TOKEN_PERMISSIONS',
    );
    await fsp.chmod(tokenFile, 0o600);
    const srv = await startServer({
      primary: d.primary!,
      mount: d.mnt!,
      args: serveArgs('--control', '127.0.0.1:0').slice(5),
    });
    try {
      const url = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
      const r = await twinfs(['status', '--server', url, '--token-file', tokenFile, '--json'], {
        env: CLEAN_ENV,
      });
      expect(r.code, r.stderr).toBe(0);
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('row 8: a non-loopback address without TLS is refused; --insecure-bind or TLS allow it', async () => {
    await expectServeRefused(['--control', '0.0.0.0:0'], 1, 'ETWIN_INSECURE_BIND', /--insecure-bind/);
    await expectServeRefused(['--control', '[::]:0'], 1, 'ETWIN_INSECURE_BIND');
    for (const extra of [
      ['--insecure-bind'],
      ['--tls-cert', path.join(d.tls!, 'cert.pem'), '--tls-key', path.join(d.tls!, 'key.pem')],
    ]) {
      const srv = await startServer({
        primary: d.primary!,
        mount: d.mnt!,
        args: [...serveArgs('--control', '0.0.0.0:0').slice(5), ...extra],
      });
      try {
        const url: string = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
        expect(url).toMatch(
          extra[0] === '--insecure-bind' ? /^ws:\/\/0\.0\.0\.0:\d+$/ : /^wss:\/\/0\.0\.0\.0:\d+$/,
        );
      } finally {
        expect(await srv.stop()).toBe(0);
      }
    }
  });

  it('row 7: a wrong token prints the coded line only (no RemoteError stack); so does a refused request', async () => {
    const tokenFile = path.join(d.etc!, 'control.token');
    const readFile = path.join(d.etc!, 'read.token');
    const srv = await startServer({
      primary: d.primary!,
      mount: d.mnt!,
      args: [...serveArgs('--control', '127.0.0.1:0').slice(5), '--read-token-file', readFile],
    });
    try {
      const url: string = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
      expectCoded(
        await twinfs(['status', '--server', url], { env: { ...CLEAN_ENV, TWINFS_TOKEN: 'wrong' } }),
        1,
        'EPROTO_AUTH',
        /wrong token/,
      );
      expectCoded(
        await twinfs(['freeze', '/', '--server', url, '--token-file', readFile], { env: CLEAN_ENV }),
        1,
        'EPROTO_FORBIDDEN',
      );
      expectCoded(
        await twinfs(['resync', 'bk-nope', '--server', url, '--token-file', tokenFile], { env: CLEAN_ENV }),
        1,
        'ETWIN_UNKNOWN_BACKUP',
      );
      const c = await ControlClient.connect(url, { token: (await fsp.readFile(tokenFile, 'utf8')).trim() });
      expect(c.hello.role).toBe('operator');
      await c.close();
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('row 14: one flat config with serve and operator keys serves and answers status; unknown keys are still named', async () => {
    const cfg = path.join(d.etc!, 'twinfs.json');
    const tokenFile = path.join(d.etc!, 'control.token');
    const flat = {
      primary: d.primary,
      mount: d.mnt,
      mirror: d.mirror,
      stateDir: d.state,
      control: '127.0.0.1:0',
      tokenFile,
      catalog: path.join(d.etc!, 'catalog'),
      target: `dir:${path.join(d.etc!, 'backups')}`,
      history: path.join(d.etc!, 'history'),
      caFile: path.join(d.tls!, 'cert.pem'),
    };
    await fsp.writeFile(cfg, JSON.stringify(flat));
    const srv = await startServer({ primary: d.primary!, mount: d.mnt!, args: ['--config', cfg] });
    try {
      const url: string = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
      // The operator side reads the same file (server given explicitly: the port was 0).
      const r = await twinfs(['status', '--config', cfg, '--server', url, '--json'], { env: CLEAN_ENV });
      expect(r.code, r.stderr).toBe(0);
    } finally {
      expect(await srv.stop()).toBe(0);
    }
    await fsp.writeFile(cfg, JSON.stringify({ ...flat, catalogue: '/x' }));
    await expectServeRefused(['--config', cfg], 1, 'ETWIN_CONFIG', /unknown setting "catalogue"/);
    const op = await twinfs(['status', '--config', cfg], { env: CLEAN_ENV });
    expectCoded(op, 1, 'ETWIN_CONFIG', /"catalogue" is not a setting/);
  });
});
