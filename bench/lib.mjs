// Shared helpers of the twinfs benchmarks (bench/*.mjs). Plain Node ESM, no build step.
//
// Everything a benchmark creates is registered here (temporary directories, FUSE mounts,
// tmpfs mounts, server processes) and torn down on normal exit, on an exception, on SIGINT /
// SIGTERM and on a timeout: mounts are detached (fusermount -uz; a hung FUSE connection is
// aborted through /sys/fs/fuse/connections first) before any directory is removed.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const WORKER = path.join(ROOT, 'bench', 'worker.mjs');
export const MiB = 1024 * 1024;
/** The twinfs build the benchmarks run (see snapshotDist). */
export let DIST = path.join(ROOT, 'dist');

/**
 * Copies dist/ into base (with node_modules, plugins and package.json linked beside it) and
 * makes every later server start and control client use that copy: other engineers rebuild
 * dist/ while a benchmark runs, and a half-written build must not be picked up mid-run.
 * Returns a description (build time of dist/cli/main.js) for the report.
 */
export function snapshotDist(base) {
  const snap = path.join(base, 'build');
  fs.mkdirSync(snap, { recursive: true });
  const built = fs.statSync(path.join(ROOT, 'dist/cli/main.js')).mtime.toISOString();
  // Times kept: dist/cli/twinfs.cjs loads the CLI's bundle only when it is not older than main.js.
  fs.cpSync(path.join(ROOT, 'dist'), path.join(snap, 'dist'), { recursive: true, preserveTimestamps: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(snap, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(snap, 'node_modules'));
  if (fs.existsSync(path.join(ROOT, 'plugins')))
    fs.symlinkSync(path.join(ROOT, 'plugins'), path.join(snap, 'plugins'));
  // The project's addon, found two levels above dist/posix (src/posix/native.ts).
  const addon = 'native/posix/build/Release/twinfs_posix.node';
  fs.mkdirSync(path.dirname(path.join(snap, addon)), { recursive: true });
  fs.copyFileSync(path.join(ROOT, addon), path.join(snap, addon));
  DIST = path.join(snap, 'dist');
  return `dist/ built ${built}, copied to ${DIST}`;
}
export const GiB = 1024 * MiB;

// ---- arguments -------------------------------------------------------------------------------

/**
 * Takes every `--name VALUE` out of argv (in place) and returns the values in order: for
 * options given several times (compare.mjs's --variant), which parseArgs does not take.
 */
export function takeRepeated(argv, name) {
  const values = [];
  for (let i = argv.indexOf(name); i >= 0; i = argv.indexOf(name)) values.push(...argv.splice(i, 2).slice(1));
  return values;
}

/**
 * Parses --key value / --key=value / --flag. spec maps names to defaults (the default's type
 * decides the parsing: number, boolean, string). Unknown options are an error. --help prints.
 */
export function parseArgs(spec, usage, argv = process.argv.slice(2)) {
  const out = {};
  for (const [k, v] of Object.entries(spec)) out[k] = v.default;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      process.stdout.write(`${usage}\n\noptions:\n`);
      for (const [k, v] of Object.entries(spec))
        process.stdout.write(`  --${k.padEnd(18)} ${v.help} (default ${JSON.stringify(v.default)})\n`);
      process.exit(0);
    }
    const m = /^--([^=]+)(?:=(.*))?$/.exec(a);
    if (!m || !(m[1] in spec)) throw new Error(`unknown argument ${a} (--help lists them)`);
    const key = m[1];
    const def = spec[key].default;
    if (typeof def === 'boolean') {
      out[key] = m[2] === undefined ? true : !/^(0|false|no)$/i.test(m[2]);
      continue;
    }
    const raw = m[2] ?? argv[++i];
    if (raw === undefined) throw new Error(`--${key} needs a value`);
    if (typeof def === 'number') {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new Error(`--${key} must be a number, not ${raw}`);
      out[key] = n;
    } else out[key] = raw;
  }
  return out;
}

// ---- cleanup -----------------------------------------------------------------------------------

const fuseMounts = new Set(); // mount points (FUSE)
const plainMounts = new Set(); // tmpfs and the like
const procs = new Set(); // ChildProcess objects we started
const dirs = new Set(); // temporary base directories
let cleaned = false;

export function trackMount(dir, kind = 'fuse') {
  (kind === 'fuse' ? fuseMounts : plainMounts).add(dir);
}
export function untrackMount(dir) {
  fuseMounts.delete(dir);
  plainMounts.delete(dir);
}
export function trackProc(p) {
  procs.add(p);
  p.once('exit', () => procs.delete(p));
}

