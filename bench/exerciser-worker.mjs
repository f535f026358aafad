// One process of bench/exerciser.mjs (never the process serving the mount): a seeded stream of
// random file operations in its own directory, checked fsx-style against an in-process model of
// what every file, directory, link and attribute must be. The stream depends only on --seed,
// --proc and the model, so every target that behaves correctly gets the same operations.
//
//   node bench/exerciser-worker.mjs --dir D --seed S --proc I --ops N [--skip a,b] [--strict]
//                                   [--keep-going] [--tamper-at K]
//
// Prints one JSON line: { ok, failure, failures, attrMismatches, perOp: {op: {n, ms}}, opsMs, verifyMs,
// digest, skipped }. Exit 1 on the first failure (content, size of what read(2) returns,
// namespace, an errno the model did not expect, a final walk that disagrees): failure names the
// seed, the process and the op index, which replay it exactly. Attributes stat(2) shows (mode,
// nlink, size, mtime set by utimens) that disagree are counted in attrMismatches (the first ones
// listed); with --strict they are failures too.
// --keep-going: a failure is counted (failures; failure is the first) and the stream goes on, so
// a target that fails some checks still runs every operation of it (what the timing needs).
// --tamper-at K: at op K (or the first op after it with a non-empty file) flip a byte of a file
// behind the model's back and read it: the check must report that op (the checker's own test).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const a = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const k = argv[i].replace(/^--/, '');
  if (k === 'strict' || k === 'keep-going') a[k] = true;
  else a[k] = argv[++i];
}
const ROOT = path.resolve(a.dir);
const SEED = Number(a.seed ?? 1);
const PROC = Number(a.proc ?? 0);
const OPS = Number(a.ops ?? 1000);
const STRICT = a.strict === true;
const TAMPER = a['tamper-at'] === undefined ? -1 : Number(a['tamper-at']);
const KEEP_GOING = a['keep-going'] === true;
const SKIP = new Set((a.skip ?? '').split(',').filter(Boolean));

/** Largest file the stream makes (fsx's default maxlen), largest single write/read. */
const MAXLEN = 256 * 1024;
const MAXIO = 64 * 1024;
const MAX_ENTRIES = 150;
const MAX_DEPTH = 3;

