#!/usr/bin/env node
// Outside file-server workloads, as packaged by Debian (installed by scripts/setup.sh): dbench
// (a CIFS file server's load: NTCreateX, Find, Rename, Unlink, LockX, ReadX/WriteX, Flush; its
// throughput), fs_mark (small files created and written; files per second), postmark (a mail
// server's small files: creates, deletes, reads and appends in 512-byte writes; transactions per
// second) and sysbench fileio with its checksums on (every block it writes carries its offset and
// a checksum that every read checks: sequential writes, then random reads, random writes, random
// reads, sequential reads and random reads and writes; the last step's MiB/s), in the bare
// directory, through bindfs and through twinfs with a mirror, interleaved per rep. Ratios are
// to bindfs. fio (Debian's, with the issue's shapes): small files (one 4 KiB file per IO, laid out
// by fio with its default fallocate first: files per second over the whole run, layout included),
// 4 KiB random writes with a CRC32C in every block that fio reads back and checks after the writes
// (IOPS of the writes; a bad block is an error), and a 1 MiB sequential write with the fsync at its
// end (MiB/s). After the twinfs runs: flush, `verify --content` and the broken pairs. Exit 1 when a
// workload reports an error on twinfs or the mirror differs.
//
//   node bench/outside.mjs --reps 3 --seconds 20
//   node bench/outside.mjs --only fio --reps 5          # the fio workloads alone
//   node bench/outside.mjs --only fio --variant 'twinfs||--control 127.0.0.1:0' \
//     --variant 'old|/tmp/old/dist/cli/main.js|--control 127.0.0.1:0'
//
// --variant NAME|CLI|SERVE ARGS|ENV as in bench/compare.mjs (CLI defaults to this checkout's dist,
// snapshotted; @MIRROR@ becomes a fresh directory); default: 'twinfs + mirror' (--mirror). Each
// server's CPU per workload (all its threads, /proc) is printed beside the rates.
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  checkMirror,
  controlClient,
  cpuSeconds,
  installCleanup,
  log,
  mkdirs,
  parseArgs,
  run,
  snapshotDist,
  startBindfs,
  startVariant,
  takeRepeated,
} from './lib.mjs';

