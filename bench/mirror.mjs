#!/usr/bin/env node
// twinfs mirror-driver benchmark (issue 3), one run:
//   A. write throughput with the mirror off, on a private tmpfs (isolates the driver's own
//      cost) and on the same disk as the primary: dd 1 MiB blocks + fsync, and 4 KiB writes
//      (dd bs=4k, then open+fsync) — the same timing as bench/fs.mjs.
//   B. split latency through the control channel (ControlClient from dist/control/client.js):
//      prepare({paths:[one file]}) and prepare({volume:true}) at --files-small and --files
//      files; reported: the server's stallMs (inhibit + drain + flush + split, what writers
//      can feel) and the client's round trip (adds the reply's item listing); then release.
//      The server was started with an empty mirror over the populated primary, so this
//      section also times the initial copy of a many-small-files tree (vs cp -a).
//   C. resync of --change-mb changed inside a --resync-mb file (prepare, dd conv=notrunc
//      through the mount, drop caches, release → the server's resync ms) vs `cp` of that file
//      (drop caches first; neither fsyncs).
//   D. initial copy of a mixed tree (--copy-mb: half in 4 large files, half in 4–64 KiB
//      files): spawn `twinfs serve --mirror EMPTY` → the "state PAIR (volume)" event, vs
//      `cp -a` of the same tree on the same disk (drop caches before each; neither fsyncs).
//
//   node bench/mirror.mjs                 full size (~5–8 minutes)
//   node bench/mirror.mjs --size-mb 64 --small-mb 16 --files 2000 --files-small 200 \
//        --resync-mb 64 --copy-mb 64      (smoke)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  commonOptions,
  controlClient,
  cpuSeconds,
  DIST,
  dropCaches,
  fmt,
  log,
  MiB,
  makeTree,
  median,
  mkdirs,
  mountTmpfs,
  parseArgs,
  ratio,
  run,
  sleep,
  startBench,
  startTwinfs,
  table,
  umountPlain,
  waitMirrorIdle,
  worker,
} from './lib.mjs';

const opts = parseArgs(
  {
    'size-mb': { default: 1024, help: 'A: sequential write size, MiB' },
    'small-mb': { default: 256, help: 'A: 4 KiB writes total, MiB' },
    reps: { default: 2, help: 'A: repetitions (median)' },
    files: { default: 100000, help: 'B: files on the volume for the split test' },
    'files-small': { default: 1000, help: 'B: the same at this smaller count (flatness check; 0 skips)' },
    splits: { default: 5, help: 'B: prepares of each kind (max and median reported)' },
    'resync-mb': { default: 1024, help: 'C: size of the file resynced, MiB' },
    'change-mb': { default: 1, help: 'C: bytes changed inside it, MiB' },
    'copy-mb': { default: 1024, help: 'D: size of the mixed tree for the initial copy, MiB' },
    sections: { default: 'A,B,C,D,E', help: 'which sections to run' },
    ...commonOptions('parent of the temporary directories (same disk as /)'),
  },
  'node bench/mirror.mjs [options]: mirror driver costs (issue 3)',
);
const sections = new Set(opts.sections.split(','));
const { notes, base } = await startBench(opts);
const cli = opts.cli || undefined;
const out = {};
const loads = {};
const noteLoad = (k) => (loads[k] = os.loadavg()[0].toFixed(2));

async function mirroredServer(d, mirror, extra = {}) {
  return startTwinfs({
    cli,
    primary: d.primary,
    mount: d.mount,
    mirror,
    stateDir: d.state,
    control: '127.0.0.1:0',
    verbose: opts.verbose,
    ...extra,
  });
}

