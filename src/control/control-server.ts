import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';
import { isTwinError, TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import type { TwinFs } from '../fusefs/filesystem.js';
import type { MirrorDriver } from '../mirror-driver/mirror-driver.js';
import { type BackupService, writebackError } from './backup-service.js';
import { ConnectionGuard, type ConnectionLimits, resolveLimits } from './connection-guard.js';
import { DEFAULT_LIVENESS, Liveness, type LivenessOptions } from './liveness.js';
import {
  describeIssues,
  MAX_MESSAGE_BYTES,
  PATH_ESCAPE,
  PROTOCOL_VERSION,
  REQUEST_TYPES,
  type Request,
  requestSchema,
} from './protocol.js';
import { DEFAULT_RATE_LIMITS, RateLimiter, type RateLimits } from './rate-limit.js';
import type { Role } from './token-store.js';

/** What the control channel serves, attached once the volume is mounted. */
export interface ControlBackend {
  service: BackupService;
  fs: TwinFs;
  mirror?: MirrorDriver;
  /** More sections for the status reply (e.g. the SMB service), from the server's other parts. */
  statusExtras?: () => Promise<Record<string, unknown>>;
}

export interface ControlServerOptions {
  host?: string;
  port?: number;
  /** Who may do what: the role a presented token grants (TokenStore). */
  tokens: { roleOf(token: string): Role | null };
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** Connection caps and the raw-socket handshake timeout (defaults: connection-guard.ts). */
  limits?: Partial<ConnectionLimits>;
  /** Per-connection request rate (defaults: rate-limit.ts). */
  rate?: Partial<RateLimits>;
  /** Ping period and how long a silent connection lives (defaults: liveness.ts). */
  liveness?: Partial<LivenessOptions>;
  /** A connection must say hello within this, ms (default 10000). */
  helloTimeoutMs?: number;
  log?: (msg: string) => void;
}

/**
 * What happens on the control channel itself, for the server log and metrics: a connection
 * opened (its remote address), authenticated (client name and role; never the token), refused
 * a token, closed; a repair ran.
 */
export type ControlEvent =
  | { event: 'connection'; conn: string; remote: string }
  | { event: 'authenticated'; conn: string; remote: string; client: string | null; role: Role }
  | { event: 'auth-failed'; conn: string; remote: string; client: string | null }
  | { event: 'disconnected'; conn: string; remote: string; client: string | null }
  | { event: 'repaired'; conn: string; result: Record<string, unknown> }
  | { event: 'repair-failed'; conn: string; code: string; message: string };

interface Conn {
  id: string;
  ws: WebSocket;
  socket: Socket;
  role: Role | null;
  /** The socket closed: whatever a request still in progress obtains must be given back. */
  closed: boolean;
  client?: string;
  rate: RateLimiter;
  /** prepare and freeze requests under way, and the freezes and splits this connection holds. */
  holding: number;
  freezes: Set<string>;
  backups: Set<string>;
}

const CLOSE_AUTH = 4401;
const CLOSE_VERSION = 4400;
/** What a read-only token may ask: requests that only look. */
const READ_ONLY_TYPES = new Set(['hello', 'status', 'verify']);

/**
 * The websocket control channel of `twinfs serve` (protocol v1, docs/protocol.md): token
 * authentication in hello with roles, schema-validated requests with ids, typed results and
 * errors, pushed events, a message size limit, and the guards that keep it from hurting the
 * filesystem it controls (docs/security.md): connection caps within a share of the descriptor
 * limit, a handshake timeout, per-connection rate limits, ping/pong liveness. A connection's
 * leases and freezes end with it.
 *
 * listen() binds (and checks the TLS material) before anything is mounted, so a bad address or
 * certificate stops `serve` with nothing to undo; attach() hands it the mounted volume, and
 * requests wait for that.
 */
export class ControlServer {
  private readonly conns = new Set<Conn>();
  private readonly unsubscribe: Array<{ dispose(): void }> = [];
  private backend: ControlBackend | undefined;
  private attached!: () => void;
  private readonly ready = new Promise<void>((r) => {
    this.attached = r;
  });
  private readonly liveness: Liveness;
  private readonly rateLimits: RateLimits;
  private readonly _onDidControl = new Emitter<ControlEvent>();
  /** Connections, authentications and their failures, disconnections, repairs (ControlEvent). */
  readonly onDidControl = this._onDidControl.event;

  private constructor(
    private readonly http: http.Server | https.Server,
    private readonly wss: WebSocketServer,
    private readonly guard: ConnectionGuard,
    private readonly opts: ControlServerOptions,
  ) {
    this.liveness = new Liveness({ ...DEFAULT_LIVENESS, ...opts.liveness });
    this.rateLimits = { ...DEFAULT_RATE_LIMITS, ...opts.rate };
    wss.on('connection', (ws, req) => this.accept(ws, req.socket as Socket));
    wss.on('error', (err) => opts.log?.(`control: ${err.message}`));
  }

  /**
   * Binds the control channel. Errors: ETWIN_TLS (the certificate or key cannot be used),
   * ETWIN_CONTROL_LISTEN (the address is in use or cannot be bound).
   */
  static async listen(opts: ControlServerOptions): Promise<ControlServer> {
    const server = createHttpServer(opts.tls);
    server.on('request', (_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain', connection: 'close' });
      res.end('twinfs control channel: connect with a websocket\n');
    });
    const host = opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new TwinError(
            'ETWIN_CONTROL_LISTEN',
            `control channel cannot listen on ${host.includes(':') ? `[${host}]` : host}:${opts.port ?? 0}: ${err.code}`,
            { host, port: opts.port ?? 0, errno: err.code },
          ),
        ),
      );
      server.listen(opts.port ?? 0, host, () => resolve());
    });
    // Created after the bind succeeded: ws re-emits the server's errors, and an EADDRINUSE
    // with nobody listening on the WebSocketServer was an uncaught exception.
    const guard = new ConnectionGuard(server, resolveLimits(opts.limits));
    const wss = new WebSocketServer({ server, maxPayload: MAX_MESSAGE_BYTES });
    return new ControlServer(server, wss, guard, opts);
  }

  get url(): string {
    const a = this.http.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.opts.tls ? 'wss' : 'ws'}://${host}:${a.port}`;
  }

  /** Starts answering requests for the mounted volume. */
  attach(backend: ControlBackend): void {
    this.backend = backend;
    const broadcast = (event: string, data: unknown) => {
      const text = JSON.stringify({ type: 'event', event, data });
      for (const c of this.conns) if (c.role && c.ws.readyState === 1) c.ws.send(text);
    };
    this.unsubscribe.push(
      backend.service.onEvent((e) => {
        // What a connection holds, for liveness: a freeze or split it no longer has is dropped.
        const id = (e.data as { freezeId?: string; backupId?: string }) ?? {};
        if (e.event === 'thawed' && id.freezeId) for (const c of this.conns) c.freezes.delete(id.freezeId);
        if ((e.event === 'released' || e.event === 'lease-expired') && id.backupId)
          for (const c of this.conns) c.backups.delete(id.backupId);
        broadcast(e.event, e.data);
      }),
    );
    if (backend.mirror) {
      this.unsubscribe.push(backend.mirror.onDidBreak((e) => broadcast('broken', e)));
      this.unsubscribe.push(backend.mirror.onDidChangeState((e) => broadcast('state', e)));
      this.unsubscribe.push(backend.mirror.onProgress((e) => broadcast('progress', e)));
    }
    this.attached();
  }

  private accept(ws: WebSocket, socket: Socket): void {
    this.guard.upgraded(socket);
    const c: Conn = {
      id: `conn-${randomUUID()}`,
      ws,
      socket,
      role: null,
      closed: false,
      rate: new RateLimiter(this.rateLimits),
      holding: 0,
      freezes: new Set(),
      backups: new Set(),
    };
    this.conns.add(c);
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this._onDidControl.fire({ event: 'connection', conn: c.id, remote });
    const helloTimer = setTimeout(() => {
      if (!c.role) ws.close(CLOSE_AUTH, 'no hello');
    }, this.opts.helloTimeoutMs ?? 10_000);
    this.liveness.track(
      ws,
      () => (c.holding > 0 || c.freezes.size > 0 ? 'writes' : c.backups.size > 0 ? 'splits' : null),
      (silentMs) =>
        this.opts.log?.(
          `control: ${c.client ?? c.id} did not answer pings for ${Math.round(silentMs)} ms: dropped, what it held is released`,
        ),
    );
    ws.on('message', (data, isBinary) => {
      void this.onMessage(c, isBinary ? null : String(data));
    });
    ws.on('close', () => {
      c.closed = true;
      clearTimeout(helloTimer);
      this.conns.delete(c);
      this._onDidControl.fire({ event: 'disconnected', conn: c.id, remote, client: c.client ?? null });
      void this.backend?.service.releaseOwner(c.id);
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
    const verdict = c.rate.admit();
    if (verdict !== 'ok') {
      if (verdict === 'close') return void c.ws.close(1008, 'rate limit');
      return this.fail(
        c,
        cheapId(text),
        'EPROTO_RATE_LIMITED',
        'too many requests on this connection; slow down',
        {
          ratePerSec: this.rateLimits.ratePerSec,
          maxInFlight: this.rateLimits.maxInFlight,
        },
      );
    }
    try {
      await this.onAdmitted(c, text);
    } finally {
      c.rate.done();
    }
  }

  private async onAdmitted(c: Conn, text: string | null): Promise<void> {
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
    if (!REQUEST_TYPES.has(raw.type))
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
      if (escaping && c.role)
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
    if (!c.role && req.type !== 'hello') {
      this.fail(c, id, 'EPROTO_NOT_AUTHENTICATED', 'send hello with the token first');
      c.ws.close(CLOSE_AUTH, 'not authenticated');
      return;
    }
    if (c.role === 'read' && !READ_ONLY_TYPES.has(req.type))
      return this.fail(c, id, 'EPROTO_FORBIDDEN', `a read-only token may not send ${req.type}`, {
        role: c.role,
        allowed: [...READ_ONLY_TYPES],
      });
    const holds = req.type === 'prepare' || req.type === 'freeze';
    if (holds) c.holding++;
    try {
      await this.ready;
      const result = await this.handle(c, req, this.backend!);
      // The client went away while its prepare or freeze was under way: nobody can release it.
      if (c.closed) return void this.backend!.service.releaseOwner(c.id);
      if (req.type === 'freeze') c.freezes.add((result as { freezeId: string }).freezeId);
      if (req.type === 'prepare') c.backups.add((result as { backupId: string }).backupId);
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
    } finally {
      if (holds) c.holding--;
    }
  }

  private async handle(c: Conn, req: Request, b: ControlBackend): Promise<unknown> {
    const svc = b.service;
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
        const role = this.opts.tokens.roleOf(req.token);
        if (!role) {
          this._onDidControl.fire({
            event: 'auth-failed',
            conn: c.id,
            remote: `${c.socket.remoteAddress ?? '?'}:${c.socket.remotePort ?? '?'}`,
            client: req.client ?? null,
          });
          this.fail(c, req.id, 'EPROTO_AUTH', 'wrong token');
          c.ws.close(CLOSE_AUTH, 'wrong token');
          throw Object.assign(new Error('auth'), { code: 'EPROTO_AUTH' });
        }
        c.role = role;
        c.client = req.client;
        this.guard.authenticated(c.socket);
        this._onDidControl.fire({
          event: 'authenticated',
          conn: c.id,
          remote: `${c.socket.remoteAddress ?? '?'}:${c.socket.remotePort ?? '?'}`,
          client: c.client ?? null,
          role,
        });
        return {
          version: PROTOCOL_VERSION,
          server: `twinfs/${process.pid}`,
          deviceId: b.mirror?.deviceId ?? null,
          mirrorRoot: b.mirror?.dataRoot ?? null,
          role,
        };
      }
      case 'status':
        return {
          fs: b.fs.status(),
          mirror: b.mirror?.status() ?? null,
          backup: svc.status(),
          ...(await b.statusExtras?.().catch((err) => ({ extrasError: String(err?.message ?? err) }))),
          connections: [...this.conns]
            .filter((x) => x.role)
            .map((x) => ({ id: x.id, client: x.client ?? null, role: x.role })),
          control: this.guard.stats(),
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
      case 'changes':
        return svc.changesPage(req.backupId, c.id, req.cursor);
      case 'release':
        return svc.release(req.backupId, c.id);
      case 'freeze':
        return svc.freeze(req.selector, { owner: c.id, timeoutMs: req.timeoutMs });
      case 'thaw':
        return svc.thaw(req.freezeId, c.id);
      case 'verify': {
        if (!b.mirror)
          throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror; start it with --mirror DIR');
        // Cached writes first: a write-back landing during the walk reaches the primary before
        // the mirror, and its file would show as different. A write-back that fails (a full
        // primary) is reported on the next fsync/close as always; the comparison still runs.
        await b.fs.flushAll().catch(() => undefined);
        return b.mirror.verify({ content: req.content });
      }
      case 'repair': {
        if (!b.mirror)
          throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror; start it with --mirror DIR');
        try {
          const result = await b.mirror.repair();
          this._onDidControl.fire({
            event: 'repaired',
            conn: c.id,
            result: result as unknown as Record<string, unknown>,
          });
          return result;
        } catch (err) {
          this._onDidControl.fire({
            event: 'repair-failed',
            conn: c.id,
            code: isTwinError(err) ? err.code : 'ETWIN_INTERNAL',
            message: (err as Error)?.message ?? String(err),
          });
          throw err;
        }
      }
      case 'report':
        return svc.report(req.backupId, c.id, req.report);
      case 'flush':
        await b.fs.flushAll({ sync: true }).catch((err) => {
          throw writebackError(err);
        });
        return { flushed: true };
    }
  }

  /** Authenticated connections now, by role. */
  connectionCounts(): Record<Role, number> {
    const n: Record<Role, number> = { operator: 0, read: 0 };
    for (const c of this.conns) if (c.role) n[c.role]++;
    return n;
  }

  async dispose(): Promise<void> {
    this.liveness.dispose();
    for (const u of this.unsubscribe) u.dispose();
    for (const c of this.conns) c.ws.terminate();
    this.guard.destroyAll();
    this.wss.close();
    const closed = new Promise<void>((r) => this.http.close(() => r()));
    // close() waits for every connection to end: one not yet upgraded (or a plain HTTP request
    // in progress) would hold the shutdown.
    this.http.closeAllConnections();
    await closed;
  }
}

/** The id of a refused message, if it is small enough to look at (for the error reply). */
function cheapId(text: string | null): string | number | null {
  if (text === null || text.length > 4096) return null;
  try {
    const id = JSON.parse(text)?.id;
    return typeof id === 'string' || typeof id === 'number' ? id : null;
  } catch {
    return null;
  }
}

/**
 * An http server, or an https one with the given certificate and key (the control channel and
 * the status page). ETWIN_TLS when the certificate or key cannot be used.
 */
export function createHttpServer(tls?: {
  cert: string | Buffer;
  key: string | Buffer;
}): http.Server | https.Server {
  try {
    return tls ? https.createServer({ cert: tls.cert, key: tls.key }) : http.createServer();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new TwinError(
      'ETWIN_TLS',
      `the TLS certificate or key cannot be used: ${e.code ?? ''} ${e.message}`.trim(),
      {
        errno: e.code,
      },
    );
  }
}
