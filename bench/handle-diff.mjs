#!/usr/bin/env node
// Handles held open across operations, differential (bench/handle-diff.py says what one stream
// does): per seed a fresh twinfs server (with its mirror unless --no-mirror), --procs python
// processes at once, each running its seeded stream of --ops syscalls in lockstep in a plain
// directory on the primary's filesystem (the oracle) and in the mount; then the server's
// write-back is flushed and `verify --content` compares the mirror with the primary. Seeds
// follow one another (--seed, --seed+1, ...) until --minutes have passed. Exit 1 on any
// mismatch or mirror difference; the failing seed replays alone with --minutes 0.
//
//   node bench/handle-diff.mjs --minutes 10
//   node bench/handle-diff.mjs --seed 12 --minutes 0 --procs 1      replay one seed
//   node bench/handle-diff.mjs --extra '--write-through'             another configuration
//   node bench/handle-diff.mjs --extra '--fuse 2' --links=false      libfuse2 (no hard links)
//   node bench/handle-diff.mjs --dirs                                 subdirectories, directory renames
//   node bench/handle-diff.mjs --fallocate                            fallocate(2) in the streams too
//   node bench/handle-diff.mjs --seek                                 lseek SEEK_DATA/SEEK_HOLE checks too
//   node bench/handle-diff.mjs --bytes --dirs                         names that are not UTF-8 too
//   node bench/handle-diff.mjs --meta                                 xattrs, exact times, chown, symlinks
//   node bench/handle-diff.mjs --user --meta                          half the operations as uid 1000
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
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

const SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'handle-diff.py');
const opts = parseArgs(
  {
    seed: { default: 1, help: 'first seed (process i of seed s runs stream s * 100 + i)' },
    minutes: { default: 5, help: 'keep starting seeds until this much time has passed (0: one seed)' },
    procs: { default: 3, help: 'processes at once per seed' },
    ops: { default: 1500, help: 'operations per process' },
    mirror: { default: true, help: 'serve with a mirror (verified after every seed)' },
    links: {
      default: true,
      help: 'streams make hard links (--links=false for --extra "--fuse 2": its names go stale, a known limit)',
    },
    dirs: {
      default: false,
      help: 'names in subdirectories, directories made, removed and renamed (HANDLE_DIFF_DIRS)',
    },
    fallocate: {
      default: false,
      help: 'fallocate(2) in every mode the kernel passes on, in the streams (HANDLE_DIFF_FALLOCATE)',
    },
    bytes: {
      default: false,
      help: 'some names hold bytes that are not UTF-8 (HANDLE_DIFF_BYTES)',
    },
    seek: {
      default: false,
      help: 'lseek SEEK_DATA/SEEK_HOLE through the descriptors: no hole over data, ENXIO at the end (HANDLE_DIFF_SEEK)',
    },
    user: {
      default: false,
      help: 'about half the operations as an ordinary user (uid 1000): permissions, ownership (HANDLE_DIFF_USER)',
    },
    meta: {
      default: false,
      help: 'xattrs, exact times, chown, setuid/setgid modes, symlinks in the streams (HANDLE_DIFF_META)',
    },
    extra: { default: '', help: 'more `twinfs serve` arguments, space-separated' },
    ...commonOptions('parent of the temporary directories'),
    'max-load': { default: 100, help: 'wait for the 1-min load to drop below this' },
    'time-limit': { default: 7200, help: 'abort (and clean up) after this many seconds' },
  },
  'node bench/handle-diff.mjs [options]: held handles, differential against a plain directory',
);
installCleanup({ timeLimitSec: opts['time-limit'] });
const until = Date.now() + opts.minutes * 60_000;
let failed = 0;
let seeds = 0;
let opsTotal = 0;
let boundedTotal = 0;
/** Results at a known limit of high-level libfuse (handle-diff.py names them), by kind. */
const known = new Map();
for (let seed = opts.seed; ; seed++) {
  seeds++;
  const base = tempBase(opts.dir);
  const d = mkdirs(base, 'primary', 'mount', 'state', 'ref');
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
  // The server's invalidation waits cut by their bound (kernel-names.ts): a seed that took far
  // longer than its siblings says here whether that is why.
  let bounded;
  try {
    const procs = Array.from({ length: opts.procs }, async (_, i) => {
      const ref = path.join(d.ref, `p${i}`);
      const dir = path.join(d.mount, `p${i}`);
      fs.mkdirSync(ref);
      await run('mkdir', [dir], { timeoutMs: 30_000 });
      const r = await run('python3', [SCRIPT, ref, dir, String(seed * 100 + i), String(opts.ops)], {
        timeoutMs: 1_800_000,
        check: false,
        env: {
          ...process.env,
          HANDLE_DIFF_LINKS: opts.links ? '1' : '0',
          HANDLE_DIFF_DIRS: opts.dirs ? '1' : '0',
          HANDLE_DIFF_FALLOCATE: opts.fallocate ? '1' : '0',
          HANDLE_DIFF_BYTES: opts.bytes ? '1' : '0',
          HANDLE_DIFF_SEEK: opts.seek ? '1' : '0',
          HANDLE_DIFF_META: opts.meta ? '1' : '0',
          HANDLE_DIFF_USER: opts.user ? '1' : '0',
        },
      });
      if (r.stderr) problems.push(`p${i}: stderr ${r.stderr.slice(0, 2000)}`);
      try {
        const rep = JSON.parse(r.stdout);
        opsTotal += rep.ops;
        for (const [k, n] of Object.entries(rep.known ?? {})) known.set(k, (known.get(k) ?? 0) + n);
        for (const m of rep.mismatches) problems.push(`p${i}: ${JSON.stringify(m)}`);
      } catch {
        problems.push(`p${i}: exit ${r.code}, no report: ${r.stdout.slice(0, 500)}`);
      }
    });
    await Promise.all(procs);
    if (srv.url) {
      const c = await controlClient(srv.url, srv.token);
      try {
        bounded = (await c.request('status')).fs?.kernelCache?.waitsBounded;
      } finally {
        await c.close();
      }
    }
    if (opts.mirror && srv.url) {
      const c = await controlClient(srv.url, srv.token);
      try {
        await c.request('flush');
        const v = await c.request('verify', { content: true });
        for (const x of v.differences) problems.push(`mirror: ${JSON.stringify(x)}`);
        if (!v.ok && !v.differences.length) problems.push(`mirror: verify not ok ${JSON.stringify(v)}`);
      } finally {
        await c.close();
      }
    }
  } finally {
    await stopChecked(srv, problems);
  }
  if (problems.length) failed++;
  const secs = (Date.now() - t0) / 1000;
  boundedTotal += bounded ?? 0;
  log(
    `seed ${seed}: ${opts.procs} × ${opts.ops} ops, ${problems.length} problem(s)${problems.length ? ` (files in ${base})` : ''}` +
      (bounded || secs > 30
        ? `; ${secs.toFixed(1)} s, ${bounded ?? '?'} invalidation wait(s) cut by the bound`
        : ''),
  );
  for (const p of problems.slice(0, 20)) log(`    ${p}`);
  if (!problems.length) fs.rmSync(base, { recursive: true, force: true });
  if (Date.now() >= until) break;
}
log(
  `${seeds} seeds, ${failed} with problems, ${opsTotal} operations, ${boundedTotal} invalidation wait(s) cut by the bound`,
);
for (const [k, n] of known) log(`  known limit, ${n} result(s): ${k}`);
process.exit(failed ? 1 : 0);
