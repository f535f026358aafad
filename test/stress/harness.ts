import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ControlClient, RemoteError } from '../../src/control/client.js';
import type { SelectorMsg } from '../../src/control/protocol.js';
import { installBytePaths } from '../../src/posix/byte-paths.js';
import { fusermountUz, sh } from '../helpers/proc.js';
import { CLI, type ServerHandle, startServer } from '../helpers/server.js';
import { type EntryState, sameState } from './model.js';
import { checkSnapshot, History, type Mismatch, type Snapshot } from './oracle.js';
import { Rng } from './prng.js';
import { readEntry, readTree } from './tree-state.js';
import type { FinalRecord, OpRecord, WriterConfig } from './writer.js';

/**
 * The model-based stress harness (issue 10): a real `twinfs serve` (primary, mirror, control
 * channel, temp state dir) as a process; writer processes doing random operations in the mount
 * (writer.ts, each on its own subtree, each with its model); meanwhile a loop of prepare/read/
 * release over the control channel (reading the split copies while they are held) and a loop
 * of full `twinfs backup` runs into a `dir:` target. Then: the primary must equal the writers'
 * models, the mirror must equal the primary (`twinfs verify`, content, owners of symlinks
 * included, modes, times, xattrs, hard-link structure), every split copy and snapshot must
 * equal the volume at its split instant (oracle.ts), no split copy may change while it is held,
 * and no pair may break. Everything follows from the seed.
 */

export interface StressOptions {
  seed: number;
  /** How long the writers run, ms. */
  durationMs: number;
  /**
   * Keep the writers going past durationMs (up to maxMs in all) until the loops have done this
   * much: on a loaded machine a fixed time can pass with no backup taken, and the run then
   * checks little. Off by default (the writers stop at durationMs).
   */
  atLeast?: { prepares: number; backups: number; maxMs: number };
  writers?: number;
  /** Per writer. */
  maxOps?: number;
  /** Writers do mmap writes (msync'd: must show in snapshots once the op returned). */
  mmap?: boolean;
  /** Some mmap writes skip msync: their pages stay dirty in the kernel (issue 10, item 2). */
  lazyMmap?: boolean;
  /** Writers make hard links (default true). */
  links?: boolean;
  /** One new name in four holds a byte that is not UTF-8 (model.ts GeneratorOptions.bytes). */
  bytes?: boolean;
  /** Selections the prepare loop makes (default all three kinds). */
  selections?: Array<'volume' | 'subtree' | 'paths'>;
  /** Run the prepare/release loop and the backup loop (default both). */
  prepares?: boolean;
  backups?: boolean;
  /**
   * Backups are incremental (driven by the server's change record, shared with the previous
   * snapshot) instead of --full: every snapshot is still checked against its split instant.
   */
  incremental?: boolean;
  /** Where to keep the run's files (default a new temp dir, removed unless keep). */
  dir?: string;
  keep?: boolean;
  /** Keep the files of a run that found problems (default true). */
  keepFailed?: boolean;
  log?: (msg: string) => void;
  /** Extra `twinfs serve` arguments. */
  serveArgs?: string[];
}

export interface StressReport {
  seed: number;
  ms: number;
  dir: string;
  ops: number;
  writerFailures: string[];
  prepares: { ok: number; failed: Record<string, number> };
  /** changeDriven: backups the server's change answer drove (carried entries over unread). */
  backups: { ok: number; failed: Record<string, number>; changeDriven?: number; byReference?: number };
  snapshots: { count: number; checked: number; unverifiable: number; mismatches: Mismatch[] };
  /** Split copies that changed while held (invariant 4). */
  frozenChanged: string[];
  /** The first message of each failure code of prepares, releases and backups (what a count hides). */
  failureMessages: Record<string, string>;
  /** Primary entries that differ from the writers' models. */
  primaryVsModel: string[];
  verify: { ok: boolean; checked: number; differences: unknown[] };
  /**
   * A last full backup once the writers stopped, restored into an empty directory and compared
   * with the primary (content, type, mode, owner, xattrs, symlink targets, hard-link structure).
   */
  restore: { snapshot?: string; checked: number; differences: string[] };
  broken: Array<Record<string, unknown>>;
  serverExit: number | null;
  /**
   * How long the server's stop took (SIGTERM to exit), ms. Over SLOW_STOP_MS it is a problem
   * of the run: a stop that waits on something (bench/lib.mjs stopChecked, the other harnesses'
   * rule; docs/reliability.md, "A stop that waited for good on libuv's signal lock").
   */
  stopMs: number | null;
  /** ms since the start at which each phase ended. */
  phases: Record<string, number>;
}

