#!/usr/bin/env node
// Where a sequential write's time goes: a python writer writes --mib MiB in 1 MiB write(2)s into
// a new file on bindfs and on each twinfs variant (mounted side by side, interleaved, page cache
// dropped before each), times the write phase and the fsync apart, and takes the server's CPU
// and minor faults:
//
//   node bench/seq-phases.mjs --variant 'twinfs|||' --variant 'twinfs + mirror||--mirror @MIRROR@|' \
//     --variant 'mirror on tmpfs||--mirror @SHM@|' --mib 64 --reps 9 [--floor]
//
// A variant is NAME|CLI|SERVE ARGS|ENV as in bench/compare.mjs; @MIRROR@ becomes a fresh
// directory beside the primary (same filesystem), @SHM@ a fresh tmpfs of its own, @LOOP@ a fresh
// ext4 on a loop device over an image beside the primary (bench/lib.mjs startVariant).
//
// --floor adds rows without FUSE, interleaved with the others: the same writer straight to the
// primary's filesystem (one file; one writer writing every MiB to two files there and fsyncing
// both at once, what a mirror on the same disk has to do; two writers of a file each at once),
// to a tmpfs, and to the disk and a tmpfs or a loop ext4 at once. MiB/s is always --mib over the
// time (of the slower writer for two writers): what a volume of that shape can reach at best.
import {
  commonOptions,
  cpuSeconds,
  dropCaches,
  fmt,
  loadavg,
  log,
  median,
  minorFaults,
  mkdirs,
  mountLoopExt4,
  mountTmpfs,
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
    floor: { default: false, help: 'also the same writes without FUSE (bare disk, two files, tmpfs)' },
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
// One writer, one or more files: every 1 MiB write(2) goes to each file in turn; the files are
// then fsynced at once (a thread each), as twinfs syncs primary and mirror.
const WRITER = `
import os, sys, time, json, threading
n = int(sys.argv[1]); b = b'\\x01' * (1 << 20)
fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for p in sys.argv[2:]]
t0 = time.perf_counter()
for i in range(n):
    for fd in fds: os.write(fd, b)
t1 = time.perf_counter()
ts = [threading.Thread(target=os.fsync, args=(fd,)) for fd in fds]
for t in ts: t.start()
for t in ts: t.join()
t2 = time.perf_counter()
for fd in fds: os.close(fd)
print(json.dumps({"w": t1 - t0, "f": t2 - t1}))`;
/** Each target: a list of writers (each a list of files), run at once. */
const T = {};
for (const [t, m] of Object.entries(M)) T[t] = [[`${m}/seq`]];
if (opts.floor) {
  const f = mkdirs(base, 'floor', 'floor-shm', 'floor-loop');
  mountTmpfs(f['floor-shm'], 4 * 1024 * 1024 * 1024);
  mountLoopExt4(f['floor-loop'], base, 4 * 1024 * 1024 * 1024);
  const a = `${f.floor}/a`;
  const b = `${f.floor}/b`;
  T['disk: one file'] = [[a]];
  T['disk: two files, one writer'] = [[a, b]];
  T['disk: two writers at once'] = [[a], [b]];
  T['tmpfs: one file'] = [[`${f['floor-shm']}/a`]];
  T['disk + tmpfs, one writer'] = [[a, `${f['floor-shm']}/b`]];
  T['disk + loop ext4, one writer'] = [[a, `${f['floor-loop']}/b`]];
}
const startLoad = loadavg();
const res = {};
const names = Object.keys(T);
try {
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const t of names.map((_, j) => names[(j + rep) % names.length])) {
      dropCaches(base);
      const pid = S[t]?.pid;
      const c0 = pid ? cpuSeconds(pid) : Number.NaN;
      const f0 = pid ? minorFaults(pid) : Number.NaN;
      const rs = await Promise.all(
        T[t].map((files) =>
          run('python3', ['-c', WRITER, String(opts.mib), ...files], { timeoutMs: 120_000 }),
        ),
      );
      const cpu = pid ? cpuSeconds(pid) - c0 : Number.NaN;
      const faults = pid ? minorFaults(pid) - f0 : Number.NaN;
      const xs = rs.map((r) => JSON.parse(r.stdout));
      const w = Math.max(...xs.map((x) => x.w));
      const wf = Math.max(...xs.map((x) => x.w + x.f));
      (res[t] ??= []).push({ w, f: wf - w, cpu, faults });
      await run('rm', ['-f', ...T[t].flat()]);
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
  ['variant', 'MiB/s', 'write ms', 'fsync ms', 'ms CPU/MiB', 'faults/MiB'],
  names.map((t) => {
    const xs = res[t];
    return [
      t,
      fmt(opts.mib / median(xs.map((x) => x.w + x.f))),
      fmt(median(xs.map((x) => x.w)) * 1000),
      fmt(median(xs.map((x) => x.f)) * 1000),
      fmt(median(xs.map((x) => (x.cpu * 1000) / opts.mib)), 2),
      fmt(median(xs.map((x) => x.faults / opts.mib)), 1),
    ];
  }),
);
