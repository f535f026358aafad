#!/usr/bin/env node
// Write stall during a backup prepare (issue 4).
//
// One twinfs server (mirror on the same disk by default, control channel on). For each
// scenario — target file of --small-mib (1 MiB) or --big-mib (1 GiB), with 0 or --dirty-mib
// (64 MiB) of dirty data in the cache at the moment of prepare — two runs of identical
// length:
//   baseline  a writer process writes 4 KiB records at --rate writes/s into the target file
//             (offsets cycling through its first MiB), timing every write(2); the bench
//             process meanwhile dirties the cache (when the scenario says so) --cycles times
//   backup    the same, plus on every cycle: prepare({paths:[target]}) over the control
//             channel, hold the split for --hold-ms (the peer's copy), release (resync)
// Reported: max, p99 and count of writes > 100 ms for both runs, the server's stallMs of the
// prepares, the prepare round trip and the dirty bytes the server reported just before each
// prepare. Where the 64 MiB of dirty data sits:
//   1 GiB target: inside the target (a 64 MiB region away from the writer's) — prepare must
//                 flush it before the split;
//   1 MiB target: in another 64 MiB file — prepare must NOT wait for it.
// The server runs with --cache-mb 256 --writeback-ms 30000 so 64 MiB can stay dirty until the
// prepare (with the defaults, 64 MiB / high water 32 MiB, background flushing starts at 32 MiB).
//
//   node bench/stall.mjs                              full size (~3 minutes)
//   node bench/stall.mjs --big-mib 64 --cycles 2      (smoke)
//
// Tight budget (issue 11, row 10), with --tight N: N prepares back to back with maxStallMs
// --tight-budget-ms (1) against the same writer on the small file, after a baseline run of the
// same length. Reported: prepares that succeeded and failed (ETWIN_STALL_EXCEEDED), the
// largest stallMs a successful one reported (must be ≤ the budget), and the writer's max and
// p99 in both runs (what the prepares added to write latency, failed ones included).
//   node bench/stall.mjs --scenarios '' --tight 60
// With --tight-budgets 1,10,100 the same for each budget in turn (a baseline before each).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  commonOptions,
  controlClient,
  fmt,
  log,
  MiB,
  mkdirs,
  mountTmpfs,
  parseArgs,
  percentile,
  run,
  sleep,
  startBench,
  startTwinfs,
  table,
  trackProc,
  WORKER,
  waitMirrorIdle,
} from './lib.mjs';

const opts = parseArgs(
  {
    'small-mib': { default: 1, help: 'size of the small target file, MiB' },
    'big-mib': { default: 1024, help: 'size of the large target file, MiB' },
    'dirty-mib': { default: 64, help: 'dirty data at prepare in the "dirty" scenarios, MiB' },
    rate: { default: 500, help: 'writer: 4 KiB writes per second' },
    cycles: { default: 5, help: 'prepare/release cycles per scenario' },
    'hold-ms': { default: 500, help: 'how long each split is held before release' },
    'gap-ms': { default: 700, help: 'pause between steps of a cycle' },
    mirror: { default: 'disk', help: 'where the mirror lives: disk (same as primary) or tmpfs' },
    'cache-mb': { default: 256, help: 'twinfs --cache-mb' },
    'writeback-ms': { default: 30000, help: 'twinfs --writeback-ms' },
    scenarios: { default: 'small-0,big-0,small-dirty,big-dirty', help: 'comma list' },
    tight: { default: 0, help: 'prepares in the tight-budget run (0: none)' },
    'tight-budget-ms': { default: 1, help: 'maxStallMs of each tight-budget prepare' },
    'tight-budgets': {
      default: '',
      help: 'several budgets, comma-separated (e.g. 1,10,100): a baseline and a run for each, in turn',
    },
    'tight-gap-ms': { default: 20, help: 'pause between tight-budget prepares' },
    ...commonOptions('parent of the temporary directories'),
  },
  'node bench/stall.mjs [options]: write stall during prepare (issue 4)',
);
const { notes, base } = await startBench(opts);
const d = mkdirs(base, 'primary', 'mount', 'state', 'tmp');
const mirror = path.join(base, 'mirror');
if (opts.mirror === 'tmpfs') {
  mountTmpfs(mirror, (opts['big-mib'] + opts['small-mib'] + 2 * opts['dirty-mib'] + 256) * MiB);
}
const srv = await startTwinfs({
  cli: opts.cli || undefined,
  primary: d.primary,
  mount: d.mount,
  mirror,
  stateDir: d.state,
  control: '127.0.0.1:0',
  cacheMb: opts['cache-mb'],
  writebackMs: opts['writeback-ms'],
  verbose: opts.verbose,
});
const client = await controlClient(srv.url, srv.token);
await waitMirrorIdle(client);
const now = () => performance.timeOrigin + performance.now();