/** Is dir a mount point right now (read from /proc/self/mountinfo, never touching dir)? */
export function mountInfo(dir) {
  const abs = path.resolve(dir);
  let text = '';
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return null;
  }
  let found = null;
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = f[4].replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (mp === abs) found = { majmin: f[2], fstype: line.split(' - ')[1]?.split(' ')[0] };
  }
  return found;
}

/** fusermount from Debian's `fuse`, or fusermount3 where the `fuse3` package replaced it. */
export function fusermountProgram() {
  const dirs = (process.env.PATH ?? '').split(':').filter(Boolean);
  return dirs.some((d) => fs.existsSync(path.join(d, 'fusermount'))) ? 'fusermount' : 'fusermount3';
}

/** Detaches a FUSE mount without ever blocking on it: lazy unmount, abort if still there. */
export function forceUnmountSync(dir) {
  if (!mountInfo(dir)) return;
  spawnSync(fusermountProgram(), ['-uz', dir], { stdio: 'ignore', timeout: 10_000 });
  const mi = mountInfo(dir);
  if (!mi) return;
  const minor = mi.majmin.split(':')[1];
  try {
    fs.writeFileSync(`/sys/fs/fuse/connections/${minor}/abort`, '1');
  } catch {
    /* not a fuse connection or already gone */
  }
  spawnSync('umount', ['-l', dir], { stdio: 'ignore', timeout: 10_000 });
}

