#!/usr/bin/env node
// The floor under twinfs: what fuse-native itself costs per FUSE request on this machine.
//
// Mounts "nullfs", a fuse-native filesystem (the patched build twinfs uses, same mount options)
// whose handlers answer at once from memory — writes are copied into one reused buffer and
// acknowledged, reads return zeros, metadata lives in a Map — and runs the workloads of
// bench/fs.mjs against it and against bindfs -o big_writes over a tmpfs (no disk on either
// side). Two nullfs variants: with a getxattr handler (answers ENODATA synchronously; the
// kernel then asks for security.capability before every write(2), as it does on bindfs and
// twinfs) and without one (ENOSYS: the kernel stops asking). The gap between nullfs and
// bindfs is the per-request cost of fuse-native's hand-off to the JS thread; twinfs cannot be
// faster than nullfs.
//
//   node bench/fuse-floor.mjs [--size-mb 1024] [--small-mb 256] [--files 10000] [--reps 3]
//   node bench/fuse-floor.mjs --serve MOUNT [--no-xattr]     (the nullfs server; used internally)
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import {
  cpuSeconds,
  fmt,
  forceUnmountSync,
  installCleanup,
  log,
  MiB,
  machineNotes,
  median,
  mkdirs,
  mountTmpfs,
  parseArgs,
  ROOT,
  ratio,
  run,
  startBindfs,
  startSpinners,
  table,
  tempBase,
  trackMount,
  trackProc,
  umountPlain,
  untrackMount,
  waitForQuiet,
  worker,
} from './lib.mjs';

if (process.argv[2] === '--serve') {
  serveNullfs(process.argv[3], process.argv.includes('--no-xattr'));
} else {
  await main();
}