// ---- seeded PRNG (mulberry32 over a hash of seed and process) -------------------------------
let st = (Math.imul(SEED ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(PROC + 1, 0xc2b2ae35)) >>> 0;
function rnd32() {
  st = (st + 0x6d2b79f5) >>> 0;
  let t = st;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (t ^ (t >>> 14)) >>> 0;
}
const rand = (n) => (n <= 0 ? 0 : rnd32() % n); // [0, n)
const pick = (xs) => xs[rand(xs.length)];
function randBytes(n) {
  const b = Buffer.allocUnsafe((n + 3) & ~3);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(rnd32(), i);
  return b.subarray(0, n);
}

// ---- the model ------------------------------------------------------------------------------
/** path (relative, '' = the process's root) -> entry */
const entries = new Map([['', { kind: 'dir', mode: 0o755, children: new Set() }]]);
let nextName = 0;
let nextIno = 0;
const parentOf = (p) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
const baseOf = (p) => p.slice(p.lastIndexOf('/') + 1);
const join = (d, n) => (d ? `${d}/${n}` : n);
const abs = (p) => (p ? path.join(ROOT, p) : ROOT);
const depth = (p) => (p ? p.split('/').length : 0);

function newInode() {
  return {
    id: nextIno++,
    data: Buffer.alloc(MAXLEN),
    size: 0,
    mode: 0o644,
    nlink: 1,
    mtimeS: null,
    xattrs: new Map(),
  };
}
function addEntry(p, e) {
  entries.set(p, e);
  entries.get(parentOf(p)).children.add(baseOf(p));
}
function dropEntry(p) {
  const e = entries.get(p);
  entries.delete(p);
  entries.get(parentOf(p)).children.delete(baseOf(p));
  if (e.kind === 'file') e.ino.nlink--;
}
const all = (pred) => [...entries.entries()].filter(([p, e]) => pred(p, e)).map(([p]) => p);
const files = () => all((_, e) => e.kind === 'file');
const dirs = () => all((_, e) => e.kind === 'dir');
const nonDirs = () => all((_, e) => e.kind !== 'dir');
const freshName = (prefix) => `${prefix}${nextName++}`;
const newPathIn = (prefix) => join(pick(dirs()), freshName(prefix));

// ---- failure reporting ----------------------------------------------------------------------
let opIndex = -1;
let opName = '';
const attrMismatches = [];
let attrCount = 0;
const perOp = {};
const skipped = {};
let opsMs = 0;

class Failure extends Error {}
function fail(what, detail = {}) {
  throw new Failure(JSON.stringify({ seed: SEED, proc: PROC, op: opIndex, name: opName, what, ...detail }));
}
function attr(what, p, expected, actual) {
  attrCount++;
  const m = { seed: SEED, proc: PROC, op: opIndex, name: opName, what, path: p, expected, actual };
  if (STRICT) throw new Failure(JSON.stringify(m));
  if (attrMismatches.length < 5) attrMismatches.push(m);
}
/** Runs fn(), which must not throw: an errno is a failure unless it is one of allowed. */
function expectOk(p, fn, allowed = []) {
  try {
    return fn();
  } catch (err) {
    if (err instanceof Failure) throw err;
    if (allowed.includes(err.code)) return err.code;
    fail(`unexpected ${err.code ?? err.message}`, { path: p });
  }
}
function expectErr(p, code, fn) {
  try {
    fn();
  } catch (err) {
    if (err.code === code) return;
    fail(`expected ${code}, got ${err.code ?? err.message}`, { path: p });
  }
  fail(`expected ${code}, the call succeeded`, { path: p });
}

function compare(p, ino, off, got) {
  const want = ino.data.subarray(off, Math.min(ino.size, off + got.length));
  if (got.length !== want.length)
    fail('short or long read', {
      path: p,
      offset: off,
      expectedLen: want.length,
      gotLen: got.length,
      size: ino.size,
    });
  const i = want.findIndex((b, j) => b !== got[j]);
  if (i >= 0)
    fail('content mismatch', { path: p, offset: off + i, expected: want[i], actual: got[i], size: ino.size });
}

// ---- the helper for fallocate, mmap and xattrs (bench/exerciser-helper.py) --------------------
let helper = null;
function helperCall(...fields) {
  if (!helper) {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'exerciser-'));
    const req = path.join(base, 'req');
    const resp = path.join(base, 'resp');
    for (const f of [req, resp]) {
      // node has no mkfifo; the coreutils one.
      if (spawnSync('mkfifo', [f]).status !== 0) throw new Error(`mkfifo ${f} failed`);
    }
    const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'exerciser-helper.py');
    const python = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
    const proc = spawn(python, [script, req, resp], { stdio: 'ignore' });
    proc.unref();
    helper = { base, proc, w: fs.openSync(req, 'w'), r: fs.openSync(resp, 'r'), buf: '' };
  }
  fs.writeSync(helper.w, `${fields.join('\t')}\n`);
  const chunk = Buffer.alloc(1 << 17);
  let i;
  while ((i = helper.buf.indexOf('\n')) < 0) {
    const n = fs.readSync(helper.r, chunk, 0, chunk.length, null);
    if (n === 0) throw new Error('exerciser-helper.py exited');
    helper.buf += chunk.toString('latin1', 0, n);
  }
  const line = helper.buf.slice(0, i);
  helper.buf = helper.buf.slice(i + 1);
  const [status, value] = line.split('\t');
  if (status === 'ok') return value;
  const err = new Error(value);
  err.code = value;
  throw err;
}
function closeHelper() {
  if (!helper) return;
  fs.closeSync(helper.w);
  fs.closeSync(helper.r);
  fs.rmSync(helper.base, { recursive: true, force: true });
}

