// What the exit guard (src/fusefs/exit-guard.ts) costs a mount: TwinFs.mount + unmount of an
// empty volume in this process, with the guard on and off (TWINFS_EXIT_GUARD=0), interleaved.
// Prints medians of the mount and unmount times, and the minor page faults and CPU time of
// this (the serving) process per mount + unmount. Needs root and a built dist (npm run build).
//   nice node bench/exit-guard.mjs [rounds=20]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TwinFs } from '../dist/fusefs/filesystem.js';

const rounds = Number(process.argv[2] ?? 20);
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'twinfs-bench-guard-'));
const primary = path.join(base, 'primary');
const mount = path.join(base, 'mnt');
fs.mkdirSync(primary);
fs.mkdirSync(mount);
const res = { on: [], off: [] };
try {
  for (let i = 0; i < rounds; i++)
    for (const mode of i % 2 ? ['off', 'on'] : ['on', 'off']) {
      process.env.TWINFS_EXIT_GUARD = mode === 'on' ? '1' : '0';
      const f0 = process.resourceUsage().minorPageFault;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const twin = await TwinFs.mount({ primary, mount, log: () => undefined });
      const t1 = performance.now();
      await twin.unmount();
      const t2 = performance.now();
      const c = process.cpuUsage(c0);
      res[mode].push([
        t1 - t0,
        t2 - t1,
        process.resourceUsage().minorPageFault - f0,
        (c.user + c.system) / 1000,
      ]);
    }
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
const med = (a) => a.slice().sort((x, y) => x - y)[a.length >> 1];
console.log(
  `load ${os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}; ${rounds} rounds, medians`,
);
for (const m of ['on', 'off']) {
  const col = (k) => med(res[m].map((x) => x[k]));
  console.log(
    `guard ${m.padEnd(3)} mount ${col(0).toFixed(1)} ms, unmount ${col(1).toFixed(1)} ms, ` +
      `faults ${col(2)}, cpu ${col(3).toFixed(1)} ms`,
  );
}
