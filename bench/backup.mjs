#!/usr/bin/env node
// Backup peer benchmark (issue 4): throughput, a no-change incremental, and offload.
//
// One twinfs server, mirror on the same disk as the primary. The primary holds two trees,
// written directly before the server starts (the server's initial copy then fills the mirror,
// and the bench waits for PAIR and an idle mirror over the control channel):
//   /mixed  --tree-mib (1 GiB): half in 4 large files, half in 4–64 KiB files (the tree of
//           bench/mirror.mjs section D, makeTree in lib.mjs); with --shape issue13, one large
//           file (860 MiB at 1 GiB) + 2,000 × 64 KiB + 10,000 × 4 KiB
//   /inc    --files (10,000) small files of 1–8 KiB, 100 per directory
//
//   full     per repetition, in rotated order, page cache dropped (sync; drop_caches) before
//            each, every copy on the same disk:
//              twinfs    `twinfs backup --subtree /mixed --target dir:NEW --catalog NEW --json`
//                        (a new catalog: nothing to share, a full copy; the dir target fsyncs
//                        every file at commit)
//              cp        `cp -a MIRROR/data/mixed NEW`
//              rsync     `rsync -a MIRROR/data/mixed/ NEW/`
//              mount-cp  `cp -a MOUNT/mixed NEW`: the same data read through the mount
//            timed from spawn to exit; `sync` right after cp/rsync is timed separately (they
//            leave their writes dirty, the dir target does not). Each copier's CPU (user+sys of
//            the process tree) and the server's CPU and I/O counters (/proc/PID/stat, io)
//            before and after every run.
//   inc      one full twinfs backup of /inc to a target and one `rsync -a` to a copy, then per
//            repetition, rotated, nothing changed, cold (caches dropped) and warm (right after):
//              twinfs      `twinfs backup --subtree /inc` to the same target and catalog
//                          (incremental: every file hard-linked to the previous snapshot)
//              rsync       `rsync -a MIRROR/data/inc/ COPY/` into the up-to-date copy
//              rsync-link  `rsync -a --link-dest=COPY MIRROR/data/inc/ NEW/`: a new tree of
//                          hard links, what the dir target builds
//   offload  from the full section: the server's CPU seconds and bytes read (read_bytes, rchar)
//            during the twinfs peer backups vs during mount-cp (the same files read through
//            the mount).
//
// Phases of every twinfs run come from its --json progress lines, timestamped on arrival.
//
//   node bench/backup.mjs                                            full size (~6 minutes)
//   node bench/backup.mjs --tree-mib 64 --files 1000 --reps 1        (smoke, ~1 minute)
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  commonOptions,
  controlClient,
  DIST,
  dropCaches,
  fmt,
  log,
  MiB,
  makeTree,
  median,
  mkdirs,
  parseArgs,
  ratio,
  sleep,
  startBench,
  startTwinfs,
  table,
  trackProc,
  waitMirrorIdle,
} from './lib.mjs';

/** Columns of the phase tables (from the peer's --json progress lines). */
const PHASE_COLUMNS = [
  'start (node, plugins)',
  'connect',
  'prepare',
  'walk (the copy beside it)',
  'copy (walk included)',
  'commit (fsync, catalog)',
  'exit',
];