/** A stop slower than this is a problem of the run (the other harnesses' bound, bench/lib.mjs). */
const SLOW_STOP_MS = 20_000;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REGISTER = path.join(HERE, 'register.mjs');
const WRITER = path.join(HERE, 'writer.ts');
const now = (): number => performance.timeOrigin + performance.now();

/** Everything a report says went wrong (empty: the run passed). */
export function problems(r: StressReport): string[] {
  const out: string[] = [];
  if (r.ops < 10) out.push(`the writers did only ${r.ops} operations`);
  for (const f of r.writerFailures) out.push(`writer: ${f}`);
  for (const m of r.snapshots.mismatches.slice(0, 20))
    out.push(`snapshot ${m.snapshot} ${m.path}: expected ${brief(m.expected)}, got ${brief(m.actual)}`);
  if (r.snapshots.mismatches.length > 20)
    out.push(`... ${r.snapshots.mismatches.length - 20} more mismatches`);
  for (const f of r.frozenChanged) out.push(`split copy changed while held: ${f}`);
  for (const p of r.primaryVsModel.slice(0, 20)) out.push(`primary differs from the model: ${p}`);
  if (!r.verify.ok)
    for (const d of r.verify.differences.slice(0, 30))
      out.push(`mirror differs from primary: ${JSON.stringify(d)}`);
  for (const b of r.broken) out.push(`broken pair: ${JSON.stringify(b)}`);
  if (r.serverExit !== 0) out.push(`twinfs serve exited with ${r.serverExit}`);
  if (r.stopMs !== null && r.stopMs > SLOW_STOP_MS)
    out.push(`the server took ${r.stopMs} ms to stop (more than ${SLOW_STOP_MS} ms)`);
  for (const d of r.restore.differences.slice(0, 20)) out.push(`restore of the last snapshot: ${d}`);
  return out;
}

function brief(s: EntryState | null): string {
  if (!s) return 'nothing';
  return JSON.stringify(s);
}