// ---- A: write throughput --------------------------------------------------------------------
if (sections.has('A')) {
  const SIZE = opts['size-mb'] * MiB;
  const SMALL = opts['small-mb'] * MiB;
  const configs = ['off', 'tmpfs', 'disk'];
  const res = {};
  noteLoad('A');
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const cfg of configs.map((_, i) => configs[(i + rep) % configs.length])) {
      const d = mkdirs(path.join(base, `A-${cfg}-${rep}`), 'primary', 'mount', 'state');
      let mirror;
      if (cfg === 'tmpfs') {
        mirror = path.join(base, `A-${cfg}-${rep}`, 'tmpfs');
        mountTmpfs(mirror, SIZE + SMALL + 256 * MiB);
      } else if (cfg === 'disk') mirror = path.join(base, `A-${cfg}-${rep}`, 'mirror');
      const srv = await startTwinfs({
        cli,
        primary: d.primary,
        mount: d.mount,
        mirror,
        stateDir: d.state,
        control: '127.0.0.1:0',
        verbose: opts.verbose,
      });
      const client = await controlClient(srv.url, srv.token);
      await waitMirrorIdle(client).catch(() => undefined);
      const r = (res[cfg] ??= { seq: [], small: [], smallFsync: [], cpuSeq: [], cpuSmall: [] });
      dropCaches();
      let cpu0 = cpuSeconds(srv.pid);
      const w = await run('dd', [
        'if=/dev/zero',
        `of=${d.mount}/seq`,
        'bs=1M',
        `count=${SIZE / MiB}`,
        'conv=fsync',
      ]);
      r.cpuSeq.push(cpuSeconds(srv.pid) - cpu0);
      r.seq.push(SIZE / MiB / (w.ms / 1000));
      if (mirror) await waitMirrorIdle(client);
      await run('rm', ['-f', `${d.mount}/seq`]);
      dropCaches();
      cpu0 = cpuSeconds(srv.pid);
      const s = await run('dd', ['if=/dev/zero', `of=${d.mount}/small`, 'bs=4k', `count=${SMALL / 4096}`]);
      const f = await worker('fsync', ['--file', `${d.mount}/small`]);
      r.cpuSmall.push(cpuSeconds(srv.pid) - cpu0);
      r.small.push(SMALL / MiB / (s.ms / 1000));
      r.smallFsync.push(SMALL / MiB / ((s.ms + f.wallMs) / 1000));
      log(
        `A rep ${rep} mirror ${cfg}: seq ${fmt(r.seq.at(-1))} MiB/s, 4k ${fmt(r.small.at(-1))} MiB/s (${fmt(r.smallFsync.at(-1))} incl. fsync)`,
      );
      if (mirror) {
        await waitMirrorIdle(client);
        const v = await client.request('verify', { content: false });
        if (v?.differences?.length) log(`A: verify found ${v.differences.length} differences!`);
      }
      await client.close();
      await srv.stop();
      if (cfg === 'tmpfs') umountPlain(mirror);
      fs.rmSync(path.join(base, `A-${cfg}-${rep}`), { recursive: true, force: true });
    }
  }
  out.A = res;
}

// Time from spawn to "mounted" of a server without a mirror (node boot, control channel,
// mount): subtracted from spawn→PAIR to get the initial copy's own time.
let bootMs;
async function measureBoot() {
  if (bootMs !== undefined) return bootMs;
  const xs = [];
  for (let i = 0; i < 2; i++) {
    const root = path.join(base, `boot-${i}`);
    const d = mkdirs(root, 'primary', 'mount', 'state');
    const srv = await mirroredServer(d, undefined);
    xs.push(srv.startupMs);
    await srv.stop();
    fs.rmSync(root, { recursive: true, force: true });
  }
  bootMs = Math.min(...xs);
  log(`server boot without a mirror: ${fmt(bootMs, 0)} ms`);
  return bootMs;
}

