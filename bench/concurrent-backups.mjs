#!/usr/bin/env node
// Concurrent backups into one repository (issues 13/14 follow-up; docs/reliability.md): a loop of
// rounds, each two `twinfs backup` processes (one server, subtrees /a and /b) started a seeded
// random delay apart, then every snapshot either reported complete restored from the repository
// (`twinfs restore`, compared byte for byte) and `twinfs check --target` run. Not a speed
// benchmark: it counts outcomes.
//
//   --scenario first   both into a new location each round (the race to create the repository)
//   --scenario shared  both into one repository made before the loop, plus a `twinfs prune`
//                      and a `twinfs forget --keep-last 1` started between them (the peers'
//                      shared locks against prune's exclusive one)
//   --target dir       a dir: location under --dir; s3:BUCKET uses the store the AWS_* environment
//                      names (scripts/ceph-rgw.sh start prints it)
//   --old-cli PATH     a second build's CLI (bench/lib.mjs snapshotDist of an older checkout): each
//                      round runs with it too, the same delay, interleaved (old then new)
//
//   node bench/concurrent-backups.mjs --rounds 20 --seed 1
//   node bench/concurrent-backups.mjs --rounds 20 --old-cli /tmp/old/build/dist/cli/twinfs.cjs
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DIST, installCleanup, log, machineNotes, mkdirs, parseArgs, startTwinfs, tempBase } from './lib.mjs';

const opt = parseArgs(
  {
    rounds: { default: 10, help: 'rounds per build' },
    seed: { default: 1, help: 'seed of the delays' },
    'max-delay-ms': { default: 400, help: 'the second backup starts 0 to this many ms after the first' },
    scenario: {
      default: 'first',
      help: 'first (a new location each round) or shared (one repository, prune and forget beside)',
    },
    target: { default: 'dir', help: 'dir, or s3:BUCKET (AWS_* environment)' },
    'old-cli': { default: '', help: 'a second build to run each round with (interleaved)' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'time-limit': { default: 1800, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/concurrent-backups.mjs [options]',
);
installCleanup({ timeLimitSec: opt['time-limit'] });

const KiB = 1024;
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}
function bytes(size, seed) {
  const out = Buffer.allocUnsafe(size);
  const r = rng(seed);
  for (let i = 0; i < size; i += 4) out.writeUInt32LE((r() * 2 ** 32) >>> 0, Math.min(i, size - 4));
  return out;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cli(bin, args, env, timeoutMs = 180_000) {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(t);
      const lines = stdout
        .split('\n')
        .filter((l) => l.startsWith('{') || l.startsWith('['))
        .map((l) => JSON.parse(l));
      resolve({ code, stdout, stderr, last: lines.at(-1) });
    });
  });
}
const codeOf = (r) => /ETWIN_[A-Z_]+/.exec(r.stderr)?.[0] ?? `exit ${r.code}`;

const base = tempBase(opt.dir, 'twinfs-bench-concurrent-');
const d = mkdirs(base, 'primary', 'mnt', 'mirror', 'state', 'scratch');
const tokenFile = path.join(d.state, 'control.token');
const newCli = path.join(DIST, 'cli/twinfs.cjs');
const builds = opt['old-cli']
  ? [
      ['old', opt['old-cli']],
      ['new', newCli],
    ]
  : [['new', newCli]];
const env = {
  ...process.env,
  TWINFS_PASSWORD: 'concurrent backups bench',
  TWINFS_CACHE_DIR: path.join(base, 'cache'),
};

log(`machine: ${JSON.stringify(machineNotes())}`);
const srv = await startTwinfs({
  primary: d.primary,
  mount: d.mnt,
  mirror: d.mirror,
  stateDir: d.state,
  control: '127.0.0.1:0',
  tokenFile,
  extra: ['--token-file', tokenFile],
});
const files = new Map();
for (const [sub, seed] of [
  ['a', 11],
  ['b', 29],
]) {
  files.set(`/${sub}/big.bin`, bytes(1536 * KiB + seed, seed));
  files.set(`/${sub}/small.txt`, Buffer.from(`${sub} small ${seed}\n`));
  files.set(`/${sub}/d/mid.bin`, bytes(96 * KiB + seed, seed + 1));
}
for (const [p, data] of files) {
  fs.mkdirSync(path.dirname(path.join(d.mnt, p)), { recursive: true });
  fs.writeFileSync(path.join(d.mnt, p), data);
}

const location = (tag) =>
  opt.target === 'dir'
    ? `dir:${d.scratch}/repo-${tag}`
    : `${opt.target}/twinfs-bench-race/${tag}-${randomUUID()}`;
const backup = (bin, sub, spec, tag) =>
  cli(
    bin,
    [
      'backup',
      '--server',
      srv.url,
      '--token-file',
      tokenFile,
      '--subtree',
      `/${sub}`,
      '--target',
      spec,
      '--catalog',
      path.join(d.scratch, `cat-${tag}-${sub}`),
      '--json',
    ],
    env,
  );