export function cleanupSync() {
  if (cleaned) return;
  cleaned = true;
  for (const p of procs) {
    try {
      p.kill('SIGTERM');
    } catch {
      /* gone */
    }
  }
  // Give servers a moment to write back and unmount by themselves.
  const until = Date.now() + 5000;
  while (
    [...procs].some((p) => p.exitCode === null && p.signalCode === null && alive(p.pid)) &&
    Date.now() < until
  )
    sleepSync(50);
  for (const p of procs) {
    if (alive(p.pid)) {
      try {
        p.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  for (const m of fuseMounts) forceUnmountSync(m);
  for (const m of plainMounts)
    if (mountInfo(m)) spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10_000 });
  for (const d of dirs) {
    if (anyMountUnder(d)) {
      process.stderr.write(`bench: leaving ${d} in place: something is still mounted under it\n`);
      continue;
    }
    fs.rmSync(d, { recursive: true, force: true });
  }
}

function anyMountUnder(d) {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => {
    const mp = l.split(' ')[4];
    return mp && (mp === d || mp.startsWith(d + '/'));
  });
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const sab = new Int32Array(new SharedArrayBuffer(4));
export function sleepSync(ms) {
  Atomics.wait(sab, 0, 0, ms);
}

let installed = false;
/** Installs exit/signal/error handlers and an overall time limit. Call once at start. */
export function installCleanup({ timeLimitSec } = {}) {
  if (installed) return;
  installed = true;
  process.on('exit', cleanupSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, cleaning up\n`);
      cleanupSync();
      process.exit(130);
    });
  }
  process.on('uncaughtException', (err) => {
    process.stderr.write(`bench: ${err?.stack ?? err}\n`);
    cleanupSync();
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    process.stderr.write(`bench: ${err?.stack ?? err}\n`);
    cleanupSync();
    process.exit(1);
  });
  if (timeLimitSec) {
    const t = setTimeout(() => {
      process.stderr.write(`bench: time limit of ${timeLimitSec} s reached, cleaning up\n`);
      cleanupSync();
      process.exit(124);
    }, timeLimitSec * 1000);
    t.unref();
  }
}

/** A temporary base directory under --dir (default /tmp: the same disk as the root fs). */
export function tempBase(parent = os.tmpdir(), prefix = 'twinfs-bench-') {
  fs.mkdirSync(parent, { recursive: true });
  const d = fs.mkdtempSync(path.join(parent, prefix));
  fs.chmodSync(d, 0o755);
  dirs.add(d);
  return d;
}

export function mkdirs(base, ...names) {
  const out = {};
  for (const n of names) {
    out[n] = path.join(base, n);
    fs.mkdirSync(out[n], { recursive: true });
  }
  return out;
}

/**
 * Mounts a fresh ext4 of the given size at dir, on a loop device over a sparse image file in
 * imageDir, with the loop device's direct I/O (its writes go to the disk, not into a second
 * page cache of the image file): a separate filesystem (its own journal, its own write-back)
 * on this one-disk machine's disk. The device is detached lazily at once (autoclear): the
 * unmount in cleanup frees it.
 */
export function mountLoopExt4(dir, imageDir, sizeBytes) {
  fs.mkdirSync(dir, { recursive: true });
  const img = path.join(imageDir, `${path.basename(dir)}.ext4`);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, sizeBytes);
  const mk = spawnSync('mkfs.ext4', ['-q', '-F', img], { timeout: 60_000 });
  if (mk.status !== 0) throw new Error(`mkfs.ext4 ${img} failed: ${mk.stderr}`);
  const lo = spawnSync('losetup', ['-f', '--show', '--direct-io=on', img], { encoding: 'utf8' });
  if (lo.status !== 0) throw new Error(`losetup ${img} failed: ${lo.stderr}`);
  const dev = lo.stdout.trim();
  const r = spawnSync('mount', ['-t', 'ext4', dev, dir]);
  spawnSync('losetup', ['-d', dev]);
  if (r.status !== 0) throw new Error(`mount ${dev} on ${dir} failed: ${r.stderr}`);
  trackMount(dir, 'plain');
}

/** Mounts a private tmpfs of the given size at dir (for "mirror on a separate filesystem"). */
export function mountTmpfs(dir, sizeBytes) {
  fs.mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', [
    '-t',
    'tmpfs',
    '-o',
    `size=${Math.ceil(sizeBytes / MiB)}m`,
    'benchtmpfs',
    dir,
  ]);
  if (r.status !== 0) throw new Error(`mount tmpfs on ${dir} failed: ${r.stderr}`);
  trackMount(dir, 'plain');
}

export function umountPlain(dir) {
  if (mountInfo(dir)) spawnSync('umount', [dir], { stdio: 'ignore', timeout: 30_000 });
  if (mountInfo(dir)) spawnSync('umount', ['-l', dir], { stdio: 'ignore', timeout: 30_000 });
  untrackMount(dir);
}

// ---- processes ---------------------------------------------------------------------------------

/**
 * Runs a command to completion (never through a shell unless cmd is 'sh'). Resolves with
 * { code, stdout, stderr, ms } where ms is wall time from spawn to exit; rejects on timeout
 * (after killing it) and, with check (default), on a non-zero exit.
 */
/**
 * The seconds dd itself reports for its copy ("N bytes ... copied, T s, ..." on stderr), from its
 * first read to its last write (conv=fsync included): the process's spawn and exit are not part of
 * it. Throws when the line is missing, rather than falling back to a wall time that measures
 * something else.
 */
export function ddSeconds(r) {
  const m = /copied, ([0-9.e+-]+) s,/.exec(r.stderr);
  if (!m) throw new Error(`dd printed no "copied, T s" line: ${r.stderr.trim().slice(-300)}`);
  return Number(m[1]);
}

export function run(cmd, args = [], { timeoutMs = 600_000, env, cwd, check = true, input } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, {
      env: env ?? process.env,
      cwd,
      stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    trackProc(p);
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    if (input) p.stdin.end(input);
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - t0;
      if (check && code !== 0)
        reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}: ${stderr.trim().slice(-2000)}`));
      else resolve({ code, signal, stdout, stderr, ms });
    });
  });
}

export const sh = (script, opts) => run('sh', ['-c', script], opts);

/** Runs bench/worker.mjs MODE with args in a child process; resolves with its JSON result line. */
export async function worker(mode, args, opts = {}) {
  const r = await run(process.execPath, [WORKER, mode, ...args], opts);
  const line = r.stdout.trim().split('\n').pop();
  try {
    return { ...JSON.parse(line), wallMs: r.ms };
  } catch {
    throw new Error(`worker ${mode} printed no JSON: ${r.stdout.slice(-500)} ${r.stderr.slice(-500)}`);
  }
}

