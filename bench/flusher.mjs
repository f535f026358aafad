#!/usr/bin/env node
// The write-back cache's flusher alone (no FUSE): --files small files (1 KiB each) written into
// a WritebackCache and closed, more than its maxNodes (1,024) of them, then the CPU the flusher
// spends writing back the oldest until no more than maxNodes are cached (what a small-file
// workload such as an untar makes it do). Compare builds with --dist:
//
//   node bench/flusher.mjs --dist /tmp/old/dist && node bench/flusher.mjs
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DIST, parseArgs } from './lib.mjs';

const opts = parseArgs(
  {
    dist: { default: DIST, help: 'the twinfs build (a dist/ directory)' },
    files: { default: 6000, help: 'files cached before the flusher starts' },
  },
  'node bench/flusher.mjs [--dist DIR] [--files N]',
);
const dist = path.resolve(opts.dist);
const { WritebackCache } = await import(path.join(dist, 'fusefs/writeback-cache.js'));
const { nullSink } = await import(path.join(dist, 'fusefs/change-sink.js'));
const N = Number(opts.files);
const MAX_NODES = 1024;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'twinfs-flusher-'));
// Nothing ages within the run: only the maxNodes bound starts write-backs (timer tick: 1 s).
const cache = new WritebackCache({ sink: nullSink, writebackMs: 600_000, maxNodes: MAX_NODES });
try {
  const data = Buffer.alloc(1024, 7);
  for (let i = 0; i < N; i++) {
    const node = cache.adopt(1_000_000 + i, `/f${i}`, fs.openSync(path.join(dir, `f${i}`), 'w+'), true);
    cache.write(node, 0, data);
    await cache.unref(node); // closed; stays cached while dirty
  }
  const before = cache.getStats().flushes;
  const c0 = process.cpuUsage();
  while (cache.getStats().dirtyFiles > MAX_NODES) await new Promise((r) => setTimeout(r, 20));
  const c = process.cpuUsage(c0);
  const flushes = cache.getStats().flushes - before;
  const cpuMs = (c.user + c.system) / 1000;
  process.stdout.write(
    `${JSON.stringify({
      dist,
      files: N,
      flushes,
      cpuMs: Math.round(cpuMs),
      usPerWriteBack: Math.round((cpuMs * 1000) / flushes),
      load: os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(' '),
    })}\n`,
  );
} finally {
  await cache.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
}
