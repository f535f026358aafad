#!/usr/bin/env node
// Random file operations, fsstress/fsx style (issue 12): --procs processes, each doing --ops
// seeded random operations in a directory of its own (create, write and read at random offsets,
// truncate, fallocate, mmap write, rename, link, unlink, symlink, mkdir/rmdir, chmod, utimens,
// setxattr/getxattr, stat, readdir, fsync; bench/exerciser-worker.mjs), every read and listing
// checked against the process's model of what must be there, and a final walk that reads it all.
// The same operation stream runs on every target, one after another, order rotated per rep:
//
//   bare             the primary directory itself, no FUSE
//   bindfs           bindfs -o big_writes over a primary directory (the C passthrough)
//   twinfs2          twinfs serve, libfuse2 (TWINFS_FUSE=2)      twinfs2+mirror  with --mirror
//   twinfs3          twinfs serve, libfuse3 (TWINFS_FUSE=3)      twinfs3+mirror  with --mirror
//
// (mirrors on the primary's filesystem). Prints wall time per target (spawn of the processes to
// the last exit: what `time fsstress` shows), the ratio to bindfs in the same run, the server's
// CPU, and the mean time of each operation type. The processes keep going past a failed check
// (so every target runs the whole stream) and count them; exit 1 when a target other than bindfs
// failed one (content, size, namespace or errno; seed, process and op index replay it: --run-in).
// bindfs fails some through other names of hard links (stale size and nlink): reported only.
//
//   node bench/exerciser.mjs                                   6 targets, 4 × 1500 ops
//   node bench/exerciser.mjs --targets bindfs,twinfs3 --ops 300 --max-load 99
//   node bench/exerciser.mjs --run-in DIR --seed 7 --procs 2 --ops 400   only the processes, in DIR
//
// The processes run in children of this one, which serves nothing: the servers are children too.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  commonOptions,
  cpuSeconds,
  envPairs,
  fmt,
  installCleanup,
  loadavg,
  log,
  mkdirs,
  parseArgs,
  run,
  startBench,
  startBindfs,
  startTwinfs,
  table,
  threadCpuSeconds,
} from './lib.mjs';

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'exerciser-worker.mjs');
const ALL = ['bare', 'bindfs', 'twinfs2', 'twinfs2+mirror', 'twinfs3', 'twinfs3+mirror'];
const opts = parseArgs(
  {
    seed: { default: 1, help: 'seed of the operation streams (process i uses seed and i)' },
    procs: { default: 4, help: 'processes per target' },
    ops: { default: 1500, help: 'operations per process' },
    reps: { default: 3, help: 'repetitions (each target once per rep, order rotated; median wall)' },
    targets: { default: ALL.join(','), help: `comma list of ${ALL.join(', ')}` },
    'twinfs-env': {
      default: '',
      help: 'environment of the twinfs servers, K=V[,K=V...] (e.g. TWINFS_NATIVE_OPEN=0 for an A/B)',
    },
    skip: { default: '', help: 'operation types left out of the stream (comma list, e.g. mmap,fallocate)' },
    strict: { default: false, help: 'stat(2) attributes that disagree with the model fail the run' },
    'run-in': { default: '', help: 'only run the processes in this directory (no mounts) and report' },
    'tamper-at': {
      default: -1,
      help: 'process 0 corrupts a file behind its model at this op (checks the check)',
    },
    'bindfs-opts': { default: 'big_writes', help: 'bindfs -o options' },
    'cpu-prof': { default: '', help: 'write V8 CPU profiles of the twinfs servers into DIR/TARGET/' },
    ...commonOptions(),
  },
  'node bench/exerciser.mjs [options]: random file operations checked against a model (issue 12)',
);

/** Runs the --procs processes in dir; resolves with { wallMs, results[] }. */
async function exercise(dir, keepGoing = false) {
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: opts.procs }, async (_, i) => {
      const args = [
        WORKER,
        '--dir',
        path.join(dir, `p${i}`),
        '--seed',
        String(opts.seed),
        '--proc',
        String(i),
      ];
      args.push('--ops', String(opts.ops));
      if (opts.skip) args.push('--skip', opts.skip);
      if (opts.strict) args.push('--strict');
      if (keepGoing) args.push('--keep-going');
      if (i === 0 && opts['tamper-at'] >= 0) args.push('--tamper-at', String(opts['tamper-at']));
      const r = await run(process.execPath, args, { check: false, timeoutMs: opts['time-limit'] * 1000 });
      try {
        return JSON.parse(r.stdout.trim().split('\n').pop());
      } catch {
        return {
          ok: false,
          failure: { proc: i, what: `worker exited ${r.code ?? r.signal}: ${r.stderr.slice(-1500)}` },
        };
      }
    }),
  );
  return { wallMs: performance.now() - t0, results };
}

