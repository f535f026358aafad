import { sh, shOk } from '../helpers/proc.js';

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * A program in a real pseudo-terminal: a tmux session on a private tmux server (its own socket
 * file, in the test's temporary directory, so the tests neither see nor touch anyone else's
 * sessions and leave nothing behind). Keys go in with send-keys, the
 * screen comes back with capture-pane. When the program exits, the pane shows `[exit N]` and
 * stays, so its last output can still be read.
 */
export class TmuxTerminal {
  private constructor(
    private readonly socket: string,
    readonly session: string,
  ) {}

  static async start(
    command: string,
    opts: {
      env?: Record<string, string>;
      cwd?: string;
      width?: number;
      height?: number;
      /** The tmux server's socket file (tmux -S). */
      socket: string;
    },
  ): Promise<TmuxTerminal> {
    const socket = opts.socket;
    const session = `s${Math.random().toString(36).slice(2, 8)}`;
    const env = Object.entries(opts.env ?? {})
      .map(([k, v]) => `${k}=${q(v)}`)
      .join(' ');
    const inner = `${env ? `env ${env} ` : ''}${command}; echo "[exit $?]"; sleep 600`;
    const cmd = `tmux -S ${q(socket)} -f /dev/null new-session -d -s ${session} -x ${opts.width ?? 160} -y ${
      opts.height ?? 50
    } ${opts.cwd ? `-c ${q(opts.cwd)} ` : ''}${q(`sh -c ${q(inner)}`)}`;
    // When the previous test killed the server's last session, the server exits; a new session
    // that reaches it while it is exiting gets "server exited unexpectedly": start it again.
    for (let attempt = 1; ; attempt++) {
      const r = await sh(cmd, { timeoutMs: 10_000 });
      if (r.code === 0) return new TmuxTerminal(socket, session);
      if (attempt >= 3 || !/server exited unexpectedly/.test(r.stderr + r.stdout))
        throw new Error(`command failed (${r.code}): ${cmd}\n${r.stderr}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }

  /** Types text literally (no key names). */
  async type(text: string): Promise<void> {
    await shOk(`tmux -S ${q(this.socket)} send-keys -t ${this.session} -l -- ${q(text)}`, {
      timeoutMs: 5000,
    });
  }

  /** Presses keys by tmux name: Enter, Tab, Up, C-c, C-d, C-u. */
  async press(...keys: string[]): Promise<void> {
    for (const k of keys) {
      await shOk(`tmux -S ${q(this.socket)} send-keys -t ${this.session} ${k}`, { timeoutMs: 5000 });
      // Key by key: a Tab right after another must reach readline as a second Tab.
      await new Promise((r) => setTimeout(r, 60));
    }
  }

  /** The screen and the scrollback, wrapped lines joined, trailing blank lines dropped. */
  async screen(): Promise<string> {
    const r = await sh(`tmux -S ${q(this.socket)} capture-pane -p -J -S -500 -t ${this.session}`, {
      timeoutMs: 5000,
    });
    return r.stdout.replace(/\s+$/, '');
  }

  /** The last non-empty line on the screen (where the prompt and the typed line are). */
  async lastLine(): Promise<string> {
    const lines = (await this.screen()).split('\n');
    return lines[lines.length - 1] ?? '';
  }

  /** Polls the screen until pred holds; throws with the screen if it does not within timeoutMs. */
  async waitFor(pred: RegExp | ((screen: string) => boolean), timeoutMs = 10_000): Promise<string> {
    const test = typeof pred === 'function' ? pred : (s: string) => pred.test(s);
    const until = Date.now() + timeoutMs;
    let s = '';
    for (;;) {
      s = await this.screen();
      if (test(s)) return s;
      if (Date.now() > until)
        throw new Error(`screen did not show ${String(pred)} within ${timeoutMs} ms:\n${s}`);
      await new Promise((r) => setTimeout(r, 80));
    }
  }

  async kill(): Promise<void> {
    await sh(`tmux -S ${q(this.socket)} kill-session -t ${this.session} 2>/dev/null`, { timeoutMs: 5000 });
  }

  /** Ends the private tmux server on socket and everything in it (for afterAll). */
  static async killServer(socket: string): Promise<void> {
    await sh(`tmux -S ${q(socket)} kill-server 2>/dev/null; rm -f ${q(socket)}`, { timeoutMs: 5000 });
  }
}