const opts = parseArgs(
  {
    'tree-mib': { default: 1024, help: 'full/offload: size of the mixed tree, MiB' },
    shape: {
      default: 'halves',
      help: 'full: the mixed tree: halves (4 large files + 4–64 KiB files) or issue13 (1 large file + 2,000 × 64 KiB + 10,000 × 4 KiB)',
    },
    files: { default: 10000, help: 'inc: small files in the incremental tree' },
    reps: { default: 3, help: 'repetitions of every configuration (medians and ranges)' },
    sections: {
      default: 'full,inc',
      help: 'which sections to run: full, inc, changes (offload is computed from full)',
    },
    'change-files': { default: 100000, help: 'changes: small files in the change-driven volume tree' },
    'big-mib': { default: 1024, help: 'changes: size of its large file, MiB' },
    'full-configs': {
      default: 'twinfs,cp,rsync,mount-cp,restic',
      help: 'full: which copies to run (all five for the report)',
    },
    verify: {
      default: false,
      help: 'restore the first snapshot of each tree and diff -r it against the mirror',
    },
    'cpu-prof': { default: '', help: 'write a V8 CPU profile of every twinfs backup run into this dir' },
    'alt-cli': {
      default: '',
      help: "full: a second build's CLI for the config twinfs-alt (A/B in one run: the same tree, server and disk)",
    },
    perf: {
      default: '',
      help: 'run every twinfs backup under `perf record` (on-CPU samples, every thread; --perf-basic-prof names JS frames) into this dir',
    },
    'perf-freq': { default: 499, help: 'with --perf: samples per second and thread' },
    'perf-callgraph': {
      type: 'boolean',
      default: false,
      help: 'with --perf: record call graphs (perf record -g)',
    },
    timeline: {
      type: 'boolean',
      default: false,
      help: "with --threads: print each twinfs run's per-thread CPU (cores) in 250 ms steps",
    },
    threads: {
      default: false,
      help: "sample every twinfs backup's threads (/proc/PID/task/*/stat every 20 ms): CPU and minor faults of the main thread, the two busiest others (the repository's worker and reader on 2 cores) and the rest",
    },
    events: {
      default: '',
      help: "write every twinfs run's --json lines, timestamped (ms since spawn), into this dir",
    },
    'cli-b': {
      default: '',
      help: "changes: a second build's dist/cli/twinfs.cjs, its no-change backups interleaved with --cli's (A/B)",
    },
    'cmd-timeout': { default: 900, help: 'time limit of one copy command, s' },
    ...commonOptions('parent of the temporary directories (same disk as /)'),
    'time-limit': { default: 2700, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/backup.mjs [options]: backup peer throughput, incremental and offload (issue 4)',
);
const sections = new Set(opts.sections.split(','));
const loadAtStart = fs.readFileSync('/proc/loadavg', 'utf8').trim();
const { notes, base } = await startBench(opts);
// The installed command (its bundle when built; --cli OLD/dist/cli/main.js runs a build's modules).
const cliPath = opts.cli || path.join(DIST, 'cli/twinfs.cjs');
const CMD_MS = opts['cmd-timeout'] * 1000;
const d = mkdirs(base, 'primary', 'mount', 'state', 'work');
const mirror = path.join(base, 'mirror');
const mirrorData = path.join(mirror, 'data');
const loads = {};
const noteLoad = (k) => (loads[k] = fs.readFileSync('/proc/loadavg', 'utf8').trim());

// ---- helpers --------------------------------------------------------------------------------

/** Server counters: CPU s (all threads) and /proc/PID/io. */
function serverCounters(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const io = Object.fromEntries(
    fs
      .readFileSync(`/proc/${pid}/io`, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(': '))
      .map(([k, v]) => [k, Number(v)]),
  );
  return { cpuS: (Number(f[11]) + Number(f[12])) / 100, minflt: Number(f[7]), ...io };
}
function delta(a, b) {
  return {
    cpuS: b.cpuS - a.cpuS,
    faults: b.minflt - a.minflt,
    readBytes: b.read_bytes - a.read_bytes,
    rchar: b.rchar - a.rchar,
    writeBytes: b.write_bytes - a.write_bytes,
  };
}

/**
 * Runs cmd under `sh` in its own process group with a timeout; stdout lines are timestamped as
 * they arrive (ms since spawn). Resolves { ms, lines, stderr, cpuS, faults } where cpuS is the
 * user+sys time of the command and its children (the shell's cutime+cstime after waiting for
 * it) and faults their minor page faults (cminflt: ~11 µs each on some VMs, and unlike CPU time
 * a count that does not depend on the machine's load).
 */
function runMeasured(cmd, args, { timeoutMs = CMD_MS, onSpawn } = {}) {
  return new Promise((resolve, reject) => {
    const script = '"$@"; rc=$?; read -r s < /proc/$$/stat; echo "@@stat $s" >&2; exit $rc';
    const t0 = performance.now();
    const p = spawn('sh', ['-c', script, 'sh', cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    trackProc(p);
    onSpawn?.(p);
    const lines = [];
    let buf = '';
    let stderr = '';
    p.stdout.on('data', (x) => {
      const at = performance.now() - t0;
      buf += x;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        lines.push({ at, text: buf.slice(0, i) });
        buf = buf.slice(i + 1);
      }
    });
    p.stderr.on('data', (x) => (stderr += x));
    const timer = setTimeout(() => {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      reject(new Error(`${cmd} ${args.join(' ')}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
      const m = /@@stat .*\) (.*)$/m.exec(stderr);
      let cpuS = Number.NaN;
      let faults = Number.NaN;
      if (m) {
        const f = m[1].split(' ');
        cpuS = (Number(f[13]) + Number(f[14])) / 100; // cutime + cstime
        faults = Number(f[8]); // cminflt
      }
      stderr = stderr.replace(/^@@stat .*\n?/m, '');
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stderr.slice(-2000)}`));
      else resolve({ ms, lines, stderr, cpuS, faults });
    });
  });
}

/**
 * Samples the threads of the process a `runMeasured` shell started (the shell's child; perf's
 * child under --perf) every 20 ms, keeping each thread's last CPU (user+sys) and minor faults
 * (/proc/PID/task/TID/stat). stop() gives main (the process's own thread), the two busiest
 * other threads (on 2 cores the repository's chunk/seal worker and its small-file reader) and
 * the rest (V8's platform threads, libuv's pool) summed.
 */
function threadSampler(sh) {
  const threads = new Map();
  const timeline = []; // every 250 ms: [ms since start, Map tid -> cpuS]
  const t0 = Date.now();
  let lastMark = -250;
  let pid;
  const child = (of) => {
    try {
      return (
        Number(fs.readFileSync(`/proc/${of}/task/${of}/children`, 'utf8').trim().split(' ')[0]) || undefined
      );
    } catch {
      return undefined;
    }
  };
  const timer = setInterval(() => {
    if (pid === undefined) {
      const c = child(sh.pid);
      if (c === undefined) return;
      const comm = fs.readFileSync(`/proc/${c}/comm`, 'utf8').trim();
      pid = comm === 'perf' ? child(c) : c;
      if (pid === undefined) return;
    }
    let tids = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      return;
    }
    for (const tid of tids) {
      try {
        const f = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
        threads.set(tid, {
          cpuS: (Number(f[11]) + Number(f[12])) / 100,
          sysS: Number(f[12]) / 100,
          faults: Number(f[7]),
        });
      } catch {
        /* the thread ended */
      }
    }
    const now = Date.now() - t0;
    if (opts.timeline && now - lastMark >= 250) {
      lastMark = now;
      timeline.push([now, new Map([...threads].map(([tid, t]) => [tid, t.cpuS]))]);
    }
  }, 20);
  return () => {
    clearInterval(timer);
    const main = threads.get(String(pid)) ?? { cpuS: 0, sysS: 0, faults: 0 };
    const others = [...threads].filter(([tid]) => tid !== String(pid)).map(([, t]) => t);
    others.sort((a, b) => b.cpuS - a.cpuS);
    const sum = (xs) => ({
      n: xs.length,
      cpuS: xs.reduce((a, t) => a + t.cpuS, 0),
      sysS: xs.reduce((a, t) => a + t.sysS, 0),
      faults: xs.reduce((a, t) => a + t.faults, 0),
    });
    if (opts.timeline && timeline.length) {
      // Per step: the CPU each of main, the two busiest others and the rest used in it (cores).
      const ids = [...threads].filter(([tid]) => tid !== String(pid));
      ids.sort((a, b) => b[1].cpuS - a[1].cpuS);
      const cols = [String(pid), ids[0]?.[0], ids[1]?.[0]];
      const lines = ['ms      main  busy  2nd   rest  sum'];
      let prev = new Map();
      let prevMs = 0;
      for (const [ms, m] of timeline) {
        const dt = (ms - prevMs) / 1000 || 1;
        const d = (tid) => ((m.get(tid) ?? 0) - (prev.get(tid) ?? 0)) / dt;
        const main = d(cols[0]);
        const b = cols[1] ? d(cols[1]) : 0;
        const s2 = cols[2] ? d(cols[2]) : 0;
        let rest = 0;
        for (const tid of m.keys()) if (!cols.includes(tid)) rest += d(tid);
        lines.push(
          [
            String(ms).padEnd(7),
            ...[main, b, s2, rest, main + b + s2 + rest].map((x) => x.toFixed(2).padEnd(5)),
          ].join(' '),
        );
        prev = m;
        prevMs = ms;
      }
      console.log(lines.join('\n'));
    }
    return { main, busiest: others[0], second: others[1], rest: sum(others.slice(2)) };
  };
}
const fmtThreads = (t) =>
  Object.entries(t)
    .filter(([, v]) => v)
    .map(
      ([k, v]) =>
        `${k}${v.n !== undefined ? `(${v.n})` : ''} ${fmt(v.cpuS, 2)} s (sys ${fmt(v.sysS, 2)}) ${v.faults} faults`,
    )
    .join(', ');

let srv;
let profN = 0;
let eventsN = 0;
/** One `twinfs backup` run; returns its times, phases and result. */
async function twinfsBackup({ subtree, target, catalog, cli = cliPath }) {
  const nodeArgs = [];
  if (opts['cpu-prof']) {
    // A directory per run: the peer's worker threads write profiles of their own beside the
    // main thread's (CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile, thread 0 the main one).
    const dir = path.join(opts['cpu-prof'], `backup-${++profN}`);
    fs.mkdirSync(dir, { recursive: true });
    nodeArgs.push('--cpu-prof', '--cpu-prof-dir', dir);
  }
  let exe = process.execPath;
  if (opts.perf) {
    // On-CPU samples: unlike --cpu-prof (wall-clock samples of the JS threads), a loaded
    // machine does not inflate them, and the kernel's and libuv's work is counted too.
    fs.mkdirSync(opts.perf, { recursive: true });
    const file = path.join(opts.perf, `backup-${++profN}.data`);
    nodeArgs.unshift(
      'record',
      ...(opts['perf-callgraph'] ? ['-g'] : []),
      '-F',
      String(opts['perf-freq']),
      '-o',
      file,
      '--',
      process.execPath,
      '--perf-basic-prof',
    );
    exe = 'perf';
  }
  const args = [
    'backup',
    '--server',
    srv.url,
    '--token-file',
    path.join(d.state, 'control.token'),
    '--target',
    `dir:${target}`,
    '--catalog',
    catalog,
    '--subtree',
    subtree,
    '--json',
  ];
  const before = serverCounters(srv.pid);
  // As installed: the file itself is the program (its launcher, or its `#!/usr/bin/env node`);
  // node's own flags (or perf) need node run on it.
  let stopSampler;
  const measure = { onSpawn: opts.threads ? (p) => (stopSampler = threadSampler(p)) : undefined };
  const r = nodeArgs.length
    ? await runMeasured(exe, [...nodeArgs, cli, ...args], measure)
    : await runMeasured(cli, args, measure);
  const threads = stopSampler?.();
  const server = delta(before, serverCounters(srv.pid));
  const events = r.lines.flatMap((l) => {
    try {
      return [{ ...JSON.parse(l.text), at: l.at }];
    } catch {
      return [];
    }
  });
  if (opts.events) {
    fs.mkdirSync(opts.events, { recursive: true });
    fs.writeFileSync(
      path.join(opts.events, `backup-${++eventsN}.jsonl`),
      events.map((e) => JSON.stringify(e)).join('\n'),
    );
  }
  const result = events.findLast((e) => e.event === 'done');
  if (!result) throw new Error(`twinfs backup printed no result: ${r.stderr.slice(-1000)}`);
  const firstAt = (ph) => events.find((e) => e.event === 'progress' && e.phase === ph)?.at;
  const tConnect = firstAt('connect');
  const tPrepare = firstAt('prepare');
  const tCopy = firstAt('copy');
  // A walked selection is sized (names and lstats of the split copy) while its copy already
  // runs: 'size' lasts until the walk is over, the copy's first reads included.
  const tSize = firstAt('size') ?? tCopy;
  const tCommit = firstAt('commit');
  const tDone = firstAt('done');
  const phases = {
    startMs: tConnect,
    connectMs: tPrepare - tConnect,
    prepareMs: tSize - tPrepare,
    // The walk's time is part of the copy's, not before it: the copy takes the walk's entries
    // as they are found (the first progress line of the 'size' phase already counts files done).
    sizeMs: tCopy - tSize,
    copyMs: tCommit - tSize,
    commitMs: tDone - tCommit,
    exitMs: r.ms - tDone,
  };
  return {
    ms: r.ms,
    cpuS: r.cpuS,
    faults: r.faults,
    server,
    phases,
    threads,
    stallMs: result.stallMs,
    totals: result.totals,
    changes: result.changes,
    id: result.snapshotId,
  };
}

async function plainCopy(cmd, args) {
  const before = serverCounters(srv.pid);
  const r = await runMeasured(cmd, args);
  const server = delta(before, serverCounters(srv.pid));
  const t = performance.now();
  await runMeasured('sync', []);
  return { ms: r.ms, cpuS: r.cpuS, faults: r.faults, server, syncMs: performance.now() - t };
}

const rm = (p) => fs.rmSync(p, { recursive: true, force: true });
const rotate = (xs, k) => xs.map((_, i) => xs[(i + k) % xs.length]);
const stats = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });

