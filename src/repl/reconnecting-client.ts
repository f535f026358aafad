import { ControlClient } from '../control/client.js';
import { Emitter } from '../common/event.js';
import { delay } from '../common/async.js';

/**
 * A control client that survives server restarts: when the connection drops it reconnects in
 * the background (1 s, 2 s, ... up to 10 s apart) and says so through onDidChangeConnection.
 * Events from whichever connection is current are forwarded.
 */
export class ReconnectingClient {
  private current: ControlClient | null = null;
  private connecting: Promise<ControlClient> | null = null;
  private disposed = false;
  private readonly _onEvent = new Emitter<{ event: string; data: unknown }>();
  readonly onEvent = this._onEvent.event;
  private readonly _onDidChangeConnection = new Emitter<{ connected: boolean; error?: string }>();
  readonly onDidChangeConnection = this._onDidChangeConnection.event;

  constructor(
    private readonly url: string,
    private readonly token: string,
    private readonly clientName = 'twinfs-repl',
  ) {}

  /** The connected client; waits for a reconnect in progress, or connects now. */
  get(): Promise<ControlClient> {
    if (this.current && !this.current.isClosed) return Promise.resolve(this.current);
    this.connecting ??= this.connectOnce().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private async connectOnce(): Promise<ControlClient> {
    const c = await ControlClient.connect(this.url, { token: this.token, client: this.clientName });
    this.current = c;
    c.onEvent((e) => this._onEvent.fire(e));
    c.onClose(() => {
      if (this.disposed || this.current !== c) return;
      this.current = null;
      this._onDidChangeConnection.fire({ connected: false });
      void this.reconnectLoop();
    });
    return c;
  }

  private async reconnectLoop(): Promise<void> {
    let wait = 1000;
    while (!this.disposed && !this.current) {
      await delay(wait);
      if (this.disposed || this.current) return;
      try {
        await this.get();
        this._onDidChangeConnection.fire({ connected: true });
        return;
      } catch (err) {
        wait = Math.min(10_000, wait * 2);
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
