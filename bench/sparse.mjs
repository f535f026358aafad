#!/usr/bin/env node
// Sparse images in backups (docs/architecture.md "Sparse files in backups"): a file of --gib
// GiB holding --spans data spans of --span-kib KiB (a VM disk, a core dump) in the primary, a
// server with a mirror, then per rep, page cache dropped before each run:
//   twinfs    `twinfs backup --full` into a new dir: repository, then `twinfs restore`
//   alt       the same with --alt-cli (another build's dist/cli/twinfs.cjs: before/after)
//   restic    `restic backup` of the split-free mirror copy into a new repository (Debian's
//             restic; it reads holes as zeros), then `restic restore`
//   cp        `cp --sparse=always` of the mirror copy (a floor: no hashing, no store)
// Prints wall and CPU seconds per run and the ratios to restic measured in the same run.
//
//   node bench/sparse.mjs --gib 16 --reps 3
//   node bench/sparse.mjs --gib 16 --reps 3 --alt-cli /tmp/old/dist/cli/twinfs.cjs
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  controlClient,
  DIST,
  fmt,
  GiB,
  installCleanup,
  loadavg,
  log,
  median,
  mkdirs,
  parseArgs,
  startMirroredTwinfs,
  syncAndDropCaches,
  table,
  tempBase,
  waitMirrorIdle,
} from './lib.mjs';

const opts = parseArgs(
  {
    gib: { default: 16, help: 'the image size, GiB' },
    spans: { default: 64, help: 'data spans in the image' },
    'span-kib': { default: 256, help: 'KiB per data span' },
    reps: { default: 3, help: 'runs of each config (rotated)' },
    configs: { default: 'twinfs,restic,cp', help: 'twinfs, alt, restic, cp' },
    'alt-cli': { default: '', help: "another build's dist/cli/twinfs.cjs (config alt)" },
    keep: { default: false, help: 'keep the files' },
  },
  'node bench/sparse.mjs [options]',
);
installCleanup({ timeLimitSec: 3600 });

const base = tempBase();
const d = mkdirs(base, 'primary', 'mnt', 'mirror', 'state', 'work');
const size = opts.gib * GiB;
{
  // The image, made before the start: its initial copy into the mirror keeps the holes.
  const fd = fs.openSync(path.join(d.primary, 'disk.img'), 'w');
  fs.ftruncateSync(fd, size);
  const span = opts['span-kib'] * 1024;
  const buf = Buffer.alloc(span);
  for (let i = 0; i < opts.spans; i++) {
    for (let k = 0; k < span; k += 4) buf.writeUInt32LE((Math.imul(i + 1, 2654435761) ^ k) >>> 0, k);
    fs.writeSync(fd, buf, 0, span, Math.floor(((size - span) / opts.spans) * i));
  }
  fs.closeSync(fd);
}
const srv = await startMirroredTwinfs(d);
const token = fs.readFileSync(path.join(d.state, 'control.token'), 'utf8').trim();
const client = await controlClient(srv.url, token);
await waitMirrorIdle(client);
const mirrorFile = path.join(d.mirror, 'data', 'disk.img');
const st = fs.statSync(mirrorFile);
log(`image ${fmt(size / GiB, 1)} GiB, ${fmt((st.blocks * 512) / 1024, 0)} KiB allocated in the mirror`);

/** Runs a command to its end: wall ms and the CPU seconds of it and its children. */
function measured(cmd, args, env = {}) {
  return new Promise((resolve, reject) => {
    const script = '"$@"; rc=$?; read -r s < /proc/$$/stat; echo "@@stat $s" >&2; exit $rc';
    const t0 = performance.now();
    const p = spawn('sh', ['-c', script, 'sh', cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (x) => (out += x));
    p.stderr.on('data', (x) => (err += x));
    p.on('close', (code) => {
      const ms = performance.now() - t0;
      const m = /@@stat (.*)/.exec(err);
      // cutime and cstime (fields 16, 17 after the comm): the command's CPU, children included.
      const f = m ? m[1].slice(m[1].lastIndexOf(')') + 2).split(' ') : [];
      const cpuS = f.length ? (Number(f[13]) + Number(f[14])) / 100 : Number.NaN;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}\n${err.slice(-2000)}`));
      else resolve({ ms, cpuS, out });
    });
  });
}

const results = {};
const note = (k, r) => {
  results[k] ??= [];
  results[k].push(r);
  log(`${k}: ${fmt(r.ms / 1000, 2)} s wall, ${fmt(r.cpuS, 2)} s CPU`);
};
const rm = (p) => fs.rmSync(p, { recursive: true, force: true });
const configs = opts.configs.split(',');
for (let rep = 0; rep < opts.reps; rep++)
  for (const cfg of configs.map((_, i) => configs[(i + rep) % configs.length])) {
    const w = path.join(d.work, `${cfg}-${rep}`);
    fs.mkdirSync(w, { recursive: true });
    if (cfg === 'twinfs' || cfg === 'alt') {
      const cli = cfg === 'alt' ? opts['alt-cli'] : path.join(DIST, 'cli/twinfs.cjs');
      const common = ['--target', `dir:${w}/repo`, '--catalog', `${w}/catalog`];
      await syncAndDropCaches([d.mirror, d.work]);
      note(
        `${cfg} backup`,
        await measured(cli, [
          'backup',
          '--full',
          '--server',
          srv.url,
          '--token-file',
          path.join(d.state, 'control.token'),
          ...common,
        ]),
      );
      await syncAndDropCaches([d.mirror, d.work]);
      note(`${cfg} restore`, await measured(cli, ['restore', 'latest', '--to', `${w}/out`, ...common]));
    } else if (cfg === 'restic') {
      const env = { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: `${w}/cache` };
      await measured('restic', ['init', '-q', '-r', `${w}/repo`], env);
      await syncAndDropCaches([d.mirror, d.work]);
      note('restic backup', await measured('restic', ['backup', '-q', '-r', `${w}/repo`, mirrorFile], env));
      await syncAndDropCaches([d.mirror, d.work]);
      note(
        'restic restore',
        await measured('restic', ['restore', '-q', '-r', `${w}/repo`, 'latest', '--target', `${w}/out`], env),
      );
    } else if (cfg === 'cp') {
      await syncAndDropCaches([d.mirror, d.work]);
      note('cp --sparse=always', await measured('cp', ['--sparse=always', mirrorFile, `${w}/disk.img`]));
    }
    rm(w);
  }

const rows = Object.entries(results).map(([k, rs]) => {
  const ms = median(rs.map((r) => r.ms));
  const base = k.endsWith('restore') ? results['restic restore'] : results['restic backup'];
  const ratio = base && !k.startsWith('restic') ? median(base.map((r) => r.ms)) / ms : undefined;
  return [k, fmt(ms / 1000, 2), fmt(median(rs.map((r) => r.cpuS)), 2), ratio ? `${fmt(ratio, 2)}×` : '—'];
});
console.log(
  `\nsparse image ${opts.gib} GiB, ${opts.spans} × ${opts['span-kib']} KiB of data, ${opts.reps} reps, load ${loadavg()}`,
);
table(['run', 'wall s (median)', 'CPU s', 'vs restic (speed)'], rows);
await client.close?.();
await srv.stop();
if (!opts.keep) rm(base);