export function dropCaches(dir) {
  // With dir: only its filesystem (a global sync waits on every FUSE mount of the machine,
  // a frozen one included). The timeout ends a sync that waits interruptibly; one stuck in
  // the kernel (D state) still holds spawnSync: benches that can, use syncAndDropCaches.
  spawnSync('sync', dir ? ['-f', dir] : [], { stdio: 'ignore', timeout: SYNC_TIMEOUT_MS });
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

const SYNC_TIMEOUT_MS = 60_000;

/**
 * Writes back the filesystems holding `dirs` (`sync -f`: a syncfs of each, never every mount
 * of the machine, where one hung FUSE mount would hold a global sync for good), then drops the
 * page cache. The sync runs in a child that is not waited for past timeoutMs: if it is stuck
 * (even uninterruptibly, which no signal ends), it is sent SIGKILL and left behind, the bench
 * says so and goes on. Resolves true when the caches were dropped.
 */
export async function syncAndDropCaches(dirs, { timeoutMs = SYNC_TIMEOUT_MS } = {}) {
  const what = `sync -f ${dirs.join(' ')}`;
  const child = spawn('sync', ['-f', ...dirs], { stdio: 'ignore', detached: true });
  const outcome = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code === 0 ? 'ok' : `exited ${code ?? signal}`);
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve(err.message);
    });
  });
  if (outcome === 'timeout') {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
    child.unref();
    log(`warning: ${what} did not finish within ${timeoutMs} ms (a stuck mount?); going on without it`);
  } else if (outcome !== 'ok') log(`warning: ${what}: ${outcome}`);
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

/**
 * Fills dir with files written directly (never through a mount): count files of size bytes (or
 * size(i)) in subdirectories of perDir files, then the large files (large[j] bytes each, named
 * largeJ). Data comes from a 4 MiB pool of random words (not compressible, not all unique).
 * Returns { files, bytes }.
 */
export function makeTree(dir, { count, size, perDir = 1000, large = [] }) {
  const pool = Buffer.alloc(4 * MiB);
  for (let i = 0; i < pool.length; i += 4) pool.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  let bytes = 0;
  let files = 0;
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < count; i++) {
    const sub = path.join(dir, `d${String(Math.floor(i / perDir)).padStart(4, '0')}`);
    if (i % perDir === 0) fs.mkdirSync(sub, { recursive: true });
    const n = typeof size === 'function' ? size(i) : size;
    const off = (i * 4099) % (pool.length - n);
    fs.writeFileSync(path.join(sub, `f${i}`), pool.subarray(off, off + n));
    bytes += n;
    files++;
  }
  for (const [j, n] of large.entries()) {
    const fd = fs.openSync(path.join(dir, `large${j}`), 'w');
    for (let w = 0; w < n; w += pool.length) fs.writeSync(fd, pool, 0, Math.min(pool.length, n - w));
    fs.closeSync(fd);
    bytes += n;
    files++;
  }
  return { files, bytes };
}

/**
 * A large file as the peer gives it: read straight into the writer's buffers where it offers
 * that (putFileFrom), else as a read stream of 1 MiB pieces.
 */
export async function putLarge(w, p, file, meta) {
  if (typeof w.putFileFrom !== 'function')
    return w.putFile(p, fs.createReadStream(file, { highWaterMark: MiB }), meta);
  const fh = await fs.promises.open(file, 'r');
  let at = 0;
  try {
    return await w.putFileFrom(
      p,
      async (buf, offset, length) => {
        const want = Math.min(length, meta.size - at);
        if (want <= 0) return 0;
        const { bytesRead } = await fh.read(buf, offset, want, at);
        at += bytesRead;
        return bytesRead;
      },
      meta,
    );
  } finally {
    await fh.close();
  }
}

// ---- servers -----------------------------------------------------------------------------------

/**
 * Starts `twinfs serve --json` (a separate process) and waits for its "mounted" line.
 * Returns { proc, pid, mount, url, token, events, waitEvent(pred, ms), stop(), startupMs }.
 */
