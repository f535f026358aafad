#!/usr/bin/env node
// twinfs SMB benchmark (issue 7), one run: sequential write and read of one large file with
// smbclient (SMB3 on loopback) against
//   bare     a Samba share of a plain directory on the same disk (smbd run by SmbService from
//            dist/smb, so both shares get exactly the same generated smb.conf), and
//   twinfs   the share of `twinfs serve --smb` (smbd in front of the FUSE mount, write-back
//            cache on, no mirror), and, unless --no-mirror,
//   +mirror  the same with --mirror on the same disk (every byte is written twice).
// Write: `put` of a local source file that sits in the page cache (read once beforehand), into
// a deleted target; the time is smbclient's wall time (session setup included, ~0.05 s), which
// is what the client waits for. Neither side fsyncs (smbclient sends no flush); twinfs's cache
// holds at most 64 MiB dirty at the end, the bare side's page cache far more.
// Read: drop the page cache (and twinfs's nothing: it caches no clean data), then `get` to
// /dev/null. Repetitions alternate the shares; medians are reported, and the ratio
// twinfs ÷ bare (goal ≥ 0.8×).
//
//   node bench/smb.mjs                     1 GiB, 3 repetitions (~3 minutes)
//   node bench/smb.mjs --size-mb 128 --reps 1 --no-mirror      (smoke)
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  dropCaches,
  fmt,
  installCleanup,
  loadavg,
  log,
  MiB,
  machineNotes,
  median,
  mkdirs,
  parseArgs,
  ROOT,
  ratio,
  run,
  startTwinfs,
  table,
  tempBase,
  waitForQuiet,
} from './lib.mjs';

const opts = parseArgs(
  {
    'size-mb': { default: 1024, help: 'file size, MiB' },
    reps: { default: 3, help: 'repetitions of each measurement' },
    mirror: { default: true, help: 'also measure twinfs with a mirror (--no-mirror: skip)' },
    dir: { default: '/tmp', help: 'where the directories go (one disk for all)' },
    json: { default: false, help: 'print the result as one JSON line too' },
    'quiet-load': { default: 1.5, help: 'wait (up to 3 min) for the 1-minute load to drop below this first' },
  },
  'node bench/smb.mjs [options]: smbclient put/get of a large file, bare Samba share vs twinfs mount',
  process.argv.slice(2).map((a) => (a === '--no-mirror' ? '--mirror=false' : a)),
);
installCleanup({ timeLimitSec: 1800 });

const USER = 'twsmb-bench';
const PASSWORD = 'bench-pw';
const size = opts['size-mb'] * MiB;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function smb(port, cmds) {
  const r = await run(
    'smbclient',
    [`//127.0.0.1/twinfs`, '-p', String(port), '-m', 'SMB3', '-U', USER, '-c', cmds],
    { env: { ...process.env, PASSWD: PASSWORD }, check: false, timeoutMs: 900_000 },
  );
  if (r.code !== 0 || /NT_STATUS_/.test(r.stdout + r.stderr))
    throw new Error(`smbclient ${cmds}: ${r.code} ${r.stdout}${r.stderr}`);
  return r;
}

const { SmbService } = await import(path.join(ROOT, 'dist/smb/index.js'));

const base = tempBase(opts.dir, 'twinfs-bench-smb-');
const d = mkdirs(base, 'src', 'bare', 'bareState', 'p1', 'm1', 's1', 'p2', 'm2', 'mir2', 's2');
const source = path.join(d.src, 'source.bin');
log(`writing a ${opts['size-mb']} MiB source file`);
await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', `count=${opts['size-mb']}`, 'status=none']);
await run('sh', ['-c', 'cat "$0" > /dev/null', source]); // into the page cache

