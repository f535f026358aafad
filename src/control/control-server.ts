import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';
import { isTwinError, TwinError } from '../common/errors.js';
import type { TwinFs } from '../fusefs/filesystem.js';
import type { MirrorDriver } from '../mirror-driver/mirror-driver.js';
import { type BackupService, writebackError } from './backup-service.js';
import {
  describeIssues,
  MAX_MESSAGE_BYTES,
  PATH_ESCAPE,
  PROTOCOL_VERSION,
  type Request,
  requestSchema,
} from './protocol.js';
import { tokensEqual } from './token.js';

export interface ControlServerOptions {
  host?: string;
  port?: number;
  token: string;
  tls?: { cert: string | Buffer; key: string | Buffer };
  service: BackupService;
  fs: TwinFs;
  mirror?: MirrorDriver;
  /** Heartbeat period, ms (default 15000): a connection that misses one pong is dropped. */
  heartbeatMs?: number;
  /** A connection must say hello within this, ms (default 10000). */
  helloTimeoutMs?: number;
  log?: (msg: string) => void;
  /** More sections for the status reply (e.g. the SMB service), from the server's other parts. */
  statusExtras?: () => Promise<Record<string, unknown>>;
}

interface Conn {
  id: string;
  ws: WebSocket;
  authed: boolean;
  alive: boolean;
  /** The socket closed: whatever a request still in progress obtains must be given back. */
  closed: boolean;
  client?: string;
}

const CLOSE_AUTH = 4401;
const CLOSE_VERSION = 4400;
const KNOWN_TYPES = new Set([
  'hello',
  'status',
  'prepare',
  'renew',
  'release',
  'freeze',
  'thaw',
  'verify',
  'repair',
  'flush',
]);

/**
 * The websocket control channel of `twinfs serve` (protocol v1, docs/protocol.md): token
 * authentication in hello, schema-validated requests with ids, typed results and errors,
 * pushed events, heartbeats and a message size limit. A connection's leases and freezes end
 * with it.
 */
export class ControlServer {
  private readonly conns = new Set<Conn>();
  private heartbeat: NodeJS.Timeout | null = null;
  private readonly unsubscribe: Array<{ dispose(): void }> = [];

  private constructor(
    private readonly http: http.Server | https.Server,
    private readonly wss: WebSocketServer,
    private readonly opts: ControlServerOptions,
  ) {}

