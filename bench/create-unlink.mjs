#!/usr/bin/env node
// Create and unlink apart, with the server's CPU per operation (all threads, and the JS thread
// alone): N × (open O_CREAT|O_EXCL, write --size bytes, close) in a fresh directory, then the N
// unlinks right after (the files' data still in the write-back cache). bindfs and each variant
// are mounted side by side and interleaved rep by rep.
//
//   node bench/create-unlink.mjs --variant 'twinfs' --variant 'twinfs + mirror||--mirror @MIRROR@' \
//     --variant 'old|/tmp/old/dist/cli/main.js' --files 3000 --reps 5
//
// A variant is NAME|CLI|SERVE ARGS|ENV as in bench/compare.mjs (CLI defaults to this checkout's
// dist, snapshotted; @MIRROR@ becomes a fresh directory).
import {
  cpuSeconds,
  fmt,
  installCleanup,
  loadavg,
  log,
  median,
  mkdirs,
  parseArgs,
  run,
  snapshotDist,
  startBindfs,
  startVariant,
  table,
  tempBase,
  threadCpuSeconds,
  worker,
} from './lib.mjs';

const argv = process.argv.slice(2);
const variants = [];
for (let i = argv.indexOf('--variant'); i >= 0; i = argv.indexOf('--variant'))
  variants.push(...argv.splice(i, 2).slice(1));
const opts = parseArgs(
  {
    files: { default: 3000, help: 'files per phase' },
    size: { default: 4096, help: 'bytes written to each file' },
    reps: { default: 5, help: 'repetitions (median)' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'time-limit': { default: 1200, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/create-unlink.mjs --variant NAME[|CLI[|ARGS[|ENV=V ...]]] ... [options]',
  argv,
);
if (variants.length === 0) variants.push('twinfs');
installCleanup({ timeLimitSec: opts['time-limit'] });
const base = tempBase(opts.dir);
const build = snapshotDist(base);
const d = mkdirs(base, 'primary', 'bindfs');
const T = [{ name: 'bindfs', mnt: d.bindfs, s: await startBindfs(d.primary, d.bindfs) }];
for (const [i, spec] of variants.entries()) {
  const v = await startVariant(base, i, spec);
  T.push({ name: v.name, mnt: v.mount, s: v.server });
}
const load0 = loadavg();
const res = {};
const jsCpu = (pid) => Object.entries(threadCpuSeconds(pid)).find(([k]) => k.endsWith('(main)'))?.[1] ?? 0;
for (let rep = 0; rep < opts.reps; rep++) {
  for (let j = 0; j < T.length; j++) {
    const t = T[(j + rep) % T.length];
    const dir = `${t.mnt}/r${rep}`;
    await run('mkdir', ['-p', dir]);
    for (const op of ['create', 'unlink']) {
      const c = cpuSeconds(t.s.pid);
      const js = jsCpu(t.s.pid);
      const r = await worker('files', [
        '--op',
        op,
        '--dir',
        dir,
        '--n',
        String(opts.files),
        '--size',
        String(opts.size),
      ]);
      const r0 = (res[t.name] ??= {});
      (r0[`${op}`] ??= []).push(opts.files / (r.ms / 1000));
      (r0[`${op}cpu`] ??= []).push(((cpuSeconds(t.s.pid) - c) * 1e6) / opts.files);
      (r0[`${op}js`] ??= []).push(((jsCpu(t.s.pid) - js) * 1e6) / opts.files);
    }
    log(`rep ${rep} ${t.name} done`);
  }
}
for (const t of T) await t.s.stop();
process.stdout.write(`\n## bench/create-unlink.mjs — ${new Date().toISOString()}\n\n${build}\n`);
process.stdout.write(
  `load ${load0} → ${loadavg()}; ${opts.reps} reps (median); ${opts.files} files of ${opts.size} B\n\n`,
);
const m = (n, k) => median(res[n][k]);
table(
  ['target', 'create/s', 'µs CPU/create', 'of it JS thread', 'unlink/s', 'µs CPU/unlink', 'of it JS thread'],
  T.map(({ name: n }) => [
    n,
    fmt(m(n, 'create'), 0),
    fmt(m(n, 'createcpu'), 0),
    n === 'bindfs' ? '—' : fmt(m(n, 'createjs'), 0),
    fmt(m(n, 'unlink'), 0),
    fmt(m(n, 'unlinkcpu'), 0),
    n === 'bindfs' ? '—' : fmt(m(n, 'unlinkjs'), 0),
  ]),
);