// ---- setup: trees in the primary, server with an empty mirror, wait for PAIR ------------------
noteLoad('setup');
const total = opts['tree-mib'] * MiB;
const largeEach = Math.floor(total / 2 / 4 / MiB) * MiB;
const none = { files: 0, bytes: 0 };
/** The /mixed tree: the default shape, or issue 13's (one large file, 2,000 × 64 KiB, 10,000 × 4 KiB). */
function mixedTree() {
  const dir = path.join(d.primary, 'mixed');
  if (opts.shape === 'issue13') {
    const small = 2000 * 64 * 1024 + 10000 * 4096;
    return makeTree(dir, {
      count: 12000,
      size: (i) => (i < 2000 ? 64 * 1024 : 4096),
      perDir: 500,
      large: [Math.max(MiB, Math.floor((total - small) / MiB) * MiB)],
    });
  }
  return makeTree(dir, {
    count: Math.max(1, Math.floor(total / 2 / (34 * 1024))),
    size: (i) => 4096 + ((i * 7919) % 61) * 1024, // 4–64 KiB, average ~34 KiB
    perDir: 256,
    large: [largeEach, largeEach, largeEach, largeEach],
  });
}
const mixed = sections.has('full') ? mixedTree() : none;
const inc = sections.has('inc')
  ? makeTree(path.join(d.primary, 'inc'), {
      count: opts.files,
      size: (i) => 1024 + ((i * 7919) % 8) * 1024, // 1–8 KiB
      perDir: 100,
    })
  : none;