/** Restores a reported snapshot and compares; answers 'ok' or what was wrong. */
async function restored(bin, spec, sub, snapshotId) {
  const to = path.join(d.scratch, `restore-${randomUUID()}`);
  const r = await cli(
    bin,
    ['restore', snapshotId, '--target', spec, '--to', to, '--catalog', path.join(to, '.cat'), '--json'],
    env,
  );
  try {
    if (r.code !== 0) return `restore failed: ${codeOf(r)}`;
    for (const [p, data] of files)
      if (p.startsWith(`/${sub}/`) && !fs.readFileSync(path.join(to, p)).equals(data)) return `${p} differs`;
    return 'ok';
  } finally {
    fs.rmSync(to, { recursive: true, force: true });
  }
}

const shared = {};
if (opt.scenario === 'shared')
  for (const [name, bin] of builds) {
    shared[name] = location(`shared-${name}`);
    const init = await cli(bin, ['init', '--target', shared[name], '--encrypt', '--json'], env);
    if (init.code !== 0) throw new Error(`init: ${init.stderr}`);
  }

const tally = Object.fromEntries(
  builds.map(([n]) => [
    n,
    { rounds: 0, bothDone: 0, lostRace: 0, ranAgain: 0, otherFailure: 0, lost: 0, checkFailed: 0, notes: [] },
  ]),
);
const next = rng(opt.seed);
for (let round = 0; round < opt.rounds; round++) {
  const delay = Math.floor(next() * opt['max-delay-ms']);
  for (const [name, bin] of builds) {
    const t = tally[name];
    t.rounds++;
    const tag = `${name}-${round}`;
    const spec = opt.scenario === 'shared' ? shared[name] : location(tag);
    const a = backup(bin, 'a', spec, tag);
    const side = [];
    if (opt.scenario === 'shared') {
      // prune and forget start while the backups run (their exclusive lock against the shared ones).
      await sleep(delay / 2);
      side.push(cli(bin, ['prune', '--target', spec, '--json'], env));
      side.push(
        cli(
          bin,
          [
            'forget',
            '--target',
            spec,
            '--keep-last',
            '1',
            '--catalog',
            path.join(d.scratch, `cat-${tag}-f`),
            '--json',
          ],
          env,
        ),
      );
      await sleep(delay / 2);
    } else await sleep(delay);
    const b = backup(bin, 'b', spec, tag);
    const runs = await Promise.all([a, b]);
    const sideRuns = await Promise.all(side);
    const words = [];
    for (const [i, r] of runs.entries()) {
      const sub = i === 0 ? 'a' : 'b';
      if (r.code !== 0) {
        const c = codeOf(r);
        words.push(`${sub}:${c}`);
        if (c === 'ETWIN_REPO_CREATE_RACE') t.lostRace++;
        else {
          t.otherFailure++;
          t.notes.push(`round ${round} ${sub}: ${r.stderr.trim().split('\n').at(-1)}`);
        }
        continue;
      }
      // A forget beside may have removed a snapshot made complete: that is forget's to do, not a loss.
      const got = await restored(bin, spec, sub, r.last.snapshotId);
      const forgotten = opt.scenario === 'shared' && got === 'restore failed: ETWIN_TARGET_NOT_FOUND';
      // The loser of the race to create the repository runs again into it (src/commands/peer.ts).
      const again = r.stderr.includes('backing up again, into it');
      if (again) t.ranAgain++;
      words.push(`${sub}:${got === 'ok' ? (again ? 'done-again' : 'done') : forgotten ? 'forgotten' : got}`);
      if (got !== 'ok' && !forgotten) {
        t.lost++;
        t.notes.push(`round ${round} ${sub}: reported complete, ${got}`);
      }
    }
    for (const s of sideRuns) words.push(s.code === 0 ? 'side:ok' : `side:${codeOf(s)}`);
    if (runs.every((r) => r.code === 0)) t.bothDone++;
    const check = await cli(bin, ['check', '--target', spec, '--json'], env);
    if (check.code !== 0 && !(check.code === 1 && codeOf(check) === 'ETWIN_REPO_LOCKED')) {
      t.checkFailed++;
      t.notes.push(`round ${round} check: ${check.stderr.trim().split('\n').at(-1)}`);
    }
    log(
      `${name} round ${round} (${delay} ms apart): ${words.join(' ')}${check.code === 0 ? '' : ` check:${codeOf(check)}`}`,
    );
  }
}
await srv.stop();
process.stdout.write(
  `\nscenario ${opt.scenario}, target ${opt.target}, seed ${opt.seed}, ${opt.rounds} rounds, load ${os
    .loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')}\n`,
);
for (const [name, t] of Object.entries(tally)) {
  process.stdout.write(
    `${name}: rounds ${t.rounds}, both complete ${t.bothDone}, lost the create race (coded) ${t.lostRace}, lost it and ran again ${t.ranAgain}, other failures ${t.otherFailure}, reported complete but not restorable ${t.lost}, check failed ${t.checkFailed}\n`,
  );
  for (const n of t.notes.slice(0, 10)) process.stdout.write(`  ${n}\n`);
}
