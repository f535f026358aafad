import { promises as fsp } from 'node:fs';
import { createServer } from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { ConnectionGuard, openFileLimit, resolveLimits } from '../../src/control/connection-guard.js';
import { RateLimiter } from '../../src/control/rate-limit.js';
import { checkTokenMode, readToken, tokensEqual } from '../../src/control/token.js';
import { TokenStore } from '../../src/control/token-store.js';

/** The control channel's guards as units: limits from the fd limit, the rate limiter, tokens. */

describe('connection limits', () => {
  it('reads the soft open-file limit from /proc/self/limits text', () => {
    const text =
      'Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n';
    expect(openFileLimit(text)).toBe(1024);
    expect(
      openFileLimit('Max open files            unlimited            unlimited            files\n'),
    ).toBeNull();
    expect(openFileLimit()).toBeGreaterThan(0);
  });

  it('gives the control channel at most 1/8 of the descriptors, unauthenticated at most half of that', () => {
    expect(resolveLimits({}, 20_000)).toEqual({
      maxConnections: 256,
      maxUnauthenticated: 64,
      handshakeMs: 5000,
    });
    expect(resolveLimits({}, 1024)).toEqual({
      maxConnections: 128,
      maxUnauthenticated: 64,
      handshakeMs: 5000,
    });
    expect(resolveLimits({}, 256)).toEqual({ maxConnections: 32, maxUnauthenticated: 16, handshakeMs: 5000 });
    expect(resolveLimits({ maxConnections: 10_000 }, 20_000).maxConnections).toBe(2500);
    expect(resolveLimits({ maxConnections: 8 }, 20_000)).toMatchObject({
      maxConnections: 8,
      maxUnauthenticated: 4,
    });
    expect(resolveLimits({}, null).maxConnections).toBe(256);
  });
});

