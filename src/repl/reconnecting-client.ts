import { delay } from '../common/async.js';
import { Emitter } from '../common/event.js';
import { ControlClient } from '../control/client.js';

export interface ReconnectingClientOptions {
  /** Name shown in the server's status (default twinfs-repl). */
  client?: string;
  /** CA (PEM) to trust for wss://. */
  ca?: string | Buffer;
  /** First wait before reconnecting, ms (default 500); doubled up to maxDelayMs. */
  initialDelayMs?: number;
  /** Longest wait between attempts, ms (default 5000). */
  maxDelayMs?: number;
}

/**
 * A control client that survives server restarts: when the connection drops it reconnects in
 * the background (0.5 s, 1 s, 2 s, ... up to 5 s apart) and says so through
 * onDidChangeConnection. Events from whichever connection is current are forwarded.
 *
 * Freezes and splits belong to a connection and end with it (docs/protocol.md), so after a
 * reconnect nothing the old connection held is held any more; the REPL says "reconnected" and
 * the operator sees the state afresh with `status`.
 */
export class ReconnectingClient {
  private current: ControlClient | null = null;
  private connecting: Promise<ControlClient> | null = null;
  private disposed = false;
  /** The connection dropped and no new one is up yet. */
  private lost = false;
  private readonly _onEvent = new Emitter<{ event: string; data: unknown }>();
  readonly onEvent = this._onEvent.event;
  private readonly _onDidChangeConnection = new Emitter<{ connected: boolean; error?: string }>();
  readonly onDidChangeConnection = this._onDidChangeConnection.event;

  constructor(
    private readonly url: string,
    private readonly token: string,
    private readonly opts: ReconnectingClientOptions = {},
  ) {}

  /** The connected client; waits for a reconnect in progress, or connects now. */
  get(): Promise<ControlClient> {
    if (this.current && !this.current.isClosed) return Promise.resolve(this.current);
    this.connecting ??= this.connectOnce().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  get isConnected(): boolean {
    return Boolean(this.current && !this.current.isClosed);
  }

  private async connectOnce(): Promise<ControlClient> {
    const c = await ControlClient.connect(this.url, {
      token: this.token,
      ca: this.opts.ca,
      client: this.opts.client ?? 'twinfs-repl',
    });
    if (this.disposed) {
      await c.close();
      throw new Error('disposed');
    }
    this.current = c;
    c.onEvent((e) => this._onEvent.fire(e));
    c.onClose(() => {
      if (this.disposed || this.current !== c) return;
      this.current = null;
      this.lost = true;
      this._onDidChangeConnection.fire({ connected: false });
      void this.reconnectLoop();
    });
    if (this.lost) {
      this.lost = false;
      this._onDidChangeConnection.fire({ connected: true });
    }
    return c;
  }

  private async reconnectLoop(): Promise<void> {
    let wait = this.opts.initialDelayMs ?? 500;
    while (!this.disposed && !this.current) {
      await delay(wait);
      if (this.disposed || this.current) return;
      try {
        await this.get();
        return;
      } catch (err) {
        wait = Math.min(this.opts.maxDelayMs ?? 5000, wait * 2);
        if ((err as { code?: string }).code === 'EPROTO_AUTH') {
          this._onDidChangeConnection.fire({
            connected: false,
            error: 'the server no longer accepts this token',
          });
          return;
        }
      }
    }
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    await this.current?.close();
  }
}
