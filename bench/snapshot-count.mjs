#!/usr/bin/env node
// What a no-change incremental costs as the snapshots kept at the target grow (issue 13): the
// same build, the same small volume, targets holding --counts snapshots (10, 100, 1,000 by
// default), each measured with the installed command (`twinfs backup --json`, a cold process
// with a warm page cache), rounds interleaved across the counts (and across two builds with
// --cli-b, each build with targets and catalogs of its own), the order reversed every round. Wall time, CPU (user+sys of the command and its
// children) and minor page faults per run: on this shared machine CPU and faults are the
// measures, wall time is the load's.
//
// How a target with N snapshots is built quickly: two real backups by the command (a full one,
// then a no-change one built by reference: the shape every later unchanged run has), then N-2
// more made through the repository's and the catalog's own APIs as those runs would have made
// them: each a snapshot object that is the no-change one's with its own id, time and parent
// (the object an unchanged run writes: the parent's manifest, the same index stamp), and in the
// catalog a row begun and completed on its predecessor (Catalog.begin, Catalog.completeOnBase:
// the entry file an unchanged run writes, synced). Their times are a millisecond apart, after
// the second real backup and before the measured runs, so the newest real-looking snapshot is
// the parent of every measured run, as in an hourly peer's catalog.
//
//   node bench/snapshot-count.mjs                              (2,000 files; 10, 100, 1,000)
//   node bench/snapshot-count.mjs --cli-b /tmp/old/dist/cli/twinfs.cjs   (A/B: both builds)
//   node bench/snapshot-count.mjs --files 200 --counts 10,50 --rounds 2  (smoke)
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
  makeTree,
  mkdirs,
  parseArgs,
  startBench,
  startTwinfs,
  table,
  trackProc,
  waitMirrorIdle,
} from './lib.mjs';

