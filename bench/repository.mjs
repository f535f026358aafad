#!/usr/bin/env node
// Repository benchmark (issue 14, docs/repository.md): what the dir: repository stores and how
// fast it stores it, against restic on the same tree and disk.
//
//   change   a --big-mib (1024) file backed up, then 1 MiB inside it overwritten with new
//            random bytes (at the middle) and backed up again, every byte read again (no reuse):
//            what the second snapshot adds to the repository (every object: packs, index, snapshot).
//   volumes  a --tree-mib (1024) tree (makeTree: half large files, half 4-64 KiB files) backed
//            up as volume A, then the same content as volume B (another device id, its own
//            snapshot, nothing shared by the peer): what the second adds to the repository.
//   speed    a full backup of the same tree into a new encrypted repository (chunking, zstd,
//            AES-256-GCM), the way the peer stores files (up to 1 MiB read in batches by the
//            repository's workers, putMirrorFile, 64 files at a time; putFile above), against `restic backup` into a new restic repository, both
//            on the same disk, page cache dropped before each (when root), one run each.
//            twinfs's time includes making the repository (its key's scrypt) unless --init-apart
//            (then timed apart, as `restic init` is for restic).
//
// The repository is driven through the dir: plugin in a plugin host, as the peer does; the
// split mirror and the control channel are left out (bench/backup.mjs measures those).
//
//   node bench/repository.mjs                       (~1 GiB each, a few minutes)
//   node bench/repository.mjs --big-mib 64 --tree-mib 64   (smoke)
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  DIST,
  dropCaches,
  fmt,
  installCleanup,
  log,
  MiB,
  makeTree,
  parseArgs,
  putLarge,
  tempBase,
} from './lib.mjs';

const args = parseArgs(
  {
    'big-mib': { default: 1024, help: 'size of the large file of the change case' },
    'tree-mib': { default: 1024, help: 'size of the tree of the volumes and speed cases' },
    only: { default: '', help: 'run one case: change, volumes or speed' },
    json: { default: false, help: 'print the results as one JSON line' },
    shape: {
      default: 'halves',
      help: 'the tree of volumes and speed: halves (4 large files + 4-64 KiB files) or issue13 (1 large file + 2,000 × 64 KiB + 10,000 × 4 KiB, as bench/backup.mjs --shape issue13)',
    },
    'init-apart': {
      default: false,
      help: 'speed: create the repository (key derivation, config) before the timed backup, as restic init is',
    },
    warm: {
      default: false,
      help: 'speed: keep the page cache (the tree read from memory: the CPU-bound pipeline)',
    },
  },
  'node bench/repository.mjs [options]',
);
installCleanup();

const { createPluginHost } = await import(path.join(DIST, 'plugins/index.js'));
const { TargetRegistry } = await import(path.join(DIST, 'backup-peer/targets/index.js'));
const host = await createPluginHost({});
const registry = new TargetRegistry([], (t) => host.getTargetProvider(t));
const base = tempBase(process.env.TWINFS_BENCH_DIR);
const results = {};

function dirBytes(dir) {
  let n = 0;
  if (!fs.existsSync(dir)) return 0;
  for (const d of fs.readdirSync(dir, { withFileTypes: true, recursive: true }))
    if (d.isFile()) n += fs.statSync(path.join(d.parentPath, d.name)).size;
  return n;
}

function storedOf(p, r) {
  if (r.kind !== 'stored') throw new Error(`${p}: ${JSON.stringify(r)}`);
  return r.result;
}

function walk(root) {
  const out = [];
  const go = (rel) => {
    for (const d of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = `${rel}/${d.name}`;
      if (d.isDirectory()) {
        out.push({ path: r, dir: true });
        go(r);
      } else if (d.isFile()) out.push({ path: r, size: fs.statSync(path.join(root, r)).size });
    }
  };
  go('');
  return out;
}

/** CPU seconds and minor page faults of each thread of this process, by thread id. */
function threadCpu() {
  const out = new Map();
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const f = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
      const name = fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
      out.set(Number(tid), { name, seconds: (Number(f[11]) + Number(f[12])) / 100, faults: Number(f[7]) });
    } catch {
      // A thread that ended meanwhile.
    }
  }
  return new Map([...out].sort((a, b) => a[0] - b[0]));
}