// Files, written through the mount (so the mirror holds them) and fsynced.
const M = (n) => path.join(d.mount, n);
await run('dd', ['if=/dev/urandom', `of=${M('small')}`, 'bs=1M', `count=${opts['small-mib']}`, 'conv=fsync']);
await run('dd', ['if=/dev/urandom', `of=${M('big')}`, 'bs=1M', `count=${opts['big-mib']}`, 'conv=fsync']);
await run('dd', ['if=/dev/urandom', `of=${M('other')}`, 'bs=1M', `count=${opts['dirty-mib']}`, 'conv=fsync']);
await waitMirrorIdle(client);
log('files ready');

const scenarios = {
  'small-0': { target: 'small', dirty: null },
  'big-0': { target: 'big', dirty: null },
  'small-dirty': { target: 'small', dirty: { file: 'other', seekMiB: 0 } },
  'big-dirty': {
    target: 'big',
    dirty: { file: 'big', seekMiB: Math.min(256, Math.max(1, opts['big-mib'] - opts['dirty-mib'])) },
  },
};

function startWriter(file, outFile, stopFile) {
  const p = spawn(
    process.execPath,
    [
      WORKER,
      'writer',
      '--file',
      file,
      '--rate',
      String(opts.rate),
      '--duration-ms',
      '600000',
      '--span',
      String(Math.min(opts['small-mib'], 1) * MiB),
      '--out',
      outFile,
      '--stop',
      stopFile,
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  trackProc(p);
  let buf = '';
  let err = '';
  p.stderr.on('data', (x) => (err += x));
  const ready = new Promise((resolve, reject) => {
    p.stdout.on('data', (x) => {
      buf += x;
      if (buf.includes('ready')) resolve();
    });
    p.on('exit', (c) => reject(new Error(`writer exited ${c}: ${err}`)));
  });
  const done = new Promise((resolve, reject) =>
    p.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`writer exited ${c}: ${err}`)))),
  );
  return { ready, done };
}

function readLatencies(file) {
  const b = fs.readFileSync(file);
  const f = new Float64Array(b.buffer, b.byteOffset, b.length / 8);
  const recs = [];
  for (let i = 0; i < f.length; i += 2) recs.push({ t: f[i], lat: f[i + 1] });
  return recs;
}

function stats(recs) {
  const lats = recs.map((r) => r.lat).sort((a, b) => a - b);
  return {
    n: lats.length,
    max: lats.at(-1) ?? Number.NaN,
    p99: percentile(lats, 99),
    p50: percentile(lats, 50),
    mean: lats.reduce((a, b) => a + b, 0) / (lats.length || 1),
    over100: lats.filter((x) => x > 100).length,
  };
}

