#!/usr/bin/env node
// Catalog rebuild benchmark (issue 14's goal: `twinfs catalog rebuild` of 1,000 snapshots of a
// 10,000-file volume in at most 10 s; docs/repository.md, docs/benchmarks.md).
//
// Builds an encrypted dir: repository holding --snapshots snapshots of a --files-file volume:
// the first through the repository target as the peer stores files (putSmallFile, a manifest of
// --files entries), the others through the repository API as a volume where one file changes
// between backups gives them: the first manifest with its last piece changed, that piece in a
// pack and an index object of its own, then the snapshot object (deduplicated: the repository
// stays small and the bench quick). Each snapshot has its own id, time and totals, so the
// catalog gets a row per snapshot; the entries stay in the manifests at the target.
//
// Then measures, into an empty catalog each time:
//   cli      `twinfs catalog rebuild --target dir:... --catalog EMPTY` as a user runs it (process
//            start, plugin host, passphrase (scrypt), listing and opening --snapshots objects,
//            the catalog written) — the goal's number;
//   again    the same command with the catalog already in line (nothing added);
// and, as the baseline for a ratio in the same run, `twinfs snapshots --target` of a repository
// with one snapshot (the fixed cost of a command: node, plugins, scrypt). Wall and CPU seconds
// (user + sys, from /usr/bin/time when present) are reported: run it without `nice`, or the wall
// time measures the other processes of a loaded machine.
//
//   node bench/catalog-rebuild.mjs                    (1,000 snapshots of 10,000 files)
//   node bench/catalog-rebuild.mjs --snapshots 50 --files 500     (smoke)
//   node bench/catalog-rebuild.mjs --keep /var/tmp/rebuild      (build once, measure again later)
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DIST, fmt, installCleanup, loadavg, log, parseArgs, ROOT, tempBase } from './lib.mjs';

const args = parseArgs(
  {
    snapshots: { default: 1000, help: 'snapshots in the repository' },
    files: { default: 10000, help: 'files of the volume (entries of each manifest)' },
    runs: { default: 3, help: 'timed runs of each command (the median is reported)' },
    keep: {
      default: '',
      help: 'build the repositories in this directory and keep them (reused when it holds them)',
    },
    json: { default: false, help: 'print the results as one JSON line' },
  },
  'node bench/catalog-rebuild.mjs [options]',
);
installCleanup();
process.env.TWINFS_PASSWORD = 'bench passphrase';

const { createPluginHost } = await import(path.join(DIST, 'plugins/index.js'));
const { TargetRegistry } = await import(path.join(DIST, 'backup-peer/targets/index.js'));
const host = await createPluginHost({});
const registry = new TargetRegistry([], (t) => host.getTargetProvider(t));
const base = args.keep || tempBase(process.env.TWINFS_BENCH_DIR);
const built = args.keep && fs.existsSync(path.join(base, 'repo-one', 'config'));
const CLI = path.join(ROOT, 'dist/cli/twinfs.cjs');

const fm = (size, mode = 0o644) => ({ size, mode, uid: 0, gid: 0, mtime: 1_700_000_000_000 });

/** The first snapshot: --files small files in 100 directories, stored as the peer stores them. */
async function firstSnapshot(target) {
  const meta = {
    snapshotId: 'snap-00000',
    time: 1_700_000_000_000,
    server: 'bench',
    deviceId: 'dev-bench',
    selector: { volume: true },
  };
  const w = await target.beginSnapshot(meta);
  const entries = [{ path: '/', type: 'dir', ...fm(0, 0o755) }];
  const dirs = Math.ceil(args.files / 100);
  for (let d = 0; d < dirs; d++) {
    const dir = `/d${String(d).padStart(3, '0')}`;
    await w.putDir(dir, fm(0, 0o755));
    entries.push({ path: dir, type: 'dir', ...fm(0, 0o755) });
  }
  let i = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (i < args.files) {
        const n = i++;
        const p = `/d${String(Math.floor(n / 100)).padStart(3, '0')}/file-${n}.txt`;
        const data = Buffer.from(`file ${n} of the bench volume\n`.repeat(1 + (n % 40)));
        const r = await w.putSmallFile(p, data, fm(data.length));
        entries.push({ path: p, type: 'file', ...fm(data.length), hash: r.hash, stored: r.stamp });
      }
    }),
  );
  const bytes = entries.reduce((k, e) => k + (e.type === 'file' ? e.size : 0), 0);
  const totals = {
    files: args.files,
    dirs: dirs + 1,
    symlinks: 0,
    bytes,
    copiedBytes: bytes,
    reusedFiles: 0,
    skipped: 0,
  };
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  await w.commit({ version: 1, meta, totals, entries });
  return target.snapshotObject(meta.snapshotId);
}

/**
 * The other snapshots, as a volume where one file changes between backups gives them: each has
 * the first one's manifest but for its last piece (the changed entry), stored in a pack of its
 * own and named by an index object of its own, as a backup stores them. A repository of 1,000
 * real backups has 1,000 index objects; a rebuild must not pay for reading them.
 */
