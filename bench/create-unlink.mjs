#!/usr/bin/env node
// Create and unlink apart, with the server's CPU per operation (all threads, and the JS thread
// alone): N × (open O_CREAT|O_EXCL, write --size bytes, close) in a fresh directory, then the N
// unlinks right after (the files' data still in the write-back cache). bindfs and each variant
// are mounted side by side and interleaved rep by rep.
//
//   node bench/create-unlink.mjs --variant 'twinfs' --variant 'twinfs + mirror||--mirror @MIRROR@' \
//     --variant 'old|/tmp/old/dist/cli/main.js' --files 3000 --reps 5
//
// --phases create,stat,unlink --pause-ms 1100 is compare.mjs's meta workload phase by phase;
// --bindfs-mt adds bindfs --multithreaded. A variant served with `--control 127.0.0.1:0` in its
// ARGS also reports, per phase, the requests libfuse's threads answered and passed to JS
// (status().fs.kernelCache.native and .nativeUnlink).
// The client times a create's open, write and close apart (median µs per target: each is one or
// more FUSE round trips it waits for; docs/benchmarks.md, "Create: where the server's time goes").
// Minor page faults per operation are counted for every server (/proc/PID/stat; ~11 µs each on
// this VM, and unlike CPU time the count does not move with the load), and so are the voluntary
// context switches of all its threads (/proc/PID/task/*/status: one per hand-off between threads,
// no perf needed); --perf-stat adds the
// syscalls and context switches per operation (perf stat -p around each phase). A create's
// write-back runs --writeback-ms (3 s) after it: how many fall inside the create phase depends on
// the phase's length, so its CPU and counts per create move with the rate; --settle-ms 3500
// counts every write-back with its create (the unlinks then find the files written back).
//
// A variant is NAME|CLI|SERVE ARGS|ENV as in bench/compare.mjs (CLI defaults to this checkout's
// dist, snapshotted; @MIRROR@ becomes a fresh directory).
import * as fs from 'node:fs';
import {
  controlClient,
  cpuSeconds,
  fmt,
  installCleanup,
  loadavg,
  log,
  median,
  minorFaults,
  mkdirs,
  parseArgs,
  perfStat,
  run,
  sleep,
  snapshotDist,
  startBindfs,
  startVariant,
  table,
  takeRepeated,
  tempBase,
  threadCpuSeconds,
  voluntarySwitches,
  worker,
} from './lib.mjs';

