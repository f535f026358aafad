#!/usr/bin/env node
// The long version of test/fusefs/fsx.test.ts: the fsx-style data exerciser
// (test/fusefs/fixtures/fsx.py) through twinfs mounts with the mirror on, in several serve
// configurations. Per configuration: --procs files exercised at once by python children, --rounds
// rounds of --ops operations each (every round continues the file of the round before), a volume
// prepare (split) after every round whose copies must equal the models, held while the next round
// runs (the copies must not move), released after it. At the end the mount, the idle mirror and,
// after unmount, the primary and the mirror must equal the models. Prints the seed and the op log
// of a failure (fsx.py replays it); exit 1 when anything differed. Correctness, not speed: the
// wall time is printed for scale only.
//
//   node bench/fsx.mjs                                    4 configs × 3 procs × 4 rounds × 3000 ops
//   node bench/fsx.mjs --configs fuse2 --seed 9 --ops 500 --rounds 2
//   node bench/fsx.mjs --configs default,write-through,tiny-cache --link    two names per file
//
// Configurations: default (libfuse3, write-back cache), fuse2 (--fuse 2), write-through
// (--write-through), tiny-cache (--cache-mb 1 --writeback-ms 600000: the dirty limit drives
// write-back).
import * as fs from 'node:fs';
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
  startBench,
  startTwinfs,
  stopChecked,
  waitMirrorIdle,
} from './lib.mjs';

const FSX = path.join(ROOT, 'test/fusefs/fixtures/fsx.py');
const CONFIGS = {
  default: [],
  fuse2: ['--fuse', '2'],
  'write-through': ['--write-through'],
  'tiny-cache': ['--cache-mb', '1', '--writeback-ms', '600000'],
};
const opts = parseArgs(
  {
    seed: { default: 1, help: 'base seed (file i, round r uses seed*10000 + i*100 + r)' },
    procs: { default: 3, help: 'files exercised at once' },
    rounds: { default: 4, help: 'rounds per file (a split between rounds)' },
    ops: { default: 3000, help: 'operations per round' },
    link: {
      default: false,
      help: 'each file has a second name (fsx.py --link 1; fails on fuse2, a known limit)',
    },
    configs: {
      default: Object.keys(CONFIGS).join(','),
      help: `comma list of ${Object.keys(CONFIGS).join(', ')}`,
    },
    ...commonOptions(),
  },
  'node bench/fsx.mjs [options]: fsx-style data exerciser through mirrored twinfs mounts',
);
opts['max-load'] = Math.max(opts['max-load'], 99); // correctness: no need for a quiet machine
const { base } = await startBench(opts);
const failures = [];
const results = {};

/** Null when file holds the model's bytes, else fsx.py's description of the first difference. */
async function differs(file, model) {
  const r = await run('python3', [FSX, 'check', file, model], { check: false, timeoutMs: 120_000 });
  return r.code === 0 ? null : `${r.stderr}${r.stdout}`.trim();
}

async function expectSame(cfg, what, file, model) {
  const d = await differs(file, model);
  if (d) {
    failures.push({ cfg, what, d });
    log(`${cfg}: ${what}: ${d}`);
  }
}

