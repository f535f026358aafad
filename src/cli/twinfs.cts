#!/usr/bin/env node
// The command's entry point. CommonJS, so that it runs before anything has used libuv's thread
// pool: Node 20 loads an ES module entry with asynchronous reads, which start the pool with its
// default 4 threads before the entry's first line runs, and the size is read only then. The
// server's FUSE handlers and the backup peer's target calls wait in that pool: with 4 threads a
// stopped target (4 copies stuck in it) left the peer unable to record its own failure, and the
// server's requests queue behind slow primary calls (FUSE-NOTES). src/cli/env.ts sets the same
// for code that imports main.js directly.
import type * as FsT from 'node:fs';
import type * as PathT from 'node:path';

process.env.UV_THREADPOOL_SIZE ??= '32';

// The certificates the installed command's launcher (the two lines the build writes at the head
// of dist/cli/twinfs.cjs, scripts/bundle-cli.mjs) moved aside: for TLS and child processes.
if (process.env.TWINFS_NODE_EXTRA_CA_CERTS !== undefined) require('./extra-ca-certs.cjs');

const fs = require('node:fs') as typeof FsT;
const path = require('node:path') as typeof PathT;

const BUNDLE_DIR = path.join(__dirname, '..', 'cli-bundle');
/**
 * Magic of a cache file: then the CRC-32 of the rest (u32 LE), the key's length (u32 LE), key,
 * V8's data. A CRC-32 (zlib's, ~3× faster than the SHA-1 of format 1) finds the damage a file
 * can come to (truncation, flipped bits); V8 itself checks no checksum of cached data (Node 20's
 * V8 used a file with a flipped bit of its data). Not a defence against a forged file: whoever
 * can write the cache could write a matching SHA-1 as well.
 */
const MAGIC = Buffer.from('twinfs-code-cache-2\n');
/** The checksum's bytes after the magic. */
const SUM_LEN = 4;
/** A bundle file written as CommonJS's wrapper called at once (scripts/bundle-cli.mjs): its ends. */
const WRAP_OPEN = '(function (exports, require, module, __filename, __dirname) {';
const WRAP_CALL = '\n.call(this, exports, require, module, __filename, __dirname);\n';
/**
 * A temporary cache file this old was left by a process that died while writing it. Up here with
 * the other constants: a command may exit while the bundle is being required (before the lines
 * below this file's top run), and the exit handler that prunes reads it.
 */
const STALE_TMP_MS = 10 * 60 * 1000;

const bundled = bundle();
if (bundled) {
  const cacheDir = codeCacheDir();
  if (cacheDir) compileWithCache(cacheDir);
  // The bundle's import() of a plugin's file (scripts/bundle-cli.mjs, hostImport): a built-in
  // plugin the bundle carries unchanged is required from its chunk (src/cli/bundled-import.cts,
  // loaded by the first import).
  let importer: ((url: string) => Promise<unknown>) | undefined;
  (globalThis as Record<symbol, unknown>)[Symbol.for('twinfs.import')] = (url: string) => {
    importer ??= (require('./bundled-import.cjs') as typeof import('./bundled-import.cjs')).bundledImporter(
      path.join(__dirname, '..', '..'),
      BUNDLE_DIR,
      (u: string) => import(u),
    );
    return importer(url);
  };
  require(bundled);
} else void import('./main.js');

/**
 * The CLI as bundled by `npm run build` (scripts/bundle-cli.mjs: dist/cli-bundle/main.cjs, the
 * same modules in a few CommonJS files, so a start resolves, reads and compiles ~40 files
 * instead of ~300), or undefined for dist/cli/main.js: there is no bundle, it is older than
 * dist/cli/main.js (a `tsc` without the bundle step) or TWINFS_NO_BUNDLE=1.
 */