// ---- the operations ---------------------------------------------------------------------------
const O = fs.constants;
const ops = {
  creat() {
    if (entries.size > MAX_ENTRIES) return ops.unlink();
    const p = newPathIn('f');
    const fd = expectOk(p, () => fs.openSync(abs(p), O.O_CREAT | O.O_EXCL | O.O_WRONLY, 0o644));
    fs.closeSync(fd);
    addEntry(p, { kind: 'file', ino: newInode() });
  },
  write() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const ino = entries.get(p).ino;
    const off = rand(Math.min(ino.size + 16384, MAXLEN - 1));
    const len = 1 + rand(Math.min(MAXIO, MAXLEN - off));
    const buf = randBytes(len);
    expectOk(p, () => {
      const fd = fs.openSync(abs(p), O.O_WRONLY);
      try {
        if (fs.writeSync(fd, buf, 0, len, off) !== len) fail('short write', { path: p });
      } finally {
        fs.closeSync(fd);
      }
    });
    buf.copy(ino.data, off);
    ino.size = Math.max(ino.size, off + len);
    ino.mtimeS = null;
  },
  read(p = pick(files()), whole = rand(4) === 0) {
    if (p === undefined) return ops.creat();
    const ino = entries.get(p).ino;
    if (whole) {
      const got = expectOk(p, () => fs.readFileSync(abs(p)));
      if (got.length !== ino.size)
        fail('size of the whole file', { path: p, expected: ino.size, actual: got.length });
      return compare(p, ino, 0, got);
    }
    const off = rand(ino.size + 1);
    const len = 1 + rand(MAXIO);
    const buf = Buffer.alloc(len);
    const n = expectOk(p, () => {
      const fd = fs.openSync(abs(p), O.O_RDONLY);
      try {
        let got = 0;
        for (let r; got < len && (r = fs.readSync(fd, buf, got, len - got, off + got)) > 0; ) got += r;
        return got;
      } finally {
        fs.closeSync(fd);
      }
    });
    compare(p, ino, off, buf.subarray(0, n));
  },
  truncate() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const ino = entries.get(p).ino;
    const n = rand(4) === 0 ? 0 : rand(MAXLEN + 1);
    expectOk(p, () => fs.truncateSync(abs(p), n));
    if (n < ino.size) ino.data.fill(0, n, ino.size);
    ino.size = n;
    ino.mtimeS = null;
  },
  fallocate() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const ino = entries.get(p).ino;
    const off = rand(MAXLEN - 1);
    const len = 1 + rand(Math.min(MAXIO, MAXLEN - off));
    const r = expectOk(p, () => helperCall('fallocate', abs(p), off, len), ['EOPNOTSUPP', 'ENOSYS']);
    if (r === 'EOPNOTSUPP' || r === 'ENOSYS') {
      skipped.fallocate = (skipped.fallocate ?? 0) + 1;
      return;
    }
    ino.size = Math.max(ino.size, off + len);
    ino.mtimeS = null; // filesystems differ on whether fallocate touches mtime
  },
  mmap() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const ino = entries.get(p).ino;
    if (ino.size === 0) return ops.write();
    const off = rand(ino.size);
    const len = 1 + rand(Math.min(16384, ino.size - off));
    const buf = randBytes(len);
    const r = expectOk(p, () => helperCall('mmap', abs(p), off, buf.toString('hex')), ['ERANGE']);
    if (r === 'ERANGE') {
      // fstat through this name showed the file shorter than the model (a stale size, as
      // bindfs shows through another name of a hard link): counted, and the bytes written with
      // pwrite instead so the stream and the final tree stay those of every other target.
      attr('size seen by mmap', p, ino.size, 'smaller');
      expectOk(p, () => {
        const fd = fs.openSync(abs(p), O.O_WRONLY);
        fs.writeSync(fd, buf, 0, len, off);
        fs.closeSync(fd);
      });
    }
    buf.copy(ino.data, off);
    ino.mtimeS = null;
  },
  rename() {
    const src = pick(all((p) => p !== ''));
    if (src === undefined) return ops.creat();
    const e = entries.get(src);
    if (e.kind === 'dir') {
      // A directory moves to a new name beside it (never into itself).
      const dst = join(parentOf(src), freshName('d'));
      expectOk(src, () => fs.renameSync(abs(src), abs(dst)));
      const moved = [...entries.keys()].filter((k) => k === src || k.startsWith(`${src}/`));
      const parent = entries.get(parentOf(src));
      parent.children.delete(baseOf(src));
      parent.children.add(baseOf(dst));
      for (const k of moved) {
        const v = entries.get(k);
        entries.delete(k);
        entries.set(dst + k.slice(src.length), v);
      }
      return;
    }
    const others = nonDirs().filter((q) => q !== src && !(e.kind === 'file' && entries.get(q).ino === e.ino));
    const dst = rand(3) === 0 && others.length ? pick(others) : newPathIn(e.kind === 'file' ? 'f' : 's');
    expectOk(src, () => fs.renameSync(abs(src), abs(dst)));
    if (entries.has(dst)) dropEntry(dst);
    entries.delete(src);
    entries.get(parentOf(src)).children.delete(baseOf(src));
    addEntry(dst, e);
  },
  link() {
    if (entries.size > MAX_ENTRIES) return ops.unlink();
    const src = pick(files());
    if (src === undefined) return ops.creat();
    const e = entries.get(src);
    const dst = newPathIn('f');
    expectOk(src, () => fs.linkSync(abs(src), abs(dst)));
    e.ino.nlink++;
    addEntry(dst, { kind: 'file', ino: e.ino });
  },
  unlink() {
    const p = pick(nonDirs());
    if (p === undefined) return ops.creat();
    expectOk(p, () => fs.unlinkSync(abs(p)));
    dropEntry(p);
  },
  symlink() {
    if (entries.size > MAX_ENTRIES) return ops.unlink();
    const p = newPathIn('s');
    const target = rand(2) ? `../${freshName('t')}` : (pick(files()) ?? 'nowhere');
    expectOk(p, () => fs.symlinkSync(target, abs(p)));
    addEntry(p, { kind: 'symlink', target });
  },
  mkdir() {
    const parent = pick(dirs().filter((d) => depth(d) < MAX_DEPTH));
    if (parent === undefined || entries.size > MAX_ENTRIES) return ops.rmdir();
    const p = join(parent, freshName('d'));
    expectOk(p, () => fs.mkdirSync(abs(p), 0o755));
    addEntry(p, { kind: 'dir', mode: 0o755, children: new Set() });
  },
  rmdir() {
    const p = pick(dirs().filter((d) => d !== ''));
    if (p === undefined) return ops.mkdir();
    if (entries.get(p).children.size > 0) return expectErr(p, 'ENOTEMPTY', () => fs.rmdirSync(abs(p)));
    expectOk(p, () => fs.rmdirSync(abs(p)));
    dropEntry(p);
  },
  chmod() {
    const p = pick(all((q, e) => q !== '' && e.kind !== 'symlink'));
    if (p === undefined) return ops.creat();
    const e = entries.get(p);
    const mode =
      e.kind === 'dir'
        ? pick([0o755, 0o750, 0o700, 0o711])
        : pick([0o644, 0o600, 0o640, 0o755, 0o444, 0o4755]);
    expectOk(p, () => fs.chmodSync(abs(p), mode));
    if (e.kind === 'dir') e.mode = mode;
    else e.ino.mode = mode;
  },
  utimens() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const s = 1_000_000_000 + rand(700_000_000);
    expectOk(p, () => fs.utimesSync(abs(p), s - rand(1000), s));
    entries.get(p).ino.mtimeS = s;
  },
  setxattr() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const name = `user.x${rand(4)}`;
    const value = randBytes(1 + rand(64)).toString('hex');
    expectOk(p, () => helperCall('setxattr', abs(p), name, value));
    entries.get(p).ino.xattrs.set(name, value);
  },
  getxattr() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    const name = `user.x${rand(4)}`;
    const want = entries.get(p).ino.xattrs.get(name);
    if (want === undefined) return expectErr(p, 'ENODATA', () => helperCall('getxattr', abs(p), name));
    const got = expectOk(p, () => helperCall('getxattr', abs(p), name));
    if (got !== want) fail('xattr value', { path: p, xattr: name, expected: want, actual: got });
  },
  stat(p = pick(all((q) => q !== ''))) {
    if (p === undefined) return ops.creat();
    const e = entries.get(p);
    const s = expectOk(p, () => fs.lstatSync(abs(p)));
    const kind = s.isFile() ? 'file' : s.isDirectory() ? 'dir' : s.isSymbolicLink() ? 'symlink' : 'other';
    if (kind !== e.kind) fail('file type', { path: p, expected: e.kind, actual: kind });
    if (e.kind === 'symlink') {
      const t = expectOk(p, () => fs.readlinkSync(abs(p)));
      if (t !== e.target) fail('symlink target', { path: p, expected: e.target, actual: t });
      return;
    }
    const mode = e.kind === 'dir' ? e.mode : e.ino.mode;
    if ((s.mode & 0o7777) !== mode) attr('mode', p, mode.toString(8), (s.mode & 0o7777).toString(8));
    if (e.kind !== 'file') return;
    if (s.size !== e.ino.size) attr('size', p, e.ino.size, s.size);
    if (s.nlink !== e.ino.nlink) attr('nlink', p, e.ino.nlink, s.nlink);
    if (e.ino.mtimeS !== null && Math.floor(s.mtimeMs / 1000) !== e.ino.mtimeS)
      attr('mtime', p, e.ino.mtimeS, Math.floor(s.mtimeMs / 1000));
  },
  readdir(p = pick(dirs())) {
    const want = [...entries.get(p).children].sort();
    const got = expectOk(p, () => fs.readdirSync(abs(p))).sort();
    if (want.join('/') !== got.join('/')) fail('directory listing', { path: p, expected: want, actual: got });
  },
  fsync() {
    const p = pick(files());
    if (p === undefined) return ops.creat();
    expectOk(p, () => {
      const fd = fs.openSync(abs(p), O.O_WRONLY);
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    });
  },
};

