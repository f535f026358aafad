import WebSocket from 'ws';
import type { z } from 'zod';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import { joinPages } from './change-pages.js';
import {
  type BackupReport,
  changesSchema,
  describeIssues,
  type GenerationMsg,
  type HelloResult,
  helloResultSchema,
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  type PrepareResult,
  prepareResultSchema,
  type ReplyOf,
  replySchemas,
  type SelectorMsg,
  serverMessageSchema,
} from './protocol.js';

/** An error reply from the server: the server's stable code, message and data. */
export class RemoteError extends Error {
  override readonly name = 'RemoteError';
  constructor(
    readonly code: string,
    message: string,
    readonly data: Record<string, unknown> = {},
  ) {
    super(message);
  }
  toJSON() {
    return { code: this.code, message: this.message, data: this.data };
  }
}

export interface ControlClientOptions {
  token: string;
  /** Name shown in the server's status. */
  client?: string;
  /** For wss:// with a self-signed certificate: the CA (PEM) to trust. */
  ca?: string | Buffer;
  /** Per-request timeout, ms (default 120000). */
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
}

/**
 * The control channel's client: connects, says hello, sends requests with ids and resolves
 * them with validated replies; server events arrive through onEvent.
 */
export class ControlClient {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: unknown) => void; timer: NodeJS.Timeout }
  >();
  private readonly _onEvent = new Emitter<{ event: string; data: unknown }>();
  readonly onEvent = this._onEvent.event;
  private readonly _onClose = new Emitter<{ code: number; reason: string }>();
  readonly onClose = this._onClose.event;
  hello!: HelloResult;
  private closed = false;

  private constructor(
    private readonly ws: WebSocket,
    private readonly opts: ControlClientOptions,
  ) {
    ws.on('message', (raw) => this.onMessage(String(raw)));
    ws.on('close', (code, reason) => {
      this.closed = true;
      const err = new TwinError(
        'ETWIN_CONTROL_CLOSED',
        `control connection closed (${code}${reason.length ? `: ${reason}` : ''})`,
        { code },
      );
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      this.pending.clear();
      this._onClose.fire({ code, reason: String(reason) });
    });
    ws.on('error', () => undefined);
  }

  static async connect(url: string, opts: ControlClientOptions): Promise<ControlClient> {
    const ws = new WebSocket(url, {
      maxPayload: 64 * MAX_MESSAGE_BYTES,
      ca: opts.ca,
      handshakeTimeout: opts.connectTimeoutMs ?? 10_000,
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', (err) =>
        reject(
          new TwinError(
            'ETWIN_CONTROL_UNREACHABLE',
            `cannot reach the twinfs server at ${url}: ${(err as Error).message}`,
            { url },
          ),
        ),
      );
      ws.once('unexpected-response', (_req, res) =>
        reject(
          new TwinError(
            'ETWIN_CONTROL_UNREACHABLE',
            `${url} answered HTTP ${res.statusCode}, not a twinfs control channel`,
            { url },
          ),
        ),
      );
    });
    const c = new ControlClient(ws, opts);
    try {
      const hello = await c.request('hello', {
        version: PROTOCOL_VERSION,
        token: opts.token,
        client: opts.client,
      });
      const parsed = helloResultSchema.safeParse(hello);
      if (!parsed.success)
        throw new TwinError('ETWIN_PROTOCOL', `bad hello reply: ${describeIssues(parsed.error)}`);
      c.hello = parsed.data;
      return c;
    } catch (err) {
      // Nobody gets this client: do not leave its socket open.
      ws.terminate();
      throw err;
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Sends a request and resolves with its result (rejects with a RemoteError). */
  request(type: string, payload: Record<string, unknown> = {}, timeoutMs?: number): Promise<unknown> {
    if (this.closed)
      return Promise.reject(new TwinError('ETWIN_CONTROL_CLOSED', 'control connection is closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const ms = timeoutMs ?? this.opts.requestTimeoutMs ?? 120_000;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TwinError('ETWIN_CONTROL_TIMEOUT', `no reply to ${type} within ${ms} ms`, { type }));
      }, ms);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...payload, type, id }));
    });
  }

  /**
   * Sends a request and resolves with its result checked against the reply schema of its type
   * (protocol.ts replySchemas): a reply that does not match is ETWIN_PROTOCOL.
   */
  async call<T extends keyof typeof replySchemas>(
    type: T,
    payload: Record<string, unknown> = {},
    timeoutMs?: number,
  ): Promise<ReplyOf<T>> {
    const r = await this.request(type, payload, timeoutMs);
    const parsed = (replySchemas[type] as unknown as z.ZodType<ReplyOf<T>>).safeParse(r);
    if (!parsed.success)
      throw new TwinError('ETWIN_PROTOCOL', `bad ${type} reply: ${describeIssues(parsed.error)}`);
    return parsed.data;
  }

  async prepare(
    selector: SelectorMsg,
    opts: { leaseMs?: number; maxStallMs?: number; listItems?: boolean; since?: GenerationMsg } = {},
  ): Promise<PrepareResult> {
    const r = await this.request('prepare', { selector, ...opts });
    const parsed = prepareResultSchema.safeParse(r);
    if (!parsed.success)
      throw new TwinError('ETWIN_PROTOCOL', `bad prepare reply: ${describeIssues(parsed.error)}`);
    const prep = parsed.data;
    // A long change answer comes in pages: fetched while the split is held, joined into one.
    if (prep.changes?.more !== undefined) {
      const pages = [prep.changes];
      for (let more: string | undefined = prep.changes.more; more !== undefined; ) {
        const page = changesSchema.safeParse(
          await this.request('changes', { backupId: prep.backupId, cursor: more }),
        );
        if (!page.success)
          throw new TwinError('ETWIN_PROTOCOL', `bad changes page: ${describeIssues(page.error)}`);
        pages.push(page.data);
        more = page.data.more;
      }
      prep.changes = joinPages(pages);
    }
    return prep;
  }

  release(backupId: string): Promise<ReplyOf<'release'>> {
    return this.call('release', { backupId });
  }

  renew(backupId: string, leaseMs?: number): Promise<ReplyOf<'renew'>> {
    return this.call('renew', { backupId, leaseMs });
  }

  /** Tells the server how the copy of a backup this connection prepared goes (request `report`). */
  report(backupId: string, report: BackupReport): Promise<unknown> {
    return this.request('report', { backupId, report });
  }

  /** Sends raw text (tests of malformed input use this). */
  sendRaw(text: string | Buffer): void {
    this.ws.send(text);
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close(1000, 'bye');
      setTimeout(() => {
        this.ws.terminate();
        resolve();
      }, 2000).unref();
    });
  }

  private onMessage(text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    const parsed = serverMessageSchema.safeParse(msg);
    if (!parsed.success) return;
    const m = parsed.data;
    if (m.type === 'event') {
      this._onEvent.fire({ event: m.event, data: m.data });
      return;
    }
    if (m.id === null || typeof m.id !== 'number') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.type === 'result') p.resolve(m.result);
    else p.reject(new RemoteError(m.error.code, m.error.message, m.error.data ?? {}));
  }
}