const vol = sections.has('changes')
  ? makeTree(path.join(d.primary, 'vol'), {
      count: opts['change-files'],
      size: (i) => 1024 + ((i * 7919) % 4) * 1024, // 1–4 KiB
      perDir: 1000,
      large: [opts['big-mib'] * MiB],
    })
  : none;
log(
  `trees: /mixed ${mixed.files} files ${fmt(mixed.bytes / MiB)} MiB, /inc ${inc.files} files ${fmt(inc.bytes / MiB)} MiB, /vol ${vol.files} files ${fmt(vol.bytes / MiB)} MiB`,
);
process.env.RESTIC_PASSWORD = 'bench';
const t0 = performance.now();
srv = await startTwinfs({
  cli: opts.cli || undefined,
  primary: d.primary,
  mount: d.mount,
  mirror,
  stateDir: d.state,
  control: '127.0.0.1:0',
  verbose: opts.verbose,
});
await srv.waitEvent(
  (e) => e.event === 'state' && e.state === 'PAIR' && e.paths === 'volume',
  1_200_000,
  'PAIR',
);
const client = await controlClient(srv.url, srv.token);
const st = await waitMirrorIdle(client);
await client.close();
log(
  `server pid ${srv.pid}: mirror ${st.mirror?.state} (initial copy ${fmt((performance.now() - t0) / 1000, 1)} s), data in ${mirrorData}`,
);
if (!fs.existsSync(path.join(mirror, 'device.json'))) throw new Error(`${mirror} holds no device.json`);

// The dir: target is a repository (docs/repository.md): the snapshot is restored into a scratch
// directory (`twinfs restore ID --to DIR --target dir:TARGET`) and that compared with the mirror.
async function verifySnapshot(target, id, subtree) {
  const to = path.join(d.work, `verify-${id}`);
  await runMeasured(cliPath, ['restore', id, '--to', to, '--target', `dir:${target}`]);
  const r = await runMeasured('diff', [
    '-r',
    '--no-dereference',
    path.join(mirrorData, subtree),
    path.join(to, subtree),
  ]);
  rm(to);
  log(`verify: snapshot ${id}${subtree} restored equals the mirror (diff -r, ${fmt(r.ms / 1000, 1)} s)`);
}

const out = { trees: { mixed, inc } };

// ---- full backup vs cp -a / rsync -a, and through the mount --------------------------------------
if (sections.has('full')) {
  noteLoad('full');
  const configs = opts['full-configs'].split(',');
  const res = Object.fromEntries(configs.map((c) => [c, []]));
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const cfg of rotate(configs, rep)) {
      const dest = path.join(d.work, `full-${cfg}-${rep}`);
      dropCaches();
      let r;
      if (cfg === 'twinfs' || cfg === 'twinfs-alt') {
        const cli = cfg === 'twinfs-alt' ? opts['alt-cli'] : cliPath;
        r = await twinfsBackup({ subtree: '/mixed', target: dest, catalog: `${dest}.catalog`, cli });
        if (r.totals.copiedBytes !== mixed.bytes || r.totals.files !== mixed.files)
          throw new Error(
            `full backup copied ${JSON.stringify(r.totals)}, expected ${JSON.stringify(mixed)}`,
          );
        if (opts.verify && rep === 0) await verifySnapshot(dest, r.id, '/mixed');
      } else if (cfg === 'cp') r = await plainCopy('cp', ['-a', path.join(mirrorData, 'mixed'), dest]);
      else if (cfg === 'rsync')
        r = await plainCopy('rsync', ['-a', `${path.join(mirrorData, 'mixed')}/`, `${dest}/`]);
      else if (cfg === 'restic') {
        await runMeasured('restic', ['init', '-q', '-r', dest]);
        dropCaches();
        r = await plainCopy('restic', ['backup', '-q', '-r', dest, path.join(mirrorData, 'mixed')]);
      } else r = await plainCopy('cp', ['-a', path.join(d.mount, 'mixed'), dest]);
      res[cfg].push(r);
      log(
        `full rep ${rep} ${cfg}: ${fmt(r.ms / 1000, 2)} s${r.syncMs !== undefined ? ` (+ sync ${fmt(r.syncMs / 1000, 2)} s)` : ''}, CPU ${fmt(r.cpuS, 2)} s, ${r.faults} minor faults, server CPU ${fmt(r.server.cpuS, 2)} s ${r.server.faults} faults read ${fmt(r.server.readBytes / MiB)} MiB${r.phases ? ` phases ${JSON.stringify(Object.fromEntries(Object.entries(r.phases).map(([k, v]) => [k, Math.round(v)])))}` : ''}${r.threads ? `; threads: ${fmtThreads(r.threads)}` : ''}`,
      );
      rm(dest);
      rm(`${dest}.catalog`);
    }
  }
  out.full = res;
  // What the split protocol alone costs the server: prepare (flush, split, the item list) and
  // release (resync) of the same selection, nothing read in between.
  const c = await controlClient(srv.url, srv.token);
  const splits = [];
  for (let i = 0; i < opts.reps; i++) {
    dropCaches();
    const before = serverCounters(srv.pid);
    const t = performance.now();
    const p = await c.prepare({ subtree: '/mixed' }, { leaseMs: 60_000 });
    await c.release(p.backupId);
    splits.push({
      ms: performance.now() - t,
      server: delta(before, serverCounters(srv.pid)),
      items: p.items.length,
      itemsComplete: p.itemsComplete,
    });
  }
  await c.close();
  out.splitOnly = splits;
  log(
    `prepare + release alone: server CPU ${splits.map((x) => fmt(x.server.cpuS, 2)).join(', ')} s, ${splits[0].items} items (complete: ${splits[0].itemsComplete})`,
  );
}

