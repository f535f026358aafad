#!/usr/bin/env node
// Before/after in one run: the same short workloads on bindfs and on several twinfs variants
// mounted side by side over primary directories on one filesystem, interleaved, with server CPU per unit of
// work (the number that does not depend on how idle the vCPUs are). Use it to check a fix:
//
//   node bench/compare.mjs \
//     --variant 'as built' \
//     --variant 'patched|/tmp/patched/dist/cli/main.js' \
//     --variant 'write-through||--write-through' \
//     --variant 'env knob|/tmp/exp/dist/cli/main.js|--cache-mb 128|EXP_ATTR=1'
//
// A variant is NAME|CLI|SERVE ARGS|ENV (all but NAME optional; CLI defaults to this checkout's
// dist, snapshotted). Workloads: dd 1 MiB + conv=fsync of --seq-mb, dd bs=4k of --small-mb
// (no fsync), a cold read (dd bs=1M of a --read-mb file, page cache dropped) and a cached read
// (dd bs=1M of the same file, read once before through the same
// mount: served from the kernel's page cache where it is kept across opens; --read-passes timed
// passes per rep, each a sample of the median), bench/worker.mjs
// meta on --files files, and bench/worker.mjs walk (readdir + lstat of a tree of --files files at
// rest, twice, 1.1 s apart). --bare adds the primary directory itself as a target (no server).
// --workloads picks some of seq,small,read,meta,walk,tools,append,ops; ops (not in the default) times
// --ops-n of each single-file metadata operation in a row (bench/worker.mjs ops: rename, chmod,
// chown, utime, truncate, setxattr, link/unlink of a second name, open+close, a directory's
// open+close (opendir), an existing file
// written again with O_TRUNC (rewrite) and in place (update: open O_RDWR, 4 KiB at 0, close),
// readlink, mkdir/rmdir, stat of a missing name): µs per operation as the caller sees it, and the server's CPU per operation;
// falloc (not in the default): posix_fallocate of --falloc-mb into a new file (now fallocate(2)
// through the mount; glibc's one-byte-per-block fallback where a filesystem refuses it), --ops-n
// fallocate(2) PUNCH_HOLE|KEEP_SIZE calls of 4 KiB at random pages of a written 16 MiB file (no
// number where the first is EOPNOTSUPP: bindfs), and
// stress-ng's fallocate stressor for 5 s (its bogo ops/s; skipped without stress-ng);
// sqlite (not in the default): --sqlite-writers python processes at once, each committing
// --sqlite-commits small transactions (an insert of 10–3,000 random bytes, now and then a delete)
// to one SQLite database in WAL mode (synchronous FULL: an fsync of the WAL per commit; the
// -shm index shared through mmap, the write lock taken with fcntl): commits per second, and the
// server's CPU per commit (a database's pattern: small writes, then fsync, writers taking turns);
// untar (not in the default): `tar -xf` of a source-like tree made once per run (--untar-files
// files of 200 B–16 KiB in directories of 20, one symlink per 10 files, modes 0644/0755/0600,
// owners 0 and 1000, mtimes of a year ago) into the mount as root (owners, modes and times kept:
// create, write, close, chown, chmod, utimens, mkdir, symlink), then every file read once with
// `cat` (page cache dropped first, then again warm: opens, reads, closes), then `rm -rf` of it: seconds of
// each and the server's CPU per entry; --untar-user UID runs both as that user instead (what a
// root server's users do: every entry then needs an owner change);
// append (not in the default)
// times 10 × --files 100-byte O_APPEND writes to one new file (a log); tools (not in the default) runs
// `find . -ls`, `ls -lR` and `git status` on a git checkout of --tools-files files (100 per
// directory, committed, at rest): each after a drop of the kernel's caches (pass 1) and again
// 1.1 s later (pass 2, past bindfs's 1 s timeouts).
// The dd rates are dd's own clock (its "copied, T s" line: first read to last write, the fsync
// included), not the wall time of the dd process: spawning dd costs 7–15 ms here, more than a
// 32 MiB cached read itself, and that fixed cost pulled every ratio toward 1.
// @MIRROR@ in a variant's ARGS becomes a fresh directory of its own (`--mirror @MIRROR@`: the
// mirror on the same filesystem); @SHM@ a fresh tmpfs (`--mirror @SHM@`) and @LOOP@ a fresh ext4 on
// a loop device over an image beside the primary (`--mirror @LOOP@`): the mirror on a separate
// filesystem, which issue 12's sequential-write goal names; this machine has one disk.
import * as fs from 'node:fs';
import {
  cpuSeconds,
  ddSeconds,
  dropCaches,
  fmt,
  installCleanup,
  log,
  machineNotes,
  median,
  minorFaults,
  mkdirs,
  parseArgs,
  run,
  snapshotDist,
  startBindfs,
  startVariant,
  table,
  takeRepeated,
  tempBase,
  waitForQuiet,
  worker,
} from './lib.mjs';

