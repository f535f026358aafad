#!/usr/bin/env node
// twinfs filesystem benchmark (issue 2): the same workloads, in one run, on the bare primary
// directory, on a bindfs mount of it (C FUSE passthrough over libfuse2, -o big_writes) and on
// twinfs (its default libfuse, 3; TWINFS_FUSE=2 for libfuse2); ratios against bindfs. Then the twinfs server's RSS while writing 4 GiB.
//
//   node bench/fs.mjs                      full size (1 GiB files, 256 MiB of 4 KiB writes,
//                                          10,000 files, 4 GiB RSS run, 3 repetitions)
//   node bench/fs.mjs --size-mb 64 --small-mb 16 --files 500 --rss-mb 256 --reps 1   (smoke)
//
// Timed exactly (wall clock of the client process, which is never the server):
//   seq write   dd if=/dev/zero of=F bs=1M count=SIZE conv=fsync  (write + fsync + close)
//   seq read    cold: drop_caches, then dd if=F of=/dev/null bs=1M;
//               warm: F first read on the bare primary (so the backing pages are cached),
//               then dd through the target (FUSE's own page cache is not kept across opens
//               on bindfs and libfuse2; twinfs on libfuse3 keeps it)
//   4k write    dd if=/dev/zero of=F bs=4k count=SMALL/4k (open, write(2) x N, close; no fsync)
//               then, separately, open F + fsync(2) (bench/worker.mjs fsync)
//   metadata    bench/worker.mjs meta: create (open O_CREAT|O_EXCL, write --meta-size bytes,
//               close), stat, unlink of --files files in one directory, each phase timed
//               separately, 1.1 s pause between phases (past the 1 s attr/entry timeouts)
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  commonOptions,
  cpuSeconds,
  fmt,
  log,
  MiB,
  median,
  mkdirs,
  parseArgs,
  ratio,
  run,
  sampleRss,
  startBench,
  startBindfs,
  startSpinners,
  startTwinfs,
  syncAndDropCaches,
  table,
  worker,
} from './lib.mjs';

