import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { delay } from '../common/async.js';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import type { Disposable } from '../common/lifecycle.js';
import {
  alive,
  assertPortFree,
  canConnect,
  connectHost,
  lastLines,
  readFrom,
  signal,
  stopProcess,
} from './process-helpers.js';
import { renderSmbConf, type SambaLayout, sambaLayout } from './samba-conf.js';
import {
  ensureUnixUsers,
  findSambaTools,
  listSessions,
  processesUsingConf,
  run,
  type SambaTools,
  type SmbClientSession,
  syncPassdb,
  userNameOf,
} from './samba-tools.js';
import { type ResolvedSmbSettings, resolveSmbSettings, type SmbSettings } from './settings.js';

export interface SmbServiceOptions {
  settings: SmbSettings;
  /** The directory the share serves: the twinfs mount point. */
  sharePath: string;
  /** The service's own directory (smb.conf, passdb, locks, logs): STATE_DIR/smb. */
  stateDir: string;
  /** Environment whose PATH the Samba programs are looked up on. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** How long smbd may take to answer after it was started, ms. Default 15000. */
  startTimeoutMs?: number;
  /** First restart delay, ms (doubles after each quick death or failed restart). Default 500. */
  restartDelayMs?: number;
  /** Longest restart delay, ms. Default 30000. */
  maxRestartDelayMs?: number;
  /** Failed restarts in a row after which the service gives up. Default 8. */
  maxRestartFailures?: number;
  /**
   * Health check: every this many ms a client session (smbclient, like the start check) must
   * succeed within healthTimeoutMs; after healthFailures failures in a row smbd counts as hung
   * and is killed and restarted. 0 turns it off. Default 15000.
   */
  healthIntervalMs?: number;
  /** Default 10000. */
  healthTimeoutMs?: number;
  /** Default 2. */
  healthFailures?: number;
}

export type SmbState = 'stopped' | 'starting' | 'running' | 'restarting' | 'failed';

export type SmbEvent =
  | { event: 'smb-started'; pid: number; host: string; port: number; share: string; url: string }
  | { event: 'smb-failed'; code: string; message: string; gaveUp: boolean }
  | { event: 'smb-died'; pid: number; exitCode: number | null; signal: string | null; restartInMs: number }
  | { event: 'smb-restarted'; pid: number; restarts: number }
  | { event: 'smb-hung'; pid: number; failures: number; message: string }
  | { event: 'smb-stopped' };

export interface SmbStatus {
  state: SmbState;
  running: boolean;
  pid: number | null;
  host: string | null;
  port: number | null;
  share: string | null;
  url: string | null;
  readOnly: boolean;
  guest: boolean;
  users: string[];
  /** Restarts after unexpected deaths since the service started. */
  restarts: number;
  startedAt: number | null;
  lastError: { code: string; message: string } | null;
  confFile: string;
}

/** A smbd that died within this long of starting counts as a failed start (the delay grows). */
const QUICK_DEATH_MS = 10_000;

/**
 * Serves the twinfs mount over SMB with a supervised smbd. `start()` writes smb.conf and the
 * passdb into the service's own state directory, starts smbd, and checks that it answers a
 * real SMB session; it never throws — the outcome arrives as an event (`smb-started` or
 * `smb-failed`) so that the local mount goes on serving whatever happens to SMB. An smbd that
 * dies is restarted with a growing, bounded delay. `dispose()` stops smbd and every helper
 * process it spawned; call it before unmounting.
 */
export class SmbService implements Disposable {
  readonly layout: SambaLayout;
  private readonly _onEvent = new Emitter<SmbEvent>();
  readonly onEvent = this._onEvent.event;

  private state: SmbState = 'stopped';
  private settings: ResolvedSmbSettings | undefined;
  private tools: SambaTools | undefined;
  private child: ChildProcess | undefined;
  private childStartedAt = 0;
  private startedAt: number | null = null;
  private restarts = 0;
  private failuresInRow = 0;
  private lastError: { code: string; message: string } | null = null;
  private restartTimer: NodeJS.Timeout | undefined;
  private healthTimer: NodeJS.Timeout | undefined;
  private healthFailuresInRow = 0;
  private disposed = false;
  private starting: Promise<SmbStatus> | undefined;

  constructor(private readonly opts: SmbServiceOptions) {
    this.layout = sambaLayout(opts.stateDir);
  }

