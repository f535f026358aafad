// The chaos runs' writer (test/chaos/chaos.ts), a child process that touches the mount.
//
//   node writer.mjs durable '{"dir","files","seed","log","start":{k: size}}'
//     Mixed writes until the first error (the server was killed): files d0..dN-1 of
//     deterministic bytes (byteAt), appended to and overwritten with the same bytes, fsync'd at
//     random; after each fsync that succeeds one line {k, size} goes to the log (a local file):
//     the bytes [0, size) of file k were acknowledged as durable. Between them: creates, renames
//     and unlinks in scratch/. Each file is first cut to start[k] (what the previous round had
//     made durable), so every byte below a later acknowledged size is one this run wrote.
//     With "maxMs" it stops by itself after that long ({stopped: 'time'}).
//   node writer.mjs latency '{"file","rateHz","log"}'
//     4 KiB pwrite(2)s at rateHz into a 1 MiB region until SIGTERM; then one JSON line on
//     stdout: {writes, errors, maxMs, p99Ms, over: {ms: count}}; each write slower than 50 ms
//     goes to the log as {at, ms}.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { byteAt } from './bytes.mjs';

const [mode, arg] = process.argv.slice(2);
const o = JSON.parse(arg);

function chunk(k, off, len) {
  const b = Buffer.allocUnsafe(len);
  for (let j = 0; j < len; j++) b[j] = byteAt(k, off + j);
  return b;
}

let s = o.seed >>> 0 || 1;
const rnd = (n) => {
  s ^= s << 13;
  s >>>= 0;
  s ^= s >>> 17;
  s ^= s << 5;
  s >>>= 0;
  return s % n;
};

if (mode === 'durable') {
  const log = fs.openSync(o.log, 'a');
  const note = (rec) => fs.writeSync(log, `${JSON.stringify(rec)}\n`);
  let op = 'start';
  try {
    fs.mkdirSync(path.join(o.dir, 'scratch'), { recursive: true });
    const fds = [];
    const sizes = [];
    for (let k = 0; k < o.files; k++) {
      op = `open d${k}`;
      const fd = fs.openSync(path.join(o.dir, `d${k}`), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
      const start = o.start?.[k] ?? 0;
      fs.ftruncateSync(fd, start);
      fds.push(fd);
      sizes.push(start);
    }
    let n = 0;
    const until = o.maxMs ? performance.now() + o.maxMs : Number.POSITIVE_INFINITY;
    for (;;) {
      if (performance.now() > until) {
        note({ stopped: 'time', code: 'none' });
        break;
      }
      const k = rnd(o.files);
      const r = rnd(100);
      if (r < 55) {
        op = `append d${k}`;
        const len = 1 + rnd(64 * 1024);
        // Only what write(2) says it wrote: near a full disk it writes part (the kernel ends a
        // write at the page the primary refused), and counting the whole length acknowledged
        // bytes never written (chaos seed 5, full primary: 49,665 bytes of d0 "lost").
        sizes[k] += fs.writeSync(fds[k], chunk(k, sizes[k], len), 0, len, sizes[k]);
      } else if (r < 70 && sizes[k] > 0) {
        op = `overwrite d${k}`;
        const off = rnd(sizes[k]);
        const len = Math.min(sizes[k] - off, 1 + rnd(16 * 1024));
        fs.writeSync(fds[k], chunk(k, off, len), 0, len, off);
      } else if (r < 82) {
        op = `fsync d${k}`;
        const size = sizes[k];
        fs.fsyncSync(fds[k]);
        note({ k, size });
      } else {
        op = 'scratch';
        const a = path.join(o.dir, 'scratch', `s${n % 16}`);
        const b = path.join(o.dir, 'scratch', `t${n % 16}`);
        fs.writeFileSync(a, chunk(99, 0, 1 + rnd(8192)));
        if (rnd(2)) fs.renameSync(a, b);
        else fs.unlinkSync(a);
      }
      n++;
    }
  } catch (err) {
    note({ stopped: op, code: err.code ?? String(err) });
  }
  process.exit(0);
}

if (mode === 'latency') {
  const fd = fs.openSync(o.file, 'w');
  const log = fs.openSync(o.log, 'a');
  const buf = chunk(1, 0, 4096);
  const lat = [];
  let errors = 0;
  let stop = false;
  process.on('SIGTERM', () => {
    stop = true;
  });
  const period = 1000 / o.rateHz;
  let i = 0;
  const tick = () => {
    if (stop) return finish();
    const t0 = performance.now();
    try {
      fs.writeSync(fd, buf, 0, 4096, (i++ % 256) * 4096);
    } catch {
      errors++;
    }
    const ms = performance.now() - t0;
    lat.push(ms);
    if (ms > 50) fs.writeSync(log, `${JSON.stringify({ at: Date.now(), ms: Math.round(ms) })}\n`);
    setTimeout(tick, Math.max(0, period - ms));
  };
  const finish = () => {
    lat.sort((a, b) => a - b);
    const over = {};
    for (const t of [100, 250, 500, 1000, 2000]) over[t] = lat.filter((x) => x > t).length;
    process.stdout.write(
      `${JSON.stringify({ writes: lat.length, errors, maxMs: lat.at(-1) ?? 0, p99Ms: lat[Math.floor(lat.length * 0.99)] ?? 0, over })}\n`,
    );
    process.exit(0);
  };
  tick();
}
