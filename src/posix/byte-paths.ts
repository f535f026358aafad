// The module's own object (a namespace import is frozen): patching it reaches every importer.
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { bytesOf, hasRawBytes, nameOf } from './byte-names.js';

/**
 * Names are bytes at node:fs (docs/architecture.md, "Names are bytes"). twinfs's strings carry a
 * byte that is not UTF-8 as U+DC00 + the byte (byte-names.ts); node:fs would encode such a
 * string path as UTF-8 (U+FFFD for each of those bytes: another name) and decode names it reads
 * with U+FFFD (a name that is not there). installBytePaths() wraps node:fs once per thread:
 *
 * - a path argument that holds such a byte goes to node:fs as its bytes (a Buffer); every other
 *   path goes as it was, so the cost is one regular-expression test per path;
 * - readdir, readlink and realpath whose answer holds U+FFFD are asked again for Buffers, which
 *   are decoded by byte-names.ts; a name with a real U+FFFD comes back the same.
 *
 * Why at the module and not at each call: every fs call with a volume path (the primary, the
 * mirror, the peer's reads of the mirror, a restore's writes) must do this, several hundred
 * calls in the server, the mirror driver and the peer; one missed call silently stores another
 * name. Installed by the CLI's first import (cli/env.ts), the repository's worker threads, and
 * by the server, mirror and peer components for embedders (idempotent).
 */
export function installBytePaths(): void {
  const marked = fs as unknown as Record<symbol, boolean>;
  if (marked[INSTALLED]) return;
  marked[INSTALLED] = true;
  const promises = fs.promises as unknown as Record<string, unknown>;
  const sync = fs as unknown as Record<string, unknown>;
  for (const name of ONE_PATH) {
    wrapArgs(sync, name, 1);
    wrapArgs(sync, `${name}Sync`, 1);
    wrapArgs(promises, name, 1);
  }
  for (const name of TWO_PATHS) {
    wrapArgs(sync, name, 2);
    wrapArgs(sync, `${name}Sync`, 2);
    wrapArgs(promises, name, 2);
  }
  for (const name of ['createReadStream', 'createWriteStream']) wrapArgs(sync, name, 1);
  for (const name of NAMES_BACK) {
    wrapSyncNames(sync, `${name}Sync`);
    wrapPromiseNames(promises, name);
    wrapCallbackNames(sync, name);
  }
  wrapCallbackNames(sync.realpath as unknown as Record<string, unknown>, 'native');
  wrapSyncNames(sync.realpathSync as unknown as Record<string, unknown>, 'native');
  syncBuiltinESMExports();
}

const INSTALLED = Symbol.for('twinfs.bytePaths');

/** node:fs calls whose first argument is a path (besides the ones that also answer names). */
const ONE_PATH = [
  'access',
  'appendFile',
  'chmod',
  'chown',
  'lchown',
  'lutimes',
  'utimes',
  'lstat',
  'stat',
  'statfs',
  'mkdir',
  'mkdtemp',
  'open',
  'opendir',
  'readFile',
  'writeFile',
  'rm',
  'rmdir',
  'truncate',
  'unlink',
  'exists',
];

/** node:fs calls whose first two arguments are paths (symlink: the target's bytes too). */
const TWO_PATHS = ['rename', 'link', 'copyFile', 'cp', 'symlink'];

/** node:fs calls that answer names or paths. */
const NAMES_BACK = ['readdir', 'readlink', 'realpath'];

type Fn = (...args: unknown[]) => unknown;

function convert(args: unknown[], count: number): unknown[] {
  let out = args;
  for (let i = 0; i < count && i < args.length; i++) {
    const a = args[i];
    if (typeof a === 'string' && hasRawBytes(a)) {
      if (out === args) out = args.slice();
      out[i] = bytesOf(a);
    }
  }
  return out;
}

/**
 * An error of a call whose path arguments went to node:fs as bytes names them as they were given:
 * node:fs decodes a Buffer path into the error's `path` and `dest` with U+FFFD for each byte that
 * is not UTF-8, which is another name (a caller comparing it with its own paths finds none).
 */
function namedAsGiven(err: unknown, given: unknown[], sent: unknown[]): unknown {
  const e = err as { path?: unknown; dest?: unknown } | null;
  if (e && typeof e === 'object') {
    if (sent[0] !== given[0] && typeof e.path === 'string') e.path = given[0];
    if (sent[1] !== given[1] && typeof e.dest === 'string') e.dest = given[1];
  }
  return err;
}