export async function startTwinfs(o) {
  const cli = o.cli ?? path.join(DIST, 'cli/twinfs.cjs');
  const args = [cli, 'serve', '--primary', o.primary, '--mount', o.mount, '--json'];
  if (o.mirror) args.push('--mirror', o.mirror);
  if (o.stateDir) args.push('--state-dir', o.stateDir);
  if (o.control) args.push('--control', o.control);
  if (o.cacheMb) args.push('--cache-mb', String(o.cacheMb));
  if (o.writebackMs) args.push('--writeback-ms', String(o.writebackMs));
  if (o.maxStallMs) args.push('--max-stall-ms', String(o.maxStallMs));
  if (o.extra) args.push(...o.extra);
  const nodeArgs = o.nodeArgs ?? [];
  const t0 = performance.now();
  const proc = spawn(process.execPath, [...nodeArgs, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(o.env ?? {}) },
  });
  trackProc(proc);
  trackMount(o.mount);
  const events = [];
  const listeners = new Set();
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
    if (o.verbose) process.stderr.write(`[server] ${d}`);
  });
  let buf = '';
  proc.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        continue;
      }
      ev.at = performance.now();
      events.push(ev);
      for (const l of listeners) l(ev);
    }
  });
  const exited = new Promise((r) => proc.on('exit', (code, sig) => r(code ?? sig)));
  const waitEvent = (pred, ms = 60_000, what = 'event') =>
    new Promise((resolve, reject) => {
      const hit = events.find(pred);
      if (hit) return resolve(hit);
      const timer = setTimeout(() => {
        listeners.delete(l);
        reject(new Error(`twinfs serve: no ${what} within ${ms} ms; stderr: ${stderr.slice(-2000)}`));
      }, ms);
      const l = (ev) => {
        if (pred(ev)) {
          clearTimeout(timer);
          listeners.delete(l);
          resolve(ev);
        }
      };
      listeners.add(l);
      void exited.then((code) => {
        clearTimeout(timer);
        listeners.delete(l);
        reject(new Error(`twinfs serve exited (${code}) while waiting for ${what}: ${stderr.slice(-2000)}`));
      });
    });
  let mounted;
  try {
    mounted = await waitEvent((e) => e.event === 'mounted', o.mountTimeoutMs ?? 60_000, '"mounted" line');
  } catch (err) {
    proc.kill('SIGKILL');
    forceUnmountSync(o.mount);
    throw err;
  }
  const url = mounted.control?.url ?? null;
  let token = null;
  if (url) {
    const tokenFile = o.tokenFile ?? path.join(o.stateDir, 'control.token');
    token = fs.readFileSync(tokenFile, 'utf8').trim();
  }
  return {
    proc,
    pid: proc.pid,
    mount: o.mount,
    url,
    token,
    events,
    mounted,
    startupMs: mounted.at - t0,
    spawnedAt: t0,
    waitEvent,
    stderr: () => stderr,
    /**
     * SIGTERM (the server writes everything back and unmounts) and wait; SIGKILL after
     * timeoutMs. `onSlow(pid)` runs once if it is still alive after slowMs (to look at it).
     */
    async stop(timeoutMs = 120_000, { slowMs = 30_000, onSlow } = {}) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        let t;
        const slow = onSlow ? setTimeout(() => onSlow(proc.pid), slowMs) : undefined;
        const r = await Promise.race([
          exited,
          new Promise((res) => (t = setTimeout(() => res('timeout'), timeoutMs))),
        ]);
        clearTimeout(t);
        clearTimeout(slow);
        if (r === 'timeout') {
          proc.kill('SIGKILL');
          await exited;
        }
      }
      forceUnmountSync(o.mount);
      untrackMount(o.mount);
      return exited;
    },
  };
}

/**
 * Stops a harness's server (startTwinfs's handle) and tells in `problems` what a stop must not
 * do: take over 20 s (one in a few hundred stops of the harnesses waited for good until
 * fuse-native level 28: docs/reliability.md, "A stop that waited for good on libuv's signal
 * lock"), told with the server's stderr tail and its threads 30 s after SIGTERM; or go on without
 * the detach's callback (src/fusefs/filesystem.ts detachedWithoutCallback), told with where the
 * close was. Returns the exit code.
 */
export async function stopChecked(srv, problems) {
  const s0 = Date.now();
  let states;
  const code = await srv.stop(120_000, { onSlow: (pid) => (states = threadStates(pid)) });
  const stopSecs = (Date.now() - s0) / 1000;
  const detach = /[^\n]*did not call back[^\n]*/.exec(srv.stderr())?.[0];
  if (detach) problems.push(`server stop: ${detach} (${stopSecs.toFixed(1)} s)`);
  if (stopSecs > 20) {
    problems.push(`server stop took ${stopSecs.toFixed(1)} s (exit ${code})`);
    const tail = srv.stderr().slice(-3000);
    if (tail) problems.push(`server stderr: ${tail}`);
    if (states) problems.push(`server threads 30 s after SIGTERM:\n${states}`);
  }
  return code;
}

/**
 * What each thread of a process is doing, from /proc: name, state and the kernel function it
 * sleeps in (wchan), one line per thread; the main thread's kernel stack when readable (root).
 */
