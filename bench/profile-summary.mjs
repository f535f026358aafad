#!/usr/bin/env node
// Summarises a V8 .cpuprofile (node --cpu-prof): self time per function and the top
// inclusive frames, so a benchmark's profile can be read without DevTools.
//   node bench/profile-summary.mjs FILE.cpuprofile [--top 25] [--filter twinfs]
import * as fs from 'node:fs';

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--'));
const top = Number(args[args.indexOf('--top') + 1]) || 25;
if (!file) {
  process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [--top N]\n');
  process.exit(2);
}
const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const self = new Map();
const deltas = prof.timeDeltas;
let total = 0;
for (let i = 0; i < prof.samples.length; i++) {
  const dt = deltas[i + 1] ?? 0;
  self.set(prof.samples[i], (self.get(prof.samples[i]) ?? 0) + dt);
  total += dt;
}
const name = (n) => {
  const cf = n.callFrame;
  const url = cf.url.replace(/^file:\/\//, '').replace(/.*\/(dist|node_modules)\//, '$1/');
  return `${cf.functionName || '(anonymous)'} ${url ? `${url}:${cf.lineNumber + 1}` : ''}`.trim();
};
const selfBy = new Map();
const inclBy = new Map();
for (const [id, t] of self) {
  const k = name(byId.get(id));
  selfBy.set(k, (selfBy.get(k) ?? 0) + t);
  const seen = new Set();
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const kk = name(byId.get(cur));
    if (seen.has(kk)) continue;
    seen.add(kk);
    inclBy.set(kk, (inclBy.get(kk) ?? 0) + t);
  }
}
const pct = (t) => `${((100 * t) / total).toFixed(1).padStart(5)}%`;
process.stdout.write(`profile ${file}: ${(total / 1e6).toFixed(2)} s sampled\n\nself time:\n`);
for (const [k, t] of [...selfBy].sort((a, b) => b[1] - a[1]).slice(0, top))
  process.stdout.write(`${pct(t)} ${(t / 1000).toFixed(0).padStart(7)} ms  ${k}\n`);
process.stdout.write('\ninclusive time:\n');
for (const [k, t] of [...inclBy].sort((a, b) => b[1] - a[1]).slice(0, top))
  process.stdout.write(`${pct(t)} ${(t / 1000).toFixed(0).padStart(7)} ms  ${k}\n`);