const argv = process.argv.slice(2);
const variants = takeRepeated(argv, '--variant');
const opts = parseArgs(
  {
    files: { default: 3000, help: 'files per phase' },
    size: { default: 4096, help: 'bytes written to each file' },
    reps: { default: 5, help: 'repetitions (median)' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'time-limit': { default: 1200, help: 'abort (and clean up) after this many seconds' },
    phases: { default: 'create,unlink', help: 'comma list of create,stat,unlink, run in that order' },
    'pause-ms': { default: 0, help: 'pause before each phase after the first, ms' },
    'bindfs-mt': { default: false, help: 'also bindfs --multithreaded' },
    'settle-ms': {
      default: 0,
      help: "after each phase, wait this long before reading the server's counters (3500: every create's write-back counted with it)",
    },
    'perf-stat': {
      default: false,
      help: 'also count syscalls and context switches per operation (perf stat -p on each server)',
    },
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
if (opts['bindfs-mt']) {
  const mt = mkdirs(base, 'primary-mt', 'bindfs-mt');
  const s = await startBindfs(mt['primary-mt'], mt['bindfs-mt'], 'big_writes', ['--multithreaded']);
  T.push({ name: 'bindfs --multithreaded', mnt: mt['bindfs-mt'], s });
}
for (const [i, spec] of variants.entries()) {
  const v = await startVariant(base, i, spec);
  const c = v.server.url ? await controlClient(v.server.url, v.server.token) : null;
  T.push({ name: v.name, mnt: v.mount, s: v.server, c });
}
const PHASES = String(opts.phases).split(',');
for (const p of PHASES) if (!['create', 'stat', 'unlink'].includes(p)) throw new Error(`unknown phase ${p}`);
/** Requests answered in libfuse's threads and passed to JS so far (null without control). */
const nativeCounts = async (t) => {
  if (!t.c) return null;
  const kc = (await t.c.request('status')).fs.kernelCache ?? {};
  return {
    attrs: kc.native?.answered ?? 0,
    attrsToJs: kc.native?.fallbacks ?? 0,
    unlinks: kc.nativeUnlink?.answered ?? 0,
    unlinksToJs: kc.nativeUnlink?.fallbacks ?? 0,
    creates: kc.nativeUnlink?.creates ?? 0,
    createsToJs: kc.nativeUnlink?.createFallbacks ?? 0,
  };
};
const PERF_EVENTS = ['raw_syscalls:sys_enter', 'context-switches'];
const counted = {};
const load0 = loadavg();
const res = {};
const jsCpu = (pid) => Object.entries(threadCpuSeconds(pid)).find(([k]) => k.endsWith('(main)'))?.[1] ?? 0;
/**
 * The JS thread's user-mode CPU alone (s): without the kernel's share, which for a create is
 * mostly ext4's inode allocation (its scan past recently freed inodes, which moves with what
 * else was deleted on that disk lately; docs/benchmarks.md), so the JS layer's own work is read
 * apart from it.
 */
const jsUser = (pid) => {
  try {
    return (
      Number(fs.readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[11]) / 100
    );
  } catch {
    return 0;
  }
};
for (let rep = 0; rep < opts.reps; rep++) {
  for (let j = 0; j < T.length; j++) {
    const t = T[(j + rep) % T.length];
    const dir = `${t.mnt}/r${rep}`;
    await run('mkdir', ['-p', dir]);
    for (const [k, op] of PHASES.entries()) {
      if (k > 0 && opts['pause-ms'] > 0) await sleep(opts['pause-ms']);
      const n0 = await nativeCounts(t);
      const c = cpuSeconds(t.s.pid);
      const js = jsCpu(t.s.pid);
      const ju = jsUser(t.s.pid);
      const f = minorFaults(t.s.pid);
      const vcs = voluntarySwitches(t.s.pid);
      const ps = opts['perf-stat'] ? perfStat(t.s.pid, PERF_EVENTS) : null;
      if (ps) await sleep(200);
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
      if (opts['settle-ms'] > 0) await sleep(opts['settle-ms']);
      const r0 = (res[t.name] ??= {});
      (r0[`${op}`] ??= []).push(opts.files / (r.ms / 1000));
      (r0[`${op}cpu`] ??= []).push(((cpuSeconds(t.s.pid) - c) * 1e6) / opts.files);
      (r0[`${op}js`] ??= []).push(((jsCpu(t.s.pid) - js) * 1e6) / opts.files);
      (r0[`${op}jsu`] ??= []).push(((jsUser(t.s.pid) - ju) * 1e6) / opts.files);
      (r0[`${op}flt`] ??= []).push((minorFaults(t.s.pid) - f) / opts.files);
      (r0[`${op}vcs`] ??= []).push((voluntarySwitches(t.s.pid) - vcs) / opts.files);
      if (r.calls) for (const [k, v] of Object.entries(r.calls)) (r0[`call:${k}`] ??= []).push(v);
      if (ps) {
        const cnt = await ps.stop();
        (r0[`${op}sys`] ??= []).push(cnt['raw_syscalls:sys_enter'] / opts.files);
        (r0[`${op}cs`] ??= []).push(cnt['context-switches'] / opts.files);
      }
      const n1 = await nativeCounts(t);
      if (n0 && n1) {
        const c0 = ((counted[t.name] ??= {})[op] ??= {
          attrs: 0,
          attrsToJs: 0,
          unlinks: 0,
          unlinksToJs: 0,
          creates: 0,
          createsToJs: 0,
        });
        for (const key of Object.keys(c0)) c0[key] += n1[key] - n0[key];
      }
    }
    log(`rep ${rep} ${t.name} done`);
  }
}
for (const t of T) {
  await t.c?.close();
  await t.s.stop();
}
process.stdout.write(`\n## bench/create-unlink.mjs — ${new Date().toISOString()}\n\n${build}\n`);
process.stdout.write(
  `load ${load0} → ${loadavg()}; ${opts.reps} reps (median); ${opts.files} files of ${opts.size} B\n\n`,
);
const m = (n, k) => median(res[n][k]);
const perf = opts['perf-stat'];
table(
  [
    'target',
    ...PHASES.flatMap((p) => [
      `${p}/s`,
      `µs CPU/${p}`,
      'of it JS thread',
      'JS thread user',
      `faults/${p}`,
      `vol. cs/${p}`,
      ...(perf ? [`syscalls/${p}`, `cs/${p}`] : []),
    ]),
  ],
  T.map(({ name: n }) => [
    n,
    ...PHASES.flatMap((p) => [
      fmt(m(n, p), 0),
      fmt(m(n, `${p}cpu`), 0),
      n.startsWith('bindfs') ? '—' : fmt(m(n, `${p}js`), 0),
      n.startsWith('bindfs') ? '—' : fmt(m(n, `${p}jsu`), 0),
      fmt(m(n, `${p}flt`), 2),
      fmt(m(n, `${p}vcs`), 1),
      ...(perf ? [fmt(m(n, `${p}sys`), 1), fmt(m(n, `${p}cs`), 1)] : []),
    ]),
  ]),
);
if (PHASES.includes('create')) {
  process.stdout.write("\nA create's calls as the client saw them (median µs, median of the reps):\n\n");
  table(
    ['target', 'open(O_CREAT)', `write ${opts.size} B`, 'close'],
    T.map(({ name: n }) => [
      n,
      fmt(m(n, 'call:open'), 0),
      fmt(m(n, 'call:write'), 0),
      fmt(m(n, 'call:close'), 0),
    ]),
  );
}
// The medians hide how far the reps spread on a shared machine: each rep's rate, in run order.
process.stdout.write('\nEach rep, in run order (per s):\n');
for (const { name: n } of T)
  process.stdout.write(
    `  ${n}: ${PHASES.map((p) => `${p} ${res[n][p].map((v) => fmt(v, 0)).join(' ')}`).join('; ')}\n`,
  );
for (const [n, byOp] of Object.entries(counted)) {
  process.stdout.write(
    `\n${n}, over all ${opts.reps} reps (getattr / unlink / create answered natively, passed to JS):\n`,
  );
  for (const [op, c] of Object.entries(byOp))
    process.stdout.write(
      `  ${op}: getattr ${c.attrs} / ${c.attrsToJs}, unlink ${c.unlinks} / ${c.unlinksToJs}, create ${c.creates} / ${c.createsToJs}\n`,
    );
}