// ---- no-change incremental vs rsync -------------------------------------------------------------
if (sections.has('inc')) {
  noteLoad('inc');
  const target = path.join(d.work, 'inc-target');
  const catalog = path.join(d.work, 'inc-catalog');
  const copy = path.join(d.work, 'inc-rsync');
  const src = `${path.join(mirrorData, 'inc')}/`;
  dropCaches();
  const first = await twinfsBackup({ subtree: '/inc', target, catalog });
  if (opts.verify) await verifySnapshot(target, first.id, '/inc');
  dropCaches();
  const firstRsync = await plainCopy('rsync', ['-a', src, `${copy}/`]);
  log(`inc: first full backup ${fmt(first.ms / 1000, 2)} s, first rsync ${fmt(firstRsync.ms / 1000, 2)} s`);
  const configs = ['twinfs', 'rsync', 'rsync-link'];
  const res = Object.fromEntries(configs.map((c) => [c, { cold: [], warm: [] }]));
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const cfg of rotate(configs, rep)) {
      for (const temp of ['cold', 'warm']) {
        if (temp === 'cold') dropCaches();
        let r;
        if (cfg === 'twinfs') {
          r = await twinfsBackup({ subtree: '/inc', target, catalog });
          if (r.totals.reusedFiles !== inc.files || r.totals.copiedBytes !== 0)
            throw new Error(`incremental backup was not a no-change one: ${JSON.stringify(r.totals)}`);
        } else if (cfg === 'rsync') r = await plainCopy('rsync', ['-a', src, `${copy}/`]);
        else {
          const dest = path.join(d.work, `inc-link-${rep}-${temp}`);
          r = await plainCopy('rsync', ['-a', `--link-dest=${copy}`, src, `${dest}/`]);
          rm(dest);
        }
        res[cfg][temp].push(r);
        log(
          `inc rep ${rep} ${cfg} ${temp}: ${fmt(r.ms, 0)} ms, CPU ${fmt(r.cpuS, 2)} s${r.phases ? ` phases ${JSON.stringify(Object.fromEntries(Object.entries(r.phases).map(([k, v]) => [k, Math.round(v)])))}` : ''}`,
        );
      }
    }
  }
  out.inc = { first, firstRsync, res };
}

