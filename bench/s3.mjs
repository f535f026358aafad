#!/usr/bin/env node
// Object store benchmark (issue 14): PUT and GET rates of small and large objects on Ceph's
// RADOS Gateway (scripts/ceph-rgw.sh: one mon, one memstore OSD, radosgw beast with
// tcp_nodelay), on s3rver (npm, in a child process, storing on the local disk) and on the local
// disk itself (one file per object, fsync'd), in the same run, rotated per repetition.
//
//   small    --small-count (2000) objects of --small-kib (4 KiB): PUT all with --concurrency
//            (16) requests in flight, then GET all; objects/s. Then --serial (200) PUTs one
//            at a time: the median latency of one request.
//   large    --large-count (6) objects of --large-mib (64 MiB) one after the other, uploaded
//            the way the s3 target uploads a file (@aws-sdk/lib-storage: 8 MiB parts, 4 in
//            flight) and read back as one streamed GET; MiB/s.
//
// Every client uses the s3 target's own createS3Client (plugins/s3/s3-client.js). The gateway's
// OSD keeps data in memory (memstore): the RGW numbers are the gateway and RADOS protocol
// path on this machine, not a disk's speed. The local-disk GETs come from the page cache.
//
//   node bench/s3.mjs                          (~2 minutes)
//   node bench/s3.mjs --reps 1 --small-count 300 --large-count 2 --large-mib 16   (smoke)
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createS3Client } from '../plugins/s3/s3-client.js';
import {
  cpuSeconds,
  fmt,
  installCleanup,
  log,
  MiB,
  machineNotes,
  median,
  parseArgs,
  ROOT,
  ratio,
  table,
  tempBase,
  trackProc,
  waitForQuiet,
} from './lib.mjs';

const opts = parseArgs(
  {
    dir: { default: '/tmp', help: 'parent of the temporary directories (local disk, s3rver)' },
    reps: { default: 2, help: 'repetitions, store order rotated' },
    'small-count': { default: 2000, help: 'small objects per repetition' },
    'small-kib': { default: 4, help: 'small object size, KiB' },
    concurrency: { default: 16, help: 'small requests in flight' },
    serial: { default: 200, help: 'one-at-a-time PUTs for the latency figure' },
    'large-count': { default: 6, help: 'large objects per repetition' },
    'large-mib': { default: 64, help: 'large object size, MiB' },
    stores: { default: 'disk,s3rver,rgw', help: 'which stores, comma-separated' },
    'max-load': { default: 1.5, help: 'wait (up to --wait-quiet s) for the 1-min load to drop below this' },
    'wait-quiet': { default: 60, help: 'longest wait for a quiet machine, s' },
    'time-limit': { default: 900, help: 'abort (and clean up) after this many seconds' },
    json: { default: '', help: 'also write all results as JSON to this file' },
  },
  'node bench/s3.mjs [options]: PUT/GET rates on RGW, s3rver and the local disk',
);

installCleanup({ timeLimitSec: opts['time-limit'] });
const notes = machineNotes();
notes.loadStart = await waitForQuiet(opts['max-load'], opts['wait-quiet'], log);
log(`machine: ${JSON.stringify(notes)}`);
const base = tempBase(opts.dir, 'twinfs-bench-s3-');
const BUCKET = 'bench';
const wanted = new Set(opts.stores.split(','));

// ---- the stores -------------------------------------------------------------------------------

/** @typedef {{ name: string, put(k: string, b: Buffer): Promise<void>, get(k: string): Promise<number>, putLarge(k: string, s: Readable): Promise<void>, getLarge(k: string): Promise<number>, close(): Promise<void> }} Store */

/** @returns {Store} */
function s3Store(name, endpoint, credentials, close, pids = () => []) {
  const client = createS3Client({ endpoint, ...credentials, maxAttempts: 3 });
  const drain = async (body) => {
    let n = 0;
    for await (const c of body) n += c.length;
    return n;
  };
  return {
    name,
    client,
    pids,
    async put(k, b) {
      await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: k, Body: b }));
    },
    async get(k) {
      return drain((await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: k }))).Body);
    },
    async putLarge(k, s) {
      await new Upload({
        client,
        params: { Bucket: BUCKET, Key: k, Body: s },
        partSize: 8 * MiB,
        queueSize: 4,
      }).done();
    },
    getLarge(k) {
      return this.get(k);
    },
    async close() {
      client.destroy();
      await close();
    },
  };
}

