/**
 * A writer process of the stress harness (run with plain node through register.mjs): random
 * operations, chosen by its seed against its model, on its own subtree of the mount. Every
 * operation is logged as one JSON line with when it started and ended (t0, t1: ms since the
 * epoch, sub-millisecond, comparable across processes) and the new state of every path it
 * changed (null: gone). The last line holds the whole final state.
 *
 *   node --import ./test/stress/register.mjs test/stress/writer.ts '<WriterConfig as JSON>'
 */
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bytesOf, hasRawBytes } from '../../src/posix/byte-names.js';
import { installBytePaths } from '../../src/posix/byte-paths.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
} from '../../src/posix/fallocate.js';
import { mknod, S_IFCHR, S_IFIFO, S_IFSOCK } from '../../src/posix/mknod.js';
import { removeXattr, setXattr } from '../../src/posix/xattr.js';
import { type EntryState, type FallocateMode, type Op, opData, SubtreeModel } from './model.js';
import { Rng } from './prng.js';

export interface WriterConfig {
  mount: string;
  /** The writer's subtree, a volume path ('/w0'). */
  root: string;
  seed: number;
  maxOps: number;
  /** Stop starting operations this long after the first one, ms (a slow start costs nothing). */
  durationMs: number;
  log: string;
  mmap: boolean;
  lazyMmap: boolean;
  /** Make hard links (default true). */
  links?: boolean;
  /** Some new names hold a byte that is not UTF-8 (model.ts GeneratorOptions.bytes). */
  bytes?: boolean;
  /** Longest pause between operations, ms (some operations are followed by one). */
  pauseMs: number;
}

/** One line of a writer's log. */
export interface OpRecord {
  s: number;
  o: Op;
  t0: number;
  t1: number;
  err?: string;
  ch: Record<string, EntryState | null>;
}

export interface FinalRecord {
  done: true;
  ops: number;
  failed?: string;
  state: Record<string, EntryState>;
}

const MMAP_PY = path.join(path.dirname(fileURLToPath(import.meta.url)), 'mmap-write.py');
const OP_TIMEOUT_MS = 30_000;

export const now = (): number => performance.timeOrigin + performance.now();

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2]!) as WriterConfig;
  // A name that is not UTF-8 goes to node:fs as its bytes (src/posix/byte-paths.ts).
  installBytePaths();
  process.umask(0);
  const rng = new Rng(cfg.seed);
  const model = new SubtreeModel(cfg.root);
  const log = fs.openSync(cfg.log, 'w');
  let before = model.state();
  let seq = 0;
  let failed: string | undefined;
  const deadline = now() + cfg.durationMs;
  // The harness may end the run earlier (StressOptions.atLeast): finish the operation, then stop.
  let stop = false;
  process.on('SIGUSR1', () => {
    stop = true;
  });
  for (; seq < cfg.maxOps && now() < deadline && !stop; seq++) {
    const o = model.next(rng, cfg);
    // A mapping held from an earlier mmap write: data reaches its inode through no other way
    // until it is gone (libfuse gives each name its own kernel inode and page cache, so a write
    // through another name would not be coherent with the mapping's dirty pages).
    if (o.op === 'write' || o.op === 'truncate' || o.op === 'fallocate' || o.op === 'mmap')
      await held.get(model.inodeOf(o.path)!);
    const t0 = now();
    let err: string | undefined;
    try {
      await withTimeout(
        o.op === 'mmap' && o.holdMs ? mmapHeld(cfg.mount, o, model.inodeOf(o.path)!) : exec(cfg.mount, o),
        OP_TIMEOUT_MS,
      );
    } catch (e) {
      err = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    }
    const t1 = now();
    if (err) {
      // The model cannot know what a failed operation left behind: stop here (the harness
      // reports it; the mount is expected to do every operation the model allows).
      fs.writeSync(log, JSON.stringify({ s: seq, o, t0, t1, err, ch: {} } satisfies OpRecord) + '\n');
      failed = `${o.op} ${o.path}: ${err}`;
      break;
    }
    model.apply(o);
    const after = model.state();
    const ch: Record<string, EntryState | null> = {};
    for (const [p, st] of after) if (JSON.stringify(before.get(p)) !== JSON.stringify(st)) ch[p] = st;
    for (const p of before.keys()) if (!after.has(p)) ch[p] = null;
    before = after;
    fs.writeSync(log, JSON.stringify({ s: seq, o, t0, t1, ch } satisfies OpRecord) + '\n');
    if (cfg.pauseMs > 0 && rng.chance(0.2)) await new Promise((r) => setTimeout(r, rng.int(cfg.pauseMs)));
  }
  await Promise.all(held.values());
  const final: FinalRecord = { done: true, ops: seq, failed, state: Object.fromEntries(before) };
  fs.writeSync(log, JSON.stringify(final) + '\n');
  fs.closeSync(log);
  process.exit(failed ? 1 : 0);
}