export function threadStates(pid) {
  const lines = [];
  let tasks = [];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return `pid ${pid}: gone`;
  }
  for (const t of tasks) {
    const read = (f) => {
      try {
        return fs.readFileSync(`/proc/${pid}/task/${t}/${f}`, 'utf8').trim();
      } catch {
        return '?';
      }
    };
    const stat = read('stat');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    // SigBlk: a thread that waits on a lock a signal handler took shows whether it can take signals.
    const blocked = /SigBlk:\s*(\S+)/.exec(read('status'))?.[1] ?? '?';
    lines.push(
      `${t} ${read('comm')} ${state} ${read('wchan')} sigblk=${blocked} syscall=${read('syscall').split(' ').slice(0, 3).join(' ')}`,
    );
  }
  try {
    lines.push(`main thread's kernel stack:\n${fs.readFileSync(`/proc/${pid}/stack`, 'utf8')}`);
  } catch {}
  return lines.join('\n');
}

/**
 * Starts the twinfs server of a benchmark variant NAME|CLI|SERVE ARGS|ENV (all but NAME
 * optional; CLI defaults to DIST's, @MIRROR@ in ARGS becomes a fresh directory on the primary's
 * filesystem, @SHM@ a fresh tmpfs of its own, @LOOP@ a fresh ext4 on a loop device (direct I/O)
 * over an image file beside the primary: a mirror on a separate filesystem, the second
 * storage device this one-disk machine lacks), with a primary
 * of its own under base (one twinfs server per volume: the volume lock). Returns its name, mount
 * point and server.
 */
export async function startVariant(base, i, spec) {
  const [name, cli, args, env] = spec.split('|');
  const dd = mkdirs(base, `m${i}`, `s${i}`, `p${i}`, `r${i}`);
  // A size limit, not a reservation: pages are taken as the mirror fills.
  const words = (args ?? '').split(' ');
  if (words.includes('@SHM@')) mountTmpfs(dd[`r${i}`], 8 * 1024 * MiB);
  if (words.includes('@LOOP@')) mountLoopExt4(dd[`r${i}`], base, 8 * 1024 * MiB);
  const server = await startTwinfs({
    cli: cli || path.join(DIST, 'cli/main.js'),
    primary: dd[`p${i}`],
    mount: dd[`m${i}`],
    stateDir: dd[`s${i}`],
    extra: (args ?? '')
      .split(' ')
      .filter(Boolean)
      .map((a) => (a === '@MIRROR@' || a === '@SHM@' || a === '@LOOP@' ? dd[`r${i}`] : a)),
    env: envPairs(env, ' '),
  });
  return { name, mount: dd[`m${i}`], server };
}

/** `K=V` words separated by sep as an object (each split at its first `=`: a value may hold one). */
export function envPairs(text, sep) {
  return Object.fromEntries(
    (text ?? '')
      .split(sep)
      .filter(Boolean)
      .map((kv) =>
        kv.includes('=') ? [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] : [kv, ''],
      ),
  );
}

/**
 * Mounts bindfs (libfuse2 build on Debian 12) over src at mnt; flags go before the options
 * (e.g. ['--multithreaded']: bindfs is single-threaded unless told).
 */
export async function startBindfs(src, mnt, opts = 'big_writes', flags = []) {
  await run('bindfs', [...flags, ...(opts ? ['-o', opts] : []), src, mnt], { timeoutMs: 20_000 });
  trackMount(mnt);
  const pid = findBindfsPid(mnt);
  return {
    mount: mnt,
    pid,
    async stop() {
      await run(fusermountProgram(), ['-u', mnt], { check: false, timeoutMs: 20_000 });
      forceUnmountSync(mnt);
      untrackMount(mnt);
    },
  };
}

function findBindfsPid(mnt) {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd[0].endsWith('bindfs') && cmd.includes(mnt)) return Number(d);
    } catch {
      /* raced */
    }
  }
  return null;
}

// ---- control channel ---------------------------------------------------------------------------

/**
 * A twinfs server of this build with a mirror and a control channel, on mkdirs()'s primary, mnt,
 * mirror and state (more: startTwinfs's other options).
 */
export function startMirroredTwinfs(d, more = {}) {
  return startTwinfs({
    cli: path.join(DIST, 'cli/twinfs.cjs'),
    primary: d.primary,
    mount: d.mnt,
    mirror: d.mirror,
    stateDir: d.state,
    control: '127.0.0.1:0',
    ...more,
  });
}