/** @returns {Store} */
function diskStore(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const file = (k) => path.join(dir, k.replaceAll('/', '_'));
  return {
    name: 'local disk',
    pids: () => [],
    async put(k, b) {
      const fh = await fs.promises.open(file(k), 'w');
      try {
        await fh.writeFile(b);
        await fh.sync();
      } finally {
        await fh.close();
      }
    },
    async get(k) {
      return (await fs.promises.readFile(file(k))).length;
    },
    async putLarge(k, s) {
      const fh = await fs.promises.open(file(k), 'w');
      try {
        for await (const c of s) await fh.write(c);
        await fh.sync();
      } finally {
        await fh.close();
      }
    },
    async getLarge(k) {
      let n = 0;
      for await (const c of fs.createReadStream(file(k), { highWaterMark: MiB })) n += c.length;
      return n;
    },
    async close() {
      await fs.promises.rm(dir, { recursive: true, force: true });
    },
  };
}

async function startS3rver() {
  const dir = path.join(base, 's3rver');
  fs.mkdirSync(dir);
  const code = `
    const S3rver = require('s3rver');
    new S3rver({ address: '127.0.0.1', port: 0, directory: ${JSON.stringify(dir)}, silent: true,
      configureBuckets: [{ name: ${JSON.stringify(BUCKET)}, configs: [] }] })
      .run().then((a) => console.log(a.port));`;
  const p = spawn(process.execPath, ['-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  trackProc(p);
  const port = await new Promise((resolve, reject) => {
    p.stdout.once('data', (d) => resolve(Number(String(d).trim())));
    p.once('exit', (c) => reject(new Error(`s3rver exited (${c})`)));
  });
  return s3Store(
    's3rver',
    `http://127.0.0.1:${port}`,
    { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    async () => {
      p.kill('SIGTERM');
    },
    () => [p.pid],
  );
}

let rgwDir = '';
process.on('exit', () => {
  if (rgwDir)
    spawnSync('bash', [path.join(ROOT, 'scripts/ceph-rgw.sh'), 'stop', '--dir', rgwDir], { stdio: 'ignore' });
});
async function startRgw() {
  const memstore = Math.ceil((opts['large-count'] * opts['large-mib'] * 1.5 + 512) / 256) * 256;
  const t0 = Date.now();
  const r = spawnSync(
    'bash',
    [
      path.join(ROOT, 'scripts/ceph-rgw.sh'),
      'start',
      '--memstore-mib',
      String(memstore),
      '--watch',
      String(process.pid),
    ],
    {
      encoding: 'utf8',
      timeout: 120_000,
    },
  );
  if (r.status !== 0) throw new Error(`scripts/ceph-rgw.sh start failed: ${r.stderr}`);
  const env = Object.fromEntries(
    [...r.stdout.matchAll(/^export ([A-Z_0-9]+)=(.*)$/gm)].map((m) => [m[1], m[2]]),
  );
  rgwDir = env.CEPH_RGW_DIR;
  notes.rgwStartSec = (Date.now() - t0) / 1000;
  log(`RGW up in ${notes.rgwStartSec} s at ${env.AWS_ENDPOINT_URL}`);
  const store = s3Store(
    'RGW (memstore)',
    env.AWS_ENDPOINT_URL,
    { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
    async () => undefined,
    rgwPids,
  );
  await store.client.send(new CreateBucketCommand({ Bucket: BUCKET }));
  return store;
}

/** The cluster's daemons (from their pid files). */
function rgwPids() {
  return ['mon.a', 'osd.0', 'client.rgw.0'].map((n) =>
    Number(fs.readFileSync(path.join(rgwDir, 'run', `${n}.pid`), 'utf8').trim()),
  );
}

/** RSS of the cluster's daemons, MiB (from their pid files). */
function rgwRss() {
  const out = {};
  for (const name of ['mon.a', 'osd.0', 'client.rgw.0']) {
    try {
      const pid = fs.readFileSync(path.join(rgwDir, 'run', `${name}.pid`), 'utf8').trim();
      const kb = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
      out[name] = Math.round(Number(kb) / 1024);
    } catch {
      out[name] = null;
    }
  }
  return out;
}

// ---- the measurements ---------------------------------------------------------------------------

async function pool(n, conc, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(conc, n) }, async () => {
      while (next < n) await fn(next++);
    }),
  );
}

const small = randomBytes(opts['small-kib'] * 1024);
const largeChunk = randomBytes(MiB);
const largeStream = () =>
  Readable.from(
    (function* () {
      for (let i = 0; i < opts['large-mib']; i++) yield largeChunk;
    })(),
  );

async function measure(store, rep) {
  const r = {};
  const pre = `r${rep}`;
  // CPU seconds of the server's processes (none for the local disk): what a request costs the
  // store whatever else runs on the machine.
  const cpu = () => store.pids().reduce((a, pid) => a + cpuSeconds(pid), 0);
  let c = cpu();
  const cpuSince = (per) => {
    const now = cpu();
    const d = now - c;
    c = now;
    return store.pids().length ? (d * 1000) / per : Number.NaN;
  };
  let t = performance.now();
  await pool(opts['small-count'], opts.concurrency, (i) => store.put(`${pre}/s/${i}`, small));
  r.smallPut = opts['small-count'] / ((performance.now() - t) / 1000);
  r.smallPutCpuMs = cpuSince(opts['small-count']);
  t = performance.now();
  let bytes = 0;
  await pool(opts['small-count'], opts.concurrency, async (i) => {
    const n = await store.get(`${pre}/s/${i}`);
    bytes += n;
  });
  r.smallGet = opts['small-count'] / ((performance.now() - t) / 1000);
  r.smallGetCpuMs = cpuSince(opts['small-count']);
  if (bytes !== opts['small-count'] * small.length)
    throw new Error(`${store.name}: small GETs returned ${bytes} bytes`);
  const lat = [];
  for (let i = 0; i < opts.serial; i++) {
    const s = performance.now();
    await store.put(`${pre}/l/${i}`, small);
    lat.push(performance.now() - s);
  }
  r.serialPutMs = median(lat);
  cpuSince(1);
  t = performance.now();
  for (let i = 0; i < opts['large-count']; i++) await store.putLarge(`${pre}/L/${i}`, largeStream());
  r.largePut = (opts['large-count'] * opts['large-mib']) / ((performance.now() - t) / 1000);
  r.largePutCpuMs = cpuSince(opts['large-count'] * opts['large-mib']);
  t = performance.now();
  for (let i = 0; i < opts['large-count']; i++) {
    const n = await store.getLarge(`${pre}/L/${i}`);
    if (n !== opts['large-mib'] * MiB) throw new Error(`${store.name}: large GET returned ${n} bytes`);
  }
  r.largeGet = (opts['large-count'] * opts['large-mib']) / ((performance.now() - t) / 1000);
  r.largeGetCpuMs = cpuSince(opts['large-count'] * opts['large-mib']);
  return r;
}

const stores = [];
if (wanted.has('disk')) stores.push(diskStore(path.join(base, 'disk')));
if (wanted.has('s3rver')) stores.push(await startS3rver());
if (wanted.has('rgw')) stores.push(await startRgw());
const results = Object.fromEntries(stores.map((s) => [s.name, []]));
for (let rep = 0; rep < opts.reps; rep++) {
  for (let j = 0; j < stores.length; j++) {
    const s = stores[(j + rep) % stores.length];
    log(`rep ${rep + 1}/${opts.reps}: ${s.name}`);
    results[s.name].push(await measure(s, rep));
  }
}
if (rgwDir) notes.rgwRssMiB = rgwRss();
for (const s of stores) await s.close();

const med = (name, k) => median(results[name].map((r) => r[k]));
const baseline = stores[0].name;
const rows = stores.map((s) => [
  s.name,
  fmt(med(s.name, 'smallPut'), 0),
  fmt(med(s.name, 'smallGet'), 0),
  fmt(med(s.name, 'serialPutMs'), 2),
  fmt(med(s.name, 'largePut'), 0),
  fmt(med(s.name, 'largeGet'), 0),
  `${ratio(med(s.name, 'smallPut'), med(baseline, 'smallPut'))} / ${ratio(med(s.name, 'largePut'), med(baseline, 'largePut'))}`,
]);
const cpuRows = stores
  .filter((s) => s.pids().length)
  .map((s) => [
    s.name,
    fmt(med(s.name, 'smallPutCpuMs'), 2),
    fmt(med(s.name, 'smallGetCpuMs'), 2),
    fmt(med(s.name, 'largePutCpuMs'), 1),
    fmt(med(s.name, 'largeGetCpuMs'), 1),
  ]);
console.log(
  `\nsmall: ${opts['small-count']} × ${opts['small-kib']} KiB, ${opts.concurrency} in flight; serial: ${opts.serial} PUTs one at a time; ` +
    `large: ${opts['large-count']} × ${opts['large-mib']} MiB (8 MiB parts, 4 in flight); median of ${opts.reps} rotated repetitions\n`,
);
table(
  [
    'store',
    'small PUT/s',
    'small GET/s',
    'one PUT, ms',
    'large PUT MiB/s',
    'large GET MiB/s',
    `PUT vs ${baseline} (small / large)`,
  ],
  rows,
);
console.log('\nserver CPU (user+sys of its processes: for RGW the mon, the OSD and radosgw):\n');
table(
  ['store', 'ms per small PUT', 'ms per small GET', 'ms per large MiB PUT', 'ms per large MiB GET'],
  cpuRows,
);
console.log(`\n${JSON.stringify(notes)}`);
if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ opts, notes, results }, null, 2));