export async function runStress(o: StressOptions): Promise<StressReport> {
  const log = o.log ?? (() => undefined);
  // The trees are read by name: names are bytes (src/posix/byte-paths.ts).
  installBytePaths();
  const started = now();
  const rng = new Rng(o.seed);
  const dir = o.dir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), `twinfs-stress-${o.seed}-`)));
  const d = (n: string) => path.join(dir, n);
  for (const n of ['primary', 'mnt', 'mirror', 'state', 'target', 'catalog', 'logs'])
    await fsp.mkdir(d(n), { recursive: true });
  const tokenFile = d('state/control.token');
  const report: StressReport = {
    seed: o.seed,
    ms: 0,
    dir,
    ops: 0,
    writerFailures: [],
    prepares: { ok: 0, failed: {} },
    backups: { ok: 0, failed: {} },
    snapshots: { count: 0, checked: 0, unverifiable: 0, mismatches: [] },
    frozenChanged: [],
    failureMessages: {},
    primaryVsModel: [],
    verify: { ok: false, checked: 0, differences: [] },
    restore: { checked: 0, differences: [] },
    broken: [],
    serverExit: null,
    stopMs: null,
    phases: {},
  };
  const phase = (name: string) => {
    report.phases[name] = Math.round(now() - started);
    log(`${name} after ${report.phases[name]} ms`);
  };
  let srv: ServerHandle | undefined;
  const children = new Set<ChildProcess>();
  const writerChildren = new Set<ChildProcess>();
  try {
    srv = await startServer({
      primary: d('primary'),
      mount: d('mnt'),
      args: [
        '--mirror',
        d('mirror'),
        '--state-dir',
        d('state'),
        '--control',
        '127.0.0.1:0',
        '--token-file',
        tokenFile,
        '--writeback-ms',
        String(rng.pick([200, 1000, 3000])),
        '--cache-mb',
        String(rng.pick([8, 64])),
        ...(o.serveArgs ?? []),
      ],
      env: { ...process.env, UV_THREADPOOL_SIZE: '16', TWINFS_MIRROR_TRACE: d('logs/mirror-trace.jsonl') },
      timeoutMs: 60_000,
    });
    phase('mounted');
    const mounted = srv.events.find((e) => e.event === 'mounted') as any;
    const url: string = mounted.control.url;
    const token = (await fsp.readFile(tokenFile, 'utf8')).trim();
    const mirrorRoot: string = mounted.mirror.mirrorRoot;

    const nWriters = o.writers ?? 3;
    const roots = Array.from({ length: nWriters }, (_, i) => `/w${i}`);
    const writersStarted = now();
    const writerDone = roots.map((root, i) => {
      const cfg: WriterConfig = {
        mount: d('mnt'),
        root,
        seed: rng.u32(),
        maxOps: o.maxOps ?? 1_000_000,
        durationMs: o.atLeast ? Math.max(o.durationMs, o.atLeast.maxMs) : o.durationMs,
        log: d(`logs/writer-${i}.jsonl`),
        mmap: o.mmap ?? false,
        lazyMmap: o.lazyMmap ?? false,
        links: o.links ?? true,
        bytes: o.bytes ?? false,
        pauseMs: rng.pick([0, 20, 100]),
      };
      const child = spawn(process.execPath, ['--import', REGISTER, WRITER, JSON.stringify(cfg)], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      children.add(child);
      writerChildren.add(child);
      let err = '';
      child.stderr!.on('data', (b) => (err += b));
      return new Promise<void>((resolve) =>
        child.on('exit', (code, signal) => {
          children.delete(child);
          writerChildren.delete(child);
          if (code !== 0) report.writerFailures.push(`${root} exited ${code ?? signal}: ${err.slice(-500)}`);
          resolve();
        }),
      );
    });
    let writing = true;
    const allWritten = Promise.all(writerDone).then(() => {
      writing = false;
    });
    if (o.atLeast) {
      const want = o.atLeast;
      const stopAt = writersStarted + o.durationMs;
      const watch = setInterval(() => {
        const enough = report.prepares.ok >= want.prepares && report.backups.ok >= want.backups;
        if (!writing || (now() >= stopAt && enough)) {
          clearInterval(watch);
          for (const c of writerChildren) c.kill('SIGUSR1');
        }
      }, 100);
      void allWritten.then(() => clearInterval(watch));
    }

    const snapshots: Snapshot[] = [];
    const backupsTaken: Array<{ id: string; sent: number; replied: number }> = [];
    const loops: Promise<void>[] = [];
    /**
     * Both loops want the volume; on a loaded machine the prepare loop, which asks every few ms,
     * could win every race and no backup would ever be taken. A backup whose predecessor failed
     * (or the first one) gets the volume: the prepare loop waits while it prepares.
     */
    const turn = { backupFirst: false };
    if (o.prepares !== false) {
      const client = await ControlClient.connect(url, { token, client: 'stress', requestTimeoutMs: 60_000 });
      loops.push(
        prepareLoop(
          rng.fork('prepare'),
          client,
          d('primary'),
          mirrorRoot,
          roots,
          () => writing,
          report,
          snapshots,
          turn,
          {
            log,
            kinds: o.selections ?? ['volume', 'subtree', 'paths'],
          },
        ).finally(() => client.close()),
      );
    }
    if (o.backups !== false)
      loops.push(
        backupLoop(
          url,
          tokenFile,
          d('target'),
          d('catalog'),
          () => writing,
          report,
          backupsTaken,
          log,
          children,
          o.incremental === true,
          turn,
        ),
      );
    // A hung mount must not hang the run: writers get the deadline plus a margin, then SIGKILL.
    const killTimer = setTimeout(
      () => {
        for (const c of children) c.kill('SIGKILL');
      },
      Math.max(o.durationMs, o.atLeast?.maxMs ?? 0) + 120_000,
    );
    await allWritten;
    phase('writers');
    await Promise.all(loops);
    clearTimeout(killTimer);
    phase('loops');

    // Kernel dirty pages (mmap without msync) and twinfs's cache go to the primary and the
    // mirror; the server drains everything on SIGTERM.
    await sh(`sync -f '${d('mnt')}'`, { timeoutMs: 60_000 });
    if (o.backups !== false) {
      const last = await runBackup(url, tokenFile, d('target'), d('catalog'));
      if (last.id) report.restore.snapshot = last.id;
      else report.restore.differences.push(`the last backup failed: ${last.error}`);
      phase('last backup');
    }
    const stopAt = now();
    report.serverExit = await srv.stop(120_000);
    report.stopMs = Math.round(now() - stopAt);
    phase('stopped');
    if (report.restore.snapshot) {
      await restoreAndCompare(
        report.restore.snapshot,
        d('catalog'),
        d('restore'),
        d('primary'),
        roots,
        report,
      );
      phase('restore');
    }
    report.broken = srv.events.filter((e) => e.event === 'broken');
    await fsp.writeFile(
      d('logs/server-events.jsonl'),
      srv.events.map((e) => JSON.stringify(e) + '\n').join(''),
    );
    await fsp.writeFile(d('logs/server-stderr.txt'), srv.stderr());
    srv = undefined;

    // The writers' records.
    const history = new History();
    const finals = new Map<string, FinalRecord>();
    for (const [i, root] of roots.entries()) {
      const lines = readFileSync(d(`logs/writer-${i}.jsonl`), 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean);
      const recs = lines.map((l) => JSON.parse(l) as OpRecord | FinalRecord);
      const fin = recs.at(-1);
      const ops = recs.filter((r): r is OpRecord => !('done' in r));
      history.add(root, ops);
      report.ops += ops.filter((r) => !r.err).length;
      if (fin && 'done' in fin) finals.set(root, fin);
      else report.writerFailures.push(`${root}: log has no final record`);
    }

    // Primary = model.
    for (const [root, fin] of finals) {
      const real = await readTree(d('primary'), root);
      for (const [p, s] of Object.entries(fin.state))
        if (!sameState(s, real.get(p) ?? null, 'all'))
          report.primaryVsModel.push(`${p}: model ${brief(s)}, primary ${brief(real.get(p) ?? null)}`);
      for (const p of real.keys())
        if (!(p in fin.state)) report.primaryVsModel.push(`${p}: not in the model`);
    }

    // Mirror = primary.
    const v = await sh(
      `'${process.execPath}' '${CLI}' verify --primary '${d('primary')}' --mirror '${d('mirror')}' --json`,
      {
        timeoutMs: 300_000,
      },
    );
    try {
      report.verify = JSON.parse(v.stdout.trim().split('\n').at(-1)!);
    } catch {
      report.verify = { ok: false, checked: 0, differences: [`verify failed: ${v.stderr.slice(-500)}`] };
    }

    phase('verified');
    // Backups: what each snapshot holds under the writers' roots, restored from the dir:
    // repository (which keeps chunks, not trees) into a directory of its own.
    for (const b of backupsTaken) {
      const entries = new Map<string, EntryState>();
      const into = d(`snapshots/${b.id}`);
      const r = await restoreSnapshot(b.id, d('catalog'), into);
      if (r.code !== 0)
        report.restore.differences.push(
          `restore of backup ${b.id} exited ${r.code}: ${(r.stderr + r.stdout).slice(-300)}`,
        );
      for (const root of roots) for (const [p, s] of await readTree(into, root)) entries.set(p, s);
      await fsp.rm(into, { recursive: true, force: true });
      snapshots.push({
        label: `backup ${b.id}`,
        sent: b.sent,
        replied: b.replied,
        covers: () => true,
        entries,
        fields: 'all',
      });
    }
    await fsp.writeFile(
      d('logs/snapshots.jsonl'),
      snapshots
        .map((s) => JSON.stringify({ label: s.label, sent: s.sent, replied: s.replied }) + '\n')
        .join(''),
    );
    phase('snapshots read');
    report.snapshots.count = snapshots.length;
    for (const s of snapshots) {
      const c = checkSnapshot(history, s);
      report.snapshots.checked += c.checked;
      report.snapshots.unverifiable += c.unverifiable;
      report.snapshots.mismatches.push(...c.mismatches);
    }
  } finally {
    for (const c of children) c.kill('SIGKILL');
    if (srv) {
      report.broken = srv.events.filter((e) => e.event === 'broken');
      await srv.kill();
    }
    await sh(`${fusermountUz(d('mnt'))} 2>/dev/null`);
    report.ms = Math.round(now() - started);
    const keep = o.keep || o.dir || ((o.keepFailed ?? true) && problems(report).length > 0);
    if (!keep) await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
  return report;
}

async function prepareLoop(
  rng: Rng,
  client: ControlClient,
  primary: string,
  mirrorRoot: string,
  roots: string[],
  writing: () => boolean,
  report: StressReport,
  snapshots: Snapshot[],
  turn: { backupFirst: boolean },
  o: { log: (m: string) => void; kinds: Array<'volume' | 'subtree' | 'paths'> },
): Promise<void> {
  const weights = { volume: 2, subtree: 4, paths: 4 };
  for (const k of Object.keys(weights) as Array<keyof typeof weights>)
    if (!o.kinds.includes(k)) weights[k] = 0;
  while (writing()) {
    if (turn.backupFirst) {
      await sleep(20);
      continue;
    }
    const kind = rng.weighted(weights);
    let selector: SelectorMsg;
    let tops: string[];
    let covers: (p: string) => boolean;
    if (kind === 'volume') {
      selector = { volume: true };
      tops = roots;
      covers = () => true;
    } else if (kind === 'subtree') {
      const root = rng.pick(roots);
      selector = { subtree: root };
      tops = [root];
      covers = (p) => p === root || p.startsWith(root + '/');
    } else {
      const chosen = await pickFiles(rng, primary, rng.pick(roots));
      if (chosen.length === 0) {
        await sleep(50);
        continue;
      }
      selector = { paths: chosen };
      tops = chosen;
      const set = new Set(chosen);
      covers = (p) => set.has(p);
    }
    const sent = now();
    let prep: Awaited<ReturnType<ControlClient['prepare']>>;
    try {
      prep = await client.prepare(selector, { leaseMs: 60_000 });
    } catch (err) {
      const code = err instanceof RemoteError ? err.code : ((err as Error).message ?? 'error');
      report.prepares.failed[code] = (report.prepares.failed[code] ?? 0) + 1;
      report.failureMessages[`prepare ${code}`] ??=
        `${(err as Error).message} (selector ${JSON.stringify(selector)})`;
      o.log(`prepare ${JSON.stringify(selector)} failed: ${code}`);
      await sleep(rng.int(200));
      continue;
    }
    const replied = now();
    report.prepares.ok++;
    const read = async () => {
      const entries = new Map<string, EntryState>();
      for (const t of tops) {
        if (kind === 'paths') {
          const s = await readEntry(mirrorRoot + t);
          if (s) entries.set(t, s);
        } else for (const [p, s] of await readTree(mirrorRoot, t)) entries.set(p, s);
      }
      return entries;
    };
    const entries = await read();
    await sleep(rng.int(300));
    const again = await read();
    for (const p of new Set([...entries.keys(), ...again.keys()]))
      if (!sameState(entries.get(p) ?? null, again.get(p) ?? null, 'all'))
        report.frozenChanged.push(`${prep.backupId} ${p}`);
    await client.release(prep.backupId).catch((err) => {
      const code = err instanceof RemoteError ? err.code : 'error';
      report.prepares.failed[`release ${code}`] = (report.prepares.failed[`release ${code}`] ?? 0) + 1;
    });
    snapshots.push({
      label: `split ${prep.backupId} ${JSON.stringify(selector)}`,
      sent,
      replied,
      covers,
      entries,
      fields: 'all',
    });
    await sleep(rng.int(150));
  }
}

/** 1–4 non-directory names of one writer's subtree, hard-linked ones preferred. */
async function pickFiles(rng: Rng, primary: string, root: string): Promise<string[]> {
  const all: Array<{ p: string; links: number }> = [];
  const walk = async (p: string) => {
    const names = await fsp.readdir(primary + p).catch(() => [] as string[]);
    for (const n of names) {
      const st = await fsp.lstat(`${primary}${p}/${n}`).catch(() => undefined);
      if (!st) continue;
      if (st.isDirectory()) await walk(`${p}/${n}`);
      else all.push({ p: `${p}/${n}`, links: st.isFile() ? st.nlink : 1 });
    }
  };
  await walk(root);
  const linked = all.filter((f) => f.links > 1);
  const out = new Set<string>();
  for (let i = rng.range(1, 4); i > 0 && all.length > 0; i--)
    out.add(rng.pick(linked.length > 0 && rng.chance(0.6) ? linked : all).p);
  return [...out].sort();
}

async function backupLoop(
  url: string,
  tokenFile: string,
  target: string,
  catalog: string,
  writing: () => boolean,
  report: StressReport,
  taken: Array<{ id: string; sent: number; replied: number }>,
  log: (m: string) => void,
  children: Set<ChildProcess>,
  incremental: boolean,
  turn: { backupFirst: boolean },
): Promise<void> {
  let lastFailed = false;
  while (writing()) {
    turn.backupFirst = lastFailed;
    // The window opens when the backup process is started (its prepare is sent later) and
    // closes when its first line after the prepare reply arrives (the reply came earlier).
    const sent = now();
    let replied = 0;
    const args = [
      CLI,
      'backup',
      '--server',
      url,
      '--token-file',
      tokenFile,
      '--target',
      `dir:${target}`,
      '--catalog',
      catalog,
      ...(incremental ? [] : ['--full']),
      '--json',
    ];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b;
      if (!replied && /"phase":"(copy|backup copy|commit|done)/.test(out)) {
        replied = now();
        turn.backupFirst = false;
      }
    });
    child.stderr!.on('data', (b) => (err += b));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    children.delete(child);
    const { last, id } = backupResult(out);
    turn.backupFirst = false;
    lastFailed = !(code === 0 && id && replied);
    if (code === 0 && id && replied) {
      report.backups.ok++;
      if (last?.changes) report.backups.changeDriven = (report.backups.changeDriven ?? 0) + 1;
      if (last?.changes?.byReference) report.backups.byReference = (report.backups.byReference ?? 0) + 1;
      taken.push({ id, sent, replied });
    } else {
      const c = last?.code ?? last?.error?.code ?? `exit ${code}`;
      report.backups.failed[c] = (report.backups.failed[c] ?? 0) + 1;
      report.failureMessages[`backup ${c}`] ??= `${err.slice(-300)} ${out.slice(-300)}`;
      log(`backup failed (${c}): ${err.slice(-300)} ${out.slice(-300)}`);
      await sleep(200);
    }
  }
}

