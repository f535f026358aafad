#!/usr/bin/env node
// Large-file path of the repository (issues 13 and 14, docs/repository.md "Where the work runs"):
// one file stored into a new dir: repository the way the peer gives a large file (putFileFrom:
// read straight into the cutter's windows; a read stream of 1 MiB pieces through putFile with a
// build that lacks it), then committed. Each run is a child process of its own
// (fresh worker threads), and reports its wall time and its CPU seconds: all threads together
// and the main JS thread alone (/proc/self/task), so that builds can be compared by the CPU
// they need rather than by a wall time that swings with the machine's load.
//
//   content  pool     makeTree's content (bench/lib.mjs): a 4 MiB pool of random bytes repeated,
//                     so all but the first few MiB deduplicate (issue 13's large file)
//            random   fresh random bytes throughout: every chunk is new, incompressible, stored
//
//   node bench/large-file.mjs --mib 512 --content pool,random --reps 3
//   node bench/large-file.mjs --builds OLD/dist,NEW/dist --encrypt   (runs alternate, back to back)
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DIST,
  fmt,
  installCleanup,
  loadavg,
  log,
  MiB,
  median,
  parseArgs,
  putLarge,
  table,
  tempBase,
} from './lib.mjs';

const args = parseArgs(
  {
    mib: { default: 512, help: 'size of the file, MiB' },
    content: { default: 'pool,random', help: 'pool (deduplicating, issue 13) and/or random (all new)' },
    reps: { default: 3, help: 'runs of each build and content (alternating builds)' },
    builds: { default: '', help: 'comma-separated dist/ directories to compare (default: this checkout)' },
    encrypt: { default: false, help: 'an encrypted repository (AES-256-GCM, keyed blob ids)' },
    dir: { default: '/tmp', help: 'parent of the temporary directory' },
    'cpu-prof': { default: '', help: 'write V8 CPU profiles of every run (main and worker threads) here' },
    child: { default: '', help: '(internal) one run: JSON of {dist, file, repo}' },
  },
  'node bench/large-file.mjs [options]',
);

function taskCpu(tid) {
  const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

if (args.child) {
  const { dist, file, repo } = JSON.parse(args.child);
  if (args.encrypt) process.env.TWINFS_PASSWORD = 'bench passphrase';
  const { createPluginHost } = await import(path.join(dist, 'plugins/index.js'));
  const { TargetRegistry } = await import(path.join(dist, 'backup-peer/targets/index.js'));
  const host = await createPluginHost({});
  const registry = new TargetRegistry([], (t) => host.getTargetProvider(t));
  const target = await registry.open(`dir:${repo}`);
  const size = fs.statSync(file).size;
  const meta = {
    snapshotId: 'large',
    time: Date.now(),
    server: 'bench',
    deviceId: 'v',
    selector: { volume: true },
  };
  const fm = { size, mode: 0o644, uid: 0, gid: 0, mtime: 0 };
  const cpu0 = process.cpuUsage();
  const main0 = taskCpu(process.pid);
  const t0 = performance.now();
  const w = await target.beginSnapshot(meta);
  const r = await putLarge(w, '/large', file, fm);
  await w.commit({
    version: 1,
    meta,
    totals: { files: 1, dirs: 0, symlinks: 0, bytes: size, copiedBytes: size, reusedFiles: 0, skipped: 0 },
    entries: [{ path: '/large', type: 'file', ...fm, hash: r.hash, stored: r.stamp }],
  });
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(cpu0);
  const threads = fs
    .readdirSync('/proc/self/task')
    .map(
      (tid) => `${fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim()}:${taskCpu(tid).toFixed(2)}`,
    )
    .filter((t) => !t.endsWith(':0.00'));
  const out = {
    wall,
    cpu: (c.user + c.system) / 1e6,
    main: taskCpu(process.pid) - main0,
    hash: r.hash,
    threads,
  };
  await target.close();
  await host.dispose();
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
}

installCleanup({ timeLimitSec: 3600 });
const base = tempBase(args.dir, 'twinfs-large-');
const builds = args.builds ? args.builds.split(',').map((b) => path.resolve(b)) : [DIST];
const contents = args.content.split(',');
const rows = [];
for (const content of contents) {
  const file = path.join(base, `${content}.bin`);
  const fd = fs.openSync(file, 'w');
  const pool = crypto.randomBytes(4 * MiB);
  for (let w = 0; w < args.mib * MiB; w += pool.length) {
    if (content === 'random') crypto.randomFillSync(pool);
    fs.writeSync(fd, pool, 0, Math.min(pool.length, args.mib * MiB - w));
  }
  fs.closeSync(fd);
  const expect = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const runs = new Map(builds.map((b) => [b, []]));
  for (let rep = 0; rep < args.reps; rep++) {
    for (const dist of builds) {
      const repo = path.join(base, 'repo');
      fs.rmSync(repo, { recursive: true, force: true });
      const load = loadavg();
      const child = JSON.stringify({ dist, file, repo });
      const prof = args['cpu-prof']
        ? [
            '--cpu-prof',
            '--cpu-prof-dir',
            path.join(args['cpu-prof'], `${content}-${rep}-${builds.indexOf(dist)}`),
          ]
        : [];
      const p = spawnSync(
        process.execPath,
        [...prof, fileURLToPath(import.meta.url), '--child', child, ...(args.encrypt ? ['--encrypt'] : [])],
        { encoding: 'utf8', timeout: 1800_000 },
      );
      if (p.status !== 0) throw new Error(`run of ${dist} failed: ${p.stderr}`);
      const r = JSON.parse(p.stdout.trim().split('\n').at(-1));
      if (r.hash !== expect) throw new Error(`${dist}: wrong file hash ${r.hash}`);
      r.stored = fs
        .readdirSync(repo, { recursive: true, withFileTypes: true })
        .filter((d) => d.isFile())
        .reduce((n, d) => n + fs.statSync(path.join(d.parentPath, d.name)).size, 0);
      r.load = load;
      runs.get(dist).push(r);
      log(
        `${content} ${dist}: wall ${fmt(r.wall, 2)} s, CPU ${fmt(r.cpu, 2)} s (main ${fmt(r.main, 2)} s; threads ${r.threads.join(' ')}), stored ${fmt(r.stored / MiB)} MiB, load ${load}`,
      );
    }
  }
  for (const [dist, rs] of runs) {
    const cpu = median(rs.map((r) => r.cpu));
    rows.push([
      content,
      dist,
      fmt(median(rs.map((r) => r.wall)), 2),
      fmt(cpu, 2),
      fmt(median(rs.map((r) => r.main)), 2),
      fmt((cpu * 1000) / args.mib, 2),
      fmt(median(rs.map((r) => r.stored)) / MiB),
      rs.map((r) => r.load).join(' / '),
    ]);
  }
  fs.rmSync(file, { force: true });
}
process.stdout.write(
  `\n${args.mib} MiB file, ${args.encrypt ? 'encrypted' : 'unencrypted'} repository, page cache warm, median of ${args.reps}\n\n`,
);
table(
  ['content', 'build', 'wall s', 'CPU s', 'main thread CPU s', 'CPU ms/MiB', 'stored MiB', 'load (1 min)'],
  rows,
);
process.exit(0);
