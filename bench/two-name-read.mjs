#!/usr/bin/env node
// The read side of the two-name fsx finding (docs/reliability.md), narrowed: through a mirrored
// twinfs mount (libfuse3, write-back cache), a child appends through one name of a file and
// preads the new bytes through a descriptor of its other name (bench/two-name-reader.py). While it
// runs, this process asks for a cache write-back (`flush`) every --flush-ms (0: never; the
// server's own write-back timer still runs). With TWINFS_WRITEBACK_LINK_ATTRS=invalidate (the old
// behaviour) a write-back invalidates every name of the file without waiting
// (KernelNames.changedBehind); by default (record) none. Arms alternate (with / without the flush
// loop, or with --modes over those modes, each with the flush loop) so all see the same load.
// Prints per arm the rounds, the short reads and the server's kernelCache counters. Correctness
// probe, not speed.
//
//   nice -n 10 node bench/two-name-read.mjs --rounds 2000 --arms 4 --flush-ms 5
//   nice -n 10 node bench/two-name-read.mjs --rounds 1500 --arms 4 --modes record,invalidate
import * as path from 'node:path';
import {
  commonOptions,
  controlClient,
  loadavg,
  log,
  mkdirs,
  parseArgs,
  ROOT,
  run,
  sleep,
  startBench,
  startTwinfs,
} from './lib.mjs';

const opts = parseArgs(
  {
    rounds: { default: 2000, help: 'append+pread rounds per arm' },
    arms: { default: 4, help: 'arms in all, alternating flush loop on / off' },
    'flush-ms': { default: 5, help: 'pause between flush requests in the "on" arms' },
    modes: {
      default: '',
      help: 'comma-separated TWINFS_WRITEBACK_LINK_ATTRS values the arms cycle through (flush loop on in each)',
    },
    ...commonOptions(),
  },
  'node bench/two-name-read.mjs [options]: reads through a second name after appends through the first',
);
opts['max-load'] = Math.max(opts['max-load'], 99);
const { base } = await startBench(opts);
const results = [];
for (let arm = 0; arm < opts.arms; arm++) {
  const modes = String(opts.modes || '')
    .split(',')
    .filter(Boolean);
  const mode = modes.length > 0 ? modes[arm % modes.length] : undefined;
  const flushing = mode !== undefined || arm % 2 === 0;
  const d = mkdirs(path.join(base, `arm${arm}`), 'primary', 'mount', 'mirror', 'state');
  const srv = await startTwinfs({
    cli: opts.cli || undefined,
    primary: d.primary,
    mount: d.mount,
    mirror: d.mirror,
    stateDir: d.state,
    control: '127.0.0.1:0',
    verbose: opts.verbose,
    ...(mode !== undefined ? { env: { TWINFS_WRITEBACK_LINK_ATTRS: mode } } : {}),
  });
  const client = await controlClient(srv.url, srv.token);
  let stop = false;
  let flushes = 0;
  const loop = (async () => {
    while (flushing && !stop) {
      await client.request('flush');
      flushes++;
      await sleep(opts['flush-ms']);
    }
  })();
  const t0 = performance.now();
  const r = await run(
    'python3',
    [path.join(ROOT, 'bench/two-name-reader.py'), d.mount, String(opts.rounds)],
    {
      timeoutMs: 900_000,
    },
  );
  stop = true;
  await loop;
  const st = await client.request('status');
  await client.close();
  await srv.stop();
  const out = JSON.parse(r.stdout.trim().split('\n').at(-1));
  const kc = st.fs?.kernelCache ?? {};
  const res = {
    arm,
    flushLoop: flushing,
    linkAttrs: kc.linkAttrs,
    writeBacksRecorded: kc.writeBacksRecorded,
    writeBacksRecordedUnseen: kc.writeBacksRecordedUnseen,
    flushes,
    ...out,
    waitsBounded: kc.waitsBounded,
    background: kc.lanes?.background,
    wallS: +((performance.now() - t0) / 1000).toFixed(1),
    load: loadavg(),
  };
  results.push(res);
  log(JSON.stringify(res));
}
console.log(JSON.stringify({ results }));