const argv = process.argv.slice(2);
const variants = takeRepeated(argv, '--variant');
const opts = parseArgs(
  {
    'seq-mb': { default: 512, help: 'sequential write size, MiB' },
    'small-mb': { default: 64, help: '4 KiB writes, MiB' },
    files: { default: 3000, help: 'files in the metadata workload' },
    'read-mb': { default: 256, help: 'cached read file size, MiB' },
    'read-passes': { default: 5, help: 'timed cached-read passes per rep (each a sample)' },
    bare: { default: false, help: 'also run on the bare primary directory' },
    reps: { default: 3, help: 'repetitions (median)' },
    dir: { default: '/tmp', help: 'parent of the temporary directories' },
    'max-load': { default: 1.5, help: 'wait (up to --wait-quiet s) for the 1-min load to drop below this' },
    'wait-quiet': { default: 120, help: 'longest wait for a quiet machine, s' },
    'time-limit': { default: 1200, help: 'abort (and clean up) after this many seconds' },
    workloads: {
      default: 'seq,small,read,meta,walk',
      help: 'comma list of seq,small,read,meta,walk,tools,append,ops,falloc,sqlite,untar',
    },
    'falloc-mb': { default: 256, help: 'posix_fallocate size in the falloc workload, MiB' },
    'ops-n': { default: 2000, help: 'operations of each kind in the ops workload' },
    'ops-only': { default: '', help: 'comma-separated: only these operations of the ops workload' },
    'tools-files': { default: 10000, help: 'files in the tools workload (find, ls -lR, git status)' },
    'untar-files': { default: 4000, help: 'files in the untar workload' },
    'untar-user': {
      default: '',
      help: 'run the untar and its rm -rf as this uid (and gid), not root: owners then are the user',
    },
    'sqlite-writers': { default: 4, help: 'writer processes in the sqlite workload' },
    'sqlite-commits': { default: 500, help: 'commits per writer in the sqlite workload' },
  },
  'node bench/compare.mjs --variant NAME[|CLI[|ARGS[|ENV=V ...]]] ... [options]',
  argv,
);
if (variants.length === 0) variants.push('as built');
installCleanup({ timeLimitSec: opts['time-limit'] });
const notes = machineNotes();
await waitForQuiet(opts['max-load'], opts['wait-quiet'], log);
const base = tempBase(opts.dir);
notes.build = snapshotDist(base);
const d = mkdirs(base, 'primary', 'bindfs');
const S = { bindfs: await startBindfs(d.primary, d.bindfs) };
const M = { bindfs: d.bindfs };
if (opts.bare) {
  S.bare = { pid: undefined, stop: async () => undefined };
  M.bare = d.primary;
}
for (const [i, spec] of variants.entries()) {
  const v = await startVariant(base, i, spec);
  S[v.name] = v.server;
  M[v.name] = v.mount;
}
const SEQ = opts['seq-mb'];
const SMALL = opts['small-mb'];
const FILES = opts.files;
const WANT = new Set(String(opts.workloads).split(','));
for (const w of WANT)
  if (
    !['seq', 'small', 'read', 'meta', 'walk', 'tools', 'append', 'ops', 'falloc', 'sqlite', 'untar'].includes(
      w,
    )
  )
    throw new Error(`unknown workload ${w}`);
