#!/usr/bin/env node
// Where a sequential write's time goes: a python writer writes --mib MiB in 1 MiB write(2)s into
// a new file on bindfs and on each twinfs variant (mounted side by side, interleaved, page cache
// dropped before each), times the write phase and the fsync apart, and takes the server's CPU:
//
//   node bench/seq-phases.mjs --variant 'twinfs|||' --variant 'twinfs + mirror||--mirror @MIRROR@|' \
//     --variant 'mirror on tmpfs||--mirror @SHM@|' --mib 64 --reps 9
//
// A variant is NAME|CLI|SERVE ARGS|ENV as in bench/compare.mjs; @MIRROR@ becomes a fresh
// directory beside the primary (same filesystem), @SHM@ a fresh tmpfs of its own (bench/lib.mjs startVariant).
import {
  commonOptions,
  cpuSeconds,
  dropCaches,
  fmt,
  loadavg,
  log,
  median,
  mkdirs,
  parseArgs,
  run,
  startBench,
  startBindfs,
  startVariant,
  table,
  takeRepeated,
} from './lib.mjs';

const argv = process.argv.slice(2);
const variants = takeRepeated(argv, '--variant');
const opts = parseArgs(
  {
    mib: { default: 64, help: 'file size, MiB (1 MiB writes)' },
    reps: { default: 9, help: 'repetitions (median)' },
    ...commonOptions(),
    'time-limit': { default: 1200, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/seq-phases.mjs --variant NAME[|CLI[|ARGS[|ENV=V ...]]] ... [options]',
  argv,
);
if (variants.length === 0) variants.push('twinfs|||', 'twinfs + mirror||--mirror @MIRROR@|');
const { notes, base } = await startBench(opts);
const d = mkdirs(base, 'primary', 'bindfs');
const S = { bindfs: await startBindfs(d.primary, d.bindfs) };
const M = { bindfs: d.bindfs };
for (const [i, spec] of variants.entries()) {
  const v = await startVariant(base, i, spec);
  S[v.name] = v.server;
  M[v.name] = v.mount;
}
const WRITER = `
import os, sys, time, json
p, n = sys.argv[1], int(sys.argv[2]); b = b'\\x01' * (1 << 20)
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t0 = time.perf_counter()
for i in range(n): os.write(fd, b)
t1 = time.perf_counter(); os.fsync(fd); t2 = time.perf_counter(); os.close(fd)
print(json.dumps({"w": t1 - t0, "f": t2 - t1}))`;
const startLoad = loadavg();
const res = {};
const names = Object.keys(M);
try {
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const t of names.map((_, j) => names[(j + rep) % names.length])) {
      dropCaches(base);
      const pid = S[t].pid;
      const c0 = cpuSeconds(pid);
      const r = await run('python3', ['-c', WRITER, `${M[t]}/seq`, String(opts.mib)], { timeoutMs: 120_000 });
      const cpu = cpuSeconds(pid) - c0;
      (res[t] ??= []).push({ ...JSON.parse(r.stdout), cpu });
      await run('rm', ['-f', `${M[t]}/seq`]);
    }
    log(`rep ${rep} done`);
  }
} finally {
  for (const s of Object.values(S)) await s.stop();
}
console.log(`\n## bench/seq-phases.mjs — ${new Date().toISOString()}\n`);
console.log(`machine: ${notes.cpus}, git ${notes.git}, ${notes.build}`);
console.log(
  `load at start ${startLoad}, at end ${loadavg()}; ${opts.mib} MiB in 1 MiB writes + fsync, ${opts.reps} reps (median)\n`,
);
table(
  ['variant', 'MiB/s', 'write ms', 'fsync ms', 'ms CPU/MiB'],
  names.map((t) => {
    const xs = res[t];
    return [
      t,
      fmt(opts.mib / median(xs.map((x) => x.w + x.f))),
      fmt(median(xs.map((x) => x.w)) * 1000),
      fmt(median(xs.map((x) => x.f)) * 1000),
      fmt(median(xs.map((x) => (x.cpu * 1000) / opts.mib)), 2),
    ];
  }),
);
