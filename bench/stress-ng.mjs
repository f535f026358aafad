#!/usr/bin/env node
// stress-ng's filesystem and I/O stressors, one after the other, in the bare directory and in a
// twinfs mount with a mirror (an outside workload: docs/reliability.md, "Outside-workload
// harness"). Per stressor: its exit code, lines that report a failure, and bogo-ops against the
// bare directory's. After all of them: flush, `verify --content` and the broken pairs of the
// mirror. Exit 1 when a stressor failed on twinfs but not on the bare directory, or the mirror
// differs. Found the non-UTF-8 names (docs/architecture.md, "Names are bytes").
//
//   node bench/stress-ng.mjs --seconds 4
//   node bench/stress-ng.mjs --stressors filename,rename,link --seconds 10 --instances 2
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
  startMirroredTwinfs,
} from './lib.mjs';

const ALL = [
  'access',
  'chattr',
  'chdir',
  'chmod',
  'chown',
  'copy-file',
  'dentry',
  'dir',
  'dirdeep',
  'dirmany',
  'dnotify',
  'dup',
  'fallocate',
  'fcntl',
  'fiemap',
  'file-ioctl',
  'filename',
  'flock',
  'fpunch',
  'fsize',
  'fstat',
  'getdent',
  'handle',
  'hdd',
  'inotify',
  'io',
  'iomix',
  'lease',
  'link',
  'locka',
  'lockf',
  'lockofd',
  'mknod',
  'open',
  'rename',
  'symlink',
  'sync-file',
  'touch',
  'utime',
  'xattr',
  'aio',
  'readahead',
  'revio',
  'seek',
  'mmap',
  'msync',
  'mremap',
];

const opts = parseArgs(
  {
    stressors: { default: ALL.join(','), help: 'comma-separated stress-ng stressors' },
    seconds: { default: 4, help: 'seconds per stressor' },
    instances: { default: 1, help: 'instances per stressor' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'no-bare': { default: false, help: 'skip the bare directory (no ratios)' },
    keep: { default: false, help: 'keep the temporary directories' },
    'time-limit': { default: 3600, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/stress-ng.mjs [options]',
);
installCleanup({ timeLimitSec: opts['time-limit'] });
const stressors = String(opts.stressors).split(',').filter(Boolean);

async function stress(dir, name) {
  const d = path.join(dir, `sng-${name}`);
  fs.mkdirSync(d, { recursive: true });
  const limit = Number(opts.seconds) + 40;
  const r = await run(
    'timeout',
    [
      '-k',
      '5',
      String(limit),
      'stress-ng',
      `--${name}`,
      String(opts.instances),
      '--timeout',
      `${opts.seconds}s`,
      '--temp-path',
      d,
      '--metrics-brief',
    ],
    { cwd: d, check: false, timeoutMs: (limit + 10) * 1000 },
  );
  const out = `${r.stdout}\n${r.stderr}`;
  const ops = Number(new RegExp(`\\] +${name} +(\\d+)`).exec(out)?.[1] ?? Number.NaN);
  const fails = out.split('\n').filter((l) => /fail:|unexpected|corrupt|mismatch/i.test(l));
  const rm = await run('timeout', ['60', 'rm', '-rf', d], { check: false, timeoutMs: 70_000 });
  return { code: r.code, ops, fails, rm: rm.code };
}

const base = fs.mkdtempSync(path.join(opts.dir, 'twinfs-stress-ng-'));
const d = mkdirs(base, 'bare', 'primary', 'mnt', 'mirror', 'state');
const bare = {};
if (!opts['no-bare']) for (const s of stressors) bare[s] = await stress(d.bare, s);
const srv = await startMirroredTwinfs(d);
const c = await controlClient(srv.url, srv.token);
let bad = 0;
console.log('| stressor | bare ops | twinfs ops | ratio | twinfs exit | failure lines | rm -rf |');
console.log('|---|---|---|---|---|---|---|');
for (const s of stressors) {
  const t = await stress(d.mnt, s);
  const b = bare[s];
  const worse =
    (t.code !== 0 && (!b || b.code === 0)) ||
    (t.fails.length > 0 && (!b || b.fails.length === 0)) ||
    t.rm !== 0;
  if (worse) bad++;
  const ratio = b && b.ops > 0 ? (t.ops / b.ops).toFixed(2) : '—';
  console.log(
    `| ${s} | ${b ? b.ops : '—'} | ${t.ops} | ${ratio} | ${t.code} | ${t.fails.length}${t.fails.length ? `: ${t.fails[0].slice(0, 120)}` : ''} | ${t.rm} |${worse ? ' **worse than bare**' : ''}`,
  );
}
const { differences, broken: pairs } = await checkMirror(c);
c.close();
await srv.stop();
const broken = srv.events.filter((e) => e.event === 'broken');
log(
  `mirror: ${differences.length} difference(s), ${pairs.length} broken pair(s), ${broken.length} broken event(s)`,
);
if (differences.length || pairs.length || broken.length) bad++;
if (!opts.keep) fs.rmSync(base, { recursive: true, force: true });
else log(`kept ${base}`);
log(`${stressors.length} stressors, ${bad} problem(s)`);
process.exit(bad ? 1 : 0);