/** What every harness checks at its end: flush, then the differences and the broken pairs. */
export async function checkMirror(c) {
  await c.request('flush');
  const v = await c.request('verify', { content: true });
  const st = await c.request('status');
  return { differences: v.differences, broken: st.mirror.broken };
}

export async function controlClient(url, token) {
  const { ControlClient } = await import(path.join(DIST, 'control/client.js'));
  return ControlClient.connect(url, { token, client: 'bench', requestTimeoutMs: 600_000 });
}

/** Polls the control channel until the mirror reports PAIR with an empty change queue. */
export async function waitMirrorIdle(client, timeoutMs = 600_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const st = await client.request('status');
    const m = st.mirror;
    if ((!m || (m.state !== 'COPY' && m.queueLength === 0)) && st.fs.cache.dirtyBytes === 0) return st;
    if (Date.now() > until) throw new Error(`mirror not idle after ${timeoutMs} ms: ${JSON.stringify(m)}`);
    await sleep(50);
  }
}

/**
 * Starts n busy loops at nice 19. On this VM an idle vCPU halts, and waking it costs tens of
 * microseconds: a ping-pong workload (one FUSE request in flight, as dd makes) then measures
 * wake-up latency more than the filesystem. Spinners keep the vCPUs awake while taking almost
 * no CPU from normal-priority work (nice 19 weighs 15 against 1024). Returns stop().
 */
export function startSpinners(n) {
  const ps = [];
  for (let i = 0; i < n; i++) {
    const p = spawn('nice', ['-n', '19', 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' });
    trackProc(p);
    ps.push(p);
  }
  return () => {
    for (const p of ps) p.kill('SIGKILL');
  };
}

// ---- measurement ---------------------------------------------------------------------------------

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Samples VmRSS/VmHWM of pid every periodMs until stop(); returns { maxRssMiB, hwmMiB, samples }. */
export function sampleRss(pid, periodMs = 50) {
  let maxRss = 0;
  let hwm = 0;
  let samples = 0;
  const read = () => {
    try {
      const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const rss = Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? 0) * 1024;
      const h = Number(/VmHWM:\s+(\d+)/.exec(s)?.[1] ?? 0) * 1024;
      maxRss = Math.max(maxRss, rss);
      hwm = Math.max(hwm, h);
      samples++;
      return rss;
    } catch {
      return 0;
    }
  };
  const first = read();
  const t = setInterval(read, periodMs);
  return {
    startRss: first,
    stop() {
      clearInterval(t);
      read();
      return { startMiB: first / MiB, maxRssMiB: maxRss / MiB, hwmMiB: hwm / MiB, samples };
    },
  };
}

/** CPU seconds (user+system) of a process so far, from /proc/PID/stat. */
export function cpuSeconds(pid) {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    const tck = 100; // USER_HZ on Linux
    return (Number(f[11]) + Number(f[12])) / tck;
  } catch {
    return Number.NaN;
  }
}

/**
 * Minor page faults of a process so far (/proc/PID/stat minflt). Counted beside CPU because a
 * fault's cost depends on the machine (11-12 µs per 4 KiB page on this VM, measured) while the count
 * does not depend on load.
 */
export function minorFaults(pid) {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[7]);
  } catch {
    return Number.NaN;
  }
}

/**
 * Voluntary context switches of all of a process's threads so far (/proc/PID/task/TID/status).
 * Like the fault count, the count does not move with the load the way CPU time and rates do, and
 * it needs no perf (not installed on this VM): each hand-off between threads is one (the thread
 * that waits sleeps), so it counts the server's hand-offs per operation. Threads that ended are
 * not counted (libfuse's workers live as long as the mount).
 */
export function voluntarySwitches(pid) {
  let n = 0;
  let tids = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return Number.NaN;
  }
  for (const tid of tids) {
    try {
      const m = /\nvoluntary_ctxt_switches:\s+(\d+)/.exec(
        fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'),
      );
      if (m) n += Number(m[1]);
    } catch {
      /* the thread ended */
    }
  }
  return n;
}

/**
 * Starts `perf stat -x, -e EVENTS -p PID` (counting until stopped); `stop()` ends it with SIGINT
 * and resolves to { event: count }. Needs perf and the tracepoints (root).
 */
