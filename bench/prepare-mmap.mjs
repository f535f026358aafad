#!/usr/bin/env node
// What prepare's kernel write-back of dirty mmap pages costs (issue 10, item A).
//
// One twinfs server with a mirror and a control channel. For each scenario, --cycles
// prepare/release cycles of one selected file; before each prepare a python3 child
// (test/control/fixtures/mmap-writer.py) has dirtied the mapping the scenario says:
//   none         the file is closed: no name is open for writing, no child process is run
//   mapped-clean the file is mapped (open for writing) but nothing is dirty: one fdatasync
//   dirty-1M     1 MiB of the selected file dirtied through its mapping
//   dirty-64M    64 MiB of the selected file dirtied through its mapping
//   outside-16   16 other files of 1 MiB mapped and dirty, none selected: not synced
// Reported per scenario: the kernel write-back (status stall.kernelSync.lastMs, before the
// inhibition: writes flow), the stall (stallMs: writes held), the prepare round trip.
//
//   node bench/prepare-mmap.mjs                 (~1 minute)
//   node bench/prepare-mmap.mjs --cycles 3      (smoke)
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import {
  commonOptions,
  controlClient,
  fmt,
  log,
  MiB,
  mkdirs,
  parseArgs,
  percentile,
  ROOT,
  run,
  startBench,
  startTwinfs,
  table,
  trackProc,
  waitMirrorIdle,
} from './lib.mjs';

const opts = parseArgs(
  {
    cycles: { default: 10, help: 'prepare/release cycles per scenario' },
    scenarios: { default: 'none,mapped-clean,dirty-1M,dirty-64M,outside-16', help: 'comma list' },
    ...commonOptions('parent of the temporary directories'),
  },
  'node bench/prepare-mmap.mjs [options]: cost of the kernel write-back in prepare',
);
const { notes, base } = await startBench(opts);
const d = mkdirs(base, 'primary', 'mount', 'state', 'mirror');
const srv = await startTwinfs({
  cli: opts.cli || undefined,
  primary: d.primary,
  mount: d.mount,
  mirror: d.mirror,
  stateDir: d.state,
  control: '127.0.0.1:0',
  writebackMs: 60_000,
  verbose: opts.verbose,
});
const client = await controlClient(srv.url, srv.token);
await waitMirrorIdle(client);
const M = (n) => path.join(d.mount, n);
const WRITER = path.join(ROOT, 'test/control/fixtures/mmap-writer.py');

/** A python3 child holding a MAP_SHARED mapping of file; fill(byte) dirties all of it. */
async function mapper(file, size) {
  const p = spawn('python3', [WRITER, file, String(size), 'a', 'keep'], { stdio: ['pipe', 'pipe', 'pipe'] });
  trackProc(p);
  let out = '';
  let err = '';
  p.stdout.on('data', (x) => (out += x));
  p.stderr.on('data', (x) => (err += x));
  const ready = async (n) => {
    while (out.split('ready').length - 1 < n) {
      if (p.exitCode !== null) throw new Error(`mmap writer exited: ${err}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  await ready(1);
  let fills = 1;
  return {
    async fill(byte) {
      p.stdin.write(`fill ${byte}\n`);
      await ready(++fills);
    },
    stop: () => p.kill('SIGKILL'),
  };
}

async function scenario(name) {
  const size = name === 'dirty-64M' ? 64 * MiB : MiB;
  const target = `${name}.dat`;
  await run('dd', ['if=/dev/zero', `of=${M(target)}`, 'bs=1M', `count=${size / MiB}`, 'conv=fsync']);
  const maps = [];
  if (name === 'outside-16')
    for (let i = 0; i < 16; i++) {
      await run('dd', ['if=/dev/zero', `of=${M(`${name}-${i}.o`)}`, 'bs=1M', 'count=1', 'conv=fsync']);
      maps.push(await mapper(M(`${name}-${i}.o`), MiB));
    }
  else if (name !== 'none') maps.push(await mapper(M(target), size));
  await waitMirrorIdle(client);
  const rows = [];
  for (let c = 0; c < opts.cycles; c++) {
    const byte = String.fromCharCode(98 + (c % 20));
    if (name !== 'mapped-clean') for (const m of maps) await m.fill(byte);
    const t0 = performance.now();
    const p = await client.prepare({ paths: [`/${target}`] }, { listItems: false });
    const rtt = performance.now() - t0;
    const st = await client.request('status');
    rows.push({ rtt, stallMs: p.stallMs, kernelMs: st.backup.stall.kernelSync.lastMs });
    await client.release(p.backupId);
  }
  for (const m of maps) m.stop();
  return rows;
}

const results = {};
for (const name of opts.scenarios.split(',')) {
  results[name] = await scenario(name);
  const r = results[name];
  log(
    `${name}: kernel ${r.map((x) => fmt(x.kernelMs)).join(' ')}; stall ${r.map((x) => fmt(x.stallMs)).join(' ')}`,
  );
}
await client.close();
await srv.stop();

const w = (s) => process.stdout.write(s);
w(`\n## bench/prepare-mmap.mjs — ${notes.date}\n\n`);
w(
  `machine: ${notes.cpus}, ${notes.memGiB} GiB, kernel ${notes.kernel}, node ${notes.node}, git ${notes.git}\n` +
    `${opts.cycles} prepare/release cycles of one file per scenario; ms, median / max\n\n`,
);
const mm = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return `${fmt(percentile(s, 50))} / ${fmt(s.at(-1))}`;
};
table(
  ['scenario', 'kernel write-back (writes flow)', 'stallMs (writes held)', 'prepare round trip'],
  Object.entries(results).map(([n, r]) => [
    n,
    mm(r.map((x) => x.kernelMs ?? 0)),
    mm(r.map((x) => x.stallMs)),
    mm(r.map((x) => x.rtt)),
  ]),
);