async function exec(mount: string, o: Op): Promise<void> {
  const p = mount + o.path;
  switch (o.op) {
    case 'mkdir':
      return fsp.mkdir(p, o.mode);
    case 'create':
      return fsp.writeFile(p, opData(o.seed, o.len), { mode: o.mode, flag: 'wx' });
    case 'write': {
      const fh = await fsp.open(p, 'r+');
      try {
        const data = opData(o.seed, o.len);
        for (let off = 0; off < data.length; ) {
          const { bytesWritten } = await fh.write(data, off, data.length - off, o.offset + off);
          off += bytesWritten;
        }
      } finally {
        await fh.close();
      }
      return;
    }
    case 'truncate':
      return fsp.truncate(p, o.size);
    case 'fallocate': {
      // The system call itself (as util-linux's fallocate(1) makes it), not glibc's
      // posix_fallocate emulation; in this process, since spawn cannot pass a name that is not
      // UTF-8 (it encodes arguments as UTF-8).
      const fh = await fsp.open(p, 'r+');
      try {
        await fallocate(fh.fd, FALLOCATE_FLAGS[o.mode], o.offset, o.len);
      } finally {
        await fh.close();
      }
      return;
    }
    case 'mmap':
      return run('python3', [
        MMAP_PY,
        pathArg(p),
        String(o.offset),
        String(o.len),
        String(o.byte),
        o.msync ? '1' : '0',
      ]);
    case 'rename':
      return fsp.rename(mount + o.from, p);
    case 'link':
      return fsp.link(mount + o.from, p);
    case 'unlink':
      return fsp.unlink(p);
    case 'symlink':
      return fsp.symlink(o.target, p);
    case 'rmdir':
      return fsp.rmdir(p);
    case 'chmod':
      return fsp.chmod(p, o.mode);
    case 'chown':
      return fsp.lchown(p, o.uid, o.gid);
    case 'utimens':
      return fsp.utimes(p, o.atime / 1000, o.mtime / 1000);
    // The project's addon (l*xattr, mknod): names as bytes, sockets too (the model sets xattrs of
    // files and directories only, never of a symlink).
    case 'setxattr':
      return setXattr(p, o.name, Buffer.from(o.value));
    case 'removexattr':
      return removeXattr(p, o.name);
    case 'mkfifo':
      return mknod(p, S_IFIFO | o.mode, 0);
    case 'mknod':
      return mknod(p, (o.kind === 'c' ? S_IFCHR : S_IFSOCK) | o.mode, o.rdev);
    case 'fsync': {
      const fh = await fsp.open(p, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      return;
    }
  }
}

/** A path for mmap-write.py: as it is, or `hex:` and its bytes when it holds one that is not UTF-8. */
function pathArg(p: string): string {
  return hasRawBytes(p) ? `hex:${bytesOf(p).toString('hex')}` : p;
}

/** fallocate(2)'s flags per mode (model.ts FallocateMode), as fallocate(1)'s options give them. */
const FALLOCATE_FLAGS: Record<FallocateMode, number> = {
  punch: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
  zero: FALLOC_FL_ZERO_RANGE,
  zerokeep: FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
  grow: 0,
  keep: FALLOC_FL_KEEP_SIZE,
};

/** Mappings still held by mmap writes (StressOp holdMs), by model inode: resolve when gone. */
const held = new Map<object, Promise<void>>();

/** An mmap write whose process keeps the mapping: done once the bytes are in it. */
function mmapHeld(mount: string, o: Extract<Op, { op: 'mmap' }>, inode: object): Promise<void> {
  const args = [
    MMAP_PY,
    pathArg(mount + o.path),
    String(o.offset),
    String(o.len),
    String(o.byte),
    '0',
    String(o.holdMs),
  ];
  const child = spawn('python3', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let errText = '';
  child.stderr!.on('data', (b) => (errText += b));
  const gone = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  held.set(
    inode,
    gone.then(() => {
      held.delete(inode);
    }),
  );
  return new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (b) => {
      out += b;
      if (out.includes('written')) resolve();
    });
    child.on('exit', (code) =>
      code === 0 && out.includes('written')
        ? resolve()
        : reject(Object.assign(new Error(`python3: ${errText || `exit ${code}`}`), { code: 'ECHILD' })),
    );
  });
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { timeout: OP_TIMEOUT_MS }, (err, _out, stderr) =>
      err
        ? reject(Object.assign(new Error(`${cmd}: ${stderr || err.message}`), { code: 'ECHILD' }))
        : resolve(),
    ),
  );
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, rej) => {
      t = setTimeout(() => rej(Object.assign(new Error(`no answer within ${ms} ms`), { code: 'EHANG' })), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) void main();