/** Sums per-op times over the processes: { op: { n, ms } }. */
function perOp(results) {
  const out = {};
  for (const r of results)
    for (const [k, v] of Object.entries(r.perOp ?? {})) {
      const o = (out[k] ??= { n: 0, ms: 0 });
      o.n += v.n;
      o.ms += v.ms;
    }
  return out;
}

const failures = (results) => results.filter((r) => !r.ok).map((r) => r.failure);
const failureCount = (results) => results.reduce((s, r) => s + (r.failures ?? (r.ok ? 0 : 1)), 0);
const digests = (results) => results.map((r) => r.digest).join(',');

if (opts['run-in']) {
  installCleanup({ timeLimitSec: opts['time-limit'] });
  const r = await exercise(opts['run-in']);
  const summary = {
    wallMs: r.wallMs,
    failures: failures(r.results),
    attrMismatches: r.results.reduce((s, x) => s + (x.attrMismatches ?? 0), 0),
    firstAttr: r.results.flatMap((x) => x.firstAttr ?? []).slice(0, 5),
    digests: digests(r.results),
    perOp: perOp(r.results),
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(summary, null, 2));
  process.exit(summary.failures.length ? 1 : 0);
}

const targets = opts.targets.split(',').filter(Boolean);
for (const t of targets) if (!ALL.includes(t)) throw new Error(`unknown target ${t} (${ALL.join(', ')})`);
const { notes, base, loadStart } = await startBench(opts);
const servers = {};
const mounts = {};
for (const t of targets) {
  const id = t.replace('+', '-');
  const d = mkdirs(base, `${id}-primary`, `${id}-mnt`, `${id}-state`, `${id}-mirror`);
  if (t === 'bare') {
    mounts[t] = d[`${id}-primary`];
  } else if (t === 'bindfs') {
    servers[t] = await startBindfs(d[`${id}-primary`], d[`${id}-mnt`], opts['bindfs-opts']);
    mounts[t] = d[`${id}-mnt`];
  } else {
    servers[t] = await startTwinfs({
      primary: d[`${id}-primary`],
      mount: d[`${id}-mnt`],
      stateDir: d[`${id}-state`],
      mirror: t.endsWith('+mirror') ? d[`${id}-mirror`] : undefined,
      cli: opts.cli || undefined,
      env: { ...envPairs(opts['twinfs-env'], ','), TWINFS_FUSE: t.startsWith('twinfs3') ? '3' : '2' },
      nodeArgs: opts['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(opts['cpu-prof'], id)] : [],
      verbose: opts.verbose,
    });
    mounts[t] = d[`${id}-mnt`];
  }
}
log(`mounted: ${JSON.stringify(mounts)}`);

const res = Object.fromEntries(targets.map((t) => [t, []]));
let bad = 0;
for (let rep = 0; rep < opts.reps; rep++) {
  for (const t of targets.map((_, i) => targets[(i + rep) % targets.length])) {
    const pid = servers[t]?.pid;
    const cpu0 = pid ? cpuSeconds(pid) : Number.NaN;
    const th0 = pid ? threadCpuSeconds(pid) : {};
    const load = loadavg();
    // --keep-going: a target failing some checks still runs the whole stream (the timing's base).
    const r = await exercise(path.join(mounts[t], `rep${rep}`), true);
    const cpuS = pid ? cpuSeconds(pid) - cpu0 : Number.NaN;
    const threads = Object.entries(pid ? threadCpuSeconds(pid) : {})
      .map(([k, v]) => [k, v - (th0[k] ?? 0)])
      .filter(([, v]) => v >= 0.01);
    const f = failures(r.results);
    // bindfs is the speed reference; its own failures (stale attributes and sizes through
    // another name of a hard link) are reported, not the run's verdict.
    if (t !== 'bindfs') bad += f.length;
    res[t].push({
      ...r,
      cpuS,
      threads,
      load,
      failures: f,
      failureCount: failureCount(r.results),
      perOp: perOp(r.results),
    });
    log(
      `rep ${rep} ${t}: ${(r.wallMs / 1000).toFixed(2)} s, server CPU ${fmt(cpuS, 2)} s${f.length ? `, ${failureCount(r.results)} failures, first ${JSON.stringify(f)}` : ''}`,
    );
  }
}
for (const s of Object.values(servers)) await s.stop();

const med = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const wall = (t) => med(res[t].map((x) => x.wallMs));
const ref = res.bindfs ? wall('bindfs') : Number.NaN;
const ops = opts.procs * opts.ops;
process.stdout.write(
  `\n## bench/exerciser.mjs — ${notes.date}\n\nmachine: ${notes.cpus}, git ${notes.git}, ${notes.build}\n` +
    `load at start ${notes.load} (waited to ${loadStart.toFixed(2)}), at end ${loadavg()}; seed ${opts.seed}, ` +
    `${opts.procs} processes × ${opts.ops} ops, ${opts.reps} rep(s) (median)${opts.skip ? `, without ${opts.skip}` : ''}\n\n`,
);
table(
  [
    'target',
    'wall s',
    '× bindfs',
    'server CPU s',
    'µs CPU/op',
    'attr mismatches',
    'failures',
    'slowest process ops s',
  ],
  targets.map((t) => [
    t,
    fmt(wall(t) / 1000, 2),
    res.bindfs ? `${(wall(t) / ref).toFixed(2)}×` : '—',
    fmt(med(res[t].map((x) => x.cpuS)), 2),
    fmt((med(res[t].map((x) => x.cpuS)) * 1e6) / ops, 0),
    String(res[t].reduce((s, x) => s + x.results.reduce((u, y) => u + (y.attrMismatches ?? 0), 0), 0)),
    String(res[t].reduce((s, x) => s + x.failureCount, 0)),
    fmt(med(res[t].map((x) => Math.max(...x.results.map((y) => y.opsMs ?? Number.NaN)))) / 1000, 2),
  ]),
);
process.stdout.write('\nserver CPU s by thread (first rep)\n\n');
for (const t of targets.filter((x) => servers[x]))
  process.stdout.write(`- ${t}: ${res[t][0].threads.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}\n`);
// Mean ms per operation type (all processes, first rep), and each target's over bindfs's.
const types = Object.keys(res[targets[0]][0].perOp).sort();
const mean = (t, k) => {
  const o = res[t][0].perOp[k];
  return o ? o.ms / o.n : Number.NaN;
};
process.stdout.write('\nmean ms per operation (first rep; in brackets: × bindfs)\n\n');
table(
  ['op', 'n', ...targets],
  types.map((k) => [
    k,
    String(res[targets[0]][0].perOp[k].n),
    ...targets.map(
      (t) =>
        `${fmt(mean(t, k), 2)}${res.bindfs && t !== 'bindfs' ? ` (${(mean(t, k) / mean('bindfs', k)).toFixed(1)})` : ''}`,
    ),
  ]),
);
for (const t of targets)
  for (const [i, x] of res[t].entries())
    if (x.failures.length)
      process.stdout.write(
        `\nfailures on ${t}, rep ${i}: ${x.failureCount}; first per process: ${JSON.stringify(x.failures)}\n`,
      );
for (const t of targets) {
  const a = res[t].flatMap((x) => x.results.flatMap((y) => y.firstAttr ?? [])).slice(0, 3);
  if (a.length)
    process.stdout.write(`\nattribute mismatches on ${t} (first ${a.length}): ${JSON.stringify(a)}\n`);
}
if (opts.json)
  fs.writeFileSync(
    opts.json,
    JSON.stringify(
      {
        notes,
        opts,
        results: Object.fromEntries(
          targets.map((t) => [
            t,
            res[t].map(({ results, ...x }) => ({
              ...x,
              digests: digests(results),
              attr: results.map((y) => y.attrMismatches),
            })),
          ]),
        ),
      },
      null,
      2,
    ),
  );
process.exit(bad ? 1 : 0);