// ---- change-driven incrementals (issue 13) ------------------------------------------------------
if (sections.has('changes')) {
  noteLoad('changes');
  const target = path.join(d.work, 'vol-target');
  const catalog = path.join(d.work, 'vol-catalog');
  const copy = path.join(d.work, 'vol-rsync');
  const repo = path.join(d.work, 'vol-restic');
  const src = `${path.join(mirrorData, 'vol')}/`;
  const c = await controlClient(srv.url, srv.token);
  const serverAnswerMs = async () => (await c.request('status')).backup.stall.lastChangesMs;
  const volBackup = async (cli = cliPath) => {
    const r = await twinfsBackup({ subtree: '/vol', target, catalog, cli });
    return { ...r, answerMs: await serverAnswerMs() };
  };
  dropCaches();
  const first = await volBackup();
  dropCaches();
  const firstRsync = await plainCopy('rsync', ['-a', src, `${copy}/`]);
  await runMeasured('restic', ['init', '-q', '-r', repo]);
  dropCaches();
  const firstRestic = await plainCopy('restic', ['backup', '-q', '-r', repo, src]);
  log(
    `changes: first backup ${fmt(first.ms / 1000, 2)} s, rsync ${fmt(firstRsync.ms / 1000, 2)} s, restic ${fmt(firstRestic.ms / 1000, 2)} s`,
  );
  const configs = opts['cli-b'] ? ['twinfs', 'twinfsB', 'rsync', 'restic'] : ['twinfs', 'rsync', 'restic'];
  const none = Object.fromEntries(configs.map((k) => [k, { cold: [], warm: [] }]));
  for (let rep = 0; rep < opts.reps; rep++)
    for (const cfg of rotate(configs, rep))
      for (const temp of ['cold', 'warm']) {
        if (temp === 'cold') dropCaches();
        let r;
        if (cfg === 'twinfs' || cfg === 'twinfsB') {
          r = await volBackup(cfg === 'twinfs' ? cliPath : path.resolve(opts['cli-b']));
          if (r.totals.copiedBytes !== 0 || r.totals.reusedFiles !== vol.files)
            throw new Error(`not a no-change incremental: ${JSON.stringify(r.totals)}`);
        } else if (cfg === 'rsync') r = await plainCopy('rsync', ['-a', src, `${copy}/`]);
        else r = await plainCopy('restic', ['backup', '-q', '-r', repo, src]);
        none[cfg][temp].push(r);
        log(
          `changes no-change rep ${rep} ${cfg} ${temp}: ${fmt(r.ms, 0)} ms, CPU ${fmt(r.cpuS, 2)} s${r.phases ? `, start ${fmt(r.phases.startMs, 0)} ms` : ''}${r.answerMs !== undefined ? ` (server answer ${fmt(r.answerMs, 1)} ms)` : ''}`,
        );
      }
  // The peer as a daemon (`twinfs peer`): a warm process, one run per interval.
  const daemonCfg = path.join(d.work, 'peer.json');
  fs.writeFileSync(
    daemonCfg,
    JSON.stringify({
      server: srv.url,
      tokenFile: path.join(d.state, 'control.token'),
      target: `dir:${target}`,
      catalog,
      intervalSec: 1,
      subtree: '/vol',
    }),
  );
  const daemonRuns = await new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [cliPath, 'peer', '--config', daemonCfg, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    trackProc(p);
    const runs = [];
    let buf = '';
    let err = '';
    p.stderr.on('data', (x) => (err += x));
    p.stdout.on('data', (x) => {
      buf += x;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let e;
        try {
          e = JSON.parse(line);
        } catch {
          continue;
        }
        if (e.event === 'backup-failed') reject(new Error(`peer daemon: ${line}`));
        if (e.event === 'backup-complete') {
          runs.push(e);
          log(`changes daemon run ${e.run}: ${e.ms} ms, copied ${e.copiedBytes} B`);
          if (runs.length >= opts.reps + 1) p.kill('SIGTERM');
        }
      }
    });
    p.on('exit', () => (runs.length ? resolve(runs) : reject(new Error(`peer daemon: ${err.slice(-2000)}`))));
  });
  // 10 files changed among them (through the mount), per run other ones; with --cli-b each rep
  // runs both builds, their order alternating (A/B interleaved on the same tree and load).
  const ten = [];
  const tenB = [];
  let tenRun = 0;
  for (let rep = 0; rep < opts.reps; rep++)
    for (const cfg of opts['cli-b'] ? rotate(['twinfs', 'twinfsB'], rep) : ['twinfs']) {
      const run = tenRun++;
      let bytes = 0;
      for (let k = 0; k < 10; k++) {
        const i = ((run * 10 + k) * 997) % (vol.files - 1);
        const f = path.join(d.mount, 'vol', `d${String(Math.floor(i / 1000)).padStart(4, '0')}`, `f${i}`);
        const b = Buffer.alloc(2048, 65 + (run % 50));
        fs.writeFileSync(f, b);
        bytes += b.length;
      }
      await sleep(200);
      dropCaches();
      const r = await volBackup(cfg === 'twinfs' ? cliPath : path.resolve(opts['cli-b']));
      if (r.totals.copiedBytes !== bytes)
        throw new Error(
          `10 changed: copied ${r.totals.copiedBytes} B, expected ${bytes}: ${JSON.stringify(r.totals)}`,
        );
      (cfg === 'twinfs' ? ten : tenB).push(r);
      log(
        `changes 10 changed rep ${rep} ${cfg}: ${fmt(r.ms, 0)} ms, CPU ${fmt(r.cpuS, 2)} s, ${r.faults} minor faults, copied ${r.totals.copiedBytes} B, looked at ${r.changes?.looked}${r.phases ? ` phases ${JSON.stringify(Object.fromEntries(Object.entries(r.phases).map(([k, v]) => [k, Math.round(v)])))}` : ''}`,
      );
    }
  // 1 MiB rewritten inside the large file.
  const ranged = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    const fd = fs.openSync(path.join(d.mount, 'vol', 'large0'), 'r+');
    const off = Math.floor((opts['big-mib'] * MiB * (rep + 1)) / (opts.reps + 2) / MiB) * MiB;
    fs.writeSync(fd, Buffer.alloc(MiB, 90 + rep), 0, MiB, off);
    fs.closeSync(fd);
    await sleep(200);
    dropCaches();
    const r = await volBackup();
    ranged.push(r);
    log(
      `changes 1 MiB in large0 rep ${rep}: ${fmt(r.ms, 0)} ms, peer read ${fmt(r.totals.copiedBytes / MiB, 2)} MiB from the mirror`,
    );
  }
  if (opts.verify) await verifySnapshot(target, ranged.at(-1).id, '/vol');
  out.changes = { first, firstRsync, firstRestic, none, daemonRuns, ten, tenB, ranged };
  await c.close();
}

await srv.stop();
const loadAtEnd = fs.readFileSync('/proc/loadavg', 'utf8').trim();