// ---- B: split latency (and the initial copy of many small files) -----------------------------
async function splitRun(nFiles) {
  await measureBoot();
  const root = path.join(base, `B-${nFiles}`);
  const d = mkdirs(root, 'primary', 'mount', 'state', 'cpcopy');
  const tree = makeTree(d.primary, { count: nFiles, size: 1024 });
  log(`B: ${tree.files} files written to the primary`);
  dropCaches();
  const cp = await run('cp', ['-a', d.primary, path.join(d.cpcopy, 'x')]);
  fs.rmSync(d.cpcopy, { recursive: true, force: true });
  dropCaches();
  const srv = await mirroredServer(d, path.join(root, 'mirror'));
  const pair = await srv.waitEvent(
    (e) => e.event === 'state' && e.state === 'PAIR' && e.paths === 'volume',
    600_000,
    'PAIR',
  );
  const copyMs = pair.at - srv.spawnedAt;
  log(`B: initial copy of ${nFiles} files ${fmt(copyMs / 1000, 2)} s (cp -a ${fmt(cp.ms / 1000, 2)} s)`);
  const client = await controlClient(srv.url, srv.token);
  await waitMirrorIdle(client);
  const one = { stall: [], rtt: [], release: [] };
  const vol = { stall: [], rtt: [], release: [], items: 0 };
  const target = '/d0000/f0';
  for (let i = 0; i < opts.splits; i++) {
    for (const [sel, acc] of [
      [{ paths: [target] }, one],
      [{ volume: true }, vol],
    ]) {
      const t0 = performance.now();
      const p = await client.prepare(sel, { leaseMs: 60_000 });
      acc.rtt.push(performance.now() - t0);
      acc.stall.push(p.stallMs);
      if (sel.volume) acc.items = p.items.length;
      const t1 = performance.now();
      await client.release(p.backupId);
      acc.release.push(performance.now() - t1);
    }
  }
  await client.close();
  await srv.stop();
  fs.rmSync(root, { recursive: true, force: true });
  return { nFiles, bytes: tree.bytes, copyMs, startupMs: srv.startupMs, cpMs: cp.ms, one, vol };
}
if (sections.has('B')) {
  noteLoad('B');
  out.B = [];
  if (opts['files-small'] > 0) out.B.push(await splitRun(opts['files-small']));
  out.B.push(await splitRun(opts.files));
}

// ---- C: resync of a small change in a big file ------------------------------------------------
if (sections.has('C')) {
  noteLoad('C');
  const root = path.join(base, 'C');
  const d = mkdirs(root, 'primary', 'mount', 'state', 'cp');
  const srv = await mirroredServer(d, path.join(root, 'mirror'));
  const client = await controlClient(srv.url, srv.token);
  await waitMirrorIdle(client);
  const N = opts['resync-mb'];
  await run('dd', ['if=/dev/urandom', `of=${d.mount}/big`, 'bs=1M', `count=${N}`, 'conv=fsync']);
  await waitMirrorIdle(client);
  const rs = [];
  for (let i = 0; i < 3; i++) {
    const p = await client.prepare({ paths: ['/big'] });
    await run('dd', [
      'if=/dev/urandom',
      `of=${d.mount}/big`,
      'bs=1M',
      `count=${opts['change-mb']}`,
      `seek=${Math.floor(N / 2) - i}`,
      'conv=notrunc,fsync',
    ]);
    dropCaches();
    const t0 = performance.now();
    const r = await client.release(p.backupId);
    rs.push({ ...r, rtt: performance.now() - t0 });
  }
  await waitMirrorIdle(client);
  const cps = [];
  for (let i = 0; i < 3; i++) {
    fs.rmSync(path.join(d.cp, 'big'), { force: true });
    dropCaches();
    cps.push((await run('cp', [path.join(d.primary, 'big'), path.join(d.cp, 'big')])).ms);
  }
  const v = await client.request('verify', { content: true });
  await client.close();
  await srv.stop();
  fs.rmSync(root, { recursive: true, force: true });
  out.C = { sizeMiB: N, changeMiB: opts['change-mb'], resync: rs, cpMs: cps, verifyOk: v?.ok ?? v };
}

