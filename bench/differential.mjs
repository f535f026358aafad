#!/usr/bin/env node
// The randomized differential workload of test/fusefs/differential.test.ts, long: per round a
// fresh twinfs server (with its mirror unless --no-mirror), --procs seeds at once, each running
// test/fusefs/fixtures/diff-ops.mjs (seeded random opens, writes, truncates, renames, unlinks,
// links, directory changes on held descriptors) through the mount and in a plain directory on the
// primary's filesystem; the two outputs (every result and errno, then the final tree) must agree
// (fixtures/diff-compare.mjs). After the round the server's write-back is flushed and
// `verify --content` compares the mirror with the primary. Rounds follow one another until
// --minutes have passed. Exit 1 on any divergence; a failing seed replays alone with
// `--seed N --procs 1 --minutes 0`, or by hand with `node test/fusefs/fixtures/diff-ops.mjs run DIR N OPS more`.
//
//   node bench/differential.mjs --minutes 10
//   node bench/differential.mjs --extra '--write-through'
//   node bench/differential.mjs --extra '--cache-mb 1 --writeback-ms 600000'
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { firstDivergence } from '../test/fusefs/fixtures/diff-compare.mjs';
import {
  checkMirror,
  commonOptions,
  controlClient,
  installCleanup,
  log,
  mkdirs,
  parseArgs,
  run,
  startTwinfs,
  stopChecked,
  tempBase,
} from './lib.mjs';

const OPS_SCRIPT = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../test/fusefs/fixtures/diff-ops.mjs',
);
const opts = parseArgs(
  {
    seed: { default: 1000, help: 'first seed' },
    minutes: { default: 5, help: 'keep starting rounds until this much time has passed (0: one round)' },
    procs: {
      default: 3,
      help: 'seeds at once per round (one process each on the mount and in the plain directory)',
    },
    ops: { default: 1500, help: 'operations per seed' },
    links: {
      default: false,
      help: 'hard links in the workload (shows a known limit: an O_APPEND descriptor\'s offset after another name changed the size, docs/reliability.md "Handles held open across operations" item 5)',
    },
    more: {
      default: true,
      help: 'chmod, fchmod, symlinks and copyFile in the workload, modes compared (diff-ops.mjs "more")',
    },
    mirror: { default: true, help: 'serve with a mirror (verified after every round)' },
    extra: { default: '', help: 'more `twinfs serve` arguments, space-separated' },
    ...commonOptions('parent of the temporary directories'),
    'time-limit': { default: 7200, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/differential.mjs [options]: random file operations, a twinfs mount against a plain directory',
);
installCleanup({ timeLimitSec: opts['time-limit'] });

/** The workload's output lines for seed under root (a child process: never this one on the mount). */
async function workload(root, seed) {
  const args = [OPS_SCRIPT, 'run', root, String(seed), String(opts.ops)];
  if (opts.links) args.push('links');
  if (opts.more) args.push('more');
  const r = await run('node', args, { timeoutMs: 600_000, check: false });
  if (r.code !== 0) return { lines: [], error: `exit ${r.code}: ${r.stderr.slice(0, 1000)}` };
  return { lines: r.stdout.trimEnd().split('\n') };
}

const until = Date.now() + opts.minutes * 60_000;
let seeds = 0;
let cut = 0;
let failed = 0;
let opsTotal = 0;
for (let first = opts.seed; ; first += opts.procs) {
  const base = tempBase(opts.dir);
  const d = mkdirs(base, 'primary', 'mount', 'state', 'plain');
  const srv = await startTwinfs({
    cli: opts.cli || undefined,
    primary: d.primary,
    mount: d.mount,
    mirror: opts.mirror ? path.join(base, 'mirror') : undefined,
    stateDir: d.state,
    control: '127.0.0.1:0',
    extra: opts.extra ? opts.extra.split(/\s+/) : [],
    verbose: opts.verbose,
  });
  const problems = [];
  const t0 = Date.now();
  try {
    await Promise.all(
      Array.from({ length: opts.procs }, async (_, i) => {
        const seed = first + i;
        seeds++;
        const [got, want] = await Promise.all([
          workload(path.join(d.mount, `s${seed}`), seed),
          workload(path.join(d.plain, `s${seed}`), seed),
        ]);
        if (got.error || want.error) {
          problems.push(`seed ${seed}: ${got.error ?? ''} ${want.error ?? ''}`);
          return;
        }
        opsTotal += opts.ops;
        const { index, cut: parted } = firstDivergence(got.lines, want.lines);
        if (index < 0) return;
        if (parted) {
          cut++;
          return;
        }
        problems.push(
          `seed ${seed}: diverged at line ${index + 1}\n      twinfs: ${got.lines[index] ?? '<missing>'}\n      plain:  ${want.lines[index] ?? '<missing>'}`,
        );
      }),
    );
    if (opts.mirror && srv.url) {
      const c = await controlClient(srv.url, srv.token);
      try {
        const { differences, broken } = await checkMirror(c);
        for (const x of differences) problems.push(`mirror: ${JSON.stringify(x)}`);
        for (const b of broken) problems.push(`mirror: broken pair ${JSON.stringify(b)}`);
      } finally {
        await c.close();
      }
    }
  } finally {
    await stopChecked(srv, problems);
  }
  if (problems.length) failed++;
  log(
    `seeds ${first}–${first + opts.procs - 1}: ${problems.length} problem(s) in ${((Date.now() - t0) / 1000).toFixed(1)} s` +
      (problems.length ? ` (files in ${base})` : ''),
  );
  for (const p of problems.slice(0, 20)) log(`    ${p}`);
  if (!problems.length) fs.rmSync(base, { recursive: true, force: true });
  if (Date.now() >= until) break;
}
log(
  `${seeds} seeds, ${failed} round(s) with problems, ${opsTotal} operations compared` +
    (cut
      ? `; ${cut} seed(s) compared up to a known limit of high-level libfuse (fixtures/diff-compare.mjs)`
      : ''),
);
process.exit(failed ? 1 : 0);
