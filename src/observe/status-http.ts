import { promises as fsp } from 'node:fs';
import type * as http from 'node:http';
import type * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TwinError } from '../common/errors.js';
import { createHttpServer } from '../control/control-server.js';
import type { Role } from '../control/token-store.js';
import type { ServerMetrics } from './metrics.js';
import type { FeedMessage, StatusFeed } from './status-feed.js';

/** The page's files (web/status) and the charting library, served as they are: no build step. */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: 'web/status/index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'web/status/app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'web/status/style.css', type: 'text/css; charset=utf-8' },
  '/vendor/uPlot.iife.min.js': {
    file: 'node_modules/uplot/dist/uPlot.iife.min.js',
    type: 'text/javascript; charset=utf-8',
  },
  '/vendor/uPlot.min.css': { file: 'node_modules/uplot/dist/uPlot.min.css', type: 'text/css; charset=utf-8' },
};

/** Sockets at once (the page holds one for its stream), and live streams at once. */
const MAX_CONNECTIONS = 64;
const MAX_STREAMS = 32;

/** The session cookie's name and what its value is derived for (TokenStore.derived). */
const COOKIE = 'twinfs_session';
const SESSION_PURPOSE = 'twinfs status page session v1';

export interface StatusHttpOptions {
  host: string;
  port: number;
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** The control channel's tokens: any role may look. */
  tokens: {
    roleOf(token: string): Role | null;
    derived(purpose: string): Array<{ role: Role; value: string }>;
    roleOfDerived(purpose: string, presented: string): Role | null;
  };
}

/** What the page serves, attached once the volume is mounted. */
export interface StatusHttpBackend {
  feed: StatusFeed;
  metrics: ServerMetrics;
}

/**
 * The status page and metrics of `twinfs serve --http HOST:PORT`: the page (web/status, plain
 * HTML and JS with uPlot from node_modules), its live feed as server-sent events (GET /events:
 * the whole state first, then every event and cache sample as it happens), GET /api/status
 * (the same state once) and GET /metrics (Prometheus). Everything but the page's static
 * files needs a token of the control channel, read-only or operator: as
 * `Authorization: Bearer TOKEN`, or as the session cookie POST /session gives for one (an HMAC
 * of the token, HttpOnly, SameSite=Strict, Secure over TLS; a rotated token ends it).
 *
 * listen() binds before anything is mounted, like the control channel (ETWIN_HTTP_LISTEN);
 * the address rules (TLS or --insecure-bind off loopback) are checked by the caller.
 */
export class StatusHttpServer {
  private backend: StatusHttpBackend | undefined;
  private readonly streams = new Set<http.ServerResponse>();
  private unsubscribe: { dispose(): void } | undefined;

  private constructor(
    private readonly server: http.Server | https.Server,
    private readonly opts: StatusHttpOptions,
  ) {
    server.on('request', (req, res) => {
      this.route(req, res).catch((err) => {
        if (!res.headersSent)
          this.json(res, 500, { error: { code: 'ETWIN_INTERNAL', message: String(err) } });
        else res.destroy();
      });
    });
  }