const opts = parseArgs(
  {
    'size-mb': { default: 1024, help: 'sequential write/read file size, MiB' },
    'small-mb': { default: 256, help: 'total of the 4 KiB buffered writes, MiB' },
    files: { default: 10000, help: 'files in the create/stat/unlink workload' },
    'meta-size': { default: 1024, help: 'bytes written into each small file' },
    reps: { default: 3, help: 'repetitions of each workload (median reported)' },
    'rss-mb': { default: 4096, help: 'size of the RSS run on twinfs, MiB (0 skips it)' },
    targets: { default: 'bare,bindfs,twinfs', help: 'comma list of bare, bindfs, twinfs' },
    workloads: { default: 'seqwrite,seqread,small,meta', help: 'comma list' },
    'bindfs-opts': { default: 'big_writes', help: 'bindfs -o options' },
    'cache-mb': { default: 0, help: 'twinfs --cache-mb (0: the server default, 64)' },
    'twinfs-args': { default: '', help: 'extra twinfs serve arguments (space separated)' },
    'cpu-prof': { default: '', help: 'write a V8 CPU profile of the twinfs server into this dir' },
    spin: {
      default: 0,
      help: 'busy loops at nice 19 kept running during the workloads (keeps vCPUs out of idle; see lib.mjs)',
    },
    ...commonOptions('parent of the temporary directories (same disk as /)'),
  },
  'node bench/fs.mjs [options]: bare vs bindfs vs twinfs (issue 2)',
);
const targets = opts.targets.split(',').filter(Boolean);
const workloads = new Set(opts.workloads.split(',').filter(Boolean));
const SIZE = opts['size-mb'] * MiB;
const SMALL = opts['small-mb'] * MiB;
const { notes, base, loadStart } = await startBench(opts);
const d = mkdirs(base, 'primary', 'bindfs', 'twinfs', 'prof');
const servers = {};
const paths = { bare: d.primary };
if (targets.includes('bindfs')) {
  servers.bindfs = await startBindfs(d.primary, d.bindfs, opts['bindfs-opts']);
  paths.bindfs = d.bindfs;
}
if (targets.includes('twinfs')) {
  servers.twinfs = await startTwinfs({
    primary: d.primary,
    mount: d.twinfs,
    cli: opts.cli || undefined,
    cacheMb: opts['cache-mb'] || undefined,
    extra: opts['twinfs-args'] ? opts['twinfs-args'].split(' ') : [],
    nodeArgs: opts['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(opts['cpu-prof'])] : [],
    verbose: opts.verbose,
  });
  paths.twinfs = d.twinfs;
}
log(`mounted: ${JSON.stringify(paths)} bindfs pid ${servers.bindfs?.pid} twinfs pid ${servers.twinfs?.pid}`);

// Caches are dropped between phases: only the filesystems this bench uses are synced (the
// primary's and the mounts), never the machine's every mount, and the sync is bounded.
const dropCaches = () => syncAndDropCaches([...new Set([d.primary, ...Object.values(paths)])]);

/** results[workload][target] = [{...metrics}] per repetition */
const results = {};
const add = (w, t, r) => ((results[w] ??= {})[t] ??= []).push(r);

/** Runs fn for target t, with the server's CPU time and peak RSS recorded alongside. */
async function measured(t, fn) {
  const pid = servers[t]?.pid;
  const rss = pid && t === 'twinfs' ? sampleRss(pid, 50) : null;
  const cpu0 = pid ? cpuSeconds(pid) : Number.NaN;
  const r = await fn();
  const cpu = pid ? cpuSeconds(pid) - cpu0 : Number.NaN;
  const m = rss?.stop();
  return { ...r, serverCpuS: cpu, serverRssMiB: m?.maxRssMiB };
}

// Rotate the order of targets each repetition so a slow drift in machine load hits all alike.
const order = (rep) => targets.map((_, i) => targets[(i + rep) % targets.length]);
const file = (t, name) => path.join(paths[t], `${t}-${name}`);
const bare = (t, name) => path.join(d.primary, `${t}-${name}`);
// Files are removed through the target itself (in a child process), never behind a server's back.
const rmVia = (p) => run('rm', ['-rf', p]);
const ddWrite = (f, bs, count, fsync) =>
  run('dd', ['if=/dev/zero', `of=${f}`, `bs=${bs}`, `count=${count}`, ...(fsync ? ['conv=fsync'] : [])]);

const stopSpin = opts.spin > 0 ? startSpinners(opts.spin) : () => undefined;
for (let rep = 0; rep < opts.reps; rep++) {
  for (const t of order(rep)) {
    if (workloads.has('seqwrite') || workloads.has('seqread')) {
      const f = file(t, 'seq');
      await rmVia(file(t, 'seq'));
      await dropCaches();
      const w = await measured(t, () => ddWrite(f, '1M', SIZE / MiB, true));
      add('seqwrite', t, {
        mbps: SIZE / MiB / (w.ms / 1000),
        ms: w.ms,
        cpu: w.serverCpuS,
        rss: w.serverRssMiB,
      });
      log(`rep ${rep} ${t} seq write ${fmt(SIZE / MiB / (w.ms / 1000))} MiB/s`);
      if (workloads.has('seqread')) {
        await dropCaches();
        const rc = await measured(t, () => run('dd', [`if=${f}`, 'of=/dev/null', 'bs=1M']));
        add('seqread-cold', t, {
          mbps: SIZE / MiB / (rc.ms / 1000),
          ms: rc.ms,
          cpu: rc.serverCpuS,
          rss: rc.serverRssMiB,
        });
        await dropCaches();
        await run('dd', [`if=${bare(t, 'seq')}`, 'of=/dev/null', 'bs=1M']);
        const rw = await measured(t, () => run('dd', [`if=${f}`, 'of=/dev/null', 'bs=1M']));
        add('seqread-warm', t, {
          mbps: SIZE / MiB / (rw.ms / 1000),
          ms: rw.ms,
          cpu: rw.serverCpuS,
          rss: rw.serverRssMiB,
        });
        log(
          `rep ${rep} ${t} seq read cold ${fmt(SIZE / MiB / (rc.ms / 1000))} warm ${fmt(SIZE / MiB / (rw.ms / 1000))} MiB/s`,
        );
      }
      await rmVia(file(t, 'seq'));
    }
    if (workloads.has('small')) {
      const f = file(t, 'small');
      await rmVia(file(t, 'small'));
      await dropCaches();
      const w = await measured(t, () => ddWrite(f, '4k', SMALL / 4096, false));
      const s = await measured(t, () => worker('fsync', ['--file', f]));
      add('small', t, {
        mbps: SMALL / MiB / (w.ms / 1000),
        mbpsWithFsync: SMALL / MiB / ((w.ms + s.wallMs) / 1000),
        ms: w.ms,
        fsyncMs: s.fsyncMs,
        cpu: w.serverCpuS + s.serverCpuS,
        rss: Math.max(w.serverRssMiB ?? 0, s.serverRssMiB ?? 0) || undefined,
      });
      log(`rep ${rep} ${t} 4k writes ${fmt(SMALL / MiB / (w.ms / 1000))} MiB/s, fsync ${fmt(s.fsyncMs)} ms`);
      await rmVia(file(t, 'small'));
    }
    if (workloads.has('meta')) {
      const dir = path.join(paths[t], `${t}-meta`);
      await rmVia(dir);
      await run('mkdir', [dir]);
      const m = await measured(t, () =>
        worker('meta', ['--dir', dir, '--n', String(opts.files), '--size', String(opts['meta-size'])]),
      );
      const n = opts.files;
      add('meta', t, {
        create: n / (m.createMs / 1000),
        stat: n / (m.statMs / 1000),
        unlink: n / (m.unlinkMs / 1000),
        cpu: m.serverCpuS,
        rss: m.serverRssMiB,
      });
      log(
        `rep ${rep} ${t} meta create ${fmt(n / (m.createMs / 1000))}/s stat ${fmt(n / (m.statMs / 1000))}/s unlink ${fmt(n / (m.unlinkMs / 1000))}/s`,
      );
      await rmVia(dir);
    }
  }
}

// RSS while writing a large file through twinfs (the cache must stay bounded).
let rssResult = null;
if (opts['rss-mb'] > 0 && servers.twinfs) {
  // A fresh server, so VmHWM covers this run only.
  await servers.twinfs.stop();
  servers.twinfs = await startTwinfs({
    primary: d.primary,
    mount: d.twinfs,
    cli: opts.cli || undefined,
    cacheMb: opts['cache-mb'] || undefined,
    extra: opts['twinfs-args'] ? opts['twinfs-args'].split(' ') : [],
    verbose: opts.verbose,
  });
  const f = file('twinfs', 'rss');
  await dropCaches();
  const s = sampleRss(servers.twinfs.pid, 50);
  const w = await ddWrite(f, '1M', opts['rss-mb'], true);
  const m = s.stop();
  const limitMiB = servers.twinfs.mounted.cacheBytes / MiB;
  rssResult = {
    writtenMiB: opts['rss-mb'],
    mbps: opts['rss-mb'] / (w.ms / 1000),
    startMiB: m.startMiB,
    maxRssMiB: m.maxRssMiB,
    hwmMiB: m.hwmMiB,
    limitMiB,
    budgetMiB: limitMiB + 150,
    samples: m.samples,
  };
  log(`RSS run: ${JSON.stringify(rssResult)}`);
  await rmVia(f);
}

stopSpin();
for (const s of Object.values(servers)) await s.stop();
const loadEnd = (await import('node:os')).loadavg()[0];

// ---- report ------------------------------------------------------------------------------------
const out = process.stdout;
out.write(`\n## bench/fs.mjs — ${notes.date}\n\n`);
out.write(
  `machine: ${notes.cpus}, ${notes.memGiB} GiB, kernel ${notes.kernel}, node ${notes.node}, git ${notes.git}\nbuild: ${notes.build}\n` +
    `load (1/5/15 min) at start: ${notes.load}; 1-min load at end: ${loadEnd.toFixed(2)}\n` +
    `sizes: seq ${opts['size-mb']} MiB, 4k writes ${opts['small-mb']} MiB, ${opts.files} files of ${opts['meta-size']} B, ` +
    `${opts.reps} rep(s) (median; range in brackets), bindfs -o ${opts['bindfs-opts']}, ` +
    `spinners ${opts.spin}, twinfs cache ${servers.twinfs ? servers.twinfs.mounted.cacheBytes / MiB : '—'} MiB\n\n`,
);
const span = (xs) => (xs.length > 1 ? ` [${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}]` : '');
const dataRows = [];
// Server CPU per unit of work: unlike wall-clock rates it hardly depends on how idle the
// vCPUs are (see startSpinners in lib.mjs).
const perOp = (w, cpu) => {
  if (!Number.isFinite(cpu)) return '';
  if (w === 'small') return `${fmt((cpu * 1e6) / (SMALL / 4096), 0)} µs/write`;
  return `${fmt((cpu * 1000) / (SIZE / MiB), 2)} ms/MiB`;
};
const labels = {
  seqwrite: 'seq write 1M + fsync',
  'seqread-cold': 'seq read 1M, cold',
  'seqread-warm': 'seq read 1M, backing cached',
  small: '4k buffered write',
};
for (const w of ['seqwrite', 'seqread-cold', 'seqread-warm', 'small']) {
  if (!results[w]) continue;
  const ref = median((results[w].bindfs ?? []).map((r) => r.mbps));
  for (const t of targets) {
    const rs = results[w][t];
    if (!rs) continue;
    const v = median(rs.map((r) => r.mbps));
    dataRows.push([
      labels[w],
      t,
      `${fmt(v)}${span(rs.map((r) => r.mbps))}`,
      ratio(v, ref),
      fmt(median(rs.map((r) => r.cpu)), 2),
      perOp(w, median(rs.map((r) => r.cpu))),
      t === 'twinfs' ? fmt(Math.max(...rs.map((r) => r.rss ?? 0)), 0) : '',
    ]);
  }
  if (w === 'small') {
    const ref2 = median((results[w].bindfs ?? []).map((r) => r.mbpsWithFsync));
    for (const t of targets) {
      const rs = results[w][t];
      if (!rs) continue;
      const v = median(rs.map((r) => r.mbpsWithFsync));
      dataRows.push([
        '4k write incl. later fsync',
        t,
        `${fmt(v)}${span(rs.map((r) => r.mbpsWithFsync))} (fsync ${fmt(median(rs.map((r) => r.fsyncMs)), 0)} ms)`,
        ratio(v, ref2),
        '',
        '',
        '',
      ]);
    }
  }
}
if (dataRows.length)
  table(
    ['workload', 'target', 'MiB/s', 'vs bindfs', 'server CPU s', 'server CPU per op', 'server peak RSS MiB'],
    dataRows,
  );
if (results.meta) {
  out.write('\n');
  const ref = (k) => median((results.meta.bindfs ?? []).map((r) => r[k]));
  const n = opts.files;
  const rows = targets
    .filter((t) => results.meta[t])
    .map((t) => {
      const rs = results.meta[t];
      const v = (k) => median(rs.map((r) => r[k]));
      return [
        t,
        `${fmt(v('create'), 0)}${span(rs.map((r) => r.create))}`,
        ratio(v('create'), ref('create')),
        `${fmt(v('stat'), 0)}${span(rs.map((r) => r.stat))}`,
        ratio(v('stat'), ref('stat')),
        `${fmt(v('unlink'), 0)}${span(rs.map((r) => r.unlink))}`,
        ratio(v('unlink'), ref('unlink')),
        `${fmt(median(rs.map((r) => r.cpu)), 2)} (${fmt((median(rs.map((r) => r.cpu)) * 1e6) / n, 0)} µs/file)`,
      ];
    });
  table(
    [
      'metadata (ops/s)',
      'create',
      'vs bindfs',
      'stat',
      'vs bindfs',
      'unlink',
      'vs bindfs',
      'server CPU s (per file, 3 phases)',
    ],
    rows,
  );
}
if (rssResult) {
  out.write('\n');
  table(
    [
      'twinfs RSS run',
      'written MiB',
      'MiB/s',
      'RSS at start',
      'max VmRSS',
      'VmHWM',
      'limit (cache+150)',
      'verdict',
    ],
    [
      [
        `dd bs=1M conv=fsync`,
        rssResult.writtenMiB,
        fmt(rssResult.mbps),
        fmt(rssResult.startMiB, 0),
        fmt(rssResult.maxRssMiB, 0),
        fmt(rssResult.hwmMiB, 0),
        fmt(rssResult.budgetMiB, 0),
        rssResult.hwmMiB <= rssResult.budgetMiB ? 'within' : 'OVER',
      ],
    ],
  );
}
if (opts.json)
  fs.writeFileSync(
    opts.json,
    JSON.stringify({ notes, opts, loadStart, loadEnd, results, rss: rssResult }, null, 2),
  );