describe('the connection guard on real sockets', () => {
  it('a flood of bare sockets pushes out bare sockets, not an upgraded one still short of its hello', {
    timeout: 20_000,
  }, async () => {
    // A real HTTP server and websocket upgrade on loopback, the guard as the control server
    // wires it (upgraded at the websocket's connection); nobody says hello here.
    const server = createServer();
    const guard = new ConnectionGuard(server, {
      maxConnections: 16,
      maxUnauthenticated: 3,
      handshakeMs: 10_000,
    });
    const wss = new WebSocketServer({ server });
    wss.on('connection', (_ws, req) => guard.upgraded(req.socket));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    const bare: net.Socket[] = [];
    const until = async (cond: () => boolean, what: string) => {
      for (const t0 = Date.now(); !cond(); await new Promise((r) => setTimeout(r, 10)))
        if (Date.now() - t0 > 10_000) throw new Error(`timed out waiting for ${what}`);
    };
    try {
      const early = net.connect(port, '127.0.0.1');
      bare.push(early);
      let earlyClosed = false;
      early.on('close', () => (earlyClosed = true));
      await until(() => guard.stats().open === 1, 'the first bare socket');
      const ws = new WebSocket(`ws://127.0.0.1:${port}`);
      let wsClosed = false;
      ws.on('close', () => (wsClosed = true));
      await new Promise<void>((resolve, reject) => {
        ws.once('open', () => resolve());
        ws.once('error', reject);
      });
      await until(() => guard.stats().open === 2, 'the websocket');
      // Six more bare sockets against a cap of three unauthenticated: five are pushed out.
      for (let i = 0; i < 6; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        bare.push(s);
      }
      await until(() => guard.stats().evicted === 5, 'five evictions');
      await new Promise((r) => setTimeout(r, 100));
      expect(earlyClosed).toBe(true); // older than the websocket, and bare: pushed out first
      expect(wsClosed).toBe(false);
      expect(ws.readyState).toBe(WebSocket.OPEN);
      expect(guard.stats()).toMatchObject({ open: 3, unauthenticated: 3, evicted: 5 });
      // With only upgraded sockets short of their hello left, the oldest of them is next.
      for (const s of bare) s.destroy();
      await until(() => guard.stats().open === 1, 'the bare sockets to close');
      const later = [new WebSocket(`ws://127.0.0.1:${port}`), new WebSocket(`ws://127.0.0.1:${port}`)];
      await Promise.all(later.map((w) => new Promise((r) => w.once('open', r))));
      await until(() => guard.stats().open === 3, 'two more websockets');
      bare.push(net.connect(port, '127.0.0.1').on('error', () => undefined));
      await until(() => wsClosed, 'the oldest websocket to be pushed out');
      expect(later.map((w) => w.readyState)).toEqual([WebSocket.OPEN, WebSocket.OPEN]);
      expect(guard.stats().evicted).toBe(6);
      for (const w of later) w.terminate();
    } finally {
      for (const s of bare) s.destroy();
      guard.destroyAll();
      wss.close();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('rate limiter', () => {
  it('allows the burst, then the rate; caps requests in flight; says close after too many refusals', () => {
    let now = 0;
    const r = new RateLimiter({ ratePerSec: 10, burst: 5, maxInFlight: 3, closeAfter: 4 }, () => now);
    expect([r.admit(), r.admit(), r.admit()]).toEqual(['ok', 'ok', 'ok']);
    expect(r.admit()).toBe('limited'); // 3 in flight
    r.done();
    r.done();
    r.done();
    expect([r.admit(), r.admit()]).toEqual(['ok', 'ok']); // burst of 5 spent
    r.done();
    r.done();
    expect(r.admit()).toBe('limited');
    now += 100; // one token back at 10/s
    expect(r.admit()).toBe('ok');
    r.done();
    expect([r.admit(), r.admit(), r.admit(), r.admit()]).toEqual(['limited', 'limited', 'limited', 'close']);
  });
});

describe('tokens', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await fsp.rm(d, { recursive: true, force: true });
  });
  const tmp = async () => {
    const d = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-token-'));
    dirs.push(d);
    return d;
  };

  it('compares tokens of any length without throwing', () => {
    expect(tokensEqual('abc', 'abc')).toBe(true);
    expect(tokensEqual('abc', 'abd')).toBe(false);
    expect(tokensEqual('', 'abc')).toBe(false);
    expect(tokensEqual('a'.repeat(5000), 'a')).toBe(false);
  });

  it('refuses a mode that lets group or others in, like ssh', async () => {
    for (const mode of [0o600, 0o400, 0o700]) expect(() => checkTokenMode('f', mode)).not.toThrow();
    for (const mode of [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
      expect(() => checkTokenMode('f', mode)).toThrow(
        expect.objectContaining({ code: 'ETWIN_TOKEN_PERMISSIONS' }),
      );
    const f = path.join(await tmp(), 't');
    await fsp.writeFile(f, 'secret\nsecond line\n', { mode: 0o600 });
    expect(await readToken(f)).toBe('secret');
    await fsp.chmod(f, 0o644);
    await expect(readToken(f)).rejects.toMatchObject({ code: 'ETWIN_TOKEN_PERMISSIONS' });
  });

  it('a token store answers each token with its role, and refuses a read token equal to the operator one', async () => {
    const d = await tmp();
    const s = await TokenStore.open({
      operatorFile: path.join(d, 'op'),
      readFile: path.join(d, 'ro'),
      pollMs: 0,
    });
    try {
      const op = (await fsp.readFile(path.join(d, 'op'), 'utf8')).trim();
      const ro = (await fsp.readFile(path.join(d, 'ro'), 'utf8')).trim();
      expect(s.roleOf(op)).toBe('operator');
      expect(s.roleOf(ro)).toBe('read');
      expect(s.roleOf('nope')).toBeNull();
      // A rotation that would make both the same is refused as a whole.
      await fsp.writeFile(path.join(d, 'ro'), `${op}\n`);
      expect(await s.reload()).toEqual([]);
      expect(s.roleOf(ro)).toBe('read');
    } finally {
      s.dispose();
    }
    await fsp.writeFile(path.join(d, 'same'), 'x\n', { mode: 0o600 });
    await expect(
      TokenStore.open({ operatorFile: path.join(d, 'same'), readFile: path.join(d, 'same'), pollMs: 0 }),
    ).rejects.toMatchObject({ code: 'ETWIN_TOKEN' });
  });
});