  static async listen(opts: StatusHttpOptions): Promise<StatusHttpServer> {
    const server = createHttpServer(opts.tls);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new TwinError(
            'ETWIN_HTTP_LISTEN',
            `status page cannot listen on ${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}: ${err.code}`,
            { host: opts.host, port: opts.port, errno: err.code },
          ),
        ),
      );
      server.listen(opts.port, opts.host, () => resolve());
    });
    // Every socket is a descriptor the filesystem also needs (docs/security.md): a bounded
    // number, and none kept by a client that does not finish its request.
    server.maxConnections = MAX_CONNECTIONS;
    server.headersTimeout = 10_000;
    server.requestTimeout = 10_000;
    return new StatusHttpServer(server, opts);
  }

  get url(): string {
    const a = this.server.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.opts.tls ? 'https' : 'http'}://${host}:${a.port}/`;
  }

  /** Starts serving the mounted volume's state; until then, requests for it get 503. */
  attach(backend: StatusHttpBackend): void {
    this.backend = backend;
    // Each event is sent as it is, then the whole state once the burst it belongs to settled
    // (a prepare is several events): the page redraws from the state, never asks for it.
    let pending: NodeJS.Timeout | undefined;
    const sub = backend.feed.onDidPush((m) => {
      for (const res of this.streams) sse(res, m);
      if (m.type !== 'event' || pending || this.streams.size === 0) return;
      pending = setTimeout(() => {
        pending = undefined;
        void backend.feed.state().then((state) => {
          for (const res of this.streams) sse(res, { type: 'state', state });
        });
      }, 50);
    });
    this.unsubscribe = {
      dispose() {
        clearTimeout(pending);
        sub.dispose();
      },
    };
  }

  /** Called for each wrong token presented (for the auth-failure metric and the log). */
  onAuthFailure: (remote: string) => void = () => undefined;

  async dispose(): Promise<void> {
    this.unsubscribe?.dispose();
    for (const res of this.streams) res.end();
    this.streams.clear();
    this.server.closeAllConnections?.();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('referrer-policy', 'no-referrer');
    const asset = STATIC[url.pathname];
    if (asset && req.method === 'GET') {
      res.setHeader(
        'content-security-policy',
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
      );
      const body = await fsp.readFile(path.join(ROOT, asset.file));
      res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'no-cache' });
      return void res.end(body);
    }
    if (url.pathname === '/session' && req.method === 'POST') return this.login(req, res);
    if (url.pathname === '/session' && req.method === 'DELETE') {
      res.setHeader('set-cookie', `${COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict`);
      return this.json(res, 200, { ok: true });
    }
    const routes = ['/events', '/api/status', '/metrics'];
    if (!routes.includes(url.pathname))
      return this.json(res, 404, { error: { code: 'ENOTFOUND', message: `no ${url.pathname} here` } });
    if (req.method !== 'GET')
      return this.json(res, 405, {
        error: { code: 'EMETHOD', message: `${req.method} is not allowed here` },
      });
    const role = this.authenticate(req);
    if (!role) {
      if (req.headers.authorization) this.onAuthFailure(remoteOf(req));
      res.setHeader('www-authenticate', 'Bearer realm="twinfs"');
      return this.json(res, 401, {
        error: {
          code: 'EPROTO_AUTH',
          message:
            'present a control token (Authorization: Bearer TOKEN) or a session cookie from POST /session',
        },
      });
    }
    const b = this.backend;
    if (!b)
      return this.json(res, 503, {
        error: { code: 'ETWIN_NOT_READY', message: 'the volume is not mounted yet' },
      });
    if (url.pathname === '/metrics') {
      const m = await b.metrics.expose();
      res.writeHead(200, { 'content-type': m.contentType });
      return void res.end(m.body);
    }
    if (url.pathname === '/api/status') return this.json(res, 200, await b.feed.state());
    if (this.streams.size >= MAX_STREAMS)
      return this.json(res, 503, {
        error: {
          code: 'ETWIN_HTTP_BUSY',
          message: `${MAX_STREAMS} status streams are open already; close one`,
        },
      });
    // Server-sent events: the state, then whatever happens. A comment every 15 s keeps
    // proxies from closing an idle stream.
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    sse(res, { type: 'state', state: await b.feed.state() });
    this.streams.add(res);
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    keepAlive.unref();
    req.on('close', () => {
      clearInterval(keepAlive);
      this.streams.delete(res);
    });
  }

  private authenticate(req: http.IncomingMessage): Role | null {
    const auth = req.headers.authorization;
    if (auth?.startsWith('Bearer ')) return this.opts.tokens.roleOf(auth.slice(7).trim());
    const cookie = parseCookies(req.headers.cookie)[COOKIE];
    return cookie ? this.opts.tokens.roleOfDerived(SESSION_PURPOSE, cookie) : null;
  }

  private async login(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    // JSON only: a cross-site form cannot send it without the browser asking first (CORS), so
    // no other site can sign a visitor in with a token of its choosing.
    if (!/^application\/json\b/.test(req.headers['content-type'] ?? ''))
      return this.json(res, 415, {
        error: { code: 'EPROTO_MALFORMED', message: 'send {"token": "..."} as application/json' },
      });
    let body = '';
    for await (const chunk of req) {
      body += chunk;
      if (body.length > 4096)
        return this.json(res, 413, { error: { code: 'EPROTO_TOO_LARGE', message: 'too large' } });
    }
    let token: unknown;
    try {
      token = JSON.parse(body)?.token;
    } catch {
      token = undefined;
    }
    const role = typeof token === 'string' ? this.opts.tokens.roleOf(token) : null;
    if (!role) {
      this.onAuthFailure(remoteOf(req));
      return this.json(res, 401, { error: { code: 'EPROTO_AUTH', message: 'wrong token' } });
    }
    const value = this.opts.tokens.derived(SESSION_PURPOSE).find((d) => d.role === role)!.value;
    res.setHeader(
      'set-cookie',
      `${COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict${this.opts.tls ? '; Secure' : ''}`,
    );
    this.json(res, 200, { role });
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  }
}

function sse(res: http.ServerResponse, m: FeedMessage): void {
  res.write(`data: ${JSON.stringify(m)}\n\n`);
}

function remoteOf(req: http.IncomingMessage): string {
  return `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? '?'}`;
}

function parseCookies(header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}
