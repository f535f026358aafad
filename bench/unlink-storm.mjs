#!/usr/bin/env node
// test/fusefs/native-unlink-cached.test.ts's storm, run again and again (the broken-pair hunt of
// 2026-12-06, docs/reliability.md "The primary ahead of the queue: a heal's copy of a name
// unlinked in libfuse's thread"). Per run: a fresh libfuse3 server with a mirror
// (--writeback-ms 50), the test's first step (40 files made, written and unlinked in c/), then
// --workers python processes creating, writing, renaming and unlinking six shared names in s/
// (--rounds each) while volume prepares (incremental since the first) and their releases loop;
// then a flush, `verify --content` and the broken pairs. --cpu N runs stress-ng's CPU stressor
// with N workers beside it (the failure needed a loaded machine: 1 in 6–10 runs before the fix).
// Prints one line per run; exit 1 when any run broke a pair or left a difference.
//
//   node bench/unlink-storm.mjs --runs 16 --cpu 2
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  checkMirror,
  controlClient,
  installCleanup,
  log,
  mkdirs,
  parseArgs,
  ROOT,
  run,
  sleep,
  startMirroredTwinfs,
  trackProc,
} from './lib.mjs';

const opts = parseArgs(
  {
    runs: { default: 10, help: 'storms, each on a fresh server' },
    workers: { default: 4, help: 'storm processes' },
    rounds: { default: 3000, help: 'operations per storm process' },
    cpu: { default: 0, help: 'stress-ng --cpu workers beside the runs (0: none)' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    keep: { default: false, help: "keep a failed run's files (its server log included)" },
    'time-limit': { default: 3600, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/unlink-storm.mjs [options]',
);
installCleanup({ timeLimitSec: opts['time-limit'] });
const TEST = fs.readFileSync(path.join(ROOT, 'test/fusefs/native-unlink-cached.test.ts'), 'utf8');
// The test's storm script, as its template literal holds it (\\n there is \n in Python).
const STORM = TEST.slice(
  TEST.indexOf('const STORM = `') + 15,
  TEST.indexOf('`;', TEST.indexOf('const STORM = `')),
).replaceAll('\\\\n', '\\n');
const FIRST =
  "import os\nos.mkdir('c')\nfor i in range(40):\n  p = 'c/f%d' % i\n  os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))\n" +
  "  fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b'c' * 5000); os.close(fd)\n  os.unlink(p)\n";

let load;
if (opts.cpu > 0) {
  load = spawn('stress-ng', ['--cpu', String(opts.cpu), '--timeout', `${opts['time-limit']}s`], {
    stdio: 'ignore',
  });
  trackProc(load);
}
let bad = 0;
for (let i = 0; i < opts.runs; i++) {
  const base = fs.mkdtempSync(path.join(opts.dir, 'twinfs-storm-'));
  const d = mkdirs(base, 'primary', 'mnt', 'mirror', 'state');
  const srv = await startMirroredTwinfs(d, { writebackMs: 50, extra: ['--fuse', '3'] });
  const c = await controlClient(srv.url, srv.token);
  await run('python3', ['-c', FIRST], { cwd: d.mnt });
  await c.request('flush');
  await sleep(300);
  const pc = await c.prepare({ subtree: '/c' });
  await c.release(pc.backupId);
  const g0 = await c.prepare({ volume: true });
  await c.release(g0.backupId);
  let running = true;
  const storm = Promise.all(
    Array.from({ length: opts.workers }, (_, w) =>
      run('python3', ['-c', STORM, String(w), String(opts.rounds), '1'], { cwd: d.mnt, timeoutMs: 300_000 }),
    ),
  ).finally(() => {
    running = false;
  });
  let prepares = 0;
  let failed = null;
  while (running && !failed) {
    try {
      const p = await c.prepare({ volume: true }, { since: g0.generation });
      prepares++;
      await c.release(p.backupId);
    } catch (err) {
      failed = String(err);
    }
    await sleep(30);
  }
  await storm.catch((err) => {
    failed ??= `storm: ${String(err).slice(0, 300)}`;
  });
  const { differences, broken } = await checkMirror(c);
  if (!failed && (differences.length > 0 || broken.length > 0))
    failed = `verify: ${differences.length} difference(s), broken ${JSON.stringify(broken)}`;
  c.close();
  const brokenLines = srv.events.filter((e) => e.event === 'broken').map((e) => `${e.path}: ${e.error}`);
  await srv.stop();
  log(
    `run ${i + 1}: ${prepares} prepares, ${failed ? `FAILED: ${failed}` : 'ok'}${brokenLines.length ? `; first broken: ${brokenLines[0]}` : ''}`,
  );
  if (failed) {
    bad++;
    if (opts.keep) {
      fs.writeFileSync(path.join(base, 'server-events.json'), JSON.stringify(srv.events));
      log(`kept ${base}`);
      continue;
    }
  }
  fs.rmSync(base, { recursive: true, force: true });
}
load?.kill();
log(`${opts.runs} runs, ${bad} failed`);
process.exit(bad ? 1 : 0);
