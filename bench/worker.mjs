// Client side of the benchmarks: runs in its own process (never in the server's), uses only
// synchronous syscalls in tight loops, and prints one JSON line with its results.
//
//   node bench/worker.mjs meta   --dir D --n N [--size B]
//       create (open O_CREAT|O_EXCL|O_WRONLY, write B bytes, close) N files in D, then
//       stat each, then unlink each; each phase timed separately (ms). --pause-ms between
//       phases (default 1100: longer than the FUSE attr/entry timeout of 1 s, so the stat and
//       unlink phases are not answered from the kernel's cache on either FUSE mount).
//   node bench/worker.mjs walk --dir D --n N [--size B] [--settle-ms 4000] [--passes 2]
//       creates N files of B bytes (default 1024) in directories of 100 under D, waits
//       --settle-ms (default 4000: past twinfs's 3 s write-back, so the tree is at rest, as a
//       checkout is when `git status` or `ls -lR` runs), then walks it --passes times
//       (readdir + lstat of every entry, what find -ls, ls -lR, du, git status do), --pause-ms
//       (default 1100, past bindfs's 1 s attr/entry timeouts) apart; each pass timed (ms).
//   node bench/worker.mjs writer --file F --rate R --duration-ms T --span S --out OUT
//       paced writer: R writes/s of 4 KiB (--bs) at offsets cycling through [--base, --base+S)
//       of F (opened O_WRONLY, must exist), for T ms or until the file --stop exists (checked
//       every 50 writes); each write(2) is timed; OUT receives Float64 pairs (epoch ms at
//       start, latency ms). Prints "ready" once the file is open.
//   node bench/worker.mjs fsync  --file F
//       open F read-only and fsync it; prints the fsync time.
//   node bench/worker.mjs write-fsync --file F --n N
//       N times: a 4 KiB write at one of 64 offsets of F (created), then fsync; prints the
//       mean fsync time (ms): what an fsync of a little cached data costs.
//   node bench/worker.mjs append --file F --n N [--size B]
//       a log's writes: F opened O_WRONLY|O_APPEND|O_CREAT, N writes of B bytes (default 100),
//       closed; prints the time of the writes (ms).
//   node bench/worker.mjs ops --dir D --op OP --n N
//       one kind of single-file metadata operation, N times in a row on a file of 100 bytes in
//       D (made before, removed after, neither timed); prints the time of the N (ms). OP is one
//       of rename (a → b, b → a), chmod, chown, utime, truncate (to 0..6 bytes; Node opens the
//       file, ftruncates and closes it), setxattr,
//       link (a second name made and removed: two operations per round, each counted),
//       openclose (open O_RDONLY, close), opendir (a directory opened O_RDONLY|O_DIRECTORY and
//       closed: OPENDIR and RELEASEDIR), readlink, mkdir (mkdir then rmdir, each counted),
//       statmissing (stat of a name that does not exist).
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
} else if (mode === 'append') {
  const n = Number(a.n ?? 10000);
  const data = Buffer.alloc(Number(a.size ?? 100), 0x6c);
  const fd = fs.openSync(a.file, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o644);
  const t = now();
  for (let i = 0; i < n; i++) fs.writeSync(fd, data);
  const ms = now() - t;
  fs.closeSync(fd);
  process.stdout.write(`${JSON.stringify({ n, size: data.length, ms })}\n`);
} else if (mode === 'ops') {
  const n = Number(a.n ?? 1000);
  const f = `${a.dir}/ops-a`;
  const g = `${a.dir}/ops-b`;
  const PAGE = Buffer.alloc(4096, 0x72);
  fs.writeFileSync(f, Buffer.alloc(100, 0x6f));
  fs.symlinkSync('ops-a', `${a.dir}/ops-l`);
  fs.mkdirSync(`${a.dir}/ops-d`);
  const steps = {
    rename: (i) => (i % 2 === 0 ? fs.renameSync(f, g) : fs.renameSync(g, f)),
    chmod: (i) => fs.chmodSync(f, 0o600 | (i & 0o77)),
    chown: (i) => fs.chownSync(f, 0, i % 3),
    utime: (i) => fs.utimesSync(f, i, i),
    truncate: (i) => fs.truncateSync(f, i % 7),
    // Node has no xattr call (setfattr(1) per call would time a process start): python runs
    // the whole loop and prints its time.
    setxattr: null,
    link: (i) => (i % 2 === 0 ? fs.linkSync(f, g) : fs.unlinkSync(g)),
    openclose: () => fs.closeSync(fs.openSync(f, 'r')),
    opendir: () =>
      fs.closeSync(fs.openSync(`${a.dir}/ops-d`, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)),
    // An existing file written again: as a shell's `>` or a compiler's fopen("w") (O_TRUNC), and
    // in place, as `dd conv=notrunc` or a program that updates a record (O_RDWR, 4 KiB at 0).
    rewrite: () => fs.writeFileSync(f, PAGE),
    update: () => {
      const fd = fs.openSync(f, 'r+');
      fs.writeSync(fd, PAGE, 0, PAGE.length, 0);
      fs.closeSync(fd);
    },
    readlink: () => fs.readlinkSync(`${a.dir}/ops-l`),
    mkdir: (i) => (i % 2 === 0 ? fs.mkdirSync(g) : fs.rmdirSync(g)),
    // A name that is not there, as a compiler's include search or Python's imports ask.
    statmissing: () => fs.statSync(`${a.dir}/ops-missing`, { throwIfNoEntry: false }),
  };
  if (!(a.op in steps)) throw new Error(`ops: unknown --op ${a.op}`);
  let ms;
  if (a.op === 'setxattr') {
    const { execFileSync } = await import('node:child_process');
    const code = `import os,time\nt=time.perf_counter()\nfor i in range(${n}): os.setxattr('${f}','user.bench',b'v%d'%i)\nprint((time.perf_counter()-t)*1000)`;
    ms = Number(execFileSync('/usr/bin/python3', ['-c', code]).toString());
  } else {
    const step = steps[a.op];
    const t = now();
    for (let i = 0; i < n; i++) step(i);
    ms = now() - t;
  }
  for (const p of [f, g, `${a.dir}/ops-l`, `${a.dir}/ops-d`]) fs.rmSync(p, { recursive: true, force: true });
  process.stdout.write(`${JSON.stringify({ op: a.op, n, ms })}\n`);
} else if (mode === 'files') {
  // One phase of meta on its own (bench/create-unlink.mjs): --op create (O_CREAT|O_EXCL, --size
  // bytes, close), stat or unlink, of --n files f0.. in --dir.
  const n = Number(a.n ?? 3000);
  const data = Buffer.alloc(Number(a.size ?? 4096), 0x61);
  const flags = fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY;
  // A create's three calls timed apart (each is one or more FUSE round trips the caller waits
  // for): medians in µs as `calls`.
  const lat = a.op === 'create' || a.op === undefined ? [[], [], []] : null;
  const t = now();
  for (let i = 0; i < n; i++) {
    const f = `${a.dir}/f${i}`;
    if (a.op === 'unlink') fs.unlinkSync(f);
    else if (a.op === 'stat') fs.statSync(f);
    else {
      const t0 = now();
      const fd = fs.openSync(f, flags, 0o644);
      const t1 = now();
      if (data.length) fs.writeSync(fd, data, 0, data.length, 0);
      const t2 = now();
      fs.closeSync(fd);
      lat[0].push(t1 - t0);
      lat[1].push(t2 - t1);
      lat[2].push(now() - t2);
    }
  }
  const ms = now() - t;
  const med = (xs) => Math.round(xs.sort((x, y) => x - y)[xs.length >> 1] * 1000);
  const calls = lat && n > 0 ? { open: med(lat[0]), write: med(lat[1]), close: med(lat[2]) } : undefined;
  process.stdout.write(`${JSON.stringify({ n, ms, calls })}\n`);
} else if (mode === 'walk') {
  const n = Number(a.n ?? 10000);
  const size = Number(a.size ?? 1024);
  const data = Buffer.alloc(size, 0x61);
  let t = now();
  for (let i = 0; i < n; i++) {
    const sub = `${a.dir}/d${Math.floor(i / 100)}`;
    if (i % 100 === 0) fs.mkdirSync(sub);
    fs.writeFileSync(`${sub}/f${i}`, data);
  }
  const createMs = now() - t;
  sleep(Number(a['settle-ms'] ?? 4000));
  const walk = (dir) => {
    let entries = 0;
    for (const name of fs.readdirSync(dir)) {
      const st = fs.lstatSync(`${dir}/${name}`);
      entries++;
      if (st.isDirectory()) entries += walk(`${dir}/${name}`);
    }
    return entries;
  };
  const passMs = [];
  let entries = 0;
  for (let p = 0; p < Number(a.passes ?? 2); p++) {
    if (p > 0) sleep(Number(a['pause-ms'] ?? 1100));
    t = now();
    entries = walk(a.dir);
    passMs.push(now() - t);
  }
  process.stdout.write(`${JSON.stringify({ n, entries, createMs, passMs })}\n`);
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
} else if (mode === 'write-fsync') {
  const n = Number(a.n ?? 200);
  const buf = Buffer.alloc(4096, 0x61);
  const fd = fs.openSync(a.file, 'w+');
  let ms = 0;
  for (let i = 0; i < n; i++) {
    fs.writeSync(fd, buf, 0, buf.length, (i % 64) * buf.length);
    const t = now();
    fs.fsyncSync(fd);
    ms += now() - t;
  }
  fs.closeSync(fd);
  process.stdout.write(`${JSON.stringify({ n, fsyncMs: ms / n })}\n`);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