// ---- D: initial copy of a mixed tree ----------------------------------------------------------
if (sections.has('D')) {
  noteLoad('D');
  await measureBoot();
  const root = path.join(base, 'D');
  const d = mkdirs(root, 'primary', 'mount', 'state', 'cpcopy');
  const total = opts['copy-mb'] * MiB;
  const largeEach = Math.floor(total / 2 / 4 / MiB) * MiB;
  const smallAvg = 34 * 1024;
  const count = Math.max(1, Math.floor(total / 2 / smallAvg));
  const tree = makeTree(d.primary, {
    count,
    size: (i) => 4096 + ((i * 7919) % 61) * 1024, // 4–64 KiB, average ~34 KiB
    perDir: 256,
    large: [largeEach, largeEach, largeEach, largeEach],
  });
  log(`D: tree of ${tree.files} files, ${fmt(tree.bytes / MiB)} MiB`);
  const runs = [];
  for (let i = 0; i < 2; i++) {
    dropCaches();
    const cp = await run('cp', ['-a', d.primary, path.join(d.cpcopy, 'x')]);
    fs.rmSync(d.cpcopy, { recursive: true, force: true });
    fs.mkdirSync(d.cpcopy);
    const mirror = path.join(root, `mirror${i}`);
    dropCaches();
    const srv = await mirroredServer(d, mirror);
    const pair = await srv.waitEvent(
      (e) => e.event === 'state' && e.state === 'PAIR' && e.paths === 'volume',
      600_000,
      'PAIR',
    );
    const copyMs = pair.at - srv.spawnedAt;
    const cpu = cpuSeconds(srv.pid);
    await srv.stop();
    fs.rmSync(mirror, { recursive: true, force: true });
    runs.push({ cpMs: cp.ms, copyMs, startupMs: srv.startupMs, serverCpuS: cpu });
    log(
      `D: initial copy ${fmt(copyMs / 1000, 2)} s (startup ${fmt(srv.startupMs)} ms), cp -a ${fmt(cp.ms / 1000, 2)} s`,
    );
  }
  fs.rmSync(root, { recursive: true, force: true });
  out.D = { files: tree.files, bytes: tree.bytes, runs };
}

// ---- E: the mirror driver alone (in-process, no FUSE) -----------------------------------------
// What the driver can sustain once the FUSE path is not the bottleneck: this process writes
// --size-mb to a primary file in 1 MiB pwrites and reports each to MirrorDriver.apply() the way
// the write-back cache's flush does (primary write, then the sink's copy, overlapping the next
// primary write), then fdatasync + the fsync change (durable on both). No server, no mount.
if (sections.has('E')) {
  noteLoad('E');
  const { MirrorDriver } = await import(path.join(DIST, 'mirror-driver/index.js'));
  const SIZE = opts['size-mb'];
  const buf = Buffer.alloc(MiB);
  for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  const res = {};
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const cfg of ['off', 'tmpfs', 'disk', 'disk-overlap']) {
      const root = path.join(base, `E-${cfg}`);
      const d = mkdirs(root, 'primary', 'state');
      let mirror;
      if (cfg === 'tmpfs') {
        mirror = path.join(root, 'tmpfs');
        mountTmpfs(mirror, (SIZE + 256) * MiB);
      } else if (cfg.startsWith('disk')) mirror = path.join(root, 'mirror');
      const drv = mirror
        ? await MirrorDriver.open({
            primary: d.primary,
            mirror,
            stateDir: d.state,
            retryBrokenMs: 0,
            log: () => undefined,
          })
        : null;
      while (drv && drv.status().state === 'COPY') await sleep(10);
      dropCaches();
      const t0 = performance.now();
      await drv?.beforeChange('/f');
      const fh = await fs.promises.open(path.join(d.primary, 'f'), 'w', 0o644);
      await drv?.apply({ op: 'create', path: '/f', mode: 0o100644, uid: 0, gid: 0 });
      let inflight = [];
      for (let i = 0; i < SIZE; i++) {
        await fh.write(buf, 0, MiB, i * MiB);
        if (drv) inflight.push(drv.apply({ op: 'write', path: '/f', offset: i * MiB, data: buf }));
        if (inflight.length >= 32) {
          await Promise.all(inflight);
          inflight = [];
        }
      }
      if (cfg === 'disk-overlap') {
        // What the cache's flush(sync) could do: start the mirror's fdatasync together with the
        // primary's instead of after it (it does: fdatasync(primary), then apply fsync).
        await Promise.all([
          fh.datasync(),
          ...inflight,
          drv.apply({ op: 'fsync', path: '/f', datasync: true }),
        ]);
      } else {
        await fh.datasync();
        await Promise.all(inflight);
        await drv?.apply({ op: 'fsync', path: '/f', datasync: true });
      }
      const ms = performance.now() - t0;
      await fh.close();
      await drv?.dispose();
      if (cfg === 'tmpfs') umountPlain(mirror);
      fs.rmSync(root, { recursive: true, force: true });
      (res[cfg] ??= []).push(SIZE / (ms / 1000));
      log(`E rep ${rep} ${cfg}: ${fmt(SIZE / (ms / 1000))} MiB/s`);
    }
  }
  out.E = res;
}

