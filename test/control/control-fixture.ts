import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import WebSocket from 'ws';
import { ControlClient, type ControlClientOptions } from '../../src/control/client.js';
import type { GenerationMsg } from '../../src/control/protocol.js';
import type { NativeChangeStats } from '../../src/fusefs/native-stats.js';
import { pyIn } from '../helpers/posix.js';
import { controlServeArgs, ROOT, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/**
 * Helpers for the control-channel suites: a `twinfs serve` process with a mirror and a control
 * channel, clients (in-process and raw websockets), and writer child processes that log how
 * long each write took.
 */

export const FIXTURES = path.join(ROOT, 'test/control/fixtures');
/** The built client, for child processes (they run plain node, not vitest). */
export const CLIENT_JS = path.join(ROOT, 'dist/control/client.js');

export interface ControlFixture {
  srv: ServerHandle;
  base: string;
  primary: string;
  mnt: string;
  /** The mirror directory given to --mirror. */
  mirror: string;
  /** The mirror's data root (what prepare calls mirrorRoot). */
  mirrorRoot: string;
  deviceId: string;
  url: string;
  tokenFile: string;
  token: string;
  /** Connects and says hello; closed by close(). */
  connect(opts?: Partial<ControlClientOptions>): Promise<ControlClient>;
  /** A raw websocket (no hello), for malformed-input tests; closed by close(). */
  raw(opts?: WebSocket.ClientOptions): Promise<RawConn>;
  /** Kills the server and every client and child it started, and removes the temp dirs. */
  close(): Promise<void>;
}

export async function startControlFixture(
  opts: { args?: string[]; prefix?: string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<ControlFixture> {
  const t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc');
  const tokenFile = path.join(t.dirs.etc!, 'control.token');
  const closers: Array<() => Promise<void> | void> = [];
  let srv: ServerHandle | undefined;
  try {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: controlServeArgs(t.dirs, tokenFile, opts.args),
      prefix: opts.prefix,
      env: opts.env,
    });
  } catch (err) {
    await t.cleanup();
    throw err;
  }
  const mounted = srv.events.find((e) => e.event === 'mounted') as any;
  const url: string = mounted.control.url;
  const token = (await fsp.readFile(tokenFile, 'utf8')).trim();
  const fx: ControlFixture = {
    srv,
    base: t.base,
    primary: t.dirs.primary!,
    mnt: t.dirs.mnt!,
    mirror: t.dirs.mirror!,
    mirrorRoot: mounted.mirror.mirrorRoot,
    deviceId: mounted.mirror.deviceId,
    url,
    tokenFile,
    token,
    async connect(o = {}) {
      const c = await ControlClient.connect(url, {
        token: fx.token,
        client: 'test',
        requestTimeoutMs: 30_000,
        ...o,
      });
      closers.push(() => c.close());
      return c;
    },
    async raw(o = {}) {
      const r = await RawConn.open(url, o);
      closers.push(() => r.terminate());
      return r;
    },
    async close() {
      for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
      await srv!.kill();
      await t.cleanup();
    },
  };
  return fx;
}

/** A websocket speaking raw text: send anything, collect every message and the close code. */
export class RawConn {
  readonly messages: any[] = [];
  closed: { code: number; reason: string } | null = null;
  private waiters: Array<() => void> = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d) => {
      try {
        this.messages.push(JSON.parse(String(d)));
      } catch {
        this.messages.push({ unparsable: String(d) });
      }
      this.wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: String(reason) };
      this.wake();
    });
    ws.on('error', () => undefined);
  }

  static open(url: string, opts: WebSocket.ClientOptions = {}): Promise<RawConn> {
    const ws = new WebSocket(url, opts);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new RawConn(ws)));
      ws.once('error', reject);
    });
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === 'string' || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg));
  }

  /** Resolves with the first message (not yet taken) matching pred. */
  async next(pred: (m: any) => boolean = () => true, timeoutMs = 10_000): Promise<any> {
    await this.until(() => this.messages.some(pred), timeoutMs, 'message');
    const i = this.messages.findIndex(pred);
    return this.messages.splice(i, 1)[0];
  }

  /** The first message (not yet taken) matching pred, or null if the connection closes first. */
  async nextOrClose(pred: (m: any) => boolean, timeoutMs = 10_000): Promise<any | null> {
    await this.until(() => this.closed !== null || this.messages.some(pred), timeoutMs, 'message or close');
    const i = this.messages.findIndex(pred);
    return i >= 0 ? this.messages.splice(i, 1)[0] : null;
  }

  /** Sends a request and resolves with the reply (result or error) carrying its id. */
  async request(msg: { id: string | number } & Record<string, unknown>): Promise<any> {
    this.send(msg);
    return this.next((m) => m.id === msg.id && (m.type === 'result' || m.type === 'error'));
  }

  async hello(token: string): Promise<any> {
    return this.request({ type: 'hello', id: 'hello', version: 1, token });
  }

  async whenClosed(timeoutMs = 10_000): Promise<{ code: number; reason: string }> {
    await this.until(() => this.closed !== null, timeoutMs, 'close');
    return this.closed!;
  }

  terminate(): void {
    this.ws.terminate();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > end)
        throw new Error(`no ${what} within ${timeoutMs} ms (got ${JSON.stringify(this.messages)})`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  }
}