const OPS = [
  'rename',
  'chmod',
  'chown',
  'utime',
  'truncate',
  'setxattr',
  'link',
  'openclose',
  'opendir',
  'rewrite',
  'update',
  'readlink',
  'mkdir',
  'statmissing',
];
const OPS_ONLY = String(opts['ops-only']).split(',').filter(Boolean);
const OPS_RUN = OPS.filter((o) => OPS_ONLY.length === 0 || OPS_ONLY.includes(o));
// The falloc workload's timed calls, in a child (never in this process: it serves nothing, but
// the mounts are touched from children throughout). argv: FILE MIB N; prints JSON.
const FALLOC_PY = `
import ctypes, json, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
f, mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
t = time.perf_counter(); os.posix_fallocate(fd, 0, mib << 20); pre = time.perf_counter() - t
os.ftruncate(fd, 0)
block = os.urandom(1 << 20)
for i in range(16): os.pwrite(fd, block, i << 20)
os.fsync(fd)
rng = random.Random(1)
t = time.perf_counter()
punch = None
for i in range(n):
    if libc.fallocate(fd, 3, rng.randrange(4096) * 4096, 4096) != 0:
        if ctypes.get_errno() == 95: break  # EOPNOTSUPP (bindfs has no PUNCH_HOLE): no number
        raise OSError(ctypes.get_errno(), 'fallocate')
else:
    punch = time.perf_counter() - t
os.close(fd); os.unlink(f)
print(json.dumps({'preS': pre, 'punchS': punch}))
`;
// The sqlite workload's writer, in a child. argv: DB WRITER COMMITS; prints its seconds. The
// database, its table and WAL mode (which persists in the file) are made before the writers start.
const SQLITE_PY = `
import random, sqlite3, sys, time
db, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(db, timeout=120)
r = random.Random(wid)
t = time.perf_counter()
for i in range(n):
    c.execute('insert into t (w, v) values (?, ?)', (wid, r.randbytes(r.randint(10, 3000))))
    if r.random() < 0.1:
        c.execute('delete from t where id in (select id from t where w = ? order by id limit 2)', (wid,))
    c.commit()
print(time.perf_counter() - t)
`;
// The untar workload's tree, made once (argv: DIR FILES); prints the number of entries.
const UNTAR_TREE_PY = `
import os, random, sys, time
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
old = time.time() - 365 * 86400
entries = 0
for i in range(n):
    d = os.path.join(root, 'src', 'm%d' % (i // 400), 'd%d' % (i // 20))
    if not os.path.isdir(d):
        os.makedirs(d)
        entries += 1
    p = os.path.join(d, 'f%d.c' % i)
    with open(p, 'wb') as f:
        f.write(r.randbytes(r.randint(200, 16384)))
    os.chmod(p, r.choice([0o644, 0o644, 0o755, 0o600]))
    os.chown(p, r.choice([0, 1000]), r.choice([0, 1000]))
    os.utime(p, (old + i, old + i))
    entries += 1
    if i % 10 == 0:
        os.symlink('f%d.c' % i, os.path.join(d, 'l%d' % i))
        entries += 1
print(entries)
`;
let untarBall;
let untarEntries = 0;
const STRESS_NG = ['/usr/bin/stress-ng', '/usr/local/bin/stress-ng'].find((p) => fs.existsSync(p));
const TOOLS = [
  ['find', 'find', ['.', '-ls']],
  ['lsR', 'ls', ['-lR', '.']],
  ['git', 'git', ['status', '--porcelain']],
];
const res = {};
const add = (t, k, v) => {
  ((res[t] ??= {})[k] ??= []).push(v);
};
const names = Object.keys(M);
// dd's report in the C locale, for ddSeconds.
const DD = { env: { ...process.env, LC_ALL: 'C' } };
for (let rep = 0; rep < opts.reps; rep++) {
  for (const t of names.map((_, j) => names[(j + rep) % names.length])) {
    const m = M[t];
    const pid = S[t].pid;
    let c;
    let f;
    let r;
    if (WANT.has('seq')) {
      dropCaches(base);
      c = cpuSeconds(pid);
      f = minorFaults(pid);
      r = await run('dd', ['if=/dev/zero', `of=${m}/cmp-seq`, 'bs=1M', `count=${SEQ}`, 'conv=fsync'], DD);
      add(t, 'seq', SEQ / ddSeconds(r));
      add(t, 'seqcpu', ((cpuSeconds(pid) - c) * 1000) / SEQ);
      add(t, 'seqflt', (minorFaults(pid) - f) / SEQ);
      await run('rm', ['-f', `${m}/cmp-seq`]);
    }
    if (WANT.has('small')) {
      dropCaches(base);
      c = cpuSeconds(pid);
      r = await run('dd', ['if=/dev/zero', `of=${m}/cmp-small`, 'bs=4k', `count=${SMALL * 256}`], DD);
      add(t, 'small', SMALL / ddSeconds(r));
      add(t, 'smallcpu', ((cpuSeconds(pid) - c) * 1e6) / (SMALL * 256));
      await run('rm', ['-f', `${m}/cmp-small`]);
    }
    if (WANT.has('read')) {
      await run('dd', [
        'if=/dev/zero',
        `of=${m}/cmp-read`,
        'bs=1M',
        `count=${opts['read-mb']}`,
        'conv=fsync',
      ]);
      // Cold first (the page cache dropped: every byte through the server, from the disk),
      // which also puts the file in the page cache for the cached passes.
      dropCaches(base);
      c = cpuSeconds(pid);
      r = await run('dd', [`if=${m}/cmp-read`, 'of=/dev/null', 'bs=1M'], DD);
      add(t, 'readcold', opts['read-mb'] / ddSeconds(r));
      add(t, 'readcoldcpu', ((cpuSeconds(pid) - c) * 1000) / opts['read-mb']);
      // Several timed passes per rep, each a sample of the median: one pass of 256 MiB from the
      // page cache takes ~40 ms, and single passes of one variant moved by ±30% between reps.
      for (let pass = 0; pass < opts['read-passes']; pass++) {
        c = cpuSeconds(pid);
        r = await run('dd', [`if=${m}/cmp-read`, 'of=/dev/null', 'bs=1M'], DD);
        add(t, 'read', opts['read-mb'] / ddSeconds(r));
        add(t, 'readcpu', ((cpuSeconds(pid) - c) * 1000) / opts['read-mb']);
      }
      await run('rm', ['-f', `${m}/cmp-read`]);
    }
    if (WANT.has('meta')) {
      await run('mkdir', ['-p', `${m}/cmp-meta`]);
      c = cpuSeconds(pid);
      f = minorFaults(pid);
      const mm = await worker('meta', ['--dir', `${m}/cmp-meta`, '--n', String(FILES), '--size', '1024']);
      add(t, 'create', FILES / (mm.createMs / 1000));
      add(t, 'stat', FILES / (mm.statMs / 1000));
      add(t, 'unlink', FILES / (mm.unlinkMs / 1000));
      add(t, 'metacpu', ((cpuSeconds(pid) - c) * 1e6) / FILES);
      add(t, 'metaflt', (minorFaults(pid) - f) / FILES);
      await run('rm', ['-rf', `${m}/cmp-meta`]);
    }
    if (WANT.has('ops')) {
      await run('mkdir', ['-p', `${m}/cmp-ops`]);
      for (const op of OPS_RUN) {
        c = cpuSeconds(pid);
        const o = await worker('ops', ['--dir', `${m}/cmp-ops`, '--op', op, '--n', String(opts['ops-n'])]);
        add(t, `op-${op}`, (o.ms * 1000) / o.n);
        // The process's own start and the file's setup are in the CPU (a few ms over --ops-n).
        add(t, `op-${op}cpu`, ((cpuSeconds(pid) - c) * 1e6) / o.n);
      }
      await run('rm', ['-rf', `${m}/cmp-ops`]);
    }
    if (WANT.has('falloc')) {
      const mib = opts['falloc-mb'];
      c = cpuSeconds(pid);
      r = await run('python3', ['-c', FALLOC_PY, `${m}/cmp-falloc`, String(mib), String(opts['ops-n'])]);
      const fa = JSON.parse(r.stdout.trim().split('\n').at(-1));
      add(t, 'prealloc', mib / fa.preS);
      add(t, 'punch', fa.punchS === null ? Number.NaN : (fa.punchS * 1e6) / opts['ops-n']);
      add(t, 'falloccpu', (cpuSeconds(pid) - c) * 1000);
      if (STRESS_NG) {
        await run('mkdir', ['-p', `${m}/cmp-stressng`]);
        r = await run(
          STRESS_NG,
          ['--fallocate', '1', '--timeout', '5s', '--temp-path', `${m}/cmp-stressng`, '--metrics-brief'],
          { timeoutMs: 60_000 },
        );
        const mm = /fallocate\s+(\d+)\s+([\d.]+)/.exec(`${r.stdout}\n${r.stderr}`);
        add(t, 'stressng', mm ? Number(mm[1]) / Number(mm[2]) : Number.NaN);
        await run('rm', ['-rf', `${m}/cmp-stressng`]);
      }
    }
    if (WANT.has('sqlite')) {
      const dir = `${m}/cmp-sqlite`;
      await run('mkdir', ['-p', dir]);
      await run('python3', [
        '-c',
        "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('pragma journal_mode=wal'); c.execute('create table t (id integer primary key, w int, v blob)'); c.commit()",
        `${dir}/db`,
      ]);
      const n = opts['sqlite-commits'];
      const w = opts['sqlite-writers'];
      c = cpuSeconds(pid);
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: w }, (_, i) =>
          run('python3', ['-c', SQLITE_PY, `${dir}/db`, String(i + 1), String(n)], { timeoutMs: 900_000 }),
        ),
      );
      const secs = (performance.now() - t0) / 1000;
      add(t, 'sqlite', (n * w) / secs);
      add(t, 'sqlitecpu', ((cpuSeconds(pid) - c) * 1e6) / (n * w));
      const chk = await run('python3', [
        '-c',
        "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('pragma integrity_check').fetchone()[0])",
        `${dir}/db`,
      ]);
      if (chk.stdout.trim() !== 'ok') throw new Error(`${t}: sqlite integrity_check: ${chk.stdout}`);
      await run('rm', ['-rf', dir]);
    }
    if (WANT.has('untar')) {
      if (untarBall === undefined) {
        const src = `${base}/untar-src`;
        await run('mkdir', ['-p', src]);
        r = await run('python3', ['-c', UNTAR_TREE_PY, src, String(opts['untar-files'])], {
          timeoutMs: 600_000,
        });
        untarEntries = Number(r.stdout.trim());
        untarBall = `${base}/untar.tar`;
        await run('tar', ['-cf', untarBall, '-C', src, '.']);
        await run('rm', ['-rf', src]);
      }
      const dir = `${m}/cmp-untar`;
      await run('mkdir', ['-p', dir]);
      const who = opts['untar-user'];
      // As another user (setpriv to that uid and gid; the tarball
      // read by this shell on its stdin; the directory given to it): tar then keeps no owners.
      const su = `setpriv --reuid=${who} --regid=${who} --clear-groups`;
      if (who) await run('chown', [`${who}:${who}`, dir]);
      dropCaches(base);
      c = cpuSeconds(pid);
      let t0 = performance.now();
      if (who)
        await run('sh', ['-c', `${su} tar -xf - -C '${dir}' < '${untarBall}'`], { timeoutMs: 600_000 });
      else await run('tar', ['-xf', untarBall, '-C', dir], { timeoutMs: 600_000 });
      add(t, 'untar', (performance.now() - t0) / 1000);
      add(t, 'untarcpu', ((cpuSeconds(pid) - c) * 1e6) / untarEntries);
      // At rest first (the write-backs of the untar done), then every file read once (`cat`
      // through xargs: an open, reads and a close each), the page cache dropped first (cold)
      // and again right after (warm: the pages kept, the opens and closes only), then the
      // removal alone.
      await run('sleep', ['3']);
      const readAll = `cd '${dir}' && find . -type f -print0 | xargs -0 cat > /dev/null`;
      for (const pass of ['catcold', 'catwarm']) {
        if (pass === 'catcold') dropCaches(base);
        c = cpuSeconds(pid);
        t0 = performance.now();
        await run('sh', ['-c', who ? `${su} sh -c "${readAll}"` : readAll], { timeoutMs: 600_000 });
        add(t, pass, (performance.now() - t0) / 1000);
        add(t, `${pass}cpu`, ((cpuSeconds(pid) - c) * 1e6) / untarEntries);
      }
      c = cpuSeconds(pid);
      t0 = performance.now();
      if (who) await run('sh', ['-c', `${su} sh -c 'rm -rf "$0"/*' '${dir}'`], { timeoutMs: 600_000 });
      await run('rm', ['-rf', dir], { timeoutMs: 600_000 });
      add(t, 'rmrf', (performance.now() - t0) / 1000);
      add(t, 'rmrfcpu', ((cpuSeconds(pid) - c) * 1e6) / untarEntries);
    }
    if (WANT.has('append')) {
      c = cpuSeconds(pid);
      const ap = await worker('append', ['--file', `${m}/cmp-append`, '--n', String(FILES * 10)]);
      add(t, 'append', (FILES * 10) / (ap.ms / 1000));
      add(t, 'appendcpu', ((cpuSeconds(pid) - c) * 1e6) / (FILES * 10));
      await run('rm', ['-f', `${m}/cmp-append`]);
    }
    if (WANT.has('walk')) {
      await run('mkdir', ['-p', `${m}/cmp-tree`]);
      // The tree first, at rest past the write-back; then the server's CPU of the walks alone.
      await worker('walk', [
        '--dir',
        `${m}/cmp-tree`,
        '--n',
        String(FILES),
        '--settle-ms',
        '4000',
        '--passes',
        '0',
      ]);
      // Each walk in a process of its own, 1.1 s apart: the server's CPU of each.
      for (const pass of [1, 2]) {
        if (pass === 2) await run('sleep', ['1.1']);
        c = cpuSeconds(pid);
        const w = await worker('walk', [
          '--dir',
          `${m}/cmp-tree`,
          '--n',
          '0',
          '--settle-ms',
          '0',
          '--passes',
          '1',
        ]);
        add(t, `walk${pass}`, w.entries / (w.passMs[0] / 1000));
        add(t, `walk${pass}cpu`, ((cpuSeconds(pid) - c) * 1e6) / w.entries);
      }
      await run('rm', ['-rf', `${m}/cmp-tree`]);
    }
    if (WANT.has('tools')) {
      const cwd = `${m}/cmp-tools`;
      await run('mkdir', ['-p', cwd]);
      await worker('walk', [
        '--dir',
        cwd,
        '--n',
        String(opts['tools-files']),
        '--settle-ms',
        '0',
        '--passes',
        '0',
      ]);
      const git = (...a) => run('git', ['-c', 'user.name=b', '-c', 'user.email=b@b', ...a], { cwd });
      await git('init', '-q');
      await git('add', '-A');
      await git('commit', '-q', '-m', 'tree');
      await run('sleep', ['4']); // at rest: past the write-back
      for (const [k, cmd, args] of TOOLS) {
        dropCaches(base);
        for (const pass of [1, 2]) {
          if (pass === 2) await run('sleep', ['1.1']);
          c = cpuSeconds(pid);
          r = await run(cmd, args, { cwd });
          add(t, `${k}${pass}`, r.ms);
          add(t, `${k}${pass}cpu`, (cpuSeconds(pid) - c) * 1000);
        }
      }
      await run('rm', ['-rf', cwd]);
    }
    log(`rep ${rep} ${t} done`);
  }
}
for (const s of Object.values(S)) await s.stop();
const md = (t, k) => median(res[t][k]);
process.stdout.write(
  `\n## bench/compare.mjs — ${notes.date}\n\nmachine: ${notes.cpus}, git ${notes.git}, ${notes.build}\n` +
    `load at start ${notes.load}; ${opts.reps} reps (median); seq ${SEQ} MiB, 4k ${SMALL} MiB, ${FILES} files\n\n`,
);
const COLS = [
  ['seq', 'seq write MiB/s', 'seq', 1],
  ['seq', 'ms CPU/MiB', 'seqcpu', 2],
  ['seq', 'faults/MiB', 'seqflt', 1],
  ['small', '4k write MiB/s', 'small', 1],
  ['small', 'µs CPU/write', 'smallcpu', 0],
  ['read', 'cold read MiB/s', 'readcold', 1],
  ['read', 'ms CPU/MiB cold', 'readcoldcpu', 2],
  ['read', 'cached read MiB/s', 'read', 1],
  ['read', 'ms CPU/MiB read', 'readcpu', 2],
  ['meta', 'create/s', 'create', 0],
  ['meta', 'stat/s', 'stat', 0],
  ['meta', 'unlink/s', 'unlink', 0],
  ['meta', 'µs CPU/file', 'metacpu', 0],
  ['meta', 'faults/file', 'metaflt', 2],
  ['falloc', 'posix_fallocate MiB/s', 'prealloc', 0],
  ['falloc', 'µs per 4 KiB punch', 'punch', 0],
  ['falloc', 'ms CPU (both)', 'falloccpu', 0],
  ...(STRESS_NG ? [['falloc', 'stress-ng fallocate ops/s', 'stressng', 1]] : []),
  ['sqlite', 'SQLite WAL commits/s', 'sqlite', 0],
  ['sqlite', 'µs CPU/commit', 'sqlitecpu', 0],
  ['untar', 'tar -xf s', 'untar', 2],
  ['untar', 'µs CPU/entry (tar)', 'untarcpu', 0],
  ['untar', 'cat every file, cold s', 'catcold', 2],
  ['untar', 'µs CPU/entry (cat cold)', 'catcoldcpu', 0],
  ['untar', 'cat every file, warm s', 'catwarm', 2],
  ['untar', 'µs CPU/entry (cat warm)', 'catwarmcpu', 0],
  ['untar', 'rm -rf s', 'rmrf', 2],
  ['untar', 'µs CPU/entry (rm)', 'rmrfcpu', 0],
  ['append', 'appends/s (100 B, O_APPEND)', 'append', 0],
  ['append', 'µs CPU/append', 'appendcpu', 0],
  ['walk', 'walk 1 entries/s', 'walk1', 0],
  ['walk', 'walk 2 entries/s', 'walk2', 0],
  ['walk', 'µs CPU/entry walk 1', 'walk1cpu', 1],
  ['walk', 'µs CPU/entry walk 2', 'walk2cpu', 1],
  ...TOOLS.flatMap(([k, cmd]) =>
    [1, 2].flatMap((pass) => [
      ['tools', `${cmd} ${pass} ms`, `${k}${pass}`, 0],
      ['tools', `${cmd} ${pass} ms CPU`, `${k}${pass}cpu`, 0],
    ]),
  ),
].filter(([w]) => WANT.has(w));
if (COLS.length > 0)
  table(
    ['variant', ...COLS.map((c) => c[1])],
    names.map((t) => [t, ...COLS.map(([, , k, digits]) => fmt(md(t, k), digits))]),
  );
if (WANT.has('ops')) {
  // One row per operation: µs as the caller sees it (× the first variant, bindfs), and the
  // server's µs of CPU per operation.
  process.stdout.write(`\n${opts['ops-n']} of each operation in a row (median of the reps)\n\n`);
  table(
    [
      'operation',
      ...names.flatMap((t, j) => (j === 0 ? [`${t} µs`, 'µs CPU'] : [`${t} µs`, `× ${names[0]}`, 'µs CPU'])),
    ],
    OPS_RUN.map((op) => [
      op,
      ...names.flatMap((t, j) => {
        const us = md(t, `op-${op}`);
        const cells = [fmt(us, 0)];
        if (j > 0) cells.push(fmt(us / md(names[0], `op-${op}`), 2));
        cells.push(fmt(md(t, `op-${op}cpu`), 0));
        return cells;
      }),
    ]),
  );
}
