import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ControlClient } from '../../src/control/client.js';
import { fusermountUz, sh } from '../helpers/proc.js';
import { CLI, controlServeArgs, type ServerHandle, startServer } from '../helpers/server.js';
import { Rng } from '../stress/prng.js';
import { byteAt } from './bytes.mjs';

/**
 * Chaos runs (issue 11): a real `twinfs serve` (primary, mirror, control channel) as a process,
 * faults made for real, and after each round the checks that say nothing acknowledged was lost
 * and nothing was left stuck. Everything random follows from the seed. bench/chaos.mjs runs
 * the long version (100 rounds each), test/chaos/chaos.test.ts a few rounds in CI.
 *
 *   serverKills  kill -9 of the server while a writer does mixed writes (writer.mjs durable),
 *                at a random moment; then the primary must hold every byte an fsync
 *                acknowledged, the restarted server must bring every pair back (no split, no
 *                broken pair, empty queue) and `twinfs verify` must be clean.
 *   peerKills    `twinfs backup` processes killed (SIGKILL) or stopped (SIGSTOP, later killed or
 *                continued) at a random moment, while a writer measures every write's latency;
 *                then no split may be left once the lease (plus the liveness timeout) has
 *                passed, no prepare may have held writes longer than max-stall, and every
 *                snapshot the catalog calls complete must pass `twinfs check`.
 */

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WRITER = path.join(HERE, 'writer.mjs');
const now = (): number => performance.timeOrigin + performance.now();

export interface ChaosBase {
  seed: number;
  rounds: number;
  /** Where to keep the run's files (default a new temp dir, removed unless keep or a problem). */
  dir?: string;
  keep?: boolean;
  log?: (msg: string) => void;
}

export interface ServerKillReport {
  rounds: number;
  ms: number;
  dir: string;
  /** fsyncs acknowledged, and the bytes they made durable (sum over rounds of the acked sizes). */
  fsyncs: number;
  ackedBytes: number;
  /** Each file whose acknowledged bytes were not all on the primary after a kill. */
  lost: string[];
  /** Rounds after whose restart a pair stayed split, broken or queued. */
  stuck: string[];
  /** Rounds after whose restart `twinfs verify` was not clean. */
  verifyFailed: string[];
  /** How the writer's last operation ended in each round (the kill's errno). */
  writerStops: Record<string, number>;
  /** ms from spawn to "mounted", and from "mounted" to an idle PAIR, per restart. */
  restartMs: number[];
  recoverMs: number[];
  serverExit: number | null;
}

const FILES = 6;

export function serverKillProblems(r: ServerKillReport): string[] {
  return [
    ...r.lost.map((l) => `lost: ${l}`),
    ...r.stuck.map((s) => `stuck: ${s}`),
    ...r.verifyFailed.map((v) => `verify: ${v}`),
    ...(r.serverExit === 0 ? [] : [`the last server exited with ${r.serverExit}`]),
  ];
}

