import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ControlClient, RemoteError } from '../../src/control/client.js';
import { fusermountUz, sh } from '../helpers/proc.js';
import { CLI, controlServeArgs, type ServerHandle, startServer } from '../helpers/server.js';
import { Rng } from '../stress/prng.js';
import { byteAt } from './bytes.mjs';
import { waitIdle } from './chaos.js';

/**
 * The chaos runs' disk and target faults (issue 11), each against a real `twinfs serve` with
 * mirror and control channel, with a writer (writer.mjs durable) in the mount:
 *   full-primary     the primary is a small tmpfs that the writer fills
 *   full-mirror      the mirror is a small tmpfs that fills while the primary has room
 *   vanished-mirror  the mirror's tmpfs is lazily unmounted under the writer
 *   hung-target      the backup target is a second twinfs mount whose server is stopped
 *                    (SIGSTOP) in the middle of a backup
 * Each returns figures and `problems` (empty: the scenario held).
 */

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WRITER = path.join(HERE, 'writer.mjs');

export interface ScenarioOptions {
  seed: number;
  keep?: boolean;
  log?: (msg: string) => void;
}

export interface ScenarioReport {
  problems: string[];
  dir: string;
  ms: number;
  [figure: string]: unknown;
}

type Scenario = (o: ScenarioOptions) => Promise<ScenarioReport>;

interface Ctx {
  dir: string;
  d(n: string): string;
  tokenFile: string;
  rng: Rng;
  problems: string[];
  report: ScenarioReport;
  servers: ServerHandle[];
  children: Set<ChildProcess>;
  tmpfs: string[];
}

/** Sets up directories, runs body, and always cleans up (servers, children, mounts). */
async function scenario(
  name: string,
  o: ScenarioOptions,
  body: (c: Ctx) => Promise<void>,
): Promise<ScenarioReport> {
  const started = performance.now();
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `twinfs-chaos-${name}-`));
  const d = (n: string) => path.join(dir, n);
  for (const n of ['primary', 'mnt', 'mirror', 'state', 'logs']) await fsp.mkdir(d(n), { recursive: true });
  const problems: string[] = [];
  const c: Ctx = {
    dir,
    d,
    tokenFile: d('state/control.token'),
    rng: new Rng(`${name}-${o.seed}`),
    problems,
    report: { problems, dir, ms: 0 },
    servers: [],
    children: new Set(),
    tmpfs: [],
  };
  try {
    await body(c);
  } catch (err) {
    problems.push(`scenario failed: ${(err as Error).stack ?? err}`);
  } finally {
    for (const ch of c.children) ch.kill('SIGKILL');
    for (const [i, s] of c.servers.entries()) {
      await fsp.writeFile(
        d(`logs/server-${i}.events.jsonl`),
        s.events.map((e) => `${JSON.stringify(e)}\n`).join(''),
      );
      await fsp.writeFile(d(`logs/server-${i}.stderr.txt`), s.stderr());
    }
    for (const s of c.servers) {
      s.proc.kill('SIGCONT');
      await s.kill();
    }
    for (const m of [d('mnt'), d('tmnt')]) await sh(`${fusermountUz(m)} 2>/dev/null`, { timeoutMs: 10_000 });
    for (const t of c.tmpfs) await sh(`umount -l '${t}' 2>/dev/null`, { timeoutMs: 10_000 });
    c.report.ms = Math.round(performance.now() - started);
    if (!o.keep && problems.length === 0)
      await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
  return c.report;
}

async function tmpfs(c: Ctx, dir: string, size: string): Promise<void> {
  const r = await sh(`mount -t tmpfs -o size=${size} tmpfs '${dir}'`);
  if (r.code !== 0) throw new Error(`mount tmpfs on ${dir}: ${r.stderr}`);
  c.tmpfs.push(dir);
}