let seq = 0;
/** One snapshot of the tree at root, stored as the peer stores files. */
async function backup(target, root, deviceId) {
  const id = `bench-${Date.now()}-${seq++}`;
  const meta = { snapshotId: id, time: Date.now(), server: 'bench', deviceId, selector: { volume: true } };
  const w = await target.beginSnapshot(meta);
  const entries = [];
  const list = walk(root);
  const fm = (size) => ({ size, mode: 0o644, uid: 0, gid: 0, mtime: 0 });
  let i = 0;
  // As the peer copies: small files read by the target's workers in batches (putMirrorFile)
  // with 64 entries at once where the writer offers it, else read here, 16 at once.
  const batched = typeof w.putMirrorFile === 'function';
  await Promise.all(
    Array.from({ length: batched ? 64 : 16 }, async () => {
      while (i < list.length) {
        const e = list[i++];
        if (e.dir) {
          await w.putDir(e.path, fm(0));
          entries.push({ path: e.path, type: 'dir', ...fm(0) });
          continue;
        }
        const file = path.join(root, e.path);
        const r =
          e.size > MiB
            ? await putLarge(w, e.path, file, fm(e.size))
            : batched
              ? storedOf(
                  e.path,
                  await w.putMirrorFile(e.path, { path: file, size: e.size, max: MiB }, fm(e.size)),
                )
              : await w.putSmallFile(e.path, await fs.promises.readFile(file), fm(e.size));
        entries.push({ path: e.path, type: 'file', ...fm(e.size), hash: r.hash, stored: r.stamp });
      }
    }),
  );
  const bytes = list.reduce((n, e) => n + (e.size ?? 0), 0);
  await w.commit({
    version: 1,
    meta,
    totals: {
      files: list.length,
      dirs: 0,
      symlinks: 0,
      bytes,
      copiedBytes: bytes,
      reusedFiles: 0,
      skipped: 0,
    },
    entries: entries.sort((a, b) => (a.path < b.path ? -1 : 1)),
  });
  return id;
}

async function newRepo(name, encrypted) {
  if (encrypted) process.env.TWINFS_PASSWORD = 'bench passphrase';
  else delete process.env.TWINFS_PASSWORD;
  const root = path.join(base, name);
  return { root, target: await registry.open(`dir:${root}`) };
}

if (!args.only || args.only === 'change') {
  const src = path.join(base, 'big');
  fs.mkdirSync(src);
  const file = path.join(src, 'big.bin');
  const fd = fs.openSync(file, 'w');
  const block = crypto.randomBytes(4 * MiB);
  for (let w = 0; w < args['big-mib'] * MiB; w += block.length) {
    crypto.randomFillSync(block);
    fs.writeSync(fd, block);
  }
  fs.closeSync(fd);
  const { root, target } = await newRepo('repo-change', true);
  await backup(target, src, 'vol-a');
  const before = dirBytes(root);
  const at = Math.floor((args['big-mib'] * MiB) / 2) + 12345;
  const fd2 = fs.openSync(file, 'r+');
  fs.writeSync(fd2, crypto.randomBytes(MiB), 0, MiB, at);
  fs.closeSync(fd2);
  await backup(target, src, 'vol-a');
  const added = dirBytes(root) - before;
  results.change = {
    fileMiB: args['big-mib'],
    changedMiB: 1,
    newBytes: added,
    goalBytes: 4 * MiB,
    ok: added <= 4 * MiB,
  };
  log(
    `change: 1 MiB changed in a ${args['big-mib']} MiB file: the next snapshot stored ${fmt(added / MiB)} MiB (goal ≤ 4)`,
  );
  await target.close();
  fs.rmSync(root, { recursive: true, force: true });
  fs.rmSync(src, { recursive: true, force: true });
}

const tree = path.join(base, 'tree');
if (!args.only || args.only !== 'change') {
  if (args.shape === 'issue13') {
    const small = 2000 * 64 * 1024 + 10000 * 4096;
    makeTree(tree, {
      count: 12000,
      size: (i) => (i < 2000 ? 64 * 1024 : 4096),
      perDir: 500,
      large: [Math.max(MiB, Math.floor((args['tree-mib'] * MiB - small) / MiB) * MiB)],
    });
  } else {
    const half = (args['tree-mib'] * MiB) / 2;
    const small = (i) => 4096 + ((i * 7919) % (60 * 1024));
    let count = 0;
    for (let n = 0; n < half; count++) n += small(count);
    makeTree(tree, { count, size: small, large: [half / 4, half / 4, half / 4, half / 4].map(Math.floor) });
  }
}

if (!args.only || args.only === 'volumes') {
  const { root, target } = await newRepo('repo-volumes', true);
  await backup(target, tree, 'vol-a');
  const first = dirBytes(root);
  await backup(target, tree, 'vol-b');
  const added = dirBytes(root) - first;
  results.volumes = {
    treeMiB: args['tree-mib'],
    firstBytes: first,
    newBytes: added,
    share: added / first,
    ok: added <= first / 100,
  };
  log(
    `volumes: the same ${args['tree-mib']} MiB tree from a second volume stored ${fmt(added / MiB)} MiB new (${fmt((100 * added) / first)} % of the first; goal ≤ 1 %)`,
  );
  await target.close();
  fs.rmSync(root, { recursive: true, force: true });
}