  static async start(opts: ControlServerOptions): Promise<ControlServer> {
    const server = opts.tls
      ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key })
      : http.createServer();
    server.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' });
      res.end('twinfs control channel: connect with a websocket\n');
    });
    const wss = new WebSocketServer({ server, maxPayload: MAX_MESSAGE_BYTES });
    const cs = new ControlServer(server, wss, opts);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new TwinError(
            'ETWIN_USAGE',
            `control channel cannot listen on ${opts.host ?? '127.0.0.1'}:${opts.port ?? 0}: ${err.code}`,
            {
              code: err.code,
            },
          ),
        ),
      );
      server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
    });
    cs.init();
    return cs;
  }

  get url(): string {
    const a = this.http.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.opts.tls ? 'wss' : 'ws'}://${host}:${a.port}`;
  }

  private init(): void {
    this.wss.on('connection', (ws) => this.accept(ws));
    this.heartbeat = setInterval(() => {
      for (const c of this.conns) {
        if (!c.alive) {
          c.ws.terminate();
          continue;
        }
        c.alive = false;
        c.ws.ping();
      }
    }, this.opts.heartbeatMs ?? 15_000);
    this.heartbeat.unref();
    const broadcast = (event: string, data: unknown) => {
      const text = JSON.stringify({ type: 'event', event, data });
      for (const c of this.conns) if (c.authed && c.ws.readyState === 1) c.ws.send(text);
    };
    this.unsubscribe.push(this.opts.service.onEvent((e) => broadcast(e.event, e.data)));
    if (this.opts.mirror) {
      this.unsubscribe.push(this.opts.mirror.onDidBreak((e) => broadcast('broken', e)));
      this.unsubscribe.push(this.opts.mirror.onDidChangeState((e) => broadcast('state', e)));
      this.unsubscribe.push(this.opts.mirror.onProgress((e) => broadcast('progress', e)));
    }
  }

  private accept(ws: WebSocket): void {
    const c: Conn = { id: `conn-${randomUUID()}`, ws, authed: false, alive: true, closed: false };
    this.conns.add(c);
    const helloTimer = setTimeout(() => {
      if (!c.authed) ws.close(CLOSE_AUTH, 'no hello');
    }, this.opts.helloTimeoutMs ?? 10_000);
    ws.on('pong', () => {
      c.alive = true;
    });
    ws.on('message', (data, isBinary) => {
      void this.onMessage(c, isBinary ? null : String(data));
    });
    ws.on('close', () => {
      c.closed = true;
      clearTimeout(helloTimer);
      this.conns.delete(c);
      void this.opts.service.releaseOwner(c.id);
    });
    ws.on('error', () => undefined);
  }

  private send(c: Conn, msg: unknown): void {
    if (c.ws.readyState === 1) c.ws.send(JSON.stringify(msg));
  }

  private fail(c: Conn, id: unknown, code: string, message: string, data?: Record<string, unknown>): void {
    this.send(c, {
      type: 'error',
      id: typeof id === 'string' || typeof id === 'number' ? id : null,
      error: { code, message, data },
    });
  }

  private async onMessage(c: Conn, text: string | null): Promise<void> {
    if (text === null)
      return this.fail(c, null, 'EPROTO_MALFORMED', 'binary messages are not part of the protocol');
    let raw: any;
    try {
      raw = JSON.parse(text);
    } catch {
      return this.fail(c, null, 'EPROTO_MALFORMED', 'message is not valid JSON');
    }
    const id = raw?.id;
    if (!raw || typeof raw !== 'object' || typeof raw.type !== 'string')
      return this.fail(c, id, 'EPROTO_MALFORMED', 'message must be an object with a string "type"');
    if (!KNOWN_TYPES.has(raw.type))
      return this.fail(
        c,
        id,
        'EPROTO_UNKNOWN_TYPE',
        `unknown request type "${String(raw.type).slice(0, 50)}"`,
      );
    const parsed = requestSchema.safeParse(raw);
    if (!parsed.success) {
      // A path with '..' is well-formed but names nothing on the volume: its own stable code.
      const escaping = parsed.error.issues.find(
        (i) => (i as { params?: { code?: string } }).params?.code === PATH_ESCAPE,
      );
      if (escaping && c.authed)
        return this.fail(c, id, PATH_ESCAPE, `${escaping.message}: ${escaping.path.join('.')}`, {
          field: escaping.path.join('.'),
        });
      return this.fail(
        c,
        id,
        'EPROTO_MALFORMED',
        `invalid ${raw.type} request: ${describeIssues(parsed.error)}`,
      );
    }
    const req = parsed.data;
    if (!c.authed && req.type !== 'hello') {
      this.fail(c, id, 'EPROTO_NOT_AUTHENTICATED', 'send hello with the token first');
      c.ws.close(CLOSE_AUTH, 'not authenticated');
      return;
    }
    try {
      const result = await this.handle(c, req);
      // The client went away while its prepare or freeze was under way: nobody can release it.
      if (c.closed) return void this.opts.service.releaseOwner(c.id);
      this.send(c, { type: 'result', id: req.id, result: result ?? null });
    } catch (err) {
      if (isTwinError(err)) return this.fail(c, req.id, err.code, err.message, err.data);
      const e = err as NodeJS.ErrnoException;
      if (e?.code === 'EPROTO_AUTH' || e?.code === 'EPROTO_VERSION') return;
      this.opts.log?.(`control: ${req.type} failed: ${e?.stack ?? e}`);
      // Only catalogued codes cross the wire; an errno says what went wrong in data.
      this.fail(c, req.id, 'ETWIN_INTERNAL', `${req.type} failed: ${e?.message ?? String(err)}`, {
        errno: typeof e?.code === 'string' ? e.code : undefined,
      });
    }
  }

  private async handle(c: Conn, req: Request): Promise<unknown> {
    const svc = this.opts.service;
    switch (req.type) {
      case 'hello': {
        if (req.version !== PROTOCOL_VERSION) {
          this.fail(
            c,
            req.id,
            'EPROTO_VERSION',
            `protocol version ${req.version} is not supported (server speaks ${PROTOCOL_VERSION})`,
            {
              supported: [PROTOCOL_VERSION],
            },
          );
          c.ws.close(CLOSE_VERSION, 'version');
          throw Object.assign(new Error('version'), { code: 'EPROTO_VERSION' });
        }
        if (!tokensEqual(req.token, this.opts.token)) {
          this.fail(c, req.id, 'EPROTO_AUTH', 'wrong token');
          c.ws.close(CLOSE_AUTH, 'wrong token');
          throw Object.assign(new Error('auth'), { code: 'EPROTO_AUTH' });
        }
        c.authed = true;
        c.client = req.client;
        return {
          version: PROTOCOL_VERSION,
          server: `twinfs/${process.pid}`,
          deviceId: this.opts.mirror?.deviceId ?? null,
          mirrorRoot: this.opts.mirror?.dataRoot ?? null,
        };
      }
      case 'status':
        return {
          fs: this.opts.fs.status(),
          mirror: this.opts.mirror?.status() ?? null,
          backup: svc.status(),
          ...(await this.opts
            .statusExtras?.()
            .catch((err) => ({ extrasError: String(err?.message ?? err) }))),
          connections: [...this.conns]
            .filter((x) => x.authed)
            .map((x) => ({ id: x.id, client: x.client ?? null })),
        };
      case 'prepare':
        return svc.prepare(req.selector, {
          owner: c.id,
          leaseMs: req.leaseMs,
          maxStallMs: req.maxStallMs,
          listItems: req.listItems,
          since: req.since,
        });
      case 'renew':
        return svc.renew(req.backupId, c.id, req.leaseMs);
      case 'release':
        return svc.release(req.backupId, c.id);
      case 'freeze':
        return svc.freeze(req.selector, { owner: c.id, timeoutMs: req.timeoutMs });
      case 'thaw':
        return svc.thaw(req.freezeId, c.id);
      case 'verify': {
        if (!this.opts.mirror)
          throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror; start it with --mirror DIR');
        return this.opts.mirror.verify({ content: req.content });
      }
      case 'repair': {
        if (!this.opts.mirror)
          throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror; start it with --mirror DIR');
        return this.opts.mirror.repair();
      }
      case 'flush':
        await this.opts.fs.flushAll({ sync: true }).catch((err) => {
          throw writebackError(err);
        });
        return { flushed: true };
    }
  }

  async dispose(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    for (const u of this.unsubscribe) u.dispose();
    for (const c of this.conns) c.ws.terminate();
    this.wss.close();
    await new Promise<void>((r) => this.http.close(() => r()));
  }
}