const opts = parseArgs(
  {
    files: { default: 2000, help: 'small files of the volume (1–4 KiB, 1,000 a directory)' },
    counts: { default: '10,100,1000', help: 'snapshots kept at each target (comma-separated)' },
    rounds: { default: 8, help: 'measured no-change runs per count (and per build)' },
    cold: { default: false, help: 'drop the page cache before every measured run' },
    'cli-b': {
      default: '',
      help: "a second build's dist/cli/twinfs.cjs, its runs interleaved with --cli's on the same targets (A/B)",
    },
    'cpu-prof': {
      default: '',
      help: 'after the measured rounds, one more run per target and build under node --cpu-prof, its profiles into DIR/COUNT-BUILD',
    },
    keep: { default: '', help: 'copy the targets and catalogs into this directory at the end' },
    cli: {
      default: '',
      help: 'twinfs CLI to measure (default: dist/cli/twinfs.cjs of this checkout, copied)',
    },
    ...commonOptions('parent of the temporary directories (same disk as /)'),
    'time-limit': { default: 1800, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/snapshot-count.mjs [options]: a no-change backup against targets of 10, 100, 1,000 snapshots',
);
const counts = String(opts.counts)
  .split(',')
  .map(Number)
  .filter((n) => n >= 2);
const loadAtStart = fs.readFileSync('/proc/loadavg', 'utf8').trim();
const { notes, base } = await startBench(opts);
const cliA = opts.cli || path.join(DIST, 'cli/twinfs.cjs');
const builds = opts['cli-b'] ? { A: cliA, B: path.resolve(opts['cli-b']) } : { A: cliA };
const d = mkdirs(base, 'primary', 'mount', 'state', 'work');
const mirror = path.join(base, 'mirror');

const vol = makeTree(path.join(d.primary, 'vol'), {
  count: opts.files,
  size: (i) => 1024 + ((i * 7919) % 4) * 1024,
  perDir: 1000,
});
log(`volume: ${vol.files} files`);
const srv = await startTwinfs({
  primary: d.primary,
  mount: d.mount,
  mirror,
  stateDir: d.state,
  control: '127.0.0.1:0',
  verbose: opts.verbose,
});
await srv.waitEvent(
  (e) => e.event === 'state' && e.state === 'PAIR' && e.paths === 'volume',
  600_000,
  'PAIR',
);
{
  const c = await controlClient(srv.url, srv.token);
  await waitMirrorIdle(c);
  await c.close();
}

/** Runs cmd in a shell; resolves { ms, stdout, stderr, cpuS, faults } (the shell's cutime/cminflt). */
function measured(cmd, args) {
  return new Promise((resolve, reject) => {
    const script = '"$@"; rc=$?; read -r s < /proc/$$/stat; echo "@@stat $s" >&2; exit $rc';
    const t0 = performance.now();
    const p = spawn('sh', ['-c', script, 'sh', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    trackProc(p);
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (x) => (stdout += x));
    p.stderr.on('data', (x) => (stderr += x));
    const timer = setTimeout(() => p.kill('SIGKILL'), 300_000);
    p.on('exit', (code) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
      const m = /@@stat .*\) (.*)$/m.exec(stderr);
      const f = m ? m[1].split(' ') : [];
      const cpuS = (Number(f[13]) + Number(f[14])) / 100;
      const faults = Number(f[8]);
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stderr.slice(-2000)}`));
      else resolve({ ms, stdout, stderr, cpuS, faults });
    });
  });
}

async function backup(cli, t, profDir) {
  const r = await measured(profDir ? process.execPath : cli, [
    ...(profDir ? ['--cpu-prof', '--cpu-prof-dir', profDir, cli] : []),
    'backup',
    '--server',
    srv.url,
    '--token-file',
    path.join(d.state, 'control.token'),
    '--target',
    `dir:${t.target}`,
    '--catalog',
    t.catalog,
    '--subtree',
    '/vol',
    '--json',
  ]);
  const done = r.stdout
    .trim()
    .split('\n')
    .map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return undefined;
      }
    })
    .findLast((e) => e?.event === 'done');
  if (!done) throw new Error(`twinfs backup printed no result: ${r.stderr.slice(-1000)}`);
  return { ...r, done };
}

const { createPluginHost } = await import(path.join(DIST, 'plugins/index.js'));
const { TargetRegistry } = await import(path.join(DIST, 'backup-peer/targets/index.js'));
const { Catalog } = await import(path.join(DIST, 'backup-peer/catalog.js'));
const host = await createPluginHost({});
const registry = new TargetRegistry([], (t) => host.getTargetProvider(t));

/** A snapshot id as newSnapshotId makes them (time to the second, random hex). */
const idAt = (ms, k) =>
  `${new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z')}-${(k & 0xffffff).toString(16).padStart(6, '0')}`;

/** A target and catalog holding `count` snapshots of /vol (see the head of this file). */
async function buildTarget(count, b) {
  const t = {
    count,
    target: path.join(d.work, `t${count}${b}`),
    catalog: path.join(d.work, `c${count}${b}`),
  };
  const t0 = performance.now();
  await backup(builds[b], t);
  const second = (await backup(builds[b], t)).done;
  if (!second.changes?.byReference) throw new Error(`the second backup was not built by reference`);
  const target = await registry.open(`dir:${t.target}`, { create: false });
  const obj = await target.snapshotObject(second.snapshotId);
  const clones = [];
  await Catalog.with(t.catalog, async (c) => {
    const row = await c.get(second.snapshotId);
    let prev = row.id;
    for (let k = 1; k <= count - 2; k++) {
      const time = row.time + k;
      const id = idAt(time, k);
      await target.repo.writeSnapshot({
        ...obj,
        meta: { ...obj.meta, snapshotId: id, time, parentId: prev },
      });
      const { state: _s, pid: _p, host: _h, finishedAt: _f, entriesBase: _b, entriesDepth: _d, ...rec } = row;
      await c.begin({ ...rec, id, time, parentId: prev });
      await c.completeOnBase(id, prev, { entries: [], gone: [] }, row.totals);
      clones.push(id);
      prev = id;
    }
  });
  await target.close();
  // The measured runs are newer than every clone.
  const last = (await fs.promises.stat(path.join(t.catalog, 'snapshots.db'))).mtimeMs;
  while (Date.now() < last + 5) await new Promise((r) => setTimeout(r, 5));
  log(`target of ${count} snapshots for build ${b} built in ${fmt((performance.now() - t0) / 1000, 1)} s`);
  return t;
}

// A target and catalog per build: each build's runs find them as that build left them (a catalog
// another build wrote to in between is not the one a peer of either build sees).
const pairs = [];
for (const n of counts) for (const b of Object.keys(builds)) pairs.push({ t: await buildTarget(n, b), b });
await host.dispose();

const loads = [fs.readFileSync('/proc/loadavg', 'utf8').trim()];
const res = {};
for (let round = 0; round < opts.rounds; round++) {
  const order = round % 2 ? [...pairs].reverse() : pairs;
  for (const { t, b } of order) {
    if (opts.cold) dropCaches();
    const r = await backup(builds[b], t);
    const tot = r.done.totals;
    if (tot.copiedBytes !== 0 || tot.reusedFiles !== vol.files)
      throw new Error(`not a no-change incremental: ${JSON.stringify(tot)}`);
    const key = `${t.count}|${b}`;
    (res[key] ??= []).push({ ms: r.ms, cpuMs: r.cpuS * 1000, faults: r.faults });
    log(
      `round ${round} ${t.count} snapshots build ${b}: ${fmt(r.ms, 0)} ms, CPU ${fmt(r.cpuS * 1000, 0)} ms, ${r.faults} faults`,
    );
  }
  loads.push(fs.readFileSync('/proc/loadavg', 'utf8').trim());
}
if (opts['cpu-prof'])
  for (const { t, b } of pairs) {
    const dir = path.resolve(opts['cpu-prof'], `${t.count}-${b}`);
    fs.mkdirSync(dir, { recursive: true });
    await backup(builds[b], t, dir);
    log(`profile of ${t.count} snapshots build ${b} in ${dir}`);
  }
await srv.stop();
if (opts.keep) fs.cpSync(d.work, path.resolve(opts.keep), { recursive: true });

const stat = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0], max: s.at(-1) };
};
const cell = (xs, digits = 0) => {
  const s = stat(xs);
  return `${fmt(s.median, digits)} [${fmt(s.min, digits)}–${fmt(s.max, digits)}]`;
};
const w = (s) => process.stdout.write(s);
w(`\n## bench/snapshot-count.mjs — ${notes.date}\n\n`);
w(
  `machine: ${notes.cpus}, node ${notes.node}, git ${notes.git}; build A: ${notes.build}${builds.B ? `; build B: ${builds.B}` : ''}\n` +
    `volume ${vol.files} files; ${opts.rounds} rounds, ${opts.cold ? 'page cache dropped before each run' : 'warm page cache'}\n` +
    `/proc/loadavg at start: ${loadAtStart}; per round: ${loads.map((l) => l.split(' ')[0]).join(', ')}\n\n`,
);
table(
  ['snapshots', 'build', 'wall ms median [range]', 'CPU ms median [range]', 'minor faults median [range]'],
  Object.entries(res).map(([k, xs]) => {
    const [n, b] = k.split('|');
    return [n, b, cell(xs.map((x) => x.ms)), cell(xs.map((x) => x.cpuMs)), cell(xs.map((x) => x.faults))];
  }),
);
if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ notes, counts, res, loads }, null, 2));