/** One `twinfs backup --full` into the run's target; the snapshot id, or why there is none. */
async function runBackup(
  url: string,
  tokenFile: string,
  target: string,
  catalog: string,
): Promise<{ id?: string; error?: string }> {
  const r = await sh(
    `'${process.execPath}' '${CLI}' backup --server '${url}' --token-file '${tokenFile}' --target 'dir:${target}' --catalog '${catalog}' --full --json`,
    { timeoutMs: 300_000 },
  );
  const { id } = backupResult(r.stdout);
  return r.code === 0 && id ? { id } : { error: `exit ${r.code}: ${(r.stderr + r.stdout).slice(-300)}` };
}

/** Restores a snapshot into dir and compares the writers' subtrees with the primary's. */
async function restoreAndCompare(
  id: string,
  catalog: string,
  dir: string,
  primary: string,
  roots: string[],
  report: StressReport,
): Promise<void> {
  const r = await restoreSnapshot(id, catalog, dir);
  if (r.code !== 0) {
    report.restore.differences.push(`restore exited ${r.code}: ${(r.stderr + r.stdout).slice(-300)}`);
    return;
  }
  const diffs = report.restore.differences;
  for (const root of roots) {
    // With mtimes to the ns (atimes move as the checks read the primary).
    const want = await readTree(primary, root, true);
    const got = await readTree(dir, root, true);
    for (const p of new Set([...want.keys(), ...got.keys()])) {
      report.restore.checked++;
      const a = want.get(p) ?? null;
      const b = got.get(p) ?? null;
      if (!sameState(a, b, 'all') || a?.mt !== b?.mt)
        diffs.push(`${p}: primary ${JSON.stringify(a)}, restored ${JSON.stringify(b)}`);
    }
    // Names that are one file on the primary are one file in the restore, and the other way round.
    const groups = async (top: string) => {
      const byIno = new Map<number, string[]>();
      for (const [p, st] of want) {
        if (st.t !== 'f') continue;
        const s = await fsp.lstat(top + p).catch(() => undefined);
        if (!s || s.nlink < 2) continue;
        byIno.set(s.ino, [...(byIno.get(s.ino) ?? []), p]);
      }
      return new Set([...byIno.values()].map((g) => g.sort().join(' = ')));
    };
    const [gp, gr] = [await groups(primary), await groups(dir)];
    for (const g of gp) if (!gr.has(g)) diffs.push(`hard links ${g} are not one file in the restore`);
    for (const g of gr)
      if (!gp.has(g)) diffs.push(`hard links ${g} in the restore are not one file on the primary`);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The last JSON line of a `twinfs backup --json` run and the snapshot id it names, if any. */
function backupResult(stdout: string): { last: any; id: string | undefined } {
  const last = stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return {};
      }
    })
    .at(-1);
  return { last, id: last?.snapshot?.id ?? last?.snapshotId ?? last?.result?.snapshot?.id };
}

/** `twinfs restore ID --to DIR` from the run's catalog. */
function restoreSnapshot(id: string, catalog: string, dir: string) {
  return sh(`'${process.execPath}' '${CLI}' restore '${id}' --to '${dir}' --catalog '${catalog}'`, {
    timeoutMs: 300_000,
  });
}