for (const cfg of opts.configs.split(',')) {
  if (!CONFIGS[cfg]) throw new Error(`unknown config ${cfg}`);
  const d = mkdirs(path.join(base, cfg), 'primary', 'mount', 'mirror', 'state', 'models');
  const srv = await startTwinfs({
    cli: opts.cli || undefined,
    primary: d.primary,
    mount: d.mount,
    mirror: d.mirror,
    stateDir: d.state,
    control: '127.0.0.1:0',
    extra: CONFIGS[cfg],
    verbose: opts.verbose,
  });
  const mirrorRoot = srv.mounted.mirror.mirrorRoot;
  const client = await controlClient(srv.url, srv.token);
  const t0 = performance.now();
  const model = (i, r) => path.join(d.models, `p${i}-r${r}`);
  const names = Array.from({ length: opts.procs }, (_, i) => `p${i}.dat`);
  let held = null;
  /** Files whose run failed: their models stop there, later rounds and checks leave them out. */
  const dead = new Set();
  const live = () => names.filter((n) => !dead.has(n));
  let ops = 0;
  const refused = {};
  for (let r = 0; r < opts.rounds; r++) {
    const runs = await Promise.all(
      names.map((name, i) => {
        if (dead.has(name)) return { code: 0, skipped: true };
        const seed = opts.seed * 10000 + i * 100 + r;
        const args = [FSX, 'run', d.mount, String(seed), String(opts.ops), '--name', name];
        args.push('--model-out', model(i, r));
        if (r > 0) args.push('--model-in', model(i, r - 1));
        if (opts.link) args.push('--link', '1');
        return run('python3', args, { check: false, timeoutMs: 1_800_000 });
      }),
    );
    for (const [i, x] of runs.entries()) {
      if (x.skipped) continue;
      if (x.code !== 0) {
        dead.add(names[i]);
        // fsx.py reports a death by a signal of its own (SIGBUS: an mmap access past the size its
        // name's kernel inode has) from a forked child; anything else unreported is said so.
        const d = x.stderr.trim() || `fsx.py exited ${x.code ?? x.signal} without a report`;
        failures.push({ cfg, what: `round ${r} file ${names[i]}`, d });
        log(`${cfg}: round ${r} ${names[i]} failed:\n${d}`);
        continue;
      }
      const s = JSON.parse(x.stdout.trim().split('\n').at(-1));
      ops += Object.values(s.ops).reduce((a, b) => a + b, 0);
      for (const [k, e] of Object.entries(s.refused)) refused[k] = e;
    }
    if (held) {
      // The round ran while the split was held: its copies still hold the round before.
      for (const [i, name] of names.entries())
        if (!dead.has(name) && held.copies[name])
          await expectSame(cfg, `split copy after round ${r} (held)`, held.copies[name], model(i, r - 1));
      await client.release(held.p.backupId);
      held = null;
    }
    if (r + 1 < opts.rounds && live().length) {
      // Held through the next round, which under load outlasts the default lease (60 s): an
      // expired split lets the mirror move on, and its copies were then compared as if held.
      const p = await client.prepare({ paths: live().map((n) => `/${n}`) }, { leaseMs: 3_600_000 });
      const copies = Object.fromEntries(
        live().map((n) => [n, path.join(p.mirrorRoot, p.items.find((it) => it.path === `/${n}`).mirrorPath)]),
      );
      for (const [i, name] of names.entries())
        if (copies[name]) await expectSame(cfg, `split copy at round ${r}`, copies[name], model(i, r));
      held = { p, copies };
    }
    log(`${cfg}: round ${r} done (${ops} ops so far, load ${loadavg()})`);
  }
  const last = opts.rounds - 1;
  const allNames = (name) => (dead.has(name) ? [] : opts.link ? [name, `${name}.lnk`] : [name]);
  for (const [i, name] of names.entries())
    for (const n of allNames(name))
      await expectSame(cfg, 'through the mount', path.join(d.mount, n), model(i, last));
  await client.request('flush');
  await waitMirrorIdle(client);
  const st = await client.request('status');
  // libfuse3: invalidations sent, and waits for them answered at the bound (waitsBounded).
  if (st.fs?.kernelCache) log(`${cfg}: kernelCache ${JSON.stringify(st.fs.kernelCache)}`);
  if (st.mirror.broken.length)
    failures.push({ cfg, what: 'mirror broken', d: JSON.stringify(st.mirror.broken) });
  for (const [i, name] of names.entries())
    for (const n of allNames(name))
      await expectSame(cfg, 'in the idle mirror', path.join(mirrorRoot, n), model(i, last));
  await client.close();
  const stopProblems = [];
  const code = await stopChecked(srv, stopProblems);
  for (const d of stopProblems) failures.push({ cfg, what: 'server stop', d });
  if (code !== 0) failures.push({ cfg, what: 'server exit', d: String(code) });
  for (const [i, name] of names.entries())
    for (const n of allNames(name)) {
      await expectSame(cfg, 'on the primary after unmount', path.join(d.primary, n), model(i, last));
      await expectSame(cfg, 'in the mirror after unmount', path.join(mirrorRoot, n), model(i, last));
    }
  const hidden = fs.readdirSync(d.primary).filter((n) => n.startsWith('.fuse_hidden'));
  if (hidden.length) failures.push({ cfg, what: 'hidden files left', d: hidden.join(' ') });
  results[cfg] = { ops, wallS: +((performance.now() - t0) / 1000).toFixed(1), refused, load: loadavg() };
  log(`${cfg}: ${JSON.stringify(results[cfg])}`);
}

console.log(JSON.stringify({ seed: opts.seed, results, failures }));
if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ seed: opts.seed, results, failures }, null, 2));
process.exit(failures.length ? 1 : 0);