async function serve(
  c: Ctx,
  extra: string[] = [],
): Promise<{ srv: ServerHandle; url: string; client: ControlClient }> {
  const srv = await startServer({
    primary: c.d('primary'),
    mount: c.d('mnt'),
    args: controlServeArgs({ mirror: c.d('mirror'), state: c.d('state') }, c.tokenFile, extra),
    timeoutMs: 60_000,
  });
  c.servers.push(srv);
  const url = (srv.events.find((e) => e.event === 'mounted') as { control: { url: string } }).control.url;
  const token = (await fsp.readFile(c.tokenFile, 'utf8')).trim();
  const client = await ControlClient.connect(url, { token, client: 'chaos', requestTimeoutMs: 60_000 });
  return { srv, url, client };
}

interface WriterResult {
  acked: Record<number, number>;
  fsyncs: number;
  stop: { stopped: string; code: string } | undefined;
}

/** Runs writer.mjs durable in the mount until it stops (an error, or maxMs). */
async function write(
  c: Ctx,
  name: string,
  maxMs: number,
  during?: () => Promise<void>,
): Promise<WriterResult> {
  const wlog = c.d(`logs/${name}.jsonl`);
  const w = spawn(
    process.execPath,
    [WRITER, 'durable', JSON.stringify({ dir: c.d('mnt'), files: 4, seed: c.rng.u32(), log: wlog, maxMs })],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  c.children.add(w);
  const exited = new Promise<void>((res) => w.on('exit', () => res()));
  const timer = setTimeout(() => w.kill('SIGKILL'), maxMs + 60_000);
  await during?.();
  await exited;
  clearTimeout(timer);
  c.children.delete(w);
  const out: WriterResult = { acked: {}, fsyncs: 0, stop: undefined };
  for (const line of (await fsp.readFile(wlog, 'utf8').catch(() => '')).split('\n').filter(Boolean)) {
    const rec = JSON.parse(line);
    if (rec.k !== undefined) {
      out.acked[rec.k] = rec.size;
      out.fsyncs++;
    } else out.stop = rec;
  }
  return out;
}

/** Every fsync-acknowledged byte is on the primary (read directly, not through the mount). */
async function checkAcked(c: Ctx, w: WriterResult): Promise<void> {
  for (const [k, size] of Object.entries(w.acked)) {
    const data = await fsp.readFile(c.d(`primary/d${k}`)).catch(() => Buffer.alloc(0));
    if (data.length < size)
      c.problems.push(`d${k}: ${data.length} bytes on the primary, ${size} acknowledged`);
    else
      for (let i = 0; i < size; i++)
        if (data[i] !== byteAt(Number(k), i)) {
          c.problems.push(`d${k}: byte ${i} differs (${size} acknowledged)`);
          break;
        }
  }
}

async function statusOf(client: ControlClient): Promise<any> {
  return client.request('status');
}

/** The error code a prepare of the whole volume gets (null: it succeeded, and was released). */
async function prepareCode(client: ControlClient): Promise<string | null> {
  try {
    const p = await client.prepare({ volume: true }, { leaseMs: 5000 });
    await client.release(p.backupId).catch(() => undefined);
    return null;
  } catch (err) {
    return err instanceof RemoteError ? err.code : `not coded: ${(err as Error).message}`;
  }
}

async function cli(args: string): Promise<{ code: number | null; out: string }> {
  const r = await sh(`'${process.execPath}' '${CLI}' ${args}`, { timeoutMs: 180_000 });
  return {
    code: r.code,
    out: `${r.stdout}${r.stderr}`.trim().split('\n').slice(-3).join(' | ').slice(0, 400),
  };
}

async function until(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Through the mount, from a child process: a file of n bytes written and fsync'd. */
async function writeThrough(c: Ctx, name: string, n: number): Promise<number | null> {
  return (
    await sh(`head -c ${n} /dev/urandom > '${c.d(`mnt/${name}`)}' && sync '${c.d(`mnt/${name}`)}'`, {
      timeoutMs: 60_000,
    })
  ).code;
}

/**
 * Records how the writer did (its fsyncs and how it stopped), checks that it stopped the way
 * the scenario expects (a time limit, or an error code), and that what it got acknowledged is
 * on the primary.
 */
async function checkWriter(
  c: Ctx,
  w: WriterResult,
  expected: { stopped: 'time' } | { code: string },
): Promise<void> {
  c.report.fsyncs = w.fsyncs;
  c.report.writerStop = w.stop;
  const as = 'code' in expected ? w.stop?.code === expected.code : w.stop?.stopped === expected.stopped;
  if (!as)
    c.problems.push(`the writer stopped with ${JSON.stringify(w.stop)}, not ${JSON.stringify(expected)}`);
  await checkAcked(c, w);
}

/** The server settles (idle) after what, and `twinfs verify` finds the mirror equal to the primary. */
async function checkIdleAndVerified(c: Ctx, url: string, what: string): Promise<void> {
  const idle = await waitIdle(url, c.tokenFile, 60_000);
  if (!idle.ok) c.problems.push(`not idle ${what}: ${idle.why}`);
  const v = await cli(`verify --server '${url}' --token-file '${c.tokenFile}'`);
  c.report.verify = v.code;
  if (v.code !== 0) c.problems.push(`verify: ${v.out}`);
}

/** `twinfs mirror repair` against the server: its exit code (recorded) and last lines. */
async function repair(c: Ctx, url: string): Promise<{ code: number | null; out: string }> {
  const rep = await cli(`mirror repair --server '${url}' --token-file '${c.tokenFile}'`);
  c.report.repair = rep.code;
  return rep;
}

/** Closes the client and stops the server, which must exit with 0. */
async function checkStops(c: Ctx, srv: ServerHandle, client: ControlClient): Promise<void> {
  client.close();
  const exit = await srv.stop(120_000);
  c.report.serverExit = exit;
  if (exit !== 0) c.problems.push(`the server exited with ${exit}`);
}

/** The snapshots the catalog of the scenario lists. */
async function snapshots(c: Ctx): Promise<Array<{ state: string; error?: { code: string } }>> {
  return JSON.parse(
    (await sh(`'${process.execPath}' '${CLI}' snapshots --catalog '${c.d('catalog')}' --json`)).stdout ||
      '[]',
  );
}

export const SCENARIOS: Record<string, Scenario> = {
  'full primary': (o) =>
    scenario('full-primary', o, async (c) => {
      await tmpfs(c, c.d('primary'), '24m');
      const { srv, url, client } = await serve(c);
      // The writer fills the primary: its first failing call must say ENOSPC.
      const w = await write(c, 'fill', 120_000);
      await checkWriter(c, w, { code: 'ENOSPC' });
      // Still serving; room made through the mount, writes work again.
      const rm = await sh(`rm -f '${c.d('mnt')}'/d1 '${c.d('mnt')}'/d2 && ls '${c.d('mnt')}'`, {
        timeoutMs: 30_000,
      });
      if (rm.code !== 0) c.problems.push(`the mount after ENOSPC: ${rm.stderr}`);
      const again = await writeThrough(c, 'after', 1 << 20);
      if (again !== 0) c.problems.push(`a 1 MiB write after freeing space failed (${again})`);
      await checkIdleAndVerified(c, url, 'after freeing space');
      await checkStops(c, srv, client);
    }),

  'full mirror': (o) =>
    scenario('full-mirror', o, async (c) => {
      await tmpfs(c, c.d('mirror'), '6m');
      const { srv, url, client } = await serve(c);
      // 6 s of mixed writes, then a large file: the mirror fills, the primary never notices.
      const w = await write(c, 'fill', 6000);
      await checkWriter(c, w, { stopped: 'time' });
      // However little a loaded machine let the writer do: 12 MiB more, which cannot fit.
      const big = await writeThrough(c, 'big', 12 << 20);
      if (big !== 0) c.problems.push(`a 12 MiB write with the mirror full failed (${big})`);
      const shown = await until(async () => (await statusOf(client)).mirror.state === 'DEGRADED', 10_000);
      const st = await statusOf(client);
      c.report.brokenReasons = st.mirror.brokenReasons;
      if (!shown || !JSON.stringify(st.mirror.brokenReasons).includes('ENOSPC'))
        c.problems.push(
          `status does not show the full mirror: ${st.mirror.state} ${JSON.stringify(st.mirror.brokenReasons)}`,
        );
      const code = await prepareCode(client);
      c.report.prepareWhileBroken = code;
      if (code !== 'ETWIN_MIRROR_BROKEN') c.problems.push(`a prepare while broken: ${code}`);
      // Room on the mirror, then a repair brings the pairs back.
      await sh(`mount -o remount,size=512m '${c.d('mirror')}'`);
      const rep = await repair(c, url);
      if (rep.code !== 0) c.problems.push(`repair: ${rep.out}`);
      await checkIdleAndVerified(c, url, 'after the repair');
      await checkStops(c, srv, client);
    }),

  'vanished mirror': (o) =>
    scenario('vanished-mirror', o, async (c) => {
      await tmpfs(c, c.d('mirror'), '256m');
      const { srv, url, client } = await serve(c);
      const at = c.rng.range(500, 2500);
      const w = await write(c, 'vanish', 5000, async () => {
        await new Promise((r) => setTimeout(r, at));
        await sh(`umount -l '${c.d('mirror')}'`);
        c.tmpfs.splice(c.tmpfs.indexOf(c.d('mirror')), 1);
      });
      c.report.vanishedAfterMs = at;
      await checkWriter(c, w, { stopped: 'time' });
      const shown = await until(
        async () => JSON.stringify((await statusOf(client)).mirror.brokenReasons).includes('ENODEV'),
        10_000,
      );
      const st = await statusOf(client);
      c.report.brokenReasons = st.mirror.brokenReasons;
      if (!shown) c.problems.push(`status does not show the vanished mirror: ${JSON.stringify(st.mirror)}`);
      const code = await prepareCode(client);
      c.report.prepareWhileVanished = code;
      if (code !== 'ETWIN_MIRROR_BROKEN') c.problems.push(`a prepare while vanished: ${code}`);
      const rep = await repair(c, url);
      if (rep.code !== 1 || !rep.out.includes('ETWIN_'))
        c.problems.push(`repair of a vanished mirror: ${rep.code} ${rep.out}`);
      const left = await fsp.readdir(c.d('mirror'));
      if (left.length > 0)
        c.problems.push(`the repair wrote into the directory left behind: ${left.join(', ')}`);
      // The primary still takes writes.
      const again = await writeThrough(c, 'after', 1 << 20);
      if (again !== 0) c.problems.push(`a write after the mirror vanished failed (${again})`);
      await checkStops(c, srv, client);
    }),

  'hung target': (o) =>
    scenario('hung-target', o, async (c) => {
      for (const n of ['tprimary', 'tmnt', 'tstate', 'catalog']) await fsp.mkdir(c.d(n), { recursive: true });
      // Large files: the copy streams them (the dir target writes small files with synchronous
      // calls, which a stopped target would block the peer's whole event loop in).
      await fsp.mkdir(c.d('primary/tree'), { recursive: true });
      for (let i = 0; i < 12; i++) {
        const fh = await fsp.open(c.d(`primary/tree/big${i}`), 'w');
        for (let j = 0; j < 8; j++) await fh.write(c.rng.bytes(1 << 20));
        await fh.close();
      }
      const { srv, url, client } = await serve(c);
      // The target: a directory on a second twinfs mount, its server stopped mid-backup.
      const tsrv = await startServer({
        primary: c.d('tprimary'),
        mount: c.d('tmnt'),
        args: ['--state-dir', c.d('tstate')],
        timeoutMs: 60_000,
      });
      c.servers.push(tsrv);
      const idle0 = await waitIdle(url, c.tokenFile, 60_000);
      if (!idle0.ok) throw new Error(`not idle: ${idle0.why}`);
      const leaseSec = 3;
      const targetTimeoutSec = 3;
      const peer = spawn(
        process.execPath,
        [
          CLI,
          'backup',
          '--server',
          url,
          '--token-file',
          c.tokenFile,
          '--target',
          `dir:${c.d('tmnt')}/backups`,
          '--catalog',
          c.d('catalog'),
          '--subtree',
          '/tree',
          '--lease-sec',
          String(leaseSec),
          '--target-timeout-sec',
          String(targetTimeoutSec),
          '--json',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      c.children.add(peer);
      let out = '';
      peer.stdout!.on('data', (b) => (out += b));
      peer.stderr!.on('data', (b) => (out += b));
      const peerExit = new Promise<number | string | null>((res) =>
        peer.on('exit', (code, sig) => res(code ?? sig)),
      );
      // Stopped once the copy has begun.
      await until(async () => out.includes('"phase":"copy"'), 60_000);
      tsrv.proc.kill('SIGSTOP');
      const stoppedAt = Date.now();
      // Meanwhile the volume's writers go on: writes, fsyncs, no error.
      const w = await write(c, 'during', 4000);
      c.report.fsyncsWhileHung = w.fsyncs;
      if (w.stop?.stopped !== 'time' || w.fsyncs === 0)
        c.problems.push(`the writer while the target hung: ${JSON.stringify(w.stop)}, ${w.fsyncs} fsyncs`);
      await checkAcked(c, w);
      // The peer notices the target took nothing for --target-timeout-sec, releases the split
      // and fails with ETWIN_TARGET_HUNG (recorded in the catalog), while the target is still
      // stopped. Its process can only exit once the calls stuck at the target return (Node
      // joins its thread pool at exit): after the target is continued.
      const gone = await until(async () => (await statusOf(client)).backup.backups.length === 0, 60_000);
      c.report.splitReleasedAfterMs = Date.now() - stoppedAt;
      if (!gone)
        c.problems.push(`the split is still held ${Date.now() - stoppedAt} ms after the target hung`);
      const said = await until(async () => out.includes('ETWIN_TARGET_HUNG'), 30_000);
      c.report.peerFailedAfterMs = Date.now() - stoppedAt;
      if (!said) c.problems.push(`the peer with its target hung says: ${out.slice(-300)}`);
      const recorded = await snapshots(c);
      c.report.catalogSays = recorded.map((x) => `${x.state} ${x.error?.code ?? ''}`.trim());
      if (!recorded.some((x) => x.state === 'failed' && x.error?.code === 'ETWIN_TARGET_HUNG'))
        c.problems.push(`the catalog says: ${JSON.stringify(c.report.catalogSays)}`);
      tsrv.proc.kill('SIGCONT');
      const code = await Promise.race([peerExit, new Promise((r) => setTimeout(() => r('running'), 30_000))]);
      c.report.peerExit = code;
      if (code !== 1) c.problems.push(`the peer's exit after the target came back: ${code}`);
      if (code === 'running') {
        peer.kill('SIGKILL');
        await peerExit;
      }
      c.children.delete(peer);
      // No complete snapshot from the hung run; a new backup to a working target succeeds.
      const complete = (await snapshots(c)).filter((x) => x.state === 'complete');
      c.report.snapshotsAfterHang = complete.length;
      if (complete.length !== 0) c.problems.push(`${complete.length} snapshot(s) complete from a hung run`);
      await fsp.mkdir(c.d('target2'));
      const b = await cli(
        `backup --server '${url}' --token-file '${c.tokenFile}' --target 'dir:${c.d('target2')}' --catalog '${c.d('catalog')}' --subtree /tree`,
      );
      c.report.backupAfter = b.code;
      if (b.code !== 0) c.problems.push(`a backup after the hang: ${b.out}`);
      await checkStops(c, srv, client);
    }),
};