// ---- report -------------------------------------------------------------------------------------
const w = (s) => process.stdout.write(s);
const range = (xs, digits = 2) => {
  const s = stats(xs);
  return `${fmt(s.median, digits)} [${fmt(s.min, digits)}–${fmt(s.max, digits)}]`;
};
w(`\n## bench/backup.mjs — ${notes.date}\n\n`);
w(
  `machine: ${notes.cpus}, ${notes.memGiB} GiB, kernel ${notes.kernel}, node ${notes.node}, git ${notes.git}\nbuild: ${notes.build}\n` +
    `/proc/loadavg at start: ${loadAtStart}; at each section: ${JSON.stringify(loads)}; at end: ${loadAtEnd}\n\n`,
);
if (out.full && ['twinfs', 'cp', 'rsync', 'mount-cp'].every((c) => out.full[c]?.length)) {
  const F = out.full;
  const mib = mixed.bytes / MiB;
  const med = (cfg, k = 'ms') => median(F[cfg].map((r) => r[k]));
  const rows = [
    ['twinfs backup (peer, dir: target)', 'twinfs'],
    ['cp -a of the mirror', 'cp'],
    ['rsync -a of the mirror', 'rsync'],
    ['cp -a through the mount', 'mount-cp'],
    ['restic backup of the mirror (new repository)', 'restic'],
  ]
    .filter(([, cfg]) => F[cfg]?.length)
    .map(([label, cfg]) => {
      const s = F[cfg].map((r) => r.ms / 1000);
      const sync = F[cfg][0].syncMs === undefined ? '(fsyncs)' : fmt(med(cfg, 'syncMs') / 1000, 2);
      const withSync = F[cfg][0].syncMs === undefined ? med(cfg) : med(cfg) + med(cfg, 'syncMs');
      return [
        label,
        range(s),
        fmt(mib / (med(cfg) / 1000)),
        ratio(med('cp'), med(cfg)),
        ratio(med('rsync'), med(cfg)),
        sync,
        fmt(mib / (withSync / 1000)),
        fmt(med(cfg, 'cpuS'), 2),
        fmt(median(F[cfg].map((r) => r.server.cpuS)), 2),
        fmt(median(F[cfg].map((r) => r.server.readBytes)) / MiB, 1),
      ];
    });
  w(
    `Full backup of /mixed: ${mixed.files} files, ${fmt(mib)} MiB (${opts.shape === 'issue13' ? '1 large file + 2,000 × 64 KiB + 10,000 × 4 KiB' : `4 × ${fmt(largeEach / MiB, 0)} MiB + ${mixed.files - 4} files of 4–64 KiB`}); ${opts.reps} reps rotated, caches dropped before each; median [range]\n\n`,
  );
  table(
    [
      'copy',
      'seconds',
      'MiB/s',
      'throughput vs cp -a',
      'vs rsync -a',
      'sync after, s',
      'MiB/s incl. sync',
      'copier CPU s',
      'server CPU s',
      'server read MiB',
    ],
    rows,
  );
  w('\ngoal: twinfs backup ≥ 0.9× cp -a and rsync -a\n\n');
  const ph = (k) => range(F.twinfs.map((r) => r.phases[k] / 1000));
  table(
    ['twinfs backup phase (s)', ...PHASE_COLUMNS],
    [
      [
        'median [range]',
        ph('startMs'),
        ph('connectMs'),
        ph('prepareMs'),
        ph('sizeMs'),
        ph('copyMs'),
        ph('commitMs'),
        ph('exitMs'),
      ],
    ],
  );
  w(`\n(server stallMs: ${F.twinfs.map((r) => fmt(r.stallMs, 1)).join(', ')})\n\n`);

  // offload
  const peer = F.twinfs.map((r) => r.server);
  const mnt = F['mount-cp'].map((r) => r.server);
  const m = (xs, k) => median(xs.map((x) => x[k]));
  const pct = (a, b) => (b > 0 ? `${((100 * a) / b).toFixed(2)}%` : '—');
  w(
    `Offload: the server process during the peer backup vs during cp -a of the same tree through the mount (median of ${opts.reps})\n\n`,
  );
  table(
    ['server counter', 'peer backup', 'through the mount', 'peer / mount'],
    [
      [
        'CPU s (utime+stime)',
        fmt(m(peer, 'cpuS'), 2),
        fmt(m(mnt, 'cpuS'), 2),
        pct(m(peer, 'cpuS'), m(mnt, 'cpuS')),
      ],
      [
        'read_bytes MiB',
        fmt(m(peer, 'readBytes') / MiB, 2),
        fmt(m(mnt, 'readBytes') / MiB, 1),
        pct(m(peer, 'readBytes'), m(mnt, 'readBytes')),
      ],
      [
        'rchar MiB',
        fmt(m(peer, 'rchar') / MiB, 2),
        fmt(m(mnt, 'rchar') / MiB, 1),
        pct(m(peer, 'rchar'), m(mnt, 'rchar')),
      ],
      ['write_bytes MiB', fmt(m(peer, 'writeBytes') / MiB, 2), fmt(m(mnt, 'writeBytes') / MiB, 1), '—'],
    ],
  );
  if (out.splitOnly) {
    const S = out.splitOnly.map((x) => x.server);
    w(
      `\nof which prepare + release alone (no copy; cold cache; ${out.splitOnly[0].items} items in the reply, complete: ${out.splitOnly[0].itemsComplete}): server CPU ${range(S.map((x) => x.cpuS))} s, read_bytes ${fmt(m(S, 'readBytes') / MiB, 2)} MiB, round trip ${fmt(median(out.splitOnly.map((x) => x.ms)), 0)} ms\n`,
    );
  }
  w(
    `\n(server CPU during cp -a / rsync -a of the mirror, i.e. the idle server: ${F.cp.map((r) => fmt(r.server.cpuS, 2)).join(', ')} / ${F.rsync.map((r) => fmt(r.server.cpuS, 2)).join(', ')} s)\ngoal: ≤ 1%\n\n`,
  );
}
if (out.inc) {
  const I = out.inc;
  const R = I.res;
  w(
    `No-change incremental of /inc: ${inc.files} files, ${fmt(inc.bytes / MiB)} MiB, ${inc.files / 100} directories; first full backup ${fmt(I.first.ms / 1000, 2)} s, first rsync ${fmt(I.firstRsync.ms / 1000, 2)} s; ${opts.reps} reps rotated; cold = caches dropped, warm = right after\n\n`,
  );
  const rs = median(R.rsync.cold.map((r) => r.ms));
  const rsw = median(R.rsync.warm.map((r) => r.ms));
  table(
    ['run', 'cold s', 'vs rsync -a', 'warm s', 'vs rsync -a', 'CPU s cold / warm'],
    [
      ['twinfs backup (incremental)', 'twinfs'],
      ['rsync -a into the up-to-date copy', 'rsync'],
      ['rsync -a --link-dest (new tree of links)', 'rsync-link'],
    ].map(([label, cfg]) => [
      label,
      range(R[cfg].cold.map((r) => r.ms / 1000)),
      ratio(median(R[cfg].cold.map((r) => r.ms)), rs),
      range(R[cfg].warm.map((r) => r.ms / 1000)),
      ratio(median(R[cfg].warm.map((r) => r.ms)), rsw),
      `${fmt(median(R[cfg].cold.map((r) => r.cpuS)), 2)} / ${fmt(median(R[cfg].warm.map((r) => r.cpuS)), 2)}`,
    ]),
  );
  w('\n(ratios are time ratios: < 1.00× is faster than rsync -a)\ngoal: twinfs faster than rsync -a\n\n');
  const ph = (temp, k) => range(R.twinfs[temp].map((r) => r.phases[k] / 1000));
  table(
    ['twinfs incremental phase (s)', ...PHASE_COLUMNS],
    ['cold', 'warm'].map((t) => [
      t,
      ph(t, 'startMs'),
      ph(t, 'connectMs'),
      ph(t, 'prepareMs'),
      ph(t, 'sizeMs'),
      ph(t, 'copyMs'),
      ph(t, 'commitMs'),
      ph(t, 'exitMs'),
    ]),
  );
  w('\n');
}
if (out.changes) {
  const C = out.changes;
  const N = C.none;
  const ms = (xs) => median(xs.map((r) => r.ms));
  w(
    `Change-driven incrementals of /vol: ${vol.files} files, ${fmt(vol.bytes / MiB)} MiB (${vol.files - 1} files of 1–4 KiB + 1 × ${opts['big-mib']} MiB); first backup ${fmt(C.first.ms / 1000, 2)} s, first rsync ${fmt(C.firstRsync.ms / 1000, 2)} s, first restic ${fmt(C.firstRestic.ms / 1000, 2)} s; ${opts.reps} reps rotated; cold = caches dropped, warm = right after\n\n`,
  );
  const rs = ms(N.rsync.cold);
  const rsw = ms(N.rsync.warm);
  const daemon = C.daemonRuns.slice(1).map((e) => e.ms);
  table(
    ['no change', 'cold s', 'vs rsync -a', 'warm s', 'vs rsync -a'],
    [
      ['twinfs backup (cold CLI start)', 'twinfs'],
      ...(N.twinfsB ? [[`the same, --cli-b ${opts['cli-b']}`, 'twinfsB']] : []),
      ['rsync -a into the up-to-date copy', 'rsync'],
      ['restic backup', 'restic'],
    ]
      .map(([label, cfg]) => [
        label,
        range(N[cfg].cold.map((r) => r.ms / 1000)),
        ratio(ms(N[cfg].cold), rs),
        range(N[cfg].warm.map((r) => r.ms / 1000)),
        ratio(ms(N[cfg].warm), rsw),
      ])
      .concat([
        [
          'twinfs peer daemon (warm process)',
          '—',
          '—',
          range(daemon.map((x) => x / 1000)),
          ratio(median(daemon), rsw),
        ],
      ]),
  );
  w(
    `\n(ratios are time ratios: < 1.00× is faster)\nserver's answer to the baseline prepare: ${range(
      N.twinfs.cold.concat(N.twinfs.warm).map((r) => r.answerMs),
      1,
    )} ms\n\n`,
  );
  const ph = (xs, k) => range(xs.map((r) => r.phases[k] / 1000));
  table(
    ['twinfs run phase (s)', ...PHASE_COLUMNS],
    [
      ['no change, cold', N.twinfs.cold],
      ['10 changed, cold', C.ten],
      ['1 MiB in the large file, cold', C.ranged],
    ].map(([label, xs]) => [
      label,
      ph(xs, 'startMs'),
      ph(xs, 'connectMs'),
      ph(xs, 'prepareMs'),
      ph(xs, 'sizeMs'),
      ph(xs, 'copyMs'),
      ph(xs, 'commitMs'),
      ph(xs, 'exitMs'),
    ]),
  );
  w('\n');
  table(
    ['changed', 'seconds (cold)', 'vs no change', 'copied (read from the mirror)', 'server answer ms'],
    [
      [
        '10 files of 2 KiB',
        range(C.ten.map((r) => r.ms / 1000)),
        ratio(ms(C.ten), ms(N.twinfs.cold)),
        `${fmt(median(C.ten.map((r) => r.totals.copiedBytes)) / 1024, 1)} KiB`,
        range(
          C.ten.map((r) => r.answerMs),
          1,
        ),
      ],
      [
        `1 MiB inside the ${opts['big-mib']} MiB file`,
        range(C.ranged.map((r) => r.ms / 1000)),
        ratio(ms(C.ranged), ms(N.twinfs.cold)),
        `${fmt(median(C.ranged.map((r) => r.totals.copiedBytes)) / MiB, 2)} MiB`,
        range(
          C.ranged.map((r) => r.answerMs),
          1,
        ),
      ],
    ],
  );
  w('\n');
  if (C.tenB.length) {
    // A/B: each build against its own no-change cold runs of the same reps.
    const row = (label, xs, none) => [
      label,
      range(xs.map((r) => r.ms / 1000)),
      ratio(ms(xs), ms(none)),
      range(xs.map((r) => r.cpuS)),
      range(
        xs.map((r) => r.faults),
        0,
      ),
      ph(xs, 'copyMs'),
      ph(xs, 'commitMs'),
    ];
    table(
      [
        '10 files of 2 KiB, A/B',
        'seconds (cold)',
        'vs its no change',
        'CPU s',
        'minor faults',
        'copy s',
        'commit s',
      ],
      [row('--cli', C.ten, N.twinfs.cold), row(`--cli-b ${opts['cli-b']}`, C.tenB, N.twinfsB.cold)],
    );
    w('\n');
  }
}
if (opts.json)
  fs.writeFileSync(
    opts.json,
    JSON.stringify({ notes, opts, loadAtStart, loadAtEnd, loads, results: out }, null, 2),
  );
await sleep(10);