export function perfStat(pid, events) {
  const p = spawn('perf', ['stat', '-x', ',', '-e', events.join(','), '-p', String(pid)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  trackProc(p);
  let err = '';
  p.stderr.on('data', (d) => {
    err += d;
  });
  const exited = new Promise((r) => p.on('exit', r));
  return {
    async stop() {
      p.kill('SIGINT');
      await exited;
      const out = {};
      for (const line of err.split('\n')) {
        const f = line.split(',');
        if (f.length >= 3 && f[2]) out[f[2]] = Number(f[0]);
      }
      return out;
    },
  };
}

/**
 * CPU seconds (user+system) of each thread of a process so far, summed by thread name
 * (/proc/PID/task/TID/comm: node's main thread is "node", its pool "libuv-worker", V8's
 * "V8 DefaultWorke"; threads a native addon starts inherit the name of the thread that made them).
 */
export function threadCpuSeconds(pid) {
  const out = {};
  let tids = [];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      const f = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
      const key = tid === String(pid) ? `${name} (main)` : name;
      out[key] = (out[key] ?? 0) + (Number(f[11]) + Number(f[12])) / 100;
    } catch {
      /* the thread ended */
    }
  }
  return out;
}

export function median(xs) {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function loadavg() {
  return os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
}

/** Waits (up to maxWaitSec) for the 1-minute load to drop below limit; returns the load seen. */
export async function waitForQuiet(limit, maxWaitSec, log = () => undefined) {
  const until = Date.now() + maxWaitSec * 1000;
  while (os.loadavg()[0] > limit && Date.now() < until) {
    log(`load ${loadavg()} > ${limit}: waiting`);
    await sleep(5000);
  }
  return os.loadavg()[0];
}

export function machineNotes() {
  const cpus = os.cpus();
  let git = '';
  try {
    git = spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
    const dirty = spawnSync('git', ['-C', ROOT, 'status', '--porcelain', 'src'], {
      encoding: 'utf8',
    }).stdout.trim();
    if (dirty) git += ` (+${dirty.split('\n').length} uncommitted src changes)`;
  } catch {
    /* no git */
  }
  return {
    date: new Date().toISOString(),
    cpus: `${cpus.length} x ${cpus[0]?.model ?? '?'}`,
    memGiB: (os.totalmem() / GiB).toFixed(1),
    kernel: os.release(),
    node: process.version,
    git,
    load: loadavg(),
  };
}

// ---- output --------------------------------------------------------------------------------------

export function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  if (typeof x === 'string') return x;
  if (Math.abs(x) >= 1000) return x.toFixed(0);
  return x.toFixed(digits);
}

export function ratio(a, b) {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '—';
  return `${(a / b).toFixed(2)}×`;
}

/** Prints a markdown table (also readable in a terminal). */
export function table(headers, rows, out = process.stdout) {
  const cells = [headers, ...rows].map((r) => r.map((c) => String(c)));
  const w = headers.map((_, i) => Math.max(3, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r) => `| ${r.map((c, i) => (c ?? '').padEnd(w[i])).join(' | ')} |`;
  out.write(`${line(cells[0])}\n|${w.map((n) => '-'.repeat(n + 2)).join('|')}|\n`);
  for (const r of cells.slice(1)) out.write(`${line(r)}\n`);
}

export function log(msg) {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)} load ${loadavg()}] ${msg}\n`);
}

/** The options every twinfs benchmark script takes (dir's help text varies by script). */
export function commonOptions(dirHelp = 'parent of the temporary directories') {
  return {
    cli: { default: '', help: 'twinfs CLI to run (default dist/cli/main.js of this checkout)' },
    dir: { default: '/tmp', help: dirHelp },
    'max-load': { default: 1.5, help: 'wait (up to --wait-quiet s) for the 1-min load to drop below this' },
    'wait-quiet': { default: 120, help: 'longest wait for a quiet machine, s' },
    'time-limit': { default: 900, help: 'abort (and clean up) after this many seconds' },
    json: { default: '', help: 'also write all results as JSON to this file' },
    verbose: { default: false, help: 'echo the server stderr' },
  };
}

/**
 * The start every benchmark script shares: cleanup on exit and time limit, wait for a quiet
 * machine, note it, make the temporary base and snapshot dist/ (unless --cli names a CLI).
 */
export async function startBench(opts) {
  installCleanup({ timeLimitSec: opts['time-limit'] });
  const notes = machineNotes();
  const loadStart = await waitForQuiet(opts['max-load'], opts['wait-quiet'], log);
  log(`machine: ${JSON.stringify(notes)}`);
  const base = tempBase(opts.dir);
  notes.build = opts.cli ? `--cli ${opts.cli}` : snapshotDist(base);
  log(notes.build);
  return { notes, base, loadStart };
}
