import { promises as fsp } from 'node:fs';
import * as https from 'node:https';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { serveRefusals } from '../helpers/coded.js';
import { unmountAll } from '../helpers/mounts.js';
import { shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/** An HTTPS request trusting the test's self-signed certificate. */
function get(
  url: string,
  o: { ca: Buffer; method?: string; headers?: Record<string, string>; body?: string },
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: o.method ?? 'GET', headers: o.headers, ca: o.ca }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

/**
 * `serve --http` follows the control channel's rules: bound before anything is mounted (a
 * busy port is ETWIN_HTTP_LISTEN with nothing mounted), a non-loopback address needs TLS or
 * --insecure-bind, bad values are usage errors; over TLS the page is https with a Secure
 * session cookie, which stops working when its token is rotated. And the peers' `report`
 * request is the preparing connection's only.
 */
describe('twinfs serve --http: checked and bound before mounting, TLS, sessions, reports', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: Record<string, string>;
  let busy: net.Server;
  let busyPort: number;
  let srv: ServerHandle | undefined;
  const { serveArgs, expectServeRefused } = serveRefusals(() => d);

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc', 'tls');
    d = t.dirs;
    busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    busyPort = (busy.address() as net.AddressInfo).port;
    await shOk(
      `cd '${d.tls}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj '/CN=localhost' -addext 'subjectAltName=IP:127.0.0.1' 2>&1`,
    );
  });
  afterAll(async () => {
    busy?.close();
    await srv?.kill();
    await unmountAll(d.mnt!);
    await t?.cleanup();
  });

  it('a busy port, a public address without TLS, a bad address or log level: coded, nothing mounted', async () => {
    await expectServeRefused(['--http', `127.0.0.1:${busyPort}`], 1, 'ETWIN_HTTP_LISTEN', /EADDRINUSE/);
    await expectServeRefused(['--http', '0.0.0.0:0'], 1, 'ETWIN_INSECURE_BIND', /--http 0\.0\.0\.0:0/);
    await expectServeRefused(['--http', 'localhost:http'], 2, 'ETWIN_USAGE', /--http must be HOST:PORT/);
    await expectServeRefused(
      ['--http', '127.0.0.1:0', '--log-level', 'loud'],
      2,
      'ETWIN_USAGE',
      /--log-level/,
    );
  }, 120_000);

  it("over TLS: https, bearer or a Secure session cookie, which a token rotation ends; reports are the preparer's", async () => {
    const readFile = path.join(d.etc!, 'read.token');
    srv = await startServer({
      primary: d.primary!,
      mount: d.mnt!,
      args: [
        ...serveArgs('--http', '0.0.0.0:0').slice(5),
        '--read-token-file',
        readFile,
        '--tls-cert',
        path.join(d.tls!, 'cert.pem'),
        '--tls-key',
        path.join(d.tls!, 'key.pem'),
      ],
    });
    const mounted = srv.events.find((e) => e.event === 'mounted') as any;
    // Started with --http only: the control channel came up on loopback for it.
    expect(mounted.control.url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);
    expect(mounted.http.url).toMatch(/^https:\/\/0\.0\.0\.0:\d+\/$/);
    const base = mounted.http.url.replace('0.0.0.0', '127.0.0.1');
    const ca = await fsp.readFile(path.join(d.tls!, 'cert.pem'));
    const readToken = (await fsp.readFile(readFile, 'utf8')).trim();

    expect((await get(`${base}api/status`, { ca })).status).toBe(401);
    const page = await get(base, { ca });
    expect(page.status).toBe(200);
    expect(page.body).toContain('/vendor/uPlot.iife.min.js');
    expect((await get(`${base}vendor/uPlot.iife.min.js`, { ca })).status).toBe(200);

    const json = { 'content-type': 'application/json' };
    // A form post (what another site could make a browser send) is refused before the token is looked at.
    const form = await get(`${base}session`, {
      ca,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `token=${readToken}`,
    });
    expect(form.status).toBe(415);
    expect(form.headers['set-cookie']).toBeUndefined();
    const bad = await get(`${base}session`, {
      ca,
      method: 'POST',
      headers: json,
      body: JSON.stringify({ token: 'nope' }),
    });
    expect(bad.status).toBe(401);
    expect(JSON.parse(bad.body).error.code).toBe('EPROTO_AUTH');
    const login = await get(`${base}session`, {
      ca,
      method: 'POST',
      headers: json,
      body: JSON.stringify({ token: readToken }),
    });
    expect(login.status).toBe(200);
    expect(JSON.parse(login.body).role).toBe('read');
    const setCookie = String((login.headers['set-cookie'] as string[])[0]);
    expect(setCookie).toMatch(/; HttpOnly/);
    expect(setCookie).toMatch(/; SameSite=Strict/);
    expect(setCookie).toMatch(/; Secure/);
    expect(setCookie).not.toContain(readToken);
    const cookie = setCookie.split(';')[0]!;
    const status = await get(`${base}api/status`, { ca, headers: { cookie } });
    expect(status.status).toBe(200);
    expect(JSON.parse(status.body).fs.mount).toBe(d.mnt);

    // The peers' report: the read-only token may not send it, nor may a connection that did not prepare.
    const url = mounted.control.url;
    const reader = await ControlClient.connect(url, { token: readToken, ca });
    const operator = await ControlClient.connect(url, {
      token: (await fsp.readFile(path.join(d.etc!, 'control.token'), 'utf8')).trim(),
      ca,
    });
    const report = {
      target: 'dir:/x',
      phase: 'copy',
      files: 1,
      filesTotal: 2,
      bytes: 10,
      bytesTotal: 20,
      copiedBytes: 10,
    } as const;
    try {
      await expect(reader.report('bk-nothing', report)).rejects.toMatchObject({ code: 'EPROTO_FORBIDDEN' });
      await expect(operator.report('bk-nothing', report)).rejects.toMatchObject({
        code: 'ETWIN_UNKNOWN_BACKUP',
      });
      await expect(
        operator.request('report', { backupId: 'bk-x', report: { ...report, bytes: -1 } }),
      ).rejects.toMatchObject({ code: 'EPROTO_MALFORMED' });
    } finally {
      await reader.close();
      await operator.close();
    }

    // A rotated read-only token: the cookie made from the old one no longer opens anything.
    const tmp = `${readFile}.new`;
    await fsp.writeFile(tmp, `${'b'.repeat(43)}\n`, { mode: 0o600 });
    await fsp.rename(tmp, readFile);
    const end = Date.now() + 15_000;
    let after = 200;
    while (after === 200 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 200));
      after = (await get(`${base}api/status`, { ca, headers: { cookie } })).status;
    }
    expect(after).toBe(401);
    expect(
      (await get(`${base}metrics`, { ca, headers: { authorization: `Bearer ${'b'.repeat(43)}` } })).status,
    ).toBe(200);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
  }, 120_000);
});