/** How often each operation comes up (out of the sum), roughly fsstress's mix. */
const WEIGHTS = {
  creat: 8,
  write: 14,
  read: 14,
  truncate: 4,
  fallocate: 2,
  mmap: 2,
  rename: 6,
  link: 3,
  unlink: 6,
  symlink: 2,
  mkdir: 3,
  rmdir: 2,
  chmod: 3,
  utimens: 3,
  setxattr: 3,
  getxattr: 3,
  stat: 8,
  readdir: 4,
  fsync: 3,
};
const table = Object.entries(WEIGHTS).filter(([k]) => !SKIP.has(k));
const total = table.reduce((s, [, w]) => s + w, 0);
function choose() {
  let r = rand(total);
  for (const [k, w] of table) if ((r -= w) < 0) return k;
  return table[0][0];
}

function tamper() {
  const p = files().find((q) => entries.get(q).ino.size > 0);
  const ino = entries.get(p).ino;
  const fd = fs.openSync(abs(p), O.O_WRONLY);
  fs.writeSync(fd, Buffer.from([ino.data[0] ^ 0xff]), 0, 1, 0);
  fs.closeSync(fd);
  ops.read(p, true);
}

/** Walks the whole tree and reads every file: the model must be what is there at the end. */
function finalCheck() {
  opName = 'final';
  for (const [p, e] of entries) {
    if (e.kind === 'dir') guard(() => ops.readdir(p));
    else {
      guard(() => ops.stat(p));
      if (e.kind === 'file') guard(() => ops.read(p, true));
    }
  }
}