// ---- report -------------------------------------------------------------------------------------
const w = (s) => process.stdout.write(s);
w(`\n## bench/mirror.mjs — ${notes.date}\n\n`);
w(
  `machine: ${notes.cpus}, ${notes.memGiB} GiB, kernel ${notes.kernel}, node ${notes.node}, git ${notes.git}\nbuild: ${notes.build}\n` +
    `1-min load at the start of each section: ${JSON.stringify(loads)}; at end: ${os.loadavg()[0].toFixed(2)}\n\n`,
);
if (out.A) {
  const A = out.A;
  const off = (k) => median(A.off?.[k] ?? []);
  const rows = [];
  for (const cfg of ['off', 'tmpfs', 'disk']) {
    if (!A[cfg]) continue;
    const v = (k) => median(A[cfg][k]);
    rows.push([
      cfg === 'off' ? 'mirror off' : cfg === 'tmpfs' ? 'mirror on tmpfs' : 'mirror on same disk',
      fmt(v('seq')),
      ratio(v('seq'), off('seq')),
      fmt(v('small')),
      ratio(v('small'), off('small')),
      fmt(v('smallFsync')),
      ratio(v('smallFsync'), off('smallFsync')),
      `${fmt(v('cpuSeq'), 2)} / ${fmt(v('cpuSmall'), 2)}`,
    ]);
  }
  w(
    `A. write throughput (MiB/s, median of ${opts.reps}; seq = dd bs=1M ${opts['size-mb']} MiB conv=fsync; 4k = dd bs=4k ${opts['small-mb']} MiB, then open+fsync)\n\n`,
  );
  table(
    ['config', 'seq', 'vs off', '4k write', 'vs off', '4k incl. fsync', 'vs off', 'server CPU s seq / 4k'],
    rows,
  );
  w(`goals: tmpfs ≥ 0.85× off; same disk ≥ 0.45× off (within 10% of half)\n\n`);
}
if (out.B) {
  const rows = [];
  for (const b of out.B) {
    for (const [label, r] of [
      ['1 file', b.one],
      ['volume', b.vol],
    ]) {
      rows.push([
        b.nFiles,
        label,
        fmt(median(r.stall), 2),
        fmt(Math.max(...r.stall), 2),
        fmt(median(r.rtt), 1),
        fmt(median(r.release), 1),
        label === 'volume' ? String(r.items) : '1',
      ]);
    }
  }
  w(`B. split latency through the control channel (${opts.splits} prepares each; ms)\n\n`);
  table(
    [
      'files on volume',
      'selection',
      'stallMs median',
      'stallMs max',
      'prepare round trip',
      'release round trip',
      'items in reply',
    ],
    rows,
  );
  w(`goal: volume split ≤ 50 ms at 100,000 files, not growing with the file count\n\n`);
  table(
    [
      'initial copy (1 KiB files)',
      'files',
      'twinfs s (spawn→PAIR)',
      'copy s (minus boot)',
      'cp -a s',
      'twinfs vs cp -a (raw / minus boot)',
    ],
    out.B.map((b) => [
      'small-file tree',
      b.nFiles,
      fmt(b.copyMs / 1000, 2),
      fmt((b.copyMs - bootMs) / 1000, 2),
      fmt(b.cpMs / 1000, 2),
      `${ratio(b.cpMs, b.copyMs)} / ${ratio(b.cpMs, b.copyMs - bootMs)}`,
    ]),
  );
  w(`(boot = spawn→mounted of a server without a mirror, measured in this run: ${fmt(bootMs, 0)} ms)\n`);
  w('\n');
}
if (out.C) {
  const C = out.C;
  const rs = median(C.resync.map((r) => r.ms));
  const cp = median(C.cpMs);
  w(
    `C. resync of ${C.changeMiB} MiB changed inside a ${C.sizeMiB} MiB file (3 runs, median; caches dropped before each)\n\n`,
  );
  table(
    [
      'resync ms (server)',
      'release round trip ms',
      'bytes copied',
      'cp of the file ms',
      'resync / cp',
      'verify after',
    ],
    [
      [
        fmt(rs, 1),
        fmt(median(C.resync.map((r) => r.rtt)), 1),
        C.resync.map((r) => r.bytesCopied).join(', '),
        fmt(cp, 0),
        `${((100 * rs) / cp).toFixed(2)}%`,
        JSON.stringify(C.verifyOk),
      ],
    ],
  );
  w(`goal: ≤ 2%\n\n`);
}
if (out.D) {
  const D = out.D;
  const copy = median(D.runs.map((r) => r.copyMs));
  const cp = median(D.runs.map((r) => r.cpMs));
  w(
    `D. initial copy of a mixed tree: ${D.files} files, ${fmt(D.bytes / MiB)} MiB (half in 4 large files, half in 4–64 KiB files); 2 runs, median\n\n`,
  );
  table(
    ['', 'seconds', 'MiB/s', 'vs cp -a'],
    [
      ['cp -a (same disk, cold cache)', fmt(cp / 1000, 2), fmt(D.bytes / MiB / (cp / 1000)), '1.00×'],
      ['twinfs spawn → PAIR', fmt(copy / 1000, 2), fmt(D.bytes / MiB / (copy / 1000)), ratio(cp, copy)],
      [
        `twinfs copy (minus ${fmt(bootMs, 0)} ms boot)`,
        fmt((copy - bootMs) / 1000, 2),
        fmt(D.bytes / MiB / ((copy - bootMs) / 1000)),
        ratio(cp, copy - bootMs),
      ],
    ],
  );
  w(
    `(server startup included: ${D.runs.map((r) => fmt(r.startupMs, 0)).join(', ')} ms; server CPU s ${D.runs.map((r) => fmt(r.serverCpuS, 2)).join(', ')})\ngoal: ≥ 0.9× cp -a\n`,
  );
}
if (out.E) {
  const off = median(out.E.off);
  w(
    `\nE. the mirror driver alone, in-process (no FUSE): ${opts['size-mb']} MiB in 1 MiB pwrites + MirrorDriver.apply, then fdatasync + fsync change; median of ${opts.reps}\n\n`,
  );
  table(
    ['config', 'MiB/s', 'vs off'],
    ['off', 'tmpfs', 'disk', 'disk-overlap'].map((c) => [
      {
        off: 'primary only',
        tmpfs: 'mirror on tmpfs',
        disk: 'mirror on same disk',
        'disk-overlap': 'same disk, both fdatasyncs started together (experiment)',
      }[c],
      fmt(median(out.E[c])),
      ratio(median(out.E[c]), off),
    ]),
  );
}
if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ notes, opts, loads, results: out }, null, 2));
await sleep(10);