  /** Starts smbd (once); resolves with the status whether or not that worked. */
  start(): Promise<SmbStatus> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<SmbStatus> {
    this.state = 'starting';
    try {
      this.settings = resolveSmbSettings(this.opts.settings);
      this.tools = await findSambaTools(this.opts.env ?? process.env);
      if ((process.getuid?.() ?? 0) !== 0)
        throw new TwinError(
          'ETWIN_SMB_START',
          'serving SMB needs root: smbd switches to the identity of each user',
        );
      // A taken port is the likeliest mistake: say so before creating anything.
      await assertPortFree(this.settings.host, this.settings.port);
      await this.prepareState();
      await this.launch();
      if (this.disposed) return this.snapshot();
      this.startedAt = Date.now();
      this.state = 'running';
      this.fire({ event: 'smb-started', pid: this.child!.pid!, ...this.where() });
      this.scheduleHealthCheck();
    } catch (err) {
      this.fail(err, false);
    }
    return this.snapshot();
  }

  /** The service's state without asking Samba anything. */
  snapshot(): SmbStatus {
    const s = this.settings;
    return {
      state: this.state,
      running: this.state === 'running',
      pid: this.state === 'running' ? (this.child?.pid ?? null) : null,
      host: s?.host ?? null,
      port: s?.port ?? null,
      share: s?.share ?? null,
      url: s ? this.where().url : null,
      readOnly: s?.readOnly ?? false,
      guest: s?.guest ?? false,
      users: s?.users.map((u) => u.name) ?? [],
      restarts: this.restarts,
      startedAt: this.startedAt,
      lastError: this.lastError,
      confFile: this.layout.conf,
    };
  }

  /** The state plus the clients connected right now (smbstatus with the service's config). */
  async status(): Promise<SmbStatus & { clients: SmbClientSession[] }> {
    const clients =
      this.state === 'running' && this.tools ? await listSessions(this.tools, this.layout.conf) : [];
    return { ...this.snapshot(), clients };
  }

