import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { shOk } from '../helpers/proc.js';
import { startServer, tempDirs } from '../helpers/server.js';
import {
  type ControlFixture,
  type RawConn,
  startControlFixture,
  status,
  waitUntil,
} from './control-fixture.js';

/** Protocol v1 on the wire (docs/protocol.md): authentication, bad input, limits, token file, wss. */

/** Every entry of a tree: type, mode, size, mtime, content hash (symlinks: target). */
async function fingerprint(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for (const name of (await fsp.readdir(path.join(root, rel))).sort()) {
      const p = path.join(rel, name);
      const st = await fsp.lstat(path.join(root, p));
      let what = `${st.mode.toString(8)} ${st.size} ${st.mtimeMs} ${st.uid}:${st.gid}`;
      if (st.isFile())
        what +=
          ' ' +
          createHash('sha256')
            .update(await fsp.readFile(path.join(root, p)))
            .digest('hex');
      if (st.isSymbolicLink()) what += ' -> ' + (await fsp.readlink(path.join(root, p)));
      out[p] = what;
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return out;
}

describe('control protocol v1 on the wire', () => {
  let fx: ControlFixture;
  let early: RawConn;
  let earlyAt: number;
  let before: { primary: Record<string, string>; mirror: Record<string, string> };

  beforeAll(async () => {
    fx = await startControlFixture();
    // A connection that never says hello: closed after the hello timeout (checked at the end).
    early = await fx.raw();
    earlyAt = Date.now();
    await fsp.mkdir(path.join(fx.mnt, 'd'));
    await fsp.writeFile(path.join(fx.mnt, 'd/file'), 'data\n');
    await fsp.writeFile(path.join(fx.mnt, 'top'), 'top\n');
    await fsp.symlink('/etc', path.join(fx.mnt, 'etc-link'));
    await fsp.symlink('d', path.join(fx.mnt, 'd-link'));
    const c = await fx.connect();
    await c.request('flush');
    // verify waits until the mirror has applied everything, times included
    expect(await c.request('verify', { content: true })).toMatchObject({ ok: true });
    await c.close();
    before = { primary: await fingerprint(fx.primary), mirror: await fingerprint(fx.mirrorRoot) };
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('the token file is created 0600 (in a 0700 directory) on first start and reused afterwards', async () => {
    const st = await fsp.stat(fx.tokenFile);
    expect(st.mode & 0o777).toBe(0o600);
    expect(fx.token).toMatch(/^[0-9a-f]{64}$/);
    const t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc');
    try {
      const tokenFile = path.join(t.dirs.etc!, 'new/dir/control.token');
      const args = [
        '--mirror',
        t.dirs.mirror!,
        '--state-dir',
        t.dirs.state!,
        '--control',
        '127.0.0.1:0',
        '--token-file',
        tokenFile,
      ];
      const srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, args });
      const token = (await fsp.readFile(tokenFile, 'utf8')).trim();
      expect((await fsp.stat(tokenFile)).mode & 0o777).toBe(0o600);
      expect((await fsp.stat(path.dirname(tokenFile))).mode & 0o777).toBe(0o700);
      expect(await srv.stop()).toBe(0);
      const srv2 = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, args });
      expect((await fsp.readFile(tokenFile, 'utf8')).trim()).toBe(token);
      const url = (srv2.events.find((e) => e.event === 'mounted') as any).control.url;
      const c = await ControlClient.connect(url, { token });
      expect(c.hello.version).toBe(1);
      await c.close();
      expect(await srv2.stop()).toBe(0);
      // An empty token file is refused (the server never runs with an empty token).
      await fsp.writeFile(tokenFile, '\n');
      await expect(startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, args })).rejects.toThrow(
        /ETWIN_TOKEN/,
      );
    } finally {
      await t.cleanup();
    }
  });

  it('hello answers with the version, server, device id and mirror root', async () => {
    const r = await fx.raw();
    const h = await r.hello(fx.token);
    expect(h).toEqual({
      type: 'result',
      id: 'hello',
      result: {
        version: 1,
        server: expect.stringMatching(/^twinfs\//),
        deviceId: fx.deviceId,
        mirrorRoot: fx.mirrorRoot,
        role: 'operator',
      },
    });
    const s = await r.request({ type: 'status', id: 7 });
    expect(s.type).toBe('result');
    expect(s.result.connections.length).toBeGreaterThanOrEqual(1);
    r.terminate();
  });

  it('a request before hello gets EPROTO_NOT_AUTHENTICATED and the connection is closed', async () => {
    const r = await fx.raw();
    const e = await r.request({ type: 'status', id: 1 });
    expect(e).toMatchObject({ type: 'error', id: 1, error: { code: 'EPROTO_NOT_AUTHENTICATED' } });
    expect((await r.whenClosed()).code).toBe(4401);
  });

  it('a wrong token gets EPROTO_AUTH and the connection is closed', async () => {
    const r = await fx.raw();
    const e = await r.hello('0'.repeat(64));
    expect(e).toMatchObject({ type: 'error', id: 'hello', error: { code: 'EPROTO_AUTH' } });
    expect((await r.whenClosed()).code).toBe(4401);
    const r2 = await fx.raw();
    expect((await r2.hello('')).error.code).toBe('EPROTO_AUTH');
    await expect(ControlClient.connect(fx.url, { token: 'nope' })).rejects.toMatchObject({
      code: 'EPROTO_AUTH',
    });
  });

  it('a wrong protocol version gets EPROTO_VERSION (with the supported versions) and the connection is closed', async () => {
    const r = await fx.raw();
    const e = await r.request({ type: 'hello', id: 1, version: 2, token: fx.token });
    expect(e).toMatchObject({
      type: 'error',
      id: 1,
      error: { code: 'EPROTO_VERSION', data: { supported: [1] } },
    });
    expect((await r.whenClosed()).code).toBe(4400);
  });

  it('malformed, mistyped and unknown messages get EPROTO_MALFORMED / EPROTO_UNKNOWN_TYPE and the connection stays usable', async () => {
    const r = await fx.raw();
    await r.hello(fx.token);
    r.send('{not json');
    expect(await r.next()).toMatchObject({ type: 'error', id: null, error: { code: 'EPROTO_MALFORMED' } });
    r.send('[1,2]');
    expect(await r.next()).toMatchObject({ type: 'error', id: null, error: { code: 'EPROTO_MALFORMED' } });
    r.send(Buffer.from('{"type":"status","id":1}'));
    expect(await r.next()).toMatchObject({ type: 'error', error: { code: 'EPROTO_MALFORMED' } });
    const bad = [
      { type: 'status' }, // no id
      { type: 'prepare', id: 2, selector: { paths: '/top' } },
      { type: 'prepare', id: 3, selector: { paths: ['/top'], volume: true } },
      { type: 'prepare', id: 4, selector: {} },
      { type: 'prepare', id: 5, selector: { paths: [] } },
      { type: 'prepare', id: 6, selector: { paths: ['/top'] }, leaseMs: 10 },
      { type: 'prepare', id: 7, selector: { paths: ['/top'] }, extra: true },
      { type: 'renew', id: 8, backupId: 5 },
      { type: 'freeze', id: 9, selector: { paths: ['/top'] }, timeoutMs: 'long' },
      { type: 'prepare', id: 10, selector: { paths: ['/to\0p'] } },
      { type: 'hello', id: 11, version: '1', token: fx.token },
    ];
    for (const m of bad) {
      const id = 'id' in m ? m.id : null;
      r.send(m);
      const got = await r.next((x) => x.type === 'error' && x.id === id);
      expect(got.error.code, JSON.stringify(m)).toBe('EPROTO_MALFORMED');
      expect(got.error.message.length).toBeGreaterThan(10);
    }
    expect(await r.request({ type: 'rm -rf', id: 'u1' })).toMatchObject({
      type: 'error',
      id: 'u1',
      error: { code: 'EPROTO_UNKNOWN_TYPE' },
    });
    expect(r.closed).toBeNull();
    expect((await r.request({ type: 'status', id: 'still-ok' })).type).toBe('result');
  });

  it('a message over 1 MiB closes the connection with 1009', async () => {
    const r = await fx.raw();
    await r.hello(fx.token);
    r.send({
      type: 'prepare',
      id: 1,
      selector: { paths: Array.from({ length: 300 }, (_, i) => `/${'x'.repeat(4000)}${i}`) },
    });
    expect((await r.whenClosed()).code).toBe(1009);
    // just under the limit is fine (and answered with a clear error: those files do not exist)
    const r2 = await fx.raw();
    await r2.hello(fx.token);
    const e = await r2.request({
      type: 'prepare',
      id: 1,
      selector: { paths: Array.from({ length: 250 }, (_, i) => `/${'x'.repeat(4000)}${i}`) },
    });
    expect(e.error.code).toBe('ETWIN_NOT_FOUND');
  });

  it('paths that escape the volume or do not exist get clear errors and change nothing', async () => {
    const c = await fx.connect();
    const cases: Array<[unknown, string]> = [
      [{ paths: ['/../etc/passwd'] }, 'ETWIN_PATH_ESCAPE'],
      [{ paths: ['d/../../x'] }, 'ETWIN_PATH_ESCAPE'],
      [{ subtree: '..' }, 'ETWIN_PATH_ESCAPE'],
      [{ paths: ['/etc/passwd'] }, 'ETWIN_NOT_FOUND'],
      [{ paths: ['/nope'] }, 'ETWIN_NOT_FOUND'],
      [{ paths: ['/top', '/nope'] }, 'ETWIN_NOT_FOUND'],
      [{ paths: ['/top/x'] }, 'ETWIN_NOT_FOUND'],
      [{ subtree: '/nope' }, 'ETWIN_NOT_FOUND'],
      // through a symlink: out of the volume, or to a name the inhibition would not know
      [{ paths: ['/etc-link/passwd'] }, 'ETWIN_PATH_ESCAPE'],
      [{ subtree: '/etc-link/ssl' }, 'ETWIN_PATH_ESCAPE'],
      [{ paths: ['/d-link/file'] }, 'ETWIN_PATH_ESCAPE'],
    ];
    for (const [selector, code] of cases) {
      await expect(c.prepare(selector as any), JSON.stringify(selector)).rejects.toMatchObject({ code });
      await expect(c.request('freeze', { selector }), JSON.stringify(selector)).rejects.toMatchObject({
        code,
      });
    }
    // A symlink itself is an item (never followed), also as a subtree root; a file is a fine subtree.
    const link = await c.prepare({ subtree: '/etc-link' });
    expect(link.items).toEqual([
      expect.objectContaining({ path: '/etc-link', type: 'symlink', target: '/etc' }),
    ]);
    await c.release(link.backupId);
    const file = await c.prepare({ subtree: '/top' });
    expect(file.items).toEqual([expect.objectContaining({ path: '/top', type: 'file', size: 4 })]);
    // The next page of a change answer: a cursor that names no page, of a backup without one.
    for (const cursor of ['1', '0', 'x'])
      await expect(c.request('changes', { backupId: file.backupId, cursor })).rejects.toMatchObject({
        code: 'ETWIN_PROTOCOL',
      });
    await c.release(file.backupId);
    await expect(c.request('changes', { backupId: 'bk-nope', cursor: '1' })).rejects.toMatchObject({
      code: 'ETWIN_UNKNOWN_BACKUP',
    });
    await expect(c.release('bk-nope')).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_BACKUP' });
    await expect(c.renew('bk-nope')).rejects.toMatchObject({ code: 'ETWIN_UNKNOWN_BACKUP' });
    await expect(c.request('thaw', { freezeId: 'fz-nope' })).rejects.toMatchObject({
      code: 'ETWIN_UNKNOWN_FREEZE',
    });
    const s = await status(c);
    expect(s.backup.backups).toEqual([]);
    expect(s.backup.freezes).toEqual([]);
    expect(s.mirror.splits).toEqual([]);
    await c.close();
  });

  it('plain HTTP gets 426; a connection without hello is closed after the hello timeout', {
    timeout: 20_000,
  }, async () => {
    const code = await new Promise<number | undefined>((resolve, reject) =>
      http
        .get(fx.url.replace('ws:', 'http:'), (res) => {
          res.resume();
          resolve(res.statusCode);
        })
        .on('error', reject),
    );
    expect(code).toBe(426);
    const closed = await early.whenClosed(Math.max(1000, earlyAt + 12_000 - Date.now()));
    expect(closed).toEqual({ code: 4401, reason: 'no hello' });
    expect(Date.now() - earlyAt).toBeGreaterThanOrEqual(9_500);
  });

  it('nothing changed on the volume or the mirror after all that', async () => {
    const c = await fx.connect();
    const s = await status(c);
    expect(s.backup.backups).toEqual([]);
    expect(s.backup.freezes).toEqual([]);
    expect(s.mirror.splits).toEqual([]);
    expect(s.mirror.broken).toEqual([]);
    await waitUntil(async () => (await status(c)).mirror.queueLength === 0, 5000, 'mirror queue to drain');
    expect(await fingerprint(fx.primary)).toEqual(before.primary);
    expect(await fingerprint(fx.mirrorRoot)).toEqual(before.mirror);
    const v: any = await c.request('verify', { content: true });
    expect(v).toMatchObject({ ok: true, differences: [] });
  });
});