function digest() {
  const h = createHash('sha256');
  for (const p of [...entries.keys()].sort()) {
    const e = entries.get(p);
    h.update(`${p}\0${e.kind}\0`);
    if (e.kind === 'file') h.update(e.ino.data.subarray(0, e.ino.size));
    if (e.kind === 'symlink') h.update(e.target);
  }
  return h.digest('hex').slice(0, 16);
}

let failure = null;
let failures = 0;
let verifyMs = 0;
/** Runs fn; a Failure ends the run, or with --keep-going is counted and the stream goes on. */
function guard(fn) {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof Failure)) throw err;
    failures++;
    failure ??= JSON.parse(err.message);
    if (!KEEP_GOING) throw err;
  }
}
try {
  fs.mkdirSync(ROOT, { recursive: true });
  // The helper starts before the clock (its start-up is not an operation).
  if (['fallocate', 'mmap', 'setxattr', 'getxattr'].some((k) => !SKIP.has(k)))
    expectOk('', () => helperCall('getxattr', ROOT, 'user.none'), ['ENODATA', 'EOPNOTSUPP']);
  const t0 = performance.now();
  let tampered = TAMPER < 0;
  for (opIndex = 0; opIndex < OPS; opIndex++) {
    opName = choose();
    const t = performance.now();
    if (!tampered && opIndex >= TAMPER && files().some((q) => entries.get(q).ino.size > 0)) {
      tampered = true;
      opName = 'tamper';
      guard(tamper);
    } else guard(ops[opName]);
    const ms = performance.now() - t;
    const c = (perOp[opName] ??= { n: 0, ms: 0 });
    c.n++;
    c.ms += ms;
  }
  opsMs = performance.now() - t0;
  const v = performance.now();
  finalCheck();
  verifyMs = performance.now() - v;
} catch (err) {
  if (!(err instanceof Failure)) throw err;
}
closeHelper();
process.stdout.write(
  `${JSON.stringify({ ok: !failure, failure, failures, attrMismatches: attrCount, firstAttr: attrMismatches, perOp, opsMs, verifyMs, digest: failure ? null : digest(), skipped })}\n`,
);
process.exitCode = failure ? 1 : 0;
