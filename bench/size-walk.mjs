// The cost of the backup's sizing walk (names and lstats of the split copy) against copying
// the same tree with cp -a, in one run: node bench/size-walk.mjs [FILES] (after npm run build)
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MirrorReader } from '../dist/backup-peer/mirror-source.js';

const n = Number(process.argv[2] ?? 20000);
const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-sizewalk-'));
const data = path.join(base, 'data');
for (let d = 0; d < n / 100; d++) {
  await fsp.mkdir(path.join(data, `d${d}`), { recursive: true });
  for (let f = 0; f < 100; f++)
    await fsp.writeFile(path.join(data, `d${d}`, `f${f}`), Buffer.alloc(2048 + f, f));
}
const walk = async () => {
  const t = performance.now();
  let files = 0;
  let bytes = 0;
  for await (const s of new MirrorReader(data).walk({ volume: true })) {
    files++;
    if (s.stat?.isFile()) bytes += Number(s.stat.size);
  }
  return { ms: performance.now() - t, files, bytes };
};
const cp = () => {
  const t = performance.now();
  execFileSync('cp', ['-a', data, path.join(base, `copy${Math.random()}`)]);
  return performance.now() - t;
};
const rows = [];
for (let rep = 0; rep < 3; rep++) rows.push({ walk: (await walk()).ms, cp: cp() });
const med = (a) => a.sort((x, y) => x - y)[1];
const w = med(rows.map((r) => r.walk));
const c = med(rows.map((r) => r.cp));
console.log(
  JSON.stringify({
    files: n,
    walkMs: Math.round(w),
    cpMs: Math.round(c),
    ratio: +(w / c).toFixed(3),
    load: os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' '),
  }),
);
await fsp.rm(base, { recursive: true, force: true });
