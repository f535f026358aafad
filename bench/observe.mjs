#!/usr/bin/env node
// What watching a server costs (docs/observability.md): one twinfs server with a mirror and
// --http. Alternating runs of the same write job through the mount (a child process writing
// --mib MiB in 1 MiB writes into --files files, then fsync):
//   quiet     nobody watches
//   watched   a status-page stream (/events) open, and /metrics and /api/status each fetched
//             every --scrape-ms (100 ms: 150 times Prometheus' usual 15 s)
// Reported: MiB/s of each run, the watched/quiet ratio of the medians, and the latency of the
// scrapes (p50, p99, max) with the data they returned.
//
//   nice node bench/observe.mjs                   (~1 minute)
//   nice node bench/observe.mjs --rounds 2 --mib 64   (smoke)
import * as path from 'node:path';
import { installCleanup, log, mkdirs, parseArgs, run, sleep, startTwinfs, tempBase } from './lib.mjs';

const o = parseArgs(
  {
    rounds: { default: 4, help: 'quiet/watched pairs' },
    mib: { default: 256, help: 'MiB written per run' },
    files: { default: 16, help: 'files the MiB are spread over' },
    'scrape-ms': { default: 100, help: 'period of the /metrics and /api/status requests while watched' },
  },
  'node bench/observe.mjs [options]',
);
installCleanup({ timeLimitSec: 900 });

const base = tempBase();
const d = mkdirs(base, 'primary', 'mnt', 'mirror', 'state');
const srv = await startTwinfs({
  primary: d.primary,
  mount: d.mnt,
  mirror: d.mirror,
  stateDir: d.state,
  extra: ['--http', '127.0.0.1:0', '--log-level', 'warn'],
});
const http = srv.mounted.http.url;
const auth = { authorization: `Bearer ${srv.token}` };
await srv.waitEvent((e) => e.event === 'state' && e.state === 'PAIR' && e.paths === 'volume', 60_000, 'PAIR');

const perFile = Math.max(1, Math.round(o.mib / o.files));
async function writeJob(round) {
  const dir = path.join(d.mnt, `r${round}`);
  const script = `set -e; mkdir -p '${dir}'; for i in $(seq 1 ${o.files}); do dd if=/dev/zero of='${dir}'/f$i bs=1M count=${perFile} status=none; done; sync -f '${dir}'/f1`;
  const t0 = performance.now();
  await run('sh', ['-c', script], { timeoutMs: 600_000 });
  const s = (performance.now() - t0) / 1000;
  await run('rm', ['-rf', dir]);
  return (perFile * o.files) / s;
}

function watch() {
  const lat = { metrics: [], status: [] };
  const ctrl = new AbortController();
  let events = 0;
  const stream = fetch(`${http}events`, { headers: auth, signal: ctrl.signal })
    .then(async (res) => {
      const text = new TextDecoder();
      for await (const chunk of res.body)
        events += text.decode(chunk, { stream: true }).split('\n\n').length - 1;
    })
    .catch(() => undefined);
  let bytes = 0;
  const timer = setInterval(async () => {
    for (const [k, p] of [
      ['metrics', 'metrics'],
      ['status', 'api/status'],
    ]) {
      const t0 = performance.now();
      const r = await fetch(`${http}${p}`, { headers: auth, signal: ctrl.signal }).catch(() => null);
      if (!r) continue;
      bytes += (await r.text()).length;
      lat[k].push(performance.now() - t0);
    }
  }, o['scrape-ms']);
  return async () => {
    clearInterval(timer);
    ctrl.abort();
    await stream;
    return { lat, events, bytes };
  };
}

const q = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN;
};
const median = (xs) => q(xs, 0.5);

const quiet = [];
const watched = [];
const lat = { metrics: [], status: [] };
let events = 0;
await writeJob('warm');
for (let r = 0; r < o.rounds; r++) {
  quiet.push(await writeJob(`q${r}`));
  const stop = watch();
  await sleep(200);
  watched.push(await writeJob(`w${r}`));
  const w = await stop();
  lat.metrics.push(...w.lat.metrics);
  lat.status.push(...w.lat.status);
  events += w.events;
  log(`round ${r + 1}: quiet ${quiet.at(-1).toFixed(1)} MiB/s, watched ${watched.at(-1).toFixed(1)} MiB/s`);
}
await srv.stop();

const f = (x) => x.toFixed(1);
const result = {
  bench: 'observe',
  mib: perFile * o.files,
  rounds: o.rounds,
  quietMiBps: quiet.map((x) => +f(x)),
  watchedMiBps: watched.map((x) => +f(x)),
  ratio: +(median(watched) / median(quiet)).toFixed(3),
  scrapes: {
    metrics: {
      n: lat.metrics.length,
      p50: +f(q(lat.metrics, 0.5)),
      p99: +f(q(lat.metrics, 0.99)),
      max: +f(Math.max(...lat.metrics)),
    },
    status: {
      n: lat.status.length,
      p50: +f(q(lat.status, 0.5)),
      p99: +f(q(lat.status, 0.99)),
      max: +f(Math.max(...lat.status)),
    },
  },
  sseMessages: events,
};
console.log(JSON.stringify(result));
