#!/usr/bin/env node
// The stress harness's long run (issue 10; test/stress/harness.ts says what one seed does).
// Seeds one after another (--seed, --seed+1, ...) until --minutes have passed; each seed's
// writers run --seconds. Prints one line per seed and a summary; exit 1 on any problem.
// Runs the TypeScript harness with plain node through test/stress/register.mjs. Build first
// (npm run build): the server and the backup peer run from dist/.
//
//   node bench/stress.mjs --minutes 30                 the issue's bar
//   node bench/stress.mjs --seed 7 --seconds 20 --minutes 0 --keep   replay one seed, keep its files
import { register } from 'node:module';
import { parseArgs } from './lib.mjs';

const args = parseArgs(
  {
    seed: { default: 1, help: 'first seed' },
    minutes: { default: 30, help: 'keep starting seeds until this much time has passed (0: one seed)' },
    seconds: { default: 60, help: 'how long the writers of one seed run' },
    writers: { default: 4, help: 'writer processes' },
    mmap: { default: true, help: 'writers do mmap writes (msync before the op returns)' },
    'lazy-mmap': { default: false, help: 'some mmap writes skip msync (dirty pages left to the kernel)' },
    bytes: { default: false, help: 'one new name in four holds a byte that is not UTF-8' },
    selections: { default: 'volume,subtree,paths', help: 'what the prepare loop selects' },
    keep: { default: false, help: "keep each seed's files (primary, mirror, target, logs)" },
    incremental: {
      default: false,
      help: 'incremental backups (the change record decides what is shared), not --full',
    },
    json: { default: '', help: 'write the reports to this file' },
  },
  'node bench/stress.mjs [options]',
);

register('../test/stress/ts-hooks.mjs', import.meta.url);
const { runStress, problems } = await import('../test/stress/harness.ts');

const until = Date.now() + args.minutes * 60_000;
const reports = [];
let failed = 0;
for (let seed = args.seed; ; seed++) {
  const r = await runStress({
    seed,
    durationMs: args.seconds * 1000,
    writers: args.writers,
    mmap: args.mmap,
    lazyMmap: args['lazy-mmap'],
    bytes: args.bytes,
    keep: args.keep,
    selections: args.selections.split(','),
    incremental: args.incremental,
  });
  const p = problems(r);
  reports.push({ ...r, problems: p });
  if (p.length) failed++;
  process.stdout.write(
    `seed ${seed}: ${r.ops} ops, ${r.prepares.ok} prepares (${fmtFailed(r.prepares.failed)}), ${r.backups.ok} backups (${r.backups.changeDriven ?? 0} change-driven; ${fmtFailed(r.backups.failed)}), ` +
      `${r.snapshots.count} snapshots: ${r.snapshots.checked} entries checked, ${r.snapshots.unverifiable} unverifiable, ` +
      `${r.snapshots.mismatches.length} mismatches; verify ${r.verify.checked} entries, ${r.verify.differences.length} differences; ` +
      `${r.broken.length} broken; restore of the last snapshot: ${r.restore.checked} entries, ${r.restore.differences.length} differences; ${(r.ms / 1000).toFixed(0)} s${p.length ? ` — ${p.length} problem(s) (files kept in ${r.dir})` : ''}\n`,
  );
  for (const line of p.slice(0, 15)) process.stdout.write(`    ${line}\n`);
  for (const [k, m] of Object.entries(r.failureMessages ?? {}))
    if (!/ETWIN_BUSY|ETWIN_NOT_FOUND/.test(k))
      process.stdout.write(`    (${k}: ${m.replace(/\s+/g, ' ').slice(0, 300)})\n`);
  if (Date.now() >= until) break;
}
const sum = (f) => reports.reduce((a, r) => a + f(r), 0);
process.stdout.write(
  `\n${reports.length} seeds, ${failed} with problems: ${sum((r) => r.ops)} ops, ${sum((r) => r.prepares.ok)} prepares, ` +
    `${sum((r) => r.backups.ok)} backups, ${sum((r) => r.snapshots.checked)} snapshot entries checked ` +
    `(${sum((r) => r.snapshots.unverifiable)} unverifiable), ${sum((r) => r.snapshots.mismatches.length)} mismatches, ` +
    `${sum((r) => r.verify.differences.length)} mirror differences, ${sum((r) => r.broken.length)} broken pairs, ` +
    `${sum((r) => r.restore.differences.length)} restore differences (${sum((r) => r.restore.checked)} restored entries compared)\n`,
);
if (args.json) (await import('node:fs')).writeFileSync(args.json, JSON.stringify(reports, null, 1));
process.exit(failed ? 1 : 0);

function fmtFailed(f) {
  const e = Object.entries(f);
  return e.length ? `failed: ${e.map(([k, v]) => `${k}×${v}`).join(', ')}` : 'none failed';
}