const argv = process.argv.slice(2);
const variants = takeRepeated(argv, '--variant');
if (variants.length === 0) variants.push('twinfs + mirror||--mirror @MIRROR@ --control 127.0.0.1:0');
const opts = parseArgs(
  {
    reps: { default: 3, help: 'repetitions (median reported)' },
    seconds: { default: 20, help: 'dbench run time per rep' },
    clients: { default: 4, help: 'dbench clients' },
    files: { default: 2000, help: 'fs_mark files per thread per rep' },
    'pm-transactions': { default: 20000, help: 'postmark transactions per rep (1,000 files of 0.5–64 KiB)' },
    'sb-seconds': { default: 5, help: 'sysbench fileio: seconds of each of its six steps' },
    'fio-files': { default: 3000, help: 'fio small files: files per rep' },
    'fio-mib': { default: 64, help: 'fio random 4 KiB writes: MiB written (and verified) per rep' },
    'fio-seq-mib': { default: 512, help: 'fio sequential 1 MiB writes + fsync: MiB per rep' },
    only: {
      default: '',
      help: 'comma-separated workload prefixes (dbench, fs_mark, postmark, sysbench, fio)',
    },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'time-limit': { default: 3600, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/outside.mjs [options]',
  argv,
);
installCleanup({ timeLimitSec: opts['time-limit'] });

async function dbench(dir) {
  const r = await run('dbench', ['-D', dir, '-t', String(opts.seconds), String(opts.clients)], {
    check: false,
    timeoutMs: (Number(opts.seconds) + 120) * 1000,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  const mbs = Number(/Throughput ([\d.]+) MB\/sec/.exec(out)?.[1] ?? Number.NaN);
  const errors = out.split('\n').filter((l) => /ERROR|failed/i.test(l)).length + (r.code === 0 ? 0 : 1);
  await run('rm', ['-rf', path.join(dir, 'clients')], { check: false, timeoutMs: 120_000 });
  return { value: mbs, errors };
}

async function fsmark(dir) {
  const d = path.join(dir, 'fsm');
  const r = await run(
    'fs_mark',
    // -l: its log (fs_log.txt in the working directory otherwise) beside the targets, not in them.
    [
      '-d',
      d,
      '-s',
      '4096',
      '-n',
      String(opts.files),
      '-t',
      '2',
      '-S',
      '0',
      '-L',
      '1',
      '-l',
      path.join(base, 'fs_log.txt'),
    ],
    {
      check: false,
      timeoutMs: 600_000,
    },
  );
  const line = r.stdout.split('\n').find((l) => /^\s+\d+\s+\d+\s+\d+\s+[\d.]+/.test(l));
  const value = Number(line?.trim().split(/\s+/)[3] ?? Number.NaN);
  await run('rm', ['-rf', d], { check: false, timeoutMs: 120_000 });
  return { value, errors: r.code === 0 && line ? 0 : 1 };
}

async function postmark(dir) {
  const d = path.join(dir, 'pm');
  fs.mkdirSync(d, { recursive: true });
  const cfg = path.join(base, 'postmark.cfg');
  fs.writeFileSync(
    cfg,
    [
      `set location ${d}`,
      'set number 1000',
      `set transactions ${opts['pm-transactions']}`,
      'set size 500 65536',
      'set subdirectories 10',
      'run',
      'quit',
      '',
    ].join('\n'),
  );
  const r = await run('postmark', [cfg], { check: false, timeoutMs: 900_000 });
  const value = Number(/transactions \((\d+) per second\)/.exec(r.stdout)?.[1] ?? Number.NaN);
  await run('rm', ['-rf', d], { check: false, timeoutMs: 120_000 });
  return { value, errors: r.code === 0 && Number.isFinite(value) ? 0 : 1 };
}

/** sysbench's steps: mode and threads (writes from one thread: two writing one block tear it). */
const SB_STEPS = [
  ['seqwr', 1],
  ['rndrd', 4],
  ['rndwr', 1],
  ['rndrd', 4],
  ['seqrd', 2],
  ['rndrw', 1],
];

async function sysbench(dir) {
  const d = path.join(dir, 'sb');
  fs.mkdirSync(d, { recursive: true });
  const common = ['fileio', '--file-total-size=128M', '--file-num=16', '--validate=on'];
  let errors = 0;
  let value = Number.NaN;
  const prep = await run('sysbench', [...common, 'prepare'], { cwd: d, check: false, timeoutMs: 300_000 });
  if (prep.code !== 0) errors++;
  for (const [mode, threads] of SB_STEPS) {
    const r = await run(
      'sysbench',
      [
        ...common,
        `--file-test-mode=${mode}`,
        `--threads=${threads}`,
        `--time=${opts['sb-seconds']}`,
        '--file-fsync-freq=50',
        'run',
      ],
      { cwd: d, check: false, timeoutMs: (Number(opts['sb-seconds']) + 300) * 1000 },
    );
    const fatal = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => /FATAL/.test(l));
    if (r.code !== 0 || fatal.length) {
      errors++;
      log(`sysbench ${mode} in ${dir}: exit ${r.code} ${fatal[0] ?? ''}`);
    }
    const rd = Number(/read, MiB\/s:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? 0);
    const wr = Number(/written, MiB\/s:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? 0);
    value = Math.round((rd + wr) * 100) / 100;
  }
  await run('rm', ['-rf', d], { check: false, timeoutMs: 120_000 });
  return { value, errors };
}

/**
 * One fio job in DIR/fio (removed after): its JSON report's first job, the wall time of the whole
 * run (layout included) and the errors (fio's exit status, the job's error, a verify failure).
 */
async function fioJob(dir, args) {
  const d = path.join(dir, 'fio');
  fs.mkdirSync(d, { recursive: true });
  const t0 = process.hrtime.bigint();
  const r = await run('fio', [`--directory=${d}`, '--output-format=json', ...args], {
    check: false,
    timeoutMs: 900_000,
  });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  let job;
  try {
    job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
  } catch {
    job = undefined;
  }
  const errors = (r.code === 0 ? 0 : 1) + (job === undefined || job.error ? 1 : 0);
  if (errors)
    log(
      `fio ${args[0]} in ${dir}: exit ${r.code} ${r.stderr.split('\n').filter(Boolean).slice(-2).join(' | ')}`,
    );
  await run('rm', ['-rf', d], { check: false, timeoutMs: 120_000 });
  return { job, wall, errors };
}

async function fioSmallFiles(dir) {
  const n = Number(opts['fio-files']);
  const { wall, errors } = await fioJob(dir, [
    '--name=small',
    '--rw=write',
    '--bs=4k',
    '--filesize=4k',
    `--nrfiles=${n}`,
    '--openfiles=1',
    '--file_service_type=sequential',
    '--ioengine=sync',
  ]);
  return { value: Math.round(n / wall), errors };
}

/** A write job through psync with the fsync at its end; `value` picks the figure from its report. */
async function fioWriteJob(dir, args, value) {
  const { job, errors } = await fioJob(dir, [...args, '--ioengine=psync', '--end_fsync=1']);
  return { value: value(job?.write ?? {}), errors };
}

const fioRandWrite = (dir) =>
  fioWriteJob(
    dir,
    ['--name=randwrite', '--rw=randwrite', '--bs=4k', `--size=${opts['fio-mib']}m`, '--verify=crc32c'],
    (w) => Math.round(w.iops ?? Number.NaN),
  );

const fioSeqWrite = (dir) =>
  fioWriteJob(
    dir,
    ['--name=seqwrite', '--rw=write', '--bs=1m', `--size=${opts['fio-seq-mib']}m`],
    (w) => Math.round(((w.bw_bytes ?? Number.NaN) / 1048576) * 10) / 10,
  );

const WORKLOADS = [
  ['dbench MB/s', dbench],
  ['fs_mark files/s', fsmark],
  ['postmark transactions/s', postmark],
  ['sysbench fileio rndrw MiB/s (checksums on)', sysbench],
  ['fio small files: files/s (layout included)', fioSmallFiles],
  ['fio 4 KiB random writes: IOPS (crc32c verified)', fioRandWrite],
  ['fio 1 MiB sequential write + fsync: MiB/s', fioSeqWrite],
].filter(
  ([w]) =>
    !opts.only ||
    String(opts.only)
      .split(',')
      .some((o) => w.startsWith(o.trim())),
);

const base = fs.mkdtempSync(path.join(opts.dir, 'twinfs-outside-'));
log(snapshotDist(base));
const d = mkdirs(base, 'bare', 'bsrc', 'bmnt');
const bindfs = await startBindfs(d.bsrc, d.bmnt);
const servers = [];
for (const [i, spec] of variants.entries()) servers.push(await startVariant(base, i, spec));
const targets = [
  { name: 'bare', dir: d.bare, pid: null },
  { name: 'bindfs', dir: d.bmnt, pid: bindfs.pid },
  ...servers.map((v) => ({ name: v.name, dir: v.mount, pid: v.server.pid })),
];
const results = {};
for (let rep = 0; rep < opts.reps; rep++) {
  for (const t of targets) {
    for (const [w, fn] of WORKLOADS) {
      const c0 = t.pid ? cpuSeconds(t.pid) : 0;
      const r = await fn(t.dir);
      r.cpu = t.pid ? cpuSeconds(t.pid) - c0 : Number.NaN;
      (results[w] ??= {})[t.name] ??= [];
      results[w][t.name].push(r);
      log(
        `rep ${rep + 1} ${t.name} ${w}: ${r.value}${t.pid ? ` (server CPU ${r.cpu.toFixed(2)} s)` : ''}${r.errors ? ` (${r.errors} error(s))` : ''}`,
      );
    }
  }
}
let bad = 0;
for (const v of servers) {
  if (!v.server.url) continue;
  const c = await controlClient(v.server.url, v.server.token);
  const st = await c.request('status');
  if (st.mirror) {
    const { differences, broken } = await checkMirror(c);
    bad += differences.length + broken.length;
    log(`${v.name}: mirror: ${differences.length} difference(s), ${broken.length} broken pair(s)`);
  }
  c.close();
}
for (const v of servers) await v.server.stop();
await bindfs.stop();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const names = servers.map((v) => v.name);
console.log(
  `| workload | bare | bindfs (server CPU s) | ${names.map((n) => `${n} (server CPU s)`).join(' | ')} | ${names.map((n) => `${n} / bindfs`).join(' | ')} |`,
);
console.log(`|---|---|---|${names.map(() => '---|').join('')}${names.map(() => '---|').join('')}`);
for (const [w, per] of Object.entries(results)) {
  const m = Object.fromEntries(Object.entries(per).map(([k, rs]) => [k, median(rs.map((r) => r.value))]));
  const cpu = Object.fromEntries(Object.entries(per).map(([k, rs]) => [k, median(rs.map((r) => r.cpu))]));
  for (const n of names) bad += per[n].reduce((x, r) => x + r.errors, 0);
  console.log(
    `| ${w} | ${m.bare} | ${m.bindfs} (${cpu.bindfs.toFixed(2)}) | ${names.map((n) => `${m[n]} (${cpu[n].toFixed(2)})`).join(' | ')} | ${names.map((n) => (m[n] / m.bindfs).toFixed(2)).join(' | ')} |`,
  );
}
fs.rmSync(base, { recursive: true, force: true });
process.exit(bad ? 1 : 0);