function bundle(): string | undefined {
  if (process.env.TWINFS_NO_BUNDLE === '1') return undefined;
  const file = path.join(BUNDLE_DIR, 'main.cjs');
  try {
    const b = fs.statSync(file).mtimeMs;
    const m = fs.statSync(path.join(__dirname, 'main.js')).mtimeMs;
    return b >= m ? file : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Where the code cache goes: `TWINFS_CACHE_DIR` (`off`: none), else `$XDG_CACHE_HOME/twinfs` or
 * `~/.cache/twinfs`, as the repository's index cache (src/repository/index-cache.ts); the cache
 * is its `code/` directory.
 */
function codeCacheDir(): string | undefined {
  const env = process.env.TWINFS_CACHE_DIR;
  if (env === 'off') return undefined;
  const os = require('node:os') as typeof import('node:os');
  const base = env || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'twinfs');
  return path.join(base, 'code');
}

/**
 * Compiles the bundle's files through vm.Script with a V8 code cache (docs/architecture.md "The
 * command's start"): Node 20 has no compile cache (module.enableCompileCache is Node 22), and
 * compiling the bundle (the functions a command runs included, compiled lazily on their first
 * call) was a fifth of a cold command's time. Every bundle file Node's CommonJS loader compiles
 * (Module.prototype._compile; the rest is left to Node) is compiled with the cached data of its
 * cache file when there is one; when there was none or V8 rejected it (another Node or V8, other
 * flags, another source), the data V8 has at the process's exit (its lazily compiled functions
 * included) is written to the cache file for the next start (a temporary file renamed into
 * place). A file that is not a cache file of this very source (its own magic, checksum and key:
 * Node's version, the architecture, the file's path, size and mtime) is not given to V8 and is
 * replaced. Nothing of the cache can fail a command: unreadable or unwritable, it is ignored.
 * TWINFS_DEBUG_CODE_CACHE=1 prints what became of every file's cache on stderr.
 */
function compileWithCache(cacheDir: string): void {
  // zlib.crc32: Node 20.15 and later; without it, no cache (the bundle compiles as before).
  const { crc32 } = require('node:zlib') as typeof import('node:zlib');
  if (typeof crc32 !== 'function') return;
  const vm = require('node:vm') as typeof import('node:vm');
  const crypto = require('node:crypto') as typeof import('node:crypto');
  const Module = require('node:module') as typeof import('node:module') & {
    prototype: { _compile(content: string, filename: string): unknown };
    wrap(code: string): string;
  };
  const debug = process.env.TWINFS_DEBUG_CODE_CACHE === '1';
  const say = (file: string, state: string) => {
    if (debug) process.stderr.write(`twinfs: code cache ${path.basename(file)}: ${state}\n`);
  };
  const toWrite: Array<{ script: import('node:vm').Script; file: string; key: string; source: string }> = [];
  const original = Module.prototype._compile;
  Module.prototype._compile = function (this: NodeJS.Module, content: string, filename: string) {
    if (path.dirname(filename) !== BUNDLE_DIR) return original.call(this, content, filename);
    let st: FsT.Stats;
    try {
      st = fs.statSync(filename);
    } catch {
      return original.call(this, content, filename);
    }
    const key = `${process.version} ${process.arch} ${filename} ${st.size} ${st.mtimeMs}`;
    const file = path.join(cacheDir, cacheName(filename, crypto));
    const cachedData = readCache(file, key, crc32, (state) => say(filename, state));
    const script = new vm.Script(wrapped(content, Module.wrap), {
      filename,
      cachedData,
    });
    if (cachedData && !script.cachedDataRejected) say(filename, 'used');
    else {
      if (cachedData) say(filename, 'rejected');
      toWrite.push({ script, file, key, source: filename });
    }
    const fn = script.runInThisContext({ displayErrors: true });
    return fn.call(this.exports, this.exports, Module.createRequire(filename), this, filename, BUNDLE_DIR);
  };
  process.once('exit', () => {
    for (const { script, file, key, source } of toWrite) {
      try {
        writeCache(file, key, script.createCachedData(), crc32);
        say(source, 'written');
      } catch (err) {
        say(source, `not written (${(err as Error).message})`);
      }
    }
    if (toWrite.length > 0) prune(cacheDir, crypto, (f, why) => say(f, `removed (${why})`));
  });
}

/**
 * The bundle file's text as the function CommonJS runs it with. A file the build wrote as that
 * function, called at once (scripts/bundle-cli.mjs): its text up to the call, a slice of the
 * string Node read, which V8 compiles without copying it. Any other: Module.wrap's wrapper
 * around it (a concatenation V8 flattens into a copy), its shebang line a comment (columns kept).
 */
function wrapped(content: string, wrap: (code: string) => string): string {
  if (content.startsWith(WRAP_OPEN) && content.endsWith(`\n})${WRAP_CALL}`))
    return content.slice(0, content.length - WRAP_CALL.length);
  return wrap(content.startsWith('#!') ? `//${content.slice(2)}` : content);
}

/** A bundle file's cache file: its name and a hash of its path (installed bundles differ). */
function cacheName(filename: string, crypto: typeof import('node:crypto')): string {
  return `${path.basename(filename)}.${crypto.createHash('sha1').update(filename).digest('hex').slice(0, 16)}`;
}

/**
 * Removes the cache files nobody can use any more, when the cache was written (a new build or a
 * new install; a start that finds its cache writes nothing and lists nothing):
 * - this bundle's files that a build removed (chunk names carry a hash of their content: each
 *   build that changes one leaves its old cache behind otherwise);
 * - files of a bundle installed elsewhere whose bundle file is gone (another checkout, a copy a
 *   benchmark or an `npx` run made and removed): the key in the file's header names the file it
 *   was made from. Such caches were never removed before, and a cache directory grew to 1,600
 *   files and 55 MB in a day of builds and benchmark copies. A file of another format (its magic
 *   is not ours: another twinfs version's) is left alone;
 * - a write's temporary file older than STALE_TMP_MS (a process that died between write and rename).
 */
function prune(
  cacheDir: string,
  crypto: typeof import('node:crypto'),
  say: (file: string, why: string) => void,
): void {
  let names: string[];
  try {
    names = fs.readdirSync(cacheDir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const name of names) {
    // The cache is an optimisation: nothing of it fails a command.
    try {
      const file = path.join(cacheDir, name);
      if (/^.+\.cjs\.[0-9a-f]{16}\.\d+\.tmp$/.test(name)) {
        if (now - fs.statSync(file).mtimeMs > STALE_TMP_MS) {
          fs.rmSync(file, { force: true });
          say(file, 'a write that did not finish left it');
        }
        continue;
      }
      const m = /^(.+\.cjs)\.[0-9a-f]{16}$/.exec(name);
      if (!m) continue;
      const own = path.join(BUNDLE_DIR, m[1]!);
      const source = cacheName(own, crypto) === name ? own : sourceOf(file);
      if (source === undefined || fs.existsSync(source)) continue;
      fs.rmSync(file, { force: true });
      say(source, source === own ? 'its bundle file is gone' : `its bundle file ${source} is gone`);
    } catch {
      // Gone meanwhile, or unreadable: left as it is.
    }
  }
}

/**
 * The bundle file a cache file was made from, as its key names it (`node arch FILE size mtime`:
 * the path may hold spaces), read from its header alone; undefined for a file of another format.
 */
function sourceOf(file: string): string | undefined {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(MAGIC.length + SUM_LEN + 4 + 8192);
    const key = keyOf(head.subarray(0, fs.readSync(fd, head, 0, head.length, 0)))?.key;
    if (key === undefined) return undefined;
    const words = key.split(' ');
    if (words.length < 5) return undefined;
    const source = words.slice(2, -2).join(' ');
    return path.isAbsolute(source) ? source : undefined;
  } finally {
    fs.closeSync(fd);
  }
}

/** The V8 data of a cache file of this key; undefined (state said) when there is none. */
function readCache(
  file: string,
  key: string,
  crc32: (data: Uint8Array) => number,
  say: (state: string) => void,
): Buffer | undefined {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    say('missing');
    return undefined;
  }
  const head = keyOf(buf);
  if (!head || crc32(buf.subarray(MAGIC.length + SUM_LEN)) !== buf.readUInt32LE(MAGIC.length)) {
    say('foreign');
    return undefined;
  }
  if (head.key !== key) {
    say('stale');
    return undefined;
  }
  return buf.subarray(head.dataAt);
}

/**
 * The key of a cache file's bytes (all, or its head) and where V8's data starts; undefined when
 * it is not of this format (magic) or too short for its key.
 */
function keyOf(buf: Buffer): { key: string; dataAt: number } | undefined {
  const at = MAGIC.length + SUM_LEN;
  if (buf.length < at + 4 || !buf.subarray(0, MAGIC.length).equals(MAGIC)) return undefined;
  const dataAt = at + 4 + buf.readUInt32LE(at);
  return dataAt > buf.length ? undefined : { key: buf.toString('utf8', at + 4, dataAt), dataAt };
}

function writeCache(file: string, key: string, data: Buffer, crc32: (data: Uint8Array) => number): void {
  const k = Buffer.from(key);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(k.length);
  const rest = Buffer.concat([len, k, data]);
  const sum = Buffer.alloc(SUM_LEN);
  sum.writeUInt32LE(crc32(rest));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, Buffer.concat([MAGIC, sum, rest]));
  fs.renameSync(tmp, file);
}