if (!args.only || args.only === 'speed') {
  const treeBytes = dirBytes(tree);
  const drop = () => (args.warm ? false : dropCaches());
  drop();
  const { root, target } = await newRepo('repo-speed', true);
  // restic's repository is made by `restic init`, outside its timed backup; twinfs's is made by
  // the first snapshot's begin (a new key: scrypt over 32 MiB, ~8,000 faults). --init-apart
  // makes it first (a snapshot begun and aborted), timed apart.
  let made;
  if (args['init-apart']) {
    const f0 = process.resourceUsage().minorPageFault;
    const c0 = process.cpuUsage();
    const i0 = process.hrtime.bigint();
    const meta = {
      snapshotId: 'bench-init',
      time: Date.now(),
      server: 'bench',
      deviceId: 'init',
      selector: { volume: true },
    };
    await (await target.beginSnapshot(meta)).abort();
    made = {
      seconds: Number(process.hrtime.bigint() - i0) / 1e9,
      cpuSeconds: (({ user, system }) => (user + system) / 1e6)(process.cpuUsage(c0)),
      minorFaults: process.resourceUsage().minorPageFault - f0,
    };
    log(
      `speed: repository made apart: ${fmt(made.seconds, 2)} s, CPU ${fmt(made.cpuSeconds, 2)} s, ${made.minorFaults} minor faults`,
    );
  }
  const threads0 = threadCpu();
  let t0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  const faults0 = process.resourceUsage().minorPageFault;
  await backup(target, tree, 'vol-a');
  // Minor page faults of the whole process during the backup (every thread): on this kind of VM
  // a fault costs ~11 µs, and unlike CPU time the count does not depend on the machine's load.
  const twinfsFaults = process.resourceUsage().minorPageFault - faults0;
  const twinfsS = Number(process.hrtime.bigint() - t0) / 1e9;
  // CPU seconds of each thread during the backup (main first, then in order of creation: the
  // runtime's, libuv's, then the repository's workers and readers), those that did any work.
  const threads1 = threadCpu();
  const threads = [...threads1]
    .map(([tid, s]) => ({
      tid,
      name: s.name,
      seconds: s.seconds - (threads0.get(tid)?.seconds ?? 0),
      faults: s.faults - (threads0.get(tid)?.faults ?? 0),
    }))
    .filter((t) => t.seconds >= 0.01 || t.faults >= 1000);
  // CPU seconds of every thread of this process (the repository's workers included).
  const twinfsCpu = (({ user, system }) => (user + system) / 1e6)(process.cpuUsage(cpu0));
  const twinfsStored = dirBytes(root);
  await target.close();
  const resticRepo = path.join(base, 'restic');
  const env = {
    ...process.env,
    RESTIC_PASSWORD: 'bench passphrase',
    RESTIC_CACHE_DIR: path.join(base, 'restic-cache'),
  };
  const init = spawnSync('restic', ['init', '--repo', resticRepo], { env, encoding: 'utf8' });
  if (init.status !== 0) throw new Error(`restic init: ${init.stderr}`);
  drop();
  t0 = process.hrtime.bigint();
  // Through GNU time, which gives the CPU seconds and minor page faults of the restic process.
  const rb = spawnSync(
    '/usr/bin/time',
    ['-f', 'rusage %U %S %R', 'restic', 'backup', '--repo', resticRepo, '-q', tree],
    { env, encoding: 'utf8' },
  );
  const resticS = Number(process.hrtime.bigint() - t0) / 1e9;
  const usage = /rusage ([\d.]+) ([\d.]+) (\d+)/.exec(rb.stderr ?? '');
  const resticCpu = usage ? Number(usage[1]) + Number(usage[2]) : Number.NaN;
  const resticFaults = usage ? Number(usage[3]) : Number.NaN;

  if (rb.status !== 0) throw new Error(`restic backup: ${rb.stderr}`);
  const version = spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout.trim();
  const resticStored = dirBytes(resticRepo);
  results.speed = {
    treeBytes,
    twinfs: {
      seconds: twinfsS,
      cpuSeconds: twinfsCpu,
      minorFaults: twinfsFaults,
      MiBps: treeBytes / MiB / twinfsS,
      storedBytes: twinfsStored,
      threads: threads.map((t) => Number(t.seconds.toFixed(2))),
      threadFaults: threads.map((t) => t.faults),
      ...(made ? { init: made } : {}),
    },
    restic: {
      version,
      seconds: resticS,
      cpuSeconds: resticCpu,
      minorFaults: resticFaults,
      MiBps: treeBytes / MiB / resticS,
      storedBytes: resticStored,
    },
    ratio: resticS / twinfsS,
    cachesDropped: drop(),
  };
  log(
    `speed: ${fmt(treeBytes / MiB)} MiB: twinfs ${fmt(twinfsS)} s (${fmt(treeBytes / MiB / twinfsS)} MiB/s, CPU ${fmt(twinfsCpu, 2)} s, ${twinfsFaults} minor faults), ${version.split(' ').slice(0, 2).join(' ')} ${fmt(resticS)} s (${fmt(treeBytes / MiB / resticS)} MiB/s, CPU ${fmt(resticCpu, 2)} s, ${resticFaults} minor faults): ${fmt(resticS / twinfsS)}× restic's throughput`,
  );
  log(`speed: twinfs CPU by thread (main first): ${threads.map((t) => fmt(t.seconds, 2)).join(' ')} s`);
  log(
    `speed: twinfs minor faults by thread (main first): ${threads.map((t) => `${t.name}:${t.faults}`).join(' ')}`,
  );
  fs.rmSync(root, { recursive: true, force: true });
}

await host.dispose();
if (args.json) process.stdout.write(`${JSON.stringify(results)}\n`);
process.exit(0);