export interface WriterRecord {
  n: number;
  writeMs: number;
  fsyncMs: number;
  /** Date.now() when the write started. */
  at: number;
}

/** A record-writer.mjs child process and what it reported so far. */
export class Writer {
  readonly records: WriterRecord[] = [];
  opened = false;
  done = false;
  error: string | null = null;
  stderr = '';
  readonly exited: Promise<number | null>;
  private buf = '';

  constructor(
    readonly proc: ChildProcess,
    readonly file: string,
  ) {
    proc.stdout!.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).split(' ');
        this.buf = this.buf.slice(i + 1);
        if (line[0] === 'rec')
          this.records.push({
            n: Number(line[1]),
            writeMs: Number(line[2]),
            fsyncMs: Number(line[3]),
            at: Number(line[4]),
          });
        else if (line[0] === 'open') this.opened = true;
        else if (line[0] === 'done') this.done = true;
        else if (line[0] === 'error') this.error = line[1] ?? 'unknown';
      }
    });
    proc.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((r) => proc.on('exit', (code) => r(code)));
  }

  /** Records acknowledged so far (the writer printed them after write, and fsync if asked). */
  get acked(): number {
    return this.records.length;
  }

  maxWriteMs(from = 0): number {
    return Math.max(0, ...this.records.slice(from).map((r) => r.writeMs));
  }

  maxFsyncMs(from = 0): number {
    return Math.max(0, ...this.records.slice(from).map((r) => r.fsyncMs));
  }

  async waitFor(records: number, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.acked < records) {
      if (this.error || this.proc.exitCode !== null)
        throw new Error(`writer on ${this.file} stopped: ${this.error ?? this.proc.exitCode} ${this.stderr}`);
      if (Date.now() > end)
        throw new Error(`writer on ${this.file}: ${this.acked} of ${records} records in ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** SIGKILL (a record in progress is lost or whole: one request) and wait for the exit. */
  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }
}

/** Starts a writer appending size-byte records to file (count records, or until killed). */
export interface WriterOptions {
  file: string;
  /** Record size: a multiple of 4 KiB, at most 128 KiB (one FUSE write request). */
  size: number;
  /** fsync after each record (else the data stays in the write-back cache). */
  fsync: boolean;
  /** Records to write (default: until killed). */
  count?: number;
  /** Pause between records, ms, after the first `burst` records. */
  intervalMs?: number;
  burst?: number;
  /** Number of the first record (written at start * size). */
  start?: number;
  /** Open without truncating. */
  keep?: boolean;
}

export function startWriter(o: WriterOptions): Writer {
  const proc = spawn(process.execPath, [path.join(FIXTURES, 'record-writer.mjs'), JSON.stringify(o)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Writer(proc, o.file);
}

/** Starts hold-client.mjs: one request from its own process, then it idles until killed. */
export function startHoldClient(fx: ControlFixture, type: string, payload: Record<string, unknown>) {
  const proc = spawn(
    process.execPath,
    [path.join(FIXTURES, 'hold-client.mjs'), CLIENT_JS, fx.url, fx.tokenFile, type, JSON.stringify(payload)],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const reply = new Promise<any>((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const i = out.indexOf('\n');
      if (i >= 0) resolve(JSON.parse(out.slice(0, i)));
    });
    proc.on('exit', (code) => reject(new Error(`hold-client exited (${code}) before replying: ${err}`)));
  });
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
  return {
    proc,
    reply,
    async kill9() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/** Collects a client's events. */
export function recordEvents(c: ControlClient): Array<{ event: string; data: any; at: number }> {
  const out: Array<{ event: string; data: any; at: number }> = [];
  c.onEvent((e) => out.push({ ...e, at: Date.now() }));
  return out;
}

export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The server's status reply (typed loosely: tests read what they check). */
export async function status(c: ControlClient): Promise<any> {
  return c.request('status');
}

/**
 * The server's counts of changes answered in libfuse's threads (`status().fs.kernelCache.
 * nativeUnlink`: native-unlink.h, native-create.h, native-setattr.h, native-rename.h,
 * native-entries.h).
 */
export type { NativeChangeStats };

export async function nativeChangeStats(c: ControlClient): Promise<NativeChangeStats> {
  return (await status(c)).fs.kernelCache.nativeUnlink;
}

/**
 * Flushes the cache, waits until the mirror's queue is empty and no split is held, and checks the
 * mirror: nothing broken (in the status and in the server's events) and a content `verify` with no
 * differences. Returns the verify reply for further checks.
 */
export async function expectMirrorSettledExact(
  fx: ControlFixture,
  c: ControlClient,
  timeoutMs: number,
): Promise<any> {
  await c.request('flush');
  await waitUntil(
    async () => {
      const s = await status(c);
      return s.mirror.queueLength === 0 && s.mirror.splits.length === 0;
    },
    timeoutMs,
    'mirror idle',
  );
  const s = await status(c);
  expect(s.mirror.broken).toEqual([]);
  expect(fx.srv.events.filter((e) => e.event === 'broken')).toEqual([]);
  const v: any = await c.request('verify', { content: true });
  expect(v.differences).toEqual([]);
  return v;
}

/** The volume's change generation now (a volume prepare, released at once): a base for `since`. */
export async function volumeGeneration(c: ControlClient): Promise<GenerationMsg> {
  const p = await c.prepare({ volume: true });
  await c.release(p.backupId);
  if (p.generation === undefined) throw new Error('the volume prepare answered no generation');
  return p.generation;
}

/**
 * A storm of `workers` python processes (pyStormDuringPrepares) measured from a base taken right
 * before it: the base generation, and `stats` before and after (at least one prepare ran during
 * it, or the storm proved nothing about prepares).
 */
export async function stormFromBase<S>(
  fx: ControlFixture,
  c: ControlClient,
  o: { script: string; workers: number; args: string[]; pauseMs: number },
  stats: () => Promise<S>,
): Promise<{ since: GenerationMsg; before: S; after: S }> {
  const since = await volumeGeneration(c);
  const before = await stats();
  const prepares = await pyStormDuringPrepares(fx, c, { ...o, since });
  expect(prepares).toBeGreaterThan(0);
  return { since, before, after: await stats() };
}

/**
 * The storm case of the native-change tests: `workers` copies of `script` (arguments: the
 * worker's index, `rounds` and `args`) while volume prepares loop; at least `minNative` changes done in
 * libfuse's threads (`native` picks the count), none in flight after; then a prepare since the
 * storm's base, whose changes must be vouched for, is handed to `check` (with the last round's
 * number) before its release, and the mirror must equal the primary.
 */
export async function nativeStorm(
  fx: ControlFixture,
  c: ControlClient,
  o: { script: string; workers: number; rounds: number; minNative: number; args?: string[] },
  native: (s: NativeChangeStats) => number,
  check: (last: Awaited<ReturnType<ControlClient['prepare']>>, lastRound: number) => Promise<void>,
): Promise<void> {
  const { since, before, after } = await stormFromBase(
    fx,
    c,
    { script: o.script, workers: o.workers, args: [String(o.rounds), ...(o.args ?? [])], pauseMs: 20 },
    () => nativeChangeStats(c),
  );
  expect(native(after) - native(before)).toBeGreaterThanOrEqual(o.minNative);
  expect(after.busy).toBe(0);
  const last = await c.prepare({ volume: true }, { since });
  try {
    expect(last.changes?.unknown).toBeUndefined();
    await check(last, o.rounds - 1);
  } finally {
    await c.release(last.backupId);
  }
  await expectMirrorClean(c);
}

/** Writes everything back, then expects the mirror to equal the primary, content included. */
export async function expectMirrorClean(c: ControlClient): Promise<void> {
  await c.request('flush');
  const v: any = await c.request('verify', { content: true });
  expect(v.differences).toEqual([]);
  expect(v.ok).toBe(true);
}

/**
 * Runs `workers` copies of a Python script in the mount (its arguments: the worker's index, then
 * `args`) while volume prepares (incremental since `since`) and their releases loop, `pauseMs`
 * apart. Resolves with the number of prepares once every copy has ended.
 */
export async function pyStormDuringPrepares(
  fx: ControlFixture,
  c: ControlClient,
  o: { script: string; workers: number; args: string[]; since: GenerationMsg; pauseMs: number },
): Promise<number> {
  let running = true;
  const storm = Promise.all(
    Array.from({ length: o.workers }, (_, w) =>
      pyIn(fx.mnt, o.script, { args: [String(w), ...o.args], timeoutMs: 240_000 }),
    ),
  ).finally(() => {
    running = false;
  });
  let prepares = 0;
  while (running) {
    const p = await c.prepare({ volume: true }, { since: o.since });
    prepares++;
    await c.release(p.backupId);
    await sleep(o.pauseMs);
  }
  await storm;
  return prepares;
}