export async function serverKills(o: ChaosBase): Promise<ServerKillReport> {
  const log = o.log ?? (() => undefined);
  const started = now();
  const rng = new Rng(`server-kills-${o.seed}`);
  const dir = o.dir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), `twinfs-chaos-kill-${o.seed}-`)));
  const d = (n: string) => path.join(dir, n);
  for (const n of ['primary', 'mnt', 'mirror', 'state', 'logs']) await fsp.mkdir(d(n), { recursive: true });
  const tokenFile = d('state/control.token');
  const r: ServerKillReport = {
    rounds: 0,
    ms: 0,
    dir,
    fsyncs: 0,
    ackedBytes: 0,
    lost: [],
    stuck: [],
    verifyFailed: [],
    writerStops: {},
    restartMs: [],
    recoverMs: [],
    serverExit: null,
  };
  const acked: Record<number, number> = {};
  let srv: ServerHandle | undefined;
  let writer: ChildProcess | undefined;
  try {
    for (let round = 0; ; round++) {
      const t0 = now();
      srv = await startServer({
        primary: d('primary'),
        mount: d('mnt'),
        args: controlServeArgs({ mirror: d('mirror'), state: d('state') }, tokenFile, [
          '--writeback-ms',
          String(rng.pick([100, 1000, 5000])),
          '--cache-mb',
          String(rng.pick([8, 64])),
        ]),
        timeoutMs: 60_000,
      });
      const mountedAt = now();
      if (round > 0) r.restartMs.push(Math.round(mountedAt - t0));
      const mounted = srv.events.find((e) => e.event === 'mounted') as { control: { url: string } };
      const url = mounted.control.url;
      // Recovery: every pair back to PAIR with nothing queued, no split left.
      const idle = await waitIdle(url, tokenFile, 60_000);
      if (!idle.ok) r.stuck.push(`round ${round}: ${idle.why}`);
      else if (round > 0) r.recoverMs.push(Math.round(now() - mountedAt));
      if (round > 0) {
        const v = await sh(
          `'${process.execPath}' '${CLI}' verify --server '${url}' --token-file '${tokenFile}' --json`,
          {
            timeoutMs: 120_000,
          },
        );
        if (v.code !== 0)
          r.verifyFailed.push(`round ${round}: exit ${v.code} ${lastLine(v.stdout)} ${v.stderr.slice(-300)}`);
      }
      if (round === o.rounds) break;

      // Files start over (cut to 0 by the writer) past 3 MiB, so a round's check stays small.
      for (const k of Object.keys(acked)) if (acked[Number(k)]! > 3 * 1024 * 1024) acked[Number(k)] = 0;
      const wlog = d(`logs/writer-${round}.jsonl`);
      writer = spawn(
        process.execPath,
        [
          WRITER,
          'durable',
          JSON.stringify({ dir: d('mnt'), files: FILES, seed: rng.u32(), log: wlog, start: acked }),
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      const writerExit = new Promise<void>((res) => writer!.on('exit', () => res()));
      const delay = rng.range(150, 1500);
      await sleep(delay);
      // The fault: SIGKILL, nothing written back, the mount left dead.
      srv.proc.kill('SIGKILL');
      await srv.exited;
      const killTimer = setTimeout(() => writer?.kill('SIGKILL'), 20_000);
      await writerExit;
      clearTimeout(killTimer);
      writer = undefined;
      await sh(`${fusermountUz(d('mnt'))} 2>/dev/null`, { timeoutMs: 10_000 });
      srv = undefined;
      r.rounds++;

      // What the writer was told is durable must be on the primary.
      const text = await fsp.readFile(wlog, 'utf8').catch(() => '');
      for (const line of text.split('\n').filter(Boolean)) {
        const rec = JSON.parse(line) as { k?: number; size?: number; stopped?: string; code?: string };
        if (rec.k !== undefined) {
          acked[rec.k] = rec.size!;
          r.fsyncs++;
        } else if (rec.stopped) {
          const key = `${rec.stopped.split(' ')[0]} ${rec.code}`;
          r.writerStops[key] = (r.writerStops[key] ?? 0) + 1;
        }
      }
      for (const [k, size] of Object.entries(acked)) {
        r.ackedBytes += size;
        const bad = await checkDurable(d(`primary/d${k}`), Number(k), size);
        if (bad) r.lost.push(`round ${round} (killed after ${delay} ms): d${k} ${bad}`);
      }
      log(
        `round ${round}: killed after ${delay} ms; acked ${JSON.stringify(acked)}; ${r.lost.length} lost so far`,
      );
    }
    r.serverExit = await srv!.stop(120_000);
    srv = undefined;
  } finally {
    writer?.kill('SIGKILL');
    if (srv) await srv.kill();
    await sh(`${fusermountUz(d('mnt'))} 2>/dev/null`);
    r.ms = Math.round(now() - started);
    const keep = o.keep || o.dir || serverKillProblems(r).length > 0;
    if (!keep) await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
  return r;
}

/** Undefined when the first size bytes of file k are the writer's; else what differs. */
async function checkDurable(file: string, k: number, size: number): Promise<string | undefined> {
  let data: Buffer;
  try {
    data = await fsp.readFile(file);
  } catch (err) {
    return `unreadable (${(err as NodeJS.ErrnoException).code}), ${size} bytes acknowledged`;
  }
  if (data.length < size) return `${data.length} bytes, ${size} acknowledged`;
  for (let i = 0; i < size; i++)
    if (data[i] !== byteAt(k, i))
      return `byte ${i} is ${data[i]}, expected ${byteAt(k, i)} (${size} acknowledged)`;
  return undefined;
}

export interface PeerReport {
  rounds: number;
  ms: number;
  dir: string;
  maxStallMs: number;
  leaseMs: number;
  /** What each round did to its peer, and how the peer ended. */
  actions: Record<string, number>;
  outcomes: Record<string, number>;
  /** Rounds whose split was still there after the lease and the liveness timeout. */
  splitsLeft: string[];
  /** ms from the fault to the last split gone, per round that had one. */
  releasedAfterMs: number[];
  /** Snapshots the catalog lists as complete, and those `twinfs check` found wrong. */
  snapshots: number;
  checkFailed: string[];
  /** The server's own accounting: longest hold of a successful prepare, and of a failed one. */
  stall: { prepares: number; failed: number; maxStallMs: number; maxFailedHeldMs: number };
  /** The writer's view: 4 KiB writes through the mount during the rounds. */
  writer: { writes: number; errors: number; maxMs: number; p99Ms: number; over: Record<string, number> };
  /** Writes slower than max-stall + WRITE_SLACK_MS, with when (ms into the run). */
  heldWrites: Array<{ atMs: number; ms: number }>;
  serverExit: number | null;
}

/**
 * A write through the mount takes a FUSE round trip that, on this 2-core machine shared with
 * other work, itself stalls for up to a few hundred ms now and then (the baseline of
 * bench/stall.mjs). A write counts as held by a prepare when it took longer than max-stall plus
 * this; the server's own figure (stall.maxStallMs, maxFailedHeldMs) is exact.
 */
export const WRITE_SLACK_MS = 500;

/**
 * What went wrong in a peer run. writerTiming: count the writer's slow writes (heldWrites) as
 * problems — the bench does; a CI test does not assert on timing (a loaded machine alone can
 * stall a write that long), it has the server's own account of every hold.
 */
export function peerProblems(r: PeerReport, o: { writerTiming?: boolean } = {}): string[] {
  return [
    ...r.splitsLeft.map((s) => `split left: ${s}`),
    ...r.checkFailed.map((c) => `check: ${c}`),
    ...(r.stall.maxStallMs > r.maxStallMs ? [`a prepare reported ${r.stall.maxStallMs} ms of stall`] : []),
    ...(o.writerTiming === false ? [] : r.heldWrites.map((w) => `a write took ${w.ms} ms at ${w.atMs} ms`)),
    ...(r.serverExit === 0 ? [] : [`the server exited with ${r.serverExit}`]),
  ];
}

export interface PeerOptions extends ChaosBase {
  maxStallMs?: number;
  leaseSec?: number;
  /**
   * A split must be gone within lease + liveness timeout + this after the fault, ms (default
   * 1000; a CI run on a loaded machine gives the server's timers more room).
   */
  releaseMarginMs?: number;
}

/** Liveness: a holder silent this long is dropped (src/control/liveness.ts), plus a tick. */
const HOLDER_TIMEOUT_MS = 5_000;

export async function peerKills(o: PeerOptions): Promise<PeerReport> {
  const log = o.log ?? (() => undefined);
  const started = now();
  const rng = new Rng(`peer-kills-${o.seed}`);
  const dir = o.dir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), `twinfs-chaos-peer-${o.seed}-`)));
  const d = (n: string) => path.join(dir, n);
  for (const n of ['primary', 'mnt', 'mirror', 'state', 'logs', 'target', 'catalog'])
    await fsp.mkdir(d(n), { recursive: true });
  const tokenFile = d('state/control.token');
  const maxStallMs = o.maxStallMs ?? 1000;
  const leaseMs = (o.leaseSec ?? 2) * 1000;
  const r: PeerReport = {
    rounds: 0,
    ms: 0,
    dir,
    maxStallMs,
    leaseMs,
    actions: {},
    outcomes: {},
    splitsLeft: [],
    releasedAfterMs: [],
    snapshots: 0,
    checkFailed: [],
    stall: { prepares: 0, failed: 0, maxStallMs: 0, maxFailedHeldMs: 0 },
    writer: { writes: 0, errors: 0, maxMs: 0, p99Ms: 0, over: {} },
    heldWrites: [],
    serverExit: null,
  };
  // Something to copy: 300 files of 1–64 KiB in 10 directories, written before the server starts.
  for (let i = 0; i < 300; i++) {
    await fsp.mkdir(d(`primary/tree/d${i % 10}`), { recursive: true });
    await fsp.writeFile(d(`primary/tree/d${i % 10}/f${i}`), rng.bytes(rng.range(1024, 65536)));
  }
  let srv: ServerHandle | undefined;
  const children = new Set<ChildProcess>();
  let writer: ChildProcess | undefined;
  try {
    srv = await startServer({
      primary: d('primary'),
      mount: d('mnt'),
      args: controlServeArgs({ mirror: d('mirror'), state: d('state') }, tokenFile, [
        '--max-stall-ms',
        String(maxStallMs),
      ]),
      timeoutMs: 60_000,
    });
    const url = (srv.events.find((e) => e.event === 'mounted') as { control: { url: string } }).control.url;
    const idle0 = await waitIdle(url, tokenFile, 120_000);
    if (!idle0.ok) throw new Error(`the server never became idle: ${idle0.why}`);
    const token = (await fsp.readFile(tokenFile, 'utf8')).trim();
    const client = await ControlClient.connect(url, { token, client: 'chaos', requestTimeoutMs: 60_000 });

    // The writer: 4 KiB writes at 200/s into a file the backups select (tree/hot), all run long.
    const wlog = d('logs/latency.jsonl');
    writer = spawn(
      process.execPath,
      [WRITER, 'latency', JSON.stringify({ file: d('mnt/tree/hot'), rateHz: 200, log: wlog })],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let wout = '';
    writer.stdout!.on('data', (b) => (wout += b));
    const writerExit = new Promise<void>((res) => writer!.on('exit', () => res()));
    const runStart = Date.now();

    for (let round = 0; round < o.rounds; round++) {
      const action = rng.weighted({ kill: 5, stop: 3, 'stop-cont': 2, none: 1 });
      r.actions[action] = (r.actions[action] ?? 0) + 1;
      const selection = rng.pick([['--subtree', '/tree'], ['--subtree', '/tree/d3'], []]);
      const args = [
        CLI,
        'backup',
        '--server',
        url,
        '--token-file',
        tokenFile,
        '--target',
        `dir:${d('target')}`,
        '--catalog',
        d('catalog'),
        '--lease-sec',
        String(leaseMs / 1000),
        '--json',
        ...selection,
      ];
      const peer = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      children.add(peer);
      let out = '';
      peer.stdout!.on('data', (b) => (out += b));
      peer.stderr!.on('data', (b) => (out += b));
      const exited = new Promise<number | string | null>((res) =>
        peer.on('exit', (code, sig) => {
          children.delete(peer);
          res(code ?? sig);
        }),
      );
      // The fault lands at a random moment: before the prepare, while holding the split, or
      // during the copy/commit (the copy of this tree takes a few hundred ms to seconds).
      const delay = rng.range(0, 2000);
      let faultAt = now();
      let outcome: string;
      if (action === 'none') {
        outcome = `exit ${await exited}`;
      } else {
        const early = await Promise.race([exited.then(() => true), sleep(delay).then(() => false)]);
        faultAt = now();
        if (early) outcome = `finished first (exit ${await exited})`;
        else if (action === 'kill') {
          peer.kill('SIGKILL');
          outcome = `killed (${await exited})`;
        } else {
          peer.kill('SIGSTOP');
          // Stopped past the liveness timeout and the lease: the server must have let go.
          await sleep(Math.max(leaseMs, HOLDER_TIMEOUT_MS) + 500);
          const left = await splitsNow(client);
          if (left.length > 0)
            r.splitsLeft.push(`round ${round} (${action}, stopped ${delay} ms in): ${left.join(', ')}`);
          if (action === 'stop') {
            peer.kill('SIGKILL');
            outcome = `stopped, killed (${await exited})`;
          } else {
            peer.kill('SIGCONT');
            const code = await Promise.race([exited, sleep(60_000).then(() => 'hung')]);
            if (code === 'hung') peer.kill('SIGKILL');
            outcome = `stopped, continued (${code === 0 ? 'exit 0' : `exit ${code}: ${codeOf(out)}`})`;
          }
        }
      }
      const key = outcome.replace(/: .*\)$/, ')');
      r.outcomes[key] = (r.outcomes[key] ?? 0) + 1;
      // Every split of this round gone within the lease plus the liveness timeout.
      const until = faultAt + leaseMs + HOLDER_TIMEOUT_MS + (o.releaseMarginMs ?? 1000);
      let left = await splitsNow(client);
      while (left.length > 0 && now() < until) {
        await sleep(100);
        left = await splitsNow(client);
      }
      if (left.length > 0)
        r.splitsLeft.push(`round ${round} (${action} ${delay} ms in, ${outcome}): ${left.join(', ')}`);
      else r.releasedAfterMs.push(Math.round(now() - faultAt));
      r.rounds++;
      log(`round ${round}: ${action} after ${delay} ms: ${outcome}`);
    }

    // Every snapshot the catalog calls complete passes a full check (every file read back).
    const list = await sh(`'${process.execPath}' '${CLI}' snapshots --catalog '${d('catalog')}' --json`, {
      timeoutMs: 60_000,
    });
    if (list.code !== 0)
      throw new Error(`snapshots --json failed (${list.code}): ${list.stdout}${list.stderr}`);
    const snaps = (JSON.parse(list.stdout.trim() || '[]') as Array<{ id: string; state: string }>).filter(
      (s) => s.state === 'complete',
    );
    r.snapshots = snaps.length;
    for (const s of snaps) {
      const c = await sh(
        `'${process.execPath}' '${CLI}' check '${s.id}' --catalog '${d('catalog')}' --json`,
        {
          timeoutMs: 120_000,
        },
      );
      if (c.code !== 0)
        r.checkFailed.push(`${s.id}: exit ${c.code} ${lastLine(c.stdout)} ${c.stderr.slice(-300)}`);
    }

    writer.kill('SIGTERM');
    await writerExit;
    writer = undefined;
    try {
      r.writer = JSON.parse(wout.trim().split('\n').at(-1)!);
    } catch {
      r.writer.errors = -1;
    }
    const slow = (await fsp.readFile(wlog, 'utf8').catch(() => ''))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { at: number; ms: number });
    r.heldWrites = slow
      .filter((w) => w.ms > maxStallMs + WRITE_SLACK_MS)
      .map((w) => ({ atMs: w.at - w.ms - runStart, ms: w.ms }));
    const st = (await client.request('status')) as any;
    r.stall = {
      prepares: st.backup.stall.prepares,
      failed: st.backup.stall.failedPrepares,
      maxStallMs: st.backup.stall.maxStallMs,
      maxFailedHeldMs: st.backup.stall.maxFailedHeldMs,
    };
    client.close();
    r.serverExit = await srv.stop(120_000);
    srv = undefined;
  } finally {
    writer?.kill('SIGKILL');
    for (const c of children) {
      c.kill('SIGKILL');
    }
    if (srv) await srv.kill();
    await sh(`${fusermountUz(d('mnt'))} 2>/dev/null`);
    r.ms = Math.round(now() - started);
    const keep = o.keep || o.dir || peerProblems(r).length > 0;
    if (!keep) await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
  return r;
}