/** original(...sent), its error (thrown, rejected or called back) named as `given` (namedAsGiven). */
function callNaming(original: Fn, self: unknown, given: unknown[], sent: unknown[]): unknown {
  if (sent === given) return original.apply(self, sent);
  const cb = sent[sent.length - 1];
  if (typeof cb === 'function') {
    const withCb = sent.slice();
    withCb[withCb.length - 1] = (err: unknown, ...r: unknown[]) =>
      cb(err ? namedAsGiven(err, given, sent) : err, ...r);
    return original.apply(self, withCb);
  }
  let r: unknown;
  try {
    r = original.apply(self, sent);
  } catch (err) {
    throw namedAsGiven(err, given, sent);
  }
  if (r instanceof Promise)
    return r.catch((err) => {
      throw namedAsGiven(err, given, sent);
    });
  return r;
}

function wrapArgs(obj: Record<string, unknown>, name: string, count: number): void {
  const original = obj[name] as Fn | undefined;
  if (typeof original !== 'function') return;
  const wrapped = function (this: unknown, ...args: unknown[]) {
    return callNaming(original, this, args, convert(args, count));
  };
  copyProps(original, wrapped);
  obj[name] = wrapped;
}

function wrapSyncNames(obj: Record<string, unknown>, name: string): void {
  const original = obj[name] as Fn | undefined;
  if (typeof original !== 'function') return;
  const wrapped = function (this: unknown, ...args: unknown[]) {
    const a = convert(args, 1);
    const r = callNaming(original, this, args, a);
    return lossy(r) ? decoded(original.apply(this, asBuffers(a))) : r;
  };
  copyProps(original, wrapped);
  obj[name] = wrapped;
}

function wrapPromiseNames(obj: Record<string, unknown>, name: string): void {
  const original = obj[name] as Fn | undefined;
  if (typeof original !== 'function') return;
  const wrapped = async function (this: unknown, ...args: unknown[]) {
    const a = convert(args, 1);
    const r = await callNaming(original, this, args, a);
    return lossy(r) ? decoded(await original.apply(this, asBuffers(a))) : r;
  };
  obj[name] = wrapped;
}

function wrapCallbackNames(obj: Record<string, unknown>, name: string): void {
  const original = obj[name] as Fn | undefined;
  if (typeof original !== 'function') return;
  const wrapped = function (this: unknown, ...args: unknown[]) {
    const cb = args[args.length - 1];
    if (typeof cb !== 'function') return original.apply(this, convert(args, 1));
    const given = args.slice(0, -1);
    const a = convert(given, 1);
    return original.call(this, ...a, (err: unknown, r: unknown) => {
      if (err) return cb(namedAsGiven(err, given, a), r);
      if (!lossy(r)) return cb(err, r);
      original.call(this, ...asBuffers(a), (err2: unknown, r2: unknown) =>
        cb(err2, err2 ? undefined : decoded(r2)),
      );
    });
  };
  copyProps(original, wrapped);
  obj[name] = wrapped;
}

function copyProps(from: Fn, to: Fn): void {
  for (const key of Reflect.ownKeys(from)) {
    if (key === 'length' || key === 'name' || key === 'prototype') continue;
    const d = Object.getOwnPropertyDescriptor(from, key);
    if (d) Object.defineProperty(to, key, d);
  }
}

/** Whether an answer (a name, names or dirents) may have lost bytes. */
function lossy(r: unknown): boolean {
  if (typeof r === 'string') return r.includes('\uFFFD');
  if (!Array.isArray(r)) return false;
  for (const x of r) {
    if (
      typeof x === 'string' ? x.includes('\uFFFD') : typeof x?.name === 'string' && x.name.includes('\uFFFD')
    )
      return true;
  }
  return false;
}

/** The same call's arguments asking for Buffers (options object or encoding string). */
function asBuffers(args: unknown[]): unknown[] {
  const out = args.slice();
  const opts = out[1];
  if (opts && typeof opts === 'object') out[1] = { ...(opts as object), encoding: 'buffer' };
  else out[1] = 'buffer';
  return out;
}

function decoded(r: unknown): unknown {
  if (Buffer.isBuffer(r)) return nameOf(r);
  if (!Array.isArray(r)) return r;
  return r.map((x) => {
    if (Buffer.isBuffer(x)) return nameOf(x);
    if (x && typeof x === 'object')
      for (const key of ['name', 'path', 'parentPath']) if (Buffer.isBuffer(x[key])) x[key] = nameOf(x[key]);
    return x;
  });
}