async function scenarioRun(name, withBackup) {
  const sc = scenarios[name];
  const outFile = path.join(d.tmp, `${name}-${withBackup ? 'backup' : 'base'}.bin`);
  const stopFile = path.join(d.tmp, `${name}-${withBackup ? 'backup' : 'base'}.stop`);
  fs.rmSync(stopFile, { force: true });
  const w = startWriter(M(sc.target), outFile, stopFile);
  await w.ready;
  await sleep(opts['gap-ms']);
  const prepares = [];
  for (let c = 0; c < opts.cycles; c++) {
    let dirtyBytes = 0;
    if (sc.dirty) {
      // 64 KiB writes: requests of 128 KiB and more to a file with nothing cached pass the cache.
      await run('dd', [
        'if=/dev/zero',
        `of=${M(sc.dirty.file)}`,
        'bs=64K',
        `count=${opts['dirty-mib'] * 16}`,
        `seek=${sc.dirty.seekMiB * 16}`,
        'conv=notrunc',
      ]);
      await sleep(opts['gap-ms']);
    }
    const st = await client.request('status');
    dirtyBytes = st.fs.cache.dirtyBytes;
    if (withBackup) {
      const t0 = now();
      const p = await client.prepare({ paths: [`/${sc.target}`] }, { leaseMs: 60_000 });
      const t1 = now();
      await sleep(opts['hold-ms']);
      const r0 = now();
      const r = await client.release(p.backupId);
      const r1 = now();
      prepares.push({
        t0,
        t1,
        r0,
        r1,
        rtt: t1 - t0,
        stallMs: p.stallMs,
        dirtyBytes,
        resyncMs: r.ms,
        resyncBytes: r.bytesCopied,
        releaseRtt: r1 - r0,
      });
    } else {
      prepares.push({ dirtyBytes });
      await sleep(opts['hold-ms']);
    }
    // Let the scenario's dirty data drain the same way in both runs before the next cycle.
    if (sc.dirty) await client.request('flush');
    await sleep(opts['gap-ms']);
  }
  fs.writeFileSync(stopFile, '');
  await w.done;
  // The writer's own data would otherwise wait out the 30 s write-back delay.
  await client.request('flush');
  await waitMirrorIdle(client);
  const recs = readLatencies(outFile);
  // Writes that overlapped a prepare (issued before its reply, completed after it was sent).
  const inWindow = withBackup
    ? recs.filter((r) => prepares.some((p) => r.t <= p.t1 && r.t + r.lat >= p.t0))
    : [];
  // ... and writes that overlapped a release (the resync of the split).
  const inRelease = withBackup
    ? recs.filter((r) => prepares.some((p) => r.t <= p.r1 && r.t + r.lat >= p.r0))
    : [];
  return { all: stats(recs), window: stats(inWindow), release: stats(inRelease), prepares };
}

/** The tight-budget run: a baseline, then opts.tight prepares with a tiny maxStallMs. */
async function tightRun(withPrepares, budget) {
  const tag = `${withPrepares ? 'tight' : 'tight-base'}-${budget}`;
  const outFile = path.join(d.tmp, `${tag}.bin`);
  const stopFile = path.join(d.tmp, `${tag}.stop`);
  fs.rmSync(stopFile, { force: true });
  const w = startWriter(M('small'), outFile, stopFile);
  await w.ready;
  await sleep(opts['gap-ms']);
  const outcomes = [];
  for (let i = 0; i < opts.tight; i++) {
    if (withPrepares) {
      const t0 = now();
      try {
        const p = await client.prepare({ paths: ['/small'] }, { leaseMs: 60_000, maxStallMs: budget });
        outcomes.push({ ok: true, stallMs: p.stallMs, t0, t1: now() });
        await client.release(p.backupId);
      } catch (err) {
        outcomes.push({ ok: false, code: err.code, t0, t1: now() });
      }
    }
    await sleep(opts['tight-gap-ms']);
  }
  fs.writeFileSync(stopFile, '');
  await w.done;
  await client.request('flush');
  await waitMirrorIdle(client);
  const recs = readLatencies(outFile);
  const inWindow = recs.filter((r) => outcomes.some((p) => r.t <= p.t1 && r.t + r.lat >= p.t0));
  // The server's own account: how long the write gate held a write, at most (all runs so far).
  const st = (await client.request('status')).backup.stall;
  const gate = { ...st.inhibitor, maxFailedHeldMs: st.maxFailedHeldMs };
  return { all: stats(recs), window: stats(inWindow), outcomes, gate };
}

const results = {};
const loads = {};
for (const name of opts.scenarios.split(',').filter(Boolean)) {
  loads[name] = os.loadavg()[0].toFixed(2);
  const baseRun = await scenarioRun(name, false);
  const bk = await scenarioRun(name, true);
  results[name] = { base: baseRun, backup: bk };
  log(
    `${name}: baseline max ${fmt(baseRun.all.max)} p99 ${fmt(baseRun.all.p99, 2)} >100ms ${baseRun.all.over100}; ` +
      `backup max ${fmt(bk.all.max)} p99 ${fmt(bk.all.p99, 2)} >100ms ${bk.all.over100}; stallMs ${bk.prepares.map((p) => fmt(p.stallMs)).join(' ')}`,
  );
}
const tights = [];
if (opts.tight > 0) {
  const budgets = opts['tight-budgets']
    ? opts['tight-budgets'].split(',').map(Number)
    : [opts['tight-budget-ms']];
  for (const budget of budgets) {
    const load = os.loadavg()[0].toFixed(2);
    tights.push({ budget, load, base: await tightRun(false, budget), run: await tightRun(true, budget) });
  }
}
const v = await client.request('verify', { content: true });
await client.close();
await srv.stop();

