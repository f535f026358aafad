// Client side of the benchmarks: runs in its own process (never in the server's), uses only
// synchronous syscalls in tight loops, and prints one JSON line with its results.
//
//   node bench/worker.mjs meta   --dir D --n N [--size B]
//       create (open O_CREAT|O_EXCL|O_WRONLY, write B bytes, close) N files in D, then
//       stat each, then unlink each; each phase timed separately (ms). --pause-ms between
//       phases (default 1100: longer than the FUSE attr/entry timeout of 1 s, so the stat and
//       unlink phases are not answered from the kernel's cache on either FUSE mount).
//   node bench/worker.mjs writer --file F --rate R --duration-ms T --span S --out OUT
//       paced writer: R writes/s of 4 KiB (--bs) at offsets cycling through [--base, --base+S)
//       of F (opened O_WRONLY, must exist), for T ms or until the file --stop exists (checked
//       every 50 writes); each write(2) is timed; OUT receives Float64 pairs (epoch ms at
//       start, latency ms). Prints "ready" once the file is open.
//   node bench/worker.mjs fsync  --file F
//       open F read-only and fsync it; prints the fsync time.
import * as fs from 'node:fs';

const [mode, ...rest] = process.argv.slice(2);
const a = {};
for (let i = 0; i < rest.length; i += 2) a[rest[i].replace(/^--/, '')] = rest[i + 1];
const now = () => performance.timeOrigin + performance.now();
const sab = new Int32Array(new SharedArrayBuffer(4));
const sleep = (ms) => ms > 0 && Atomics.wait(sab, 0, 0, ms);

if (mode === 'meta') {
  const n = Number(a.n ?? 10000);
  const size = Number(a.size ?? 0);
  const pause = Number(a['pause-ms'] ?? 1100);
  const dir = a.dir;
  const data = Buffer.alloc(size, 0x61);
  const names = Array.from({ length: n }, (_, i) => `${dir}/f${i}`);
  const flags = fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY;
  let t = now();
  for (const f of names) {
    const fd = fs.openSync(f, flags, 0o644);
    if (size) fs.writeSync(fd, data, 0, size, 0);
    fs.closeSync(fd);
  }
  const createMs = now() - t;
  sleep(pause);
  t = now();
  for (const f of names) fs.statSync(f);
  const statMs = now() - t;
  sleep(pause);
  t = now();
  for (const f of names) fs.unlinkSync(f);
  const unlinkMs = now() - t;
  process.stdout.write(`${JSON.stringify({ n, size, createMs, statMs, unlinkMs })}\n`);
} else if (mode === 'writer') {
  const rate = Number(a.rate ?? 1000);
  const duration = Number(a['duration-ms'] ?? 5000);
  const bs = Number(a.bs ?? 4096);
  const span = Math.max(bs, Number(a.span ?? 1 << 20));
  const base = Number(a.base ?? 0);
  const stop = a.stop;
  const fd = fs.openSync(a.file, fs.constants.O_WRONLY);
  const buf = Buffer.alloc(bs, 0x5a);
  const max = Math.ceil((rate * duration) / 1000) + 16;
  const rec = new Float64Array(max * 2);
  process.stdout.write('ready\n');
  const interval = 1000 / rate;
  const t0 = now();
  const end = t0 + duration;
  let next = t0;
  let i = 0;
  let off = 0;
  while (i < max) {
    let t = now();
    if (t >= end) break;
    if (stop && i % 50 === 0 && fs.existsSync(stop)) break;
    if (t < next) {
      sleep(next - t);
      t = now();
    }
    const s = now();
    fs.writeSync(fd, buf, 0, bs, base + off);
    const e = now();
    rec[2 * i] = s;
    rec[2 * i + 1] = e - s;
    i++;
    off += bs;
    if (off + bs > span) off = 0;
    // No catch-up bursts after a stall: keep the pace from now on.
    next = Math.max(next + interval, e);
  }
  fs.closeSync(fd);
  fs.writeFileSync(a.out, Buffer.from(rec.buffer, 0, i * 16));
  process.stdout.write(`${JSON.stringify({ writes: i, t0, ms: now() - t0 })}\n`);
} else if (mode === 'fsync') {
  const fd = fs.openSync(a.file, fs.constants.O_RDONLY);
  const t = now();
  fs.fsyncSync(fd);
  const fsyncMs = now() - t;
  fs.closeSync(fd);
  process.stdout.write(`${JSON.stringify({ fsyncMs })}\n`);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