function serveNullfs(mnt, noXattr) {
  const require = createRequire(path.join(ROOT, 'package.json'));
  const Fuse = require('fuse-native');
  const now = Date.now();
  const nodes = new Map([['/', { mode: 0o40755, size: 0, ino: 1 }]]);
  let nextIno = 2;
  const sink = Buffer.alloc(1 << 20);
  const st = (n) => ({
    mode: n.mode,
    size: n.size,
    ino: n.ino,
    nlink: 1,
    uid: 0,
    gid: 0,
    mtime: now,
    atime: now,
    ctime: now,
    blksize: 4096,
    blocks: Math.ceil(n.size / 512),
  });
  const ops = {
    init: (cb) => cb(0),
    getattr: (p, cb) => {
      const n = nodes.get(p);
      return n ? cb(0, st(n)) : cb(Fuse.ENOENT);
    },
    access: (p, _m, cb) => cb(nodes.has(p) ? 0 : Fuse.ENOENT),
    readdir: (p, cb) => {
      const pre = p === '/' ? '/' : `${p}/`;
      const names = [];
      for (const k of nodes.keys())
        if (k !== p && k.startsWith(pre) && !k.slice(pre.length).includes('/'))
          names.push(k.slice(pre.length));
      cb(0, names);
    },
    statfs: (_p, cb) =>
      cb(0, {
        bsize: 4096,
        frsize: 4096,
        blocks: 1e6,
        bfree: 1e6,
        bavail: 1e6,
        files: 1e6,
        ffree: 1e6,
        favail: 1e6,
        namemax: 255,
      }),
    open: (p, _flags, cb) => (nodes.has(p) ? cb(0, 42) : cb(Fuse.ENOENT)),
    create: (p, mode, cb) => {
      nodes.set(p, { mode, size: 0, ino: nextIno++ });
      cb(0, 42);
    },
    read: (p, _fh, _buf, len, pos, cb) => {
      const n = nodes.get(p);
      cb(Math.max(0, Math.min(len, (n?.size ?? 0) - pos)));
    },
    write: (p, _fh, buf, len, pos, cb) => {
      // The copy a cache must make (FUSE-NOTES: the buffer dies after the callback).
      buf.copy(sink, 0, 0, Math.min(len, sink.length));
      const n = nodes.get(p);
      if (n && pos + len > n.size) n.size = pos + len;
      cb(len);
    },
    flush: (_p, _fh, cb) => cb(0),
    release: (_p, _fh, cb) => cb(0),
    fsync: (_p, _ds, _fh, cb) => cb(0),
    truncate: (p, size, cb) => {
      const n = nodes.get(p);
      if (n) n.size = size;
      cb(n ? 0 : Fuse.ENOENT);
    },
    ftruncate: (p, _fh, size, cb) => {
      const n = nodes.get(p);
      if (n) n.size = size;
      cb(0);
    },
    utimens: (_p, _a, _m, cb) => cb(0),
    chmod: (_p, _m, cb) => cb(0),
    unlink: (p, cb) => cb(nodes.delete(p) ? 0 : Fuse.ENOENT),
    mkdir: (p, mode, cb) => {
      nodes.set(p, { mode: mode | 0o40000, size: 0, ino: nextIno++ });
      cb(0);
    },
    rmdir: (p, cb) => cb(nodes.delete(p) ? 0 : Fuse.ENOENT),
  };
  if (!noXattr) ops.getxattr = (_p, _name, _pos, cb) => cb(Fuse.ENODATA);
  const fuse = new Fuse(mnt, ops, {
    fsname: 'nullfs',
    allowOther: true,
    defaultPermissions: true,
    attrTimeout: '1',
    entryTimeout: '1',
    extraOptions: ['big_writes', 'max_write=131072', 'max_read=131072', 'max_readahead=1048576', 'use_ino'],
    timeout: false,
  });
  fuse.mount((err) => {
    if (err) {
      process.stderr.write(`nullfs mount failed: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write('mounted\n');
  });
  const stop = () => fuse.unmount(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function startNullfs(mnt, noXattr) {
  const p = spawn(
    process.execPath,
    [new URL(import.meta.url).pathname, '--serve', mnt, ...(noXattr ? ['--no-xattr'] : [])],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, UV_THREADPOOL_SIZE: '32' },
    },
  );
  trackProc(p);
  trackMount(mnt);
  await new Promise((resolve, reject) => {
    p.stdout.on('data', (d) => String(d).includes('mounted') && resolve());
    p.on('exit', (c) => reject(new Error(`nullfs exited ${c}`)));
  });
  return {
    pid: p.pid,
    async stop() {
      p.kill('SIGTERM');
      await new Promise((r) => (p.exitCode !== null ? r() : p.on('exit', r)));
      forceUnmountSync(mnt);
      untrackMount(mnt);
    },
  };
}

async function main() {
  const opts = parseArgs(
    {
      'size-mb': { default: 1024, help: 'sequential write/read size, MiB' },
      'small-mb': { default: 256, help: '4 KiB writes total, MiB' },
      files: { default: 10000, help: 'files in the create/stat/unlink workload' },
      'meta-size': { default: 1024, help: 'bytes written into each small file' },
      reps: { default: 3, help: 'repetitions (median)' },
      dir: { default: '/tmp', help: 'parent of the temporary directories' },
      spin: { default: 0, help: 'busy loops at nice 19 during the workloads (keeps vCPUs out of idle)' },
      'max-load': { default: 1.5, help: 'wait (up to --wait-quiet s) for the 1-min load to drop below this' },
      'wait-quiet': { default: 120, help: 'longest wait for a quiet machine, s' },
      'time-limit': { default: 600, help: 'abort (and clean up) after this many seconds' },
    },
    'node bench/fuse-floor.mjs [options]: fuse-native per-request floor vs bindfs (both without a disk)',
  );
  installCleanup({ timeLimitSec: opts['time-limit'] });
  const notes = machineNotes();
  await waitForQuiet(opts['max-load'], opts['wait-quiet'], log);
  const base = tempBase(opts.dir);
  const d = mkdirs(base, 'tmpfs', 'bindfs', 'nullfs', 'nullfs-nox');
  mountTmpfs(d.tmpfs, opts['size-mb'] * MiB + opts['small-mb'] * MiB + 512 * MiB);
  const servers = {
    bindfs: await startBindfs(d.tmpfs, d.bindfs, 'big_writes'),
    nullfs: await startNullfs(d.nullfs, false),
    'nullfs-noxattr': await startNullfs(d['nullfs-nox'], true),
  };
  const mounts = { bindfs: d.bindfs, nullfs: d.nullfs, 'nullfs-noxattr': d['nullfs-nox'] };
  const targets = Object.keys(mounts);
  const res = {};
  const add = (w, t, v) => ((res[w] ??= {})[t] ??= []).push(v);
  const SIZE = opts['size-mb'];
  const SMALL = opts['small-mb'] * MiB;
  const stopSpin = opts.spin > 0 ? startSpinners(opts.spin) : () => undefined;
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const t of targets.map((_, i) => targets[(i + rep) % targets.length])) {
      const m = mounts[t];
      const pid = servers[t].pid;
      let c0 = cpuSeconds(pid);
      const w = await run('dd', ['if=/dev/zero', `of=${m}/seq`, 'bs=1M', `count=${SIZE}`, 'conv=fsync']);
      add('seqwrite', t, { v: SIZE / (w.ms / 1000), cpu: cpuSeconds(pid) - c0 });
      c0 = cpuSeconds(pid);
      const r = await run('dd', [`if=${m}/seq`, 'of=/dev/null', 'bs=1M']);
      add('seqread', t, { v: SIZE / (r.ms / 1000), cpu: cpuSeconds(pid) - c0 });
      await run('rm', ['-f', `${m}/seq`]);
      c0 = cpuSeconds(pid);
      const s = await run('dd', ['if=/dev/zero', `of=${m}/small`, 'bs=4k', `count=${SMALL / 4096}`]);
      add('small', t, { v: SMALL / MiB / (s.ms / 1000), cpu: cpuSeconds(pid) - c0 });
      await run('rm', ['-f', `${m}/small`]);
      await run('mkdir', ['-p', `${m}/meta`]);
      c0 = cpuSeconds(pid);
      const mm = await worker('meta', [
        '--dir',
        `${m}/meta`,
        '--n',
        String(opts.files),
        '--size',
        String(opts['meta-size']),
      ]);
      add('meta-create', t, { v: opts.files / (mm.createMs / 1000), cpu: cpuSeconds(pid) - c0 });
      add('meta-stat', t, { v: opts.files / (mm.statMs / 1000) });
      add('meta-unlink', t, { v: opts.files / (mm.unlinkMs / 1000) });
      await run('rm', ['-rf', `${m}/meta`]);
      log(
        `rep ${rep} ${t}: seq w ${fmt(res.seqwrite[t].at(-1).v)} r ${fmt(res.seqread[t].at(-1).v)} 4k ${fmt(res.small[t].at(-1).v)} MiB/s; create ${fmt(res['meta-create'][t].at(-1).v, 0)}/s`,
      );
    }
  }
  stopSpin();
  for (const s of Object.values(servers)) await s.stop();
  umountPlain(d.tmpfs);
  const w = (x) => process.stdout.write(x);
  w(
    `\n## bench/fuse-floor.mjs — ${notes.date}\n\nmachine: ${notes.cpus}, load at start ${notes.load}, node ${notes.node}; ${opts.reps} reps, median; spinners ${opts.spin}; bindfs over tmpfs, nullfs in memory\n\n`,
  );
  const labels = {
    seqwrite: `seq write 1M + fsync (MiB/s)`,
    seqread: 'seq read 1M (MiB/s)',
    small: '4k write (MiB/s)',
    'meta-create': 'create+write 1 KiB+close (/s)',
    'meta-stat': 'stat (/s)',
    'meta-unlink': 'unlink (/s)',
  };
  const rows = [];
  for (const [k, label] of Object.entries(labels)) {
    const ref = median(res[k].bindfs.map((x) => x.v));
    const cells = targets.map((t) => {
      const v = median(res[k][t].map((x) => x.v));
      return `${fmt(v, 0)} (${ratio(v, ref)})`;
    });
    const cpu = targets.map((t) => fmt(median(res[k][t].map((x) => x.cpu ?? Number.NaN)), 2)).join(' / ');
    rows.push([label, ...cells, cpu]);
  }
  table(
    [
      'workload',
      'bindfs (tmpfs)',
      'nullfs (fuse-native, getxattr)',
      'nullfs, no getxattr',
      'server CPU s b / n / n-nox',
    ],
    rows,
  );
}
