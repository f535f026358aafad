#!/usr/bin/env node
// Chaos runs (issue 11; test/chaos/chaos.ts says what a round does and what is checked).
//   kills      --kill-rounds rounds: kill -9 of the server under mixed writes, restart, verify
//   peer       --peer-rounds rounds: kill -9 / SIGSTOP of backup peers at random moments
//   scenarios  full primary, full mirror, vanished mirror, hung target (test/chaos/scenarios.ts)
// Prints one summary per part (JSON with --json FILE) and exits 1 on any problem. Build first
// (npm run build): the server and the peer run from dist/. Run with nice on a shared machine.
//
//   nice node bench/chaos.mjs --seed 1                        the issue's bar (100 + 100 rounds)
//   nice node bench/chaos.mjs --parts kills --kill-rounds 5 --keep   a short run, files kept
import { register } from 'node:module';
import { parseArgs } from './lib.mjs';

const args = parseArgs(
  {
    seed: { default: 1, help: 'seed of every random choice' },
    parts: { default: 'kills,peer,scenarios', help: 'which parts to run' },
    'kill-rounds': { default: 100, help: 'server kill rounds' },
    'peer-rounds': { default: 100, help: 'peer kill/stop rounds' },
    'max-stall-ms': { default: 1000, help: "the server's --max-stall-ms in the peer rounds" },
    'lease-sec': { default: 2, help: "the peers' --lease-sec" },
    keep: { default: false, help: 'keep the files of every part' },
    verbose: { default: false, help: 'one line per round' },
    json: { default: '', help: 'write the reports to this file' },
    only: { default: '', help: 'scenarios: run only these (comma-separated names, e.g. "full mirror")' },
  },
  'node bench/chaos.mjs [options]',
);

register('../test/stress/ts-hooks.mjs', import.meta.url);
const chaos = await import('../test/chaos/chaos.ts');
const parts = args.parts.split(',');
const log = args.verbose ? (m) => process.stdout.write(`  ${m}\n`) : undefined;
const reports = {};
let failed = 0;
const show = (name, report, problems) => {
  reports[name] = { ...report, problems };
  const { dir, ...rest } = report;
  process.stdout.write(
    `\n== ${name}: ${problems.length} problem(s)${problems.length ? ` (files kept in ${dir})` : ''}\n`,
  );
  process.stdout.write(`${JSON.stringify(rest, null, 1).slice(0, 6000)}\n`);
  for (const p of problems.slice(0, 20)) process.stdout.write(`  PROBLEM ${p}\n`);
  if (problems.length) failed++;
};

if (parts.includes('kills')) {
  const r = await chaos.serverKills({ seed: args.seed, rounds: args['kill-rounds'], keep: args.keep, log });
  show('server kills', r, chaos.serverKillProblems(r));
}
if (parts.includes('peer')) {
  const r = await chaos.peerKills({
    seed: args.seed,
    rounds: args['peer-rounds'],
    keep: args.keep,
    log,
    maxStallMs: args['max-stall-ms'],
    leaseSec: args['lease-sec'],
  });
  show('peer kills', r, chaos.peerProblems(r));
}
if (parts.includes('scenarios')) {
  const sc = await import('../test/chaos/scenarios.ts');
  for (const [name, fn] of Object.entries(sc.SCENARIOS)) {
    if (args.only && !args.only.split(',').includes(name)) continue;
    const r = await fn({ seed: args.seed, keep: args.keep, log });
    show(name, r, r.problems);
  }
}
if (args.json) (await import('node:fs')).writeFileSync(args.json, JSON.stringify(reports, null, 1));
process.exit(failed ? 1 : 0);
