#!/usr/bin/env node
// Outside file-server workloads, as packaged by Debian (installed by scripts/setup.sh): dbench
// (a CIFS file server's load: NTCreateX, Find, Rename, Unlink, LockX, ReadX/WriteX, Flush; its
// throughput) and fs_mark (small files created and written; files per second), in the bare
// directory, through bindfs and through twinfs with a mirror, interleaved per rep. Ratios are
// to bindfs. After the twinfs runs: flush, `verify --content` and the broken pairs. Exit 1 when a
// workload reports an error on twinfs or the mirror differs.
//
//   node bench/outside.mjs --reps 3 --seconds 20
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  checkMirror,
  controlClient,
  installCleanup,
  log,
  mkdirs,
  parseArgs,
  run,
  startBindfs,
  startMirroredTwinfs,
} from './lib.mjs';

const opts = parseArgs(
  {
    reps: { default: 3, help: 'repetitions (median reported)' },
    seconds: { default: 20, help: 'dbench run time per rep' },
    clients: { default: 4, help: 'dbench clients' },
    files: { default: 2000, help: 'fs_mark files per thread per rep' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'time-limit': { default: 3600, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/outside.mjs [options]',
);
installCleanup({ timeLimitSec: opts['time-limit'] });

async function dbench(dir) {
  const r = await run('dbench', ['-D', dir, '-t', String(opts.seconds), String(opts.clients)], {
    check: false,
    timeoutMs: (Number(opts.seconds) + 120) * 1000,
  });
  const out = `${r.stdout}\n${r.stderr}`;
  const mbs = Number(/Throughput ([\d.]+) MB\/sec/.exec(out)?.[1] ?? Number.NaN);
  const errors = out.split('\n').filter((l) => /ERROR|failed/i.test(l)).length + (r.code === 0 ? 0 : 1);
  await run('rm', ['-rf', path.join(dir, 'clients')], { check: false, timeoutMs: 120_000 });
  return { value: mbs, errors };
}

async function fsmark(dir) {
  const d = path.join(dir, 'fsm');
  const r = await run(
    'fs_mark',
    // -l: its log (fs_log.txt in the working directory otherwise) beside the targets, not in them.
    [
      '-d',
      d,
      '-s',
      '4096',
      '-n',
      String(opts.files),
      '-t',
      '2',
      '-S',
      '0',
      '-L',
      '1',
      '-l',
      path.join(base, 'fs_log.txt'),
    ],
    {
      check: false,
      timeoutMs: 600_000,
    },
  );
  const line = r.stdout.split('\n').find((l) => /^\s+\d+\s+\d+\s+\d+\s+[\d.]+/.test(l));
  const value = Number(line?.trim().split(/\s+/)[3] ?? Number.NaN);
  await run('rm', ['-rf', d], { check: false, timeoutMs: 120_000 });
  return { value, errors: r.code === 0 && line ? 0 : 1 };
}

const base = fs.mkdtempSync(path.join(opts.dir, 'twinfs-outside-'));
const d = mkdirs(base, 'bare', 'bsrc', 'bmnt', 'primary', 'mnt', 'mirror', 'state');
const bindfs = await startBindfs(d.bsrc, d.bmnt);
const srv = await startMirroredTwinfs(d);
const targets = { bare: d.bare, bindfs: d.bmnt, 'twinfs + mirror': d.mnt };
const results = {};
for (let rep = 0; rep < opts.reps; rep++) {
  for (const [name, dir] of Object.entries(targets)) {
    for (const [w, fn] of [
      ['dbench MB/s', dbench],
      ['fs_mark files/s', fsmark],
    ]) {
      const r = await fn(dir);
      (results[w] ??= {})[name] ??= [];
      results[w][name].push(r);
      log(`rep ${rep + 1} ${name} ${w}: ${r.value}${r.errors ? ` (${r.errors} error(s))` : ''}`);
    }
  }
}
const c = await controlClient(srv.url, srv.token);
const { differences, broken } = await checkMirror(c);
c.close();
await srv.stop();
await bindfs.stop();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
let bad = differences.length + broken.length;
console.log('| workload | bare | bindfs | twinfs + mirror | twinfs / bindfs |');
console.log('|---|---|---|---|---|');
for (const [w, per] of Object.entries(results)) {
  const m = Object.fromEntries(Object.entries(per).map(([k, rs]) => [k, median(rs.map((r) => r.value))]));
  bad += per['twinfs + mirror'].reduce((n, r) => n + r.errors, 0);
  console.log(
    `| ${w} | ${m.bare} | ${m.bindfs} | ${m['twinfs + mirror']} | ${(m['twinfs + mirror'] / m.bindfs).toFixed(2)} |`,
  );
}
log(`mirror: ${differences.length} difference(s), ${broken.length} broken pair(s)`);
fs.rmSync(base, { recursive: true, force: true });
process.exit(bad ? 1 : 0);