const w = (s) => process.stdout.write(s);
w(`\n## bench/stall.mjs — ${notes.date}\n\n`);
w(
  `machine: ${notes.cpus}, ${notes.memGiB} GiB, kernel ${notes.kernel}, node ${notes.node}, git ${notes.git}\nbuild: ${notes.build}\n` +
    `1-min load at the start of each scenario: ${JSON.stringify(loads)}; at end ${os.loadavg()[0].toFixed(2)}\n` +
    `writer: 4 KiB writes at ${opts.rate}/s into the target's first MiB; ${opts.cycles} prepare/release cycles per run, split held ${opts['hold-ms']} ms; ` +
    `mirror on ${opts.mirror}; server --cache-mb ${opts['cache-mb']} --writeback-ms ${opts['writeback-ms']}; verify after: ${JSON.stringify(v?.ok)}\n\n`,
);
const label = {
  'small-0': `${opts['small-mib']} MiB, 0 dirty`,
  'big-0': `${opts['big-mib']} MiB, 0 dirty`,
  'small-dirty': `${opts['small-mib']} MiB, ${opts['dirty-mib']} MiB dirty elsewhere`,
  'big-dirty': `${opts['big-mib']} MiB, ${opts['dirty-mib']} MiB dirty in it`,
};
const rows = [];
for (const [name, r] of Object.entries(results)) {
  const p = r.backup.prepares;
  rows.push([
    label[name],
    `${fmt(r.base.all.max)} / ${fmt(r.base.all.p99, 2)} / ${r.base.all.over100} (n=${r.base.all.n})`,
    `${fmt(r.backup.all.max)} / ${fmt(r.backup.all.p99, 2)} / ${r.backup.all.over100} (n=${r.backup.all.n})`,
    `${fmt(r.backup.window.max)} (n=${r.backup.window.n})`,
    `${fmt(r.backup.release.max)} (n=${r.backup.release.n})`,
    `${fmt(Math.max(...p.map((x) => x.stallMs)))} (${p.map((x) => fmt(x.stallMs, 0)).join(', ')})`,
    fmt(Math.max(...p.map((x) => x.rtt))),
    `${fmt(Math.max(...p.map((x) => x.dirtyBytes)) / MiB)}`,
    fmt(Math.max(...p.map((x) => x.resyncMs))),
  ]);
}
if (rows.length > 0)
  table(
    [
      'target, dirty at prepare',
      'baseline: max / p99 / >100ms (ms)',
      'with backups: max / p99 / >100ms',
      'max of writes overlapping a prepare',
      'max overlapping a release',
      'server stallMs max (each)',
      'prepare round trip max',
      'dirty MiB at prepare',
      'resync ms max',
    ],
    rows,
  );
if (rows.length > 0) w(`goal: max ≤ 50 ms without dirty data, flat in file size\n`);
if (tights.length > 0) {
  w(
    `\ntight budget: per budget, a baseline run, then ${opts.tight} prepares of /small with that maxStallMs, ${opts['tight-gap-ms']} ms apart, writer as above\n\n`,
  );
  const rows = [];
  for (const t of tights) {
    const o = t.run.outcomes;
    const okd = o.filter((x) => x.ok);
    const codes = {};
    for (const x of o) if (!x.ok) codes[x.code] = (codes[x.code] ?? 0) + 1;
    rows.push([
      `${t.budget} ms`,
      t.load,
      `${fmt(t.base.all.max)} / ${fmt(t.base.all.p99, 2)}`,
      `${fmt(t.run.all.max)} / ${fmt(t.run.all.p99, 2)}`,
      `${fmt(t.run.window.max)} / ${fmt(t.run.window.p99, 2)} (n=${t.run.window.n})`,
      `${okd.length} / ${o.length - okd.length}${o.length - okd.length ? ` ${JSON.stringify(codes)}` : ''}`,
      okd.length ? fmt(Math.max(...okd.map((x) => x.stallMs)), 2) : '-',
      `${fmt(t.run.gate?.maxStallMs, 2)} / ${fmt(t.run.gate?.maxFailedHeldMs, 2)}`,
    ]);
  }
  table(
    [
      'budget',
      'load',
      'writer baseline max / p99 (ms)',
      'with prepares max / p99',
      'writes overlapping a prepare max / p99',
      'prepares ok / failed',
      'stallMs of successes, max',
      'server: longest gate hold / longest failed hold (cumulative)',
    ],
    rows,
  );
}
if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ notes, opts, loads, results, tights }, null, 2));