async function splitsNow(client: ControlClient): Promise<string[]> {
  const st = (await client.request('status')) as any;
  return [
    ...(st.backup?.backups ?? []).map((b: { backupId: string }) => `lease ${b.backupId}`),
    ...(st.mirror?.splits ?? []).map(
      (s: { backupId?: string; path?: string }) => `split ${s.backupId ?? s.path}`,
    ),
  ];
}

/** Polls status until the mirror is PAIR with nothing queued, split or broken, and no dirty cache. */
export async function waitIdle(
  url: string,
  tokenFile: string,
  timeoutMs: number,
): Promise<{ ok: true } | { ok: false; why: string }> {
  const token = (await fsp.readFile(tokenFile, 'utf8')).trim();
  const client = await ControlClient.connect(url, { token, client: 'chaos', requestTimeoutMs: 60_000 });
  try {
    const until = now() + timeoutMs;
    for (;;) {
      const st = (await client.request('status')) as any;
      const m = st.mirror;
      const why =
        m.state !== 'PAIR'
          ? `mirror ${m.state} (broken: ${JSON.stringify(m.brokenReasons)})`
          : m.splits.length > 0
            ? `${m.splits.length} split(s)`
            : m.queueLength > 0
              ? `${m.queueLength} queued`
              : st.backup.backups.length > 0
                ? `${st.backup.backups.length} lease(s)`
                : null;
      if (!why) return { ok: true };
      if (now() > until) return { ok: false, why };
      await sleep(100);
    }
  } finally {
    client.close();
  }
}

function lastLine(s: string): string {
  return s.trim().split('\n').at(-1)?.slice(0, 300) ?? '';
}

function codeOf(out: string): string {
  return /ETWIN_[A-Z_]+/.exec(out)?.[0] ?? lastLine(out).slice(0, 120);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