  /** Stops smbd and its helpers (SIGTERM, SIGKILL after 5 s). Safe to call more than once. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    clearTimeout(this.restartTimer);
    clearTimeout(this.healthTimer);
    const wasUp = this.state === 'running' || this.state === 'restarting' || this.state === 'starting';
    const child = this.child;
    this.child = undefined;
    if (child) await stopProcess(child, 5000);
    await this.killLeftovers();
    this.state = 'stopped';
    if (wasUp) this.fire({ event: 'smb-stopped' });
    this._onEvent.dispose();
  }

  // ---- starting -------------------------------------------------------------------------------

  private async prepareState(): Promise<void> {
    const l = this.layout;
    const s = this.settings!;
    await fsp.mkdir(l.root, { recursive: true, mode: 0o700 });
    await fsp.chmod(l.root, 0o700);
    for (const d of [l.private, l.lock, l.state, l.cache, l.pid, l.ncalrpc, l.log])
      await fsp.mkdir(d, { recursive: true, mode: 0o700 });
    // An smbd left over by a twinfs that was killed would hold the port and the tdb files.
    await this.killLeftovers();
    const forceUser = s.forceUser ?? (await this.ownerOfShare());
    const text = renderSmbConf({ layout: l, settings: s, sharePath: this.opts.sharePath, forceUser });
    const tmp = `${l.conf}.tmp`;
    await fsp.writeFile(tmp, text, { mode: 0o600 });
    await fsp.rename(tmp, l.conf);
    const accounts = [...s.users.map((u) => u.name), ...(s.forceUser ? [s.forceUser] : [])];
    await ensureUnixUsers(accounts);
    await syncPassdb(this.tools!, l.conf, s.users);
  }

  private async ownerOfShare(): Promise<string> {
    const st = await fsp.stat(this.opts.sharePath);
    const name = await userNameOf(st.uid);
    if (!name)
      throw new TwinError(
        'ETWIN_SMB_CONFIG',
        `the mount root is owned by uid ${st.uid}, which has no Unix account name: set "forceUser" in "smb"`,
        { uid: st.uid },
      );
    return name;
  }

  /**
   * Starts smbd and waits until it accepts TCP connections and serves a real SMB session on
   * the share; kills it and throws a TwinError otherwise.
   */
  private async launch(): Promise<void> {
    const s = this.settings!;
    const tools = this.tools!;
    await assertPortFree(s.host, s.port);
    const logStart = await fsp.stat(this.layout.logFile).then(
      (st) => st.size,
      () => 0,
    );
    const smbdArgs = ['--foreground', '--no-process-group', `--configfile=${this.layout.conf}`];
    // setpriv makes the kernel send smbd SIGTERM when twinfs dies, even by SIGKILL; its own
    // session keeps a terminal's Ctrl-C away from it (twinfs stops it in order instead).
    const [file, args] = tools.setpriv
      ? [tools.setpriv, ['--pdeathsig', 'SIGTERM', '--', tools.smbd, ...smbdArgs]]
      : [tools.smbd, smbdArgs];
    if (this.disposed) return;
    // stdin is /dev/null: smbd in the foreground exits when a stdin pipe reaches its end.
    const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr = (stderr + String(d)).slice(-4000)));
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', (err) => {
        stderr += String(err.message);
        resolve({ code: null, signal: null });
      });
    });
    this.child = child;
    this.childStartedAt = Date.now();
    const why = async (): Promise<string> => {
      const log = await readFrom(this.layout.logFile, logStart);
      return lastLines(`${log}\n${stderr}`, 6);
    };
    const fail = async (code: 'ETWIN_SMB_START' | 'ETWIN_SMB_PORT_BUSY', message: string) => {
      if (this.child === child) this.child = undefined;
      await stopProcess(child, 3000);
      return new TwinError(code, message, { host: s.host, port: s.port });
    };

    const deadline = Date.now() + (this.opts.startTimeoutMs ?? 15_000);
    let exit: { code: number | null; signal: string | null } | undefined;
    void exited.then((e) => (exit = e));
    for (;;) {
      if (exit) {
        const text = await why();
        if (/address already in use/i.test(text))
          throw await fail('ETWIN_SMB_PORT_BUSY', `SMB port ${s.host}:${s.port} is already in use`);
        throw await fail(
          'ETWIN_SMB_START',
          `smbd exited while starting (${exit.signal ?? `status ${exit.code}`}): ${text || 'no output'}`,
        );
      }
      if (this.disposed) return;
      if (await canConnect(connectHost(s.host), s.port)) break;
      if (Date.now() > deadline)
        throw await fail(
          'ETWIN_SMB_START',
          `smbd did not answer on ${s.host}:${s.port} within ${this.opts.startTimeoutMs ?? 15_000} ms: ${await why()}`,
        );
      await delay(100);
    }
    if (tools.smbclient) {
      const r = await this.probeSession(tools.smbclient);
      if (r.code !== 0 && !this.disposed)
        throw await fail(
          'ETWIN_SMB_START',
          `smbd runs but a test session on share "${s.share}" failed: ${lastLines(r.stdout + r.stderr, 3)}`,
        );
    }
    // Supervise from here on: an exit that nobody asked for is a death.
    void exited.then((e) => this.onExit(child, e.code, e.signal));
  }

  /** Logs in like a client (first configured user, or as guest) and lists the share root. */
  private probeSession(smbclient: string, timeoutMs = 20_000) {
    const s = this.settings!;
    const user = s.users[0];
    const args = [
      `//TWINFS/${s.share}`,
      '-I',
      connectHost(s.host),
      '-p',
      String(s.port),
      '-s',
      this.layout.conf,
      '-m',
      'SMB3',
      ...(user ? ['-U', user.name] : ['-N']),
      '-c',
      'ls',
    ];
    // The password travels in the environment (PASSWD), never on a command line others can read.
    return run(smbclient, args, {
      env: { ...process.env, PASSWD: user?.password ?? '' },
      timeoutMs,
    });
  }

  // ---- supervision ----------------------------------------------------------------------------

  /**
   * A hung smbd (stopped, deadlocked, stuck on a lock) keeps its port and its pid: only a
   * session shows it. Without smbclient there is nothing to check with.
   */
  private scheduleHealthCheck(): void {
    const every = this.opts.healthIntervalMs ?? 15_000;
    if (every <= 0 || !this.tools?.smbclient || this.disposed) return;
    clearTimeout(this.healthTimer);
    this.healthTimer = setTimeout(() => void this.checkHealth(), every);
    this.healthTimer.unref();
  }

  private async checkHealth(): Promise<void> {
    const child = this.child;
    if (this.disposed || this.state !== 'running' || !child) return;
    const r = await this.probeSession(this.tools!.smbclient!, this.opts.healthTimeoutMs ?? 10_000);
    if (this.disposed || this.child !== child || this.state !== 'running') return;
    if (r.code === 0) {
      this.healthFailuresInRow = 0;
    } else {
      this.healthFailuresInRow++;
      if (this.healthFailuresInRow >= (this.opts.healthFailures ?? 2)) {
        const message = `no SMB session in ${this.healthFailuresInRow} checks in a row: ${
          lastLines(r.stdout + r.stderr, 2) || (r.code === null ? 'timed out' : `smbclient status ${r.code}`)
        }`;
        this.healthFailuresInRow = 0;
        this.lastError = { code: 'ETWIN_SMB_HUNG', message };
        this.fire({
          event: 'smb-hung',
          pid: child.pid ?? 0,
          failures: this.opts.healthFailures ?? 2,
          message,
        });
        // The exit handler restarts it, as after any death (a stopped process dies of SIGKILL).
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
        return;
      }
    }
    this.scheduleHealthCheck();
  }

  private onExit(child: ChildProcess, code: number | null, signal: string | null): void {
    if (this.disposed || this.child !== child) return;
    this.child = undefined;
    const quick = Date.now() - this.childStartedAt < QUICK_DEATH_MS;
    this.failuresInRow = quick ? this.failuresInRow + 1 : 0;
    this.state = 'restarting';
    const wait = this.restartDelay();
    this.fire({ event: 'smb-died', pid: child.pid ?? 0, exitCode: code, signal, restartInMs: wait });
    this.scheduleRestart(wait);
  }

  private restartDelay(): number {
    const first = this.opts.restartDelayMs ?? 500;
    return Math.min(first * 2 ** this.failuresInRow, this.opts.maxRestartDelayMs ?? 30_000);
  }

  private scheduleRestart(ms: number): void {
    this.restartTimer = setTimeout(() => void this.restart(), ms);
  }

  private async restart(): Promise<void> {
    if (this.disposed) return;
    try {
      // Children of the dead smbd may still serve old sessions and hold locks: start clean.
      await this.killLeftovers();
      await this.launch();
      if (this.disposed) return;
      this.restarts++;
      this.state = 'running';
      this.startedAt = Date.now();
      this.lastError = null;
      this.fire({ event: 'smb-restarted', pid: this.child!.pid!, restarts: this.restarts });
      this.scheduleHealthCheck();
    } catch (err) {
      if (this.disposed) return;
      this.failuresInRow++;
      const max = this.opts.maxRestartFailures ?? 8;
      if (this.failuresInRow >= max) {
        this.fail(err, true);
        return;
      }
      this.lastError = errorInfo(err);
      this.scheduleRestart(this.restartDelay());
    }
  }

  private fail(err: unknown, gaveUp: boolean): void {
    this.state = 'failed';
    this.lastError = errorInfo(err);
    this.fire({ event: 'smb-failed', ...this.lastError, gaveUp });
  }

  private async killLeftovers(): Promise<void> {
    let pids = await processesUsingConf(this.layout.conf);
    if (pids.length === 0) return;
    for (const pid of pids) signal(pid, 'SIGTERM');
    for (let i = 0; i < 30 && pids.length > 0; i++) {
      await delay(100);
      pids = pids.filter(alive);
    }
    for (const pid of pids) signal(pid, 'SIGKILL');
  }

  private where() {
    const s = this.settings!;
    const host = s.host.includes(':') ? `[${s.host}]` : s.host;
    return { host: s.host, port: s.port, share: s.share, url: `smb://${host}:${s.port}/${s.share}` };
  }

  private fire(e: SmbEvent): void {
    this._onEvent.fire(e);
  }
}

/** One line for humans per event (the --json form is the event itself). */
export function describeSmbEvent(e: SmbEvent): string {
  switch (e.event) {
    case 'smb-started':
      return `SMB: serving share "${e.share}" at ${e.url} (smbd pid ${e.pid})`;
    case 'smb-failed':
      return `SMB ${e.gaveUp ? 'gave up restarting' : 'failed'}: ${e.code}: ${e.message} (the local mount keeps serving)`;
    case 'smb-died':
      return `SMB: smbd (pid ${e.pid}) died (${e.signal ?? `status ${e.exitCode}`}); restarting in ${e.restartInMs} ms`;
    case 'smb-restarted':
      return `SMB: smbd restarted (pid ${e.pid}, restart ${e.restarts})`;
    case 'smb-hung':
      return `SMB: smbd (pid ${e.pid}) does not answer (${e.message}); killing and restarting it`;
    case 'smb-stopped':
      return 'SMB: smbd stopped';
  }
}

function errorInfo(err: unknown): { code: string; message: string } {
  if (err instanceof TwinError) return { code: err.code, message: err.message };
  const e = err as NodeJS.ErrnoException;
  return { code: 'ETWIN_SMB_START', message: e?.message ?? String(err) };
}
