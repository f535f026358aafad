#!/usr/bin/env node
// What a resync's comparison of the volume costs, two builds interleaved (A/B in one run).
// The mirror driver runs in this process without a mount (as test/mirror-driver/*.test.ts do):
// a tree of --files files of --file-kb KiB (and one --large-mb file) is copied to an empty
// mirror, the volume is split, --changed small files (and the large file) get a 4 KiB write
// each, reported the way the filesystem reports it, and then:
//   plain  the resync (tracked ranges only: the common case, no comparison of the volume);
//   walk   a file with two names is written through one and that name unlinked first, so the
//          resync also compares the volume (lostLinks): the case where a comparison decides
//          which files to read (size, mtime and ctime, or the change record, finding 33).
// Reported per build: the resync's ms, the process's CPU ms during it (all threads) and bytes copied (median of --reps, each a fresh tree),
// with the 1-minute load before each run. Warm page cache (the files were just written).
//
//   node bench/resync-walk.mjs --dist-a /tmp/old/dist --dist-b dist [--files 4000 --file-kb 16
//        --changed 400 --large-mb 256 --reps 5]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { fmt, loadavg, log, MiB, makeTree, median, parseArgs, table } from './lib.mjs';

const opts = parseArgs(
  {
    'dist-a': { default: '', help: 'build A (a dist/ directory; the baseline)' },
    'dist-b': { default: 'dist', help: 'build B (a dist/ directory)' },
    files: { default: 4000, help: 'small files in the tree' },
    'file-kb': { default: 16, help: 'size of each small file, KiB' },
    changed: { default: 400, help: 'small files written under the split' },
    'large-mb': { default: 256, help: 'one large file, written under the split too (0: none)' },
    reps: { default: 5, help: 'runs per build and case (interleaved)' },
    dir: { default: os.tmpdir(), help: 'parent of the temporary directories' },
  },
  'node bench/resync-walk.mjs --dist-a DIR --dist-b DIR',
);
if (!opts['dist-a']) throw new Error('--dist-a is required (the baseline build)');

async function load(dist) {
  const url = pathToFileURL(path.resolve(dist, 'mirror-driver/index.js')).href;
  return (await import(url)).MirrorDriver;
}
const builds = { A: await load(opts['dist-a']), B: await load(opts['dist-b']) };

async function once(Driver, walk) {
  const base = fs.mkdtempSync(path.join(opts.dir, 'twinfs-resync-walk-'));
  const [P, Mi, S] = ['primary', 'mirror', 'state'].map((n) => path.join(base, n));
  for (const d of [P, Mi, S]) fs.mkdirSync(d);
  try {
    makeTree(P, {
      count: opts.files,
      size: opts['file-kb'] * 1024,
      large: opts['large-mb'] > 0 ? [opts['large-mb'] * MiB] : [],
    });
    fs.writeFileSync(`${P}/h1`, Buffer.alloc(4096, 1));
    fs.linkSync(`${P}/h1`, `${P}/h2`);
    const d = await Driver.open({ primary: P, mirror: Mi, stateDir: S, log: () => undefined });
    await d.whenReady();
    const s = await d.split({ volume: true });
    const write = async (p, off) => {
      await d.beforeChange(p);
      const data = Buffer.alloc(4096, 7);
      const fd = fs.openSync(P + p, 'r+');
      fs.writeSync(fd, data, 0, data.length, off);
      fs.closeSync(fd);
      await d.apply({ op: 'write', path: p, offset: off, data });
    };
    const step = Math.max(1, Math.floor(opts.files / Math.max(1, opts.changed)));
    for (let i = 0, n = 0; i < opts.files && n < opts.changed; i += step, n++)
      await write(`/d${String(Math.floor(i / 1000)).padStart(4, '0')}/f${i}`, 0);
    if (opts['large-mb'] > 0) await write('/large0', 0);
    if (walk) {
      await write('/h1', 0);
      await d.beforeChange('/h1');
      fs.unlinkSync(`${P}/h1`);
      await d.apply({ op: 'unlink', path: '/h1' });
    }
    const loadBefore = os.loadavg()[0];
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    const r = await d.resync(s.splitId);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const c = process.cpuUsage(c0);
    const cpu = (c.user + c.system) / 1000;
    const drift = d.status().stats.rereadRewrites ?? 0;
    await d.dispose();
    return { ms, cpu, bytes: r.bytesCopied, drift, load: loadBefore };
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
}

log(`load ${loadavg()}; A=${opts['dist-a']} B=${opts['dist-b']}; ${JSON.stringify(opts)}`);
const results = { plain: { A: [], B: [] }, walk: { A: [], B: [] } };
for (let rep = 0; rep < opts.reps; rep++)
  for (const kase of ['plain', 'walk']) {
    // Alternate which build goes first.
    for (const b of rep % 2 ? ['B', 'A'] : ['A', 'B']) {
      const r = await once(builds[b], kase === 'walk');
      results[kase][b].push(r);
      log(
        `rep ${rep} ${kase} ${b}: ${fmt(r.ms, 1)} ms, CPU ${fmt(r.cpu, 1)} ms, ${r.bytes} bytes, rewrites ${r.drift}, load ${fmt(r.load, 2)}`,
      );
    }
  }
const rows = [];
for (const kase of ['plain', 'walk']) {
  const a = median(results[kase].A.map((r) => r.ms));
  const b = median(results[kase].B.map((r) => r.ms));
  const ca = median(results[kase].A.map((r) => r.cpu));
  const cb = median(results[kase].B.map((r) => r.cpu));
  rows.push([
    kase,
    fmt(a, 1),
    fmt(b, 1),
    fmt(b / a, 2),
    fmt(ca, 1),
    fmt(cb, 1),
    fmt(cb / ca, 2),
    median(results[kase].A.map((r) => r.bytes)),
    median(results[kase].B.map((r) => r.bytes)),
    `${fmt(Math.min(...[...results[kase].A, ...results[kase].B].map((r) => r.load)), 1)}–${fmt(Math.max(...[...results[kase].A, ...results[kase].B].map((r) => r.load)), 1)}`,
  ]);
}
table(
  [
    'case',
    'A resync ms',
    'B resync ms',
    'B/A',
    'A CPU ms',
    'B CPU ms',
    'B/A CPU',
    'A bytes',
    'B bytes',
    'load',
  ],
  rows,
);
log(`load at the end ${loadavg()}`);