describe('control channel over wss', () => {
  let fx: ControlFixture;
  let ca: string;
  let t: Awaited<ReturnType<typeof tempDirs>>;

  beforeAll(async () => {
    t = await tempDirs('tls');
    const d = t.dirs.tls!;
    // A CA and a server certificate for 127.0.0.1 signed by it.
    await shOk(
      `cd '${d}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=twinfs test CA' 2>&1 &&
       openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>&1 &&
       printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf &&
       openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>&1`,
    );
    ca = await fsp.readFile(path.join(d, 'ca.pem'), 'utf8');
    fx = await startControlFixture({
      args: ['--tls-cert', path.join(d, 'server.pem'), '--tls-key', path.join(d, 'server.key')],
    });
  });
  afterAll(async () => {
    await fx?.close();
    await t?.cleanup();
  });

  it('serves wss://, which the client accepts given the CA and refuses without it', {
    timeout: 30_000,
  }, async () => {
    expect(fx.url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);
    const c = await fx.connect({ ca });
    expect(c.hello.deviceId).toBe(fx.deviceId);
    // Past the 5 s handshake timeout: it is cleared for TLS sockets too, once upgraded.
    await new Promise((r) => setTimeout(r, 6000));
    expect(c.isClosed).toBe(false);
    await fsp.writeFile(path.join(fx.mnt, 'f'), 'x');
    const p = await c.prepare({ paths: ['/f'] });
    expect(p.items[0]).toMatchObject({ path: '/f', size: 1 });
    await c.release(p.backupId);
    await c.close();
    await expect(ControlClient.connect(fx.url, { token: fx.token })).rejects.toMatchObject({
      code: 'ETWIN_CONTROL_UNREACHABLE',
    });
    // plain ws to a wss port does not get through either
    await expect(
      ControlClient.connect(fx.url.replace('wss:', 'ws:'), { token: fx.token, connectTimeoutMs: 3000 }),
    ).rejects.toMatchObject({
      code: 'ETWIN_CONTROL_UNREACHABLE',
    });
  });
});