async function moreSnapshots(repo, first, count) {
  const { BlobWriter } = await import(path.join(DIST, 'repository/repository.js'));
  const lastId = first.manifest.blobs.at(-1);
  const last = (await repo.readBlob(lastId)).toString('utf8').split('\n');
  const tail = JSON.parse(last.at(-2));
  let next = 1;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < count) {
        const k = next++;
        const snapshotId = `snap-${String(k).padStart(5, '0')}`;
        const changed = [...last.slice(0, -2), JSON.stringify({ ...tail, mtime: tail.mtime + k * 1000 }), ''];
        const writer = new BlobWriter(repo);
        const ids = await writer.addContent(Buffer.from(changed.join('\n')), 'tree');
        await repo.writeIndex({ packs: await writer.flush() });
        await repo.writeSnapshot({
          ...first,
          meta: { ...first.meta, snapshotId, time: first.meta.time + k * 3_600_000, parentId: 'snap-00000' },
          totals: { ...first.totals, copiedBytes: tail.size, reusedFiles: first.totals.files - 1 },
          manifest: { ...first.manifest, blobs: [...first.manifest.blobs.slice(0, -1), ...ids] },
        });
      }
    }),
  );
}

// CPU seconds (user + sys) of each command, from GNU time when it is there: on a loaded machine
// the wall time is mostly waiting for a core, the CPU time is the command's own cost.
const GNU_TIME = fs.existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;

function timeCli(cliArgs) {
  const argv = [process.execPath, CLI, ...cliArgs, '--json'];
  const t0 = process.hrtime.bigint();
  const r = GNU_TIME
    ? spawnSync(GNU_TIME, ['-f', 'cpu %U %S', ...argv], { encoding: 'utf8', env: process.env })
    : spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: process.env });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`twinfs ${cliArgs.join(' ')} failed: ${r.stderr}`);
  const last = r.stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  const cpu = /cpu (\S+) (\S+)\s*$/.exec(r.stderr);
  return {
    s,
    cpu: cpu ? Number(cpu[1]) + Number(cpu[2]) : undefined,
    result: last ? JSON.parse(last) : undefined,
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const spec = `dir:${path.join(base, 'repo')}`;
const small = `dir:${path.join(base, 'repo-one')}`;
let t0 = Date.now();
if (!built) {
  const target = await registry.open(spec);
  const first = await firstSnapshot(target);
  log(`first snapshot: ${args.files} files in ${fmt((Date.now() - t0) / 1000)} s`);
  t0 = Date.now();
  await moreSnapshots(target.repo, first, args.snapshots);
  log(`${args.snapshots - 1} more snapshot objects in ${fmt((Date.now() - t0) / 1000)} s`);
  await target.close();
  const one = await registry.open(small);
  await firstSnapshot(one);
  await one.close();
}
await host.dispose();

const load = [loadavg()];
const rebuild = [];
const again = [];
const baseline = [];
const cpu = { rebuild: [], baseline: [] };
for (let r = 0; r < args.runs; r++) {
  const catalog = path.join(base, `catalog-${r}`);
  fs.rmSync(catalog, { recursive: true, force: true });
  fs.rmSync(path.join(base, `catalog-one-${r}`), { recursive: true, force: true });
  const first = timeCli(['catalog', 'rebuild', '--target', spec, '--catalog', catalog]);
  if (first.result?.snapshots !== args.snapshots || first.result?.added !== args.snapshots)
    throw new Error(`rebuild found ${JSON.stringify(first.result)}, expected ${args.snapshots} added`);
  rebuild.push(first.s);
  cpu.rebuild.push(first.cpu);
  again.push(timeCli(['catalog', 'rebuild', '--target', spec, '--catalog', catalog]).s);
  const one = timeCli(['snapshots', '--target', small, '--catalog', path.join(base, `catalog-one-${r}`)]);
  baseline.push(one.s);
  cpu.baseline.push(one.cpu);
  load.push(loadavg());
}
const results = {
  snapshots: args.snapshots,
  files: args.files,
  repositoryBytes: dirBytes(path.join(base, 'repo')),
  rebuildS: median(rebuild),
  rebuildRuns: rebuild,
  inLineS: median(again),
  oneSnapshotCommandS: median(baseline),
  rebuildCpuS: GNU_TIME ? median(cpu.rebuild) : undefined,
  oneSnapshotCommandCpuS: GNU_TIME ? median(cpu.baseline) : undefined,
  load,
  goalMet: median(rebuild) <= 10,
};
log(
  `catalog rebuild of ${args.snapshots} snapshots of ${args.files} files: ${fmt(results.rebuildS, 2)} s (runs ${rebuild.map((x) => fmt(x, 2)).join(', ')}); ` +
    `in line already: ${fmt(results.inLineS, 2)} s; a one-snapshot command: ${fmt(results.oneSnapshotCommandS, 2)} s ` +
    `(rebuild = ${fmt(results.rebuildS / results.oneSnapshotCommandS, 2)}× it)` +
    (GNU_TIME
      ? `; CPU: rebuild ${fmt(results.rebuildCpuS, 2)} s, a one-snapshot command ${fmt(results.oneSnapshotCommandCpuS, 2)} s`
      : '') +
    `; goal ≤ 10 s: ${results.goalMet ? 'met' : 'missed'}; load ${load.join(' → ')}`,
);
if (args.json) console.log(JSON.stringify(results));

function dirBytes(dir) {
  let n = 0;
  for (const d of fs.readdirSync(dir, { withFileTypes: true, recursive: true }))
    if (d.isFile()) n += fs.statSync(path.join(d.parentPath, d.name)).size;
  return n;
}