const shares = [];
// bare: the same generated smb.conf, over a plain directory.
{
  const port = await freePort();
  const svc = new SmbService({
    settings: { listen: String(port), users: [{ name: USER, password: PASSWORD }] },
    sharePath: d.bare,
    stateDir: path.join(d.bareState, 'smb'),
  });
  const st = await svc.start();
  if (!st.running) throw new Error(`bare smbd did not start: ${JSON.stringify(st.lastError)}`);
  shares.push({ name: 'bare', port, dir: d.bare, stop: () => svc.dispose() });
}
async function twinfsShare(name, primary, mount, stateDir, mirror) {
  const port = await freePort();
  const srv = await startTwinfs({
    primary,
    mount,
    stateDir,
    mirror,
    extra: ['--smb', String(port), '--smb-user', `${USER}:${PASSWORD}`],
  });
  const e = await srv.waitEvent(
    (x) => x.event === 'smb-started' || x.event === 'smb-failed',
    60_000,
    'smb event',
  );
  if (e.event !== 'smb-started') throw new Error(`${name}: ${e.code}: ${e.message}`);
  if (mirror) await srv.waitEvent((x) => x.event === 'state' && x.state === 'PAIR', 120_000, 'mirror PAIR');
  shares.push({ name, port, dir: primary, stop: () => srv.stop() });
}
await twinfsShare('twinfs', d.p1, d.m1, d.s1);
if (opts.mirror) await twinfsShare('twinfs+mirror', d.p2, d.m2, d.s2, d.mir2);

await waitForQuiet(opts['quiet-load'], 180, log);
const loadBefore = loadavg();
const results = Object.fromEntries(shares.map((s) => [s.name, { write: [], read: [] }]));
for (let rep = 1; rep <= opts.reps; rep++) {
  for (const s of shares) {
    fs.rmSync(path.join(s.dir, 'big.bin'), { force: true });
    await run('sync');
    const w = await smb(s.port, `put ${source} big.bin`);
    const mbs = opts['size-mb'] / (w.ms / 1000);
    results[s.name].write.push(mbs);
    log(`rep ${rep} ${s.name.padEnd(14)} write ${fmt(mbs)} MiB/s`);
  }
  for (const s of shares) {
    // Everything written back and out of the page cache: reads come from the disk.
    await run('sync');
    await new Promise((r) => setTimeout(r, 500));
    dropCaches();
    const g = await smb(s.port, 'get big.bin /dev/null');
    const mbs = opts['size-mb'] / (g.ms / 1000);
    results[s.name].read.push(mbs);
    log(`rep ${rep} ${s.name.padEnd(14)} read  ${fmt(mbs)} MiB/s`);
  }
}
for (const s of shares) {
  const got = fs.statSync(path.join(s.dir, 'big.bin')).size;
  if (got !== size) throw new Error(`${s.name}: big.bin has ${got} bytes, not ${size}`);
}
for (const s of shares.reverse()) await s.stop();
// The Unix account twinfs created for the SMB user (only if it created it).
const pw = await run('getent', ['passwd', USER], { check: false });
if (pw.stdout.split(':')[4] === 'twinfs SMB user') await run('userdel', [USER], { check: false });

const bare = results.bare;
const rows = Object.entries(results).map(([name, r]) => [
  name,
  fmt(median(r.write)),
  name === 'bare' ? '1.00×' : ratio(median(r.write), median(bare.write)),
  fmt(median(r.read)),
  name === 'bare' ? '1.00×' : ratio(median(r.read), median(bare.read)),
]);
const notes = machineNotes();
process.stdout.write(
  `\nSMB sequential ${opts['size-mb']} MiB, smbclient SMB3 on loopback, median of ${opts.reps} (${notes.date}, ${notes.cpus}, ${notes.git}; load ${loadBefore} before, ${notes.load} after)\n\n`,
);
table(['share', 'write MiB/s', 'write vs bare', 'read MiB/s', 'read vs bare'], rows);
if (opts.json)
  process.stdout.write(`${JSON.stringify({ sizeMb: opts['size-mb'], reps: opts.reps, results, notes })}\n`);
