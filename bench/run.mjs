#!/usr/bin/env node
// `npm run bench`: runs every benchmark one after the other, each in its own process (each
// cleans up its own mounts). --smoke runs them at small sizes (about two minutes in all);
// without it, at full size (about 25 minutes). Other arguments are passed to every script.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const smoke = args.includes('--smoke');
const pass = args.filter((a) => a !== '--smoke');
const SMOKE = {
  'fs.mjs': ['--size-mb', '64', '--small-mb', '16', '--files', '500', '--rss-mb', '256', '--reps', '1'],
  'mirror.mjs': [
    '--size-mb',
    '64',
    '--small-mb',
    '16',
    '--reps',
    '1',
    '--files',
    '2000',
    '--files-small',
    '200',
    '--splits',
    '3',
    '--resync-mb',
    '64',
    '--copy-mb',
    '64',
  ],
  'stall.mjs': ['--big-mib', '64', '--dirty-mib', '16', '--cycles', '2'],
  'fuse-floor.mjs': ['--size-mb', '128', '--small-mb', '32', '--files', '1000', '--reps', '1'],
};
let failed = 0;
for (const script of Object.keys(SMOKE)) {
  process.stderr.write(`\n=== ${script} ===\n`);
  const r = spawnSync(process.execPath, [path.join(here, script), ...(smoke ? SMOKE[script] : []), ...pass], {
    stdio: 'inherit',
  });
  if (r.status !== 0) {
    failed++;
    process.stderr.write(`${script} failed (${r.status ?? r.signal})\n`);
  }
}
process.exit(failed ? 1 : 0);
