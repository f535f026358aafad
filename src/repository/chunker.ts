import { createRequire } from 'node:module';
import { posix } from '../posix/native.js';

const require = createRequire(import.meta.url);
interface FastCdc {
  compute_chunks(source: Uint8Array, min: number, avg: number, max: number): Uint32Array;
  /** The module's WebAssembly exports (wasm-bindgen 0.2; cutParts writes into its memory). */
  __wasm: {
    memory: { buffer: ArrayBuffer };
    __wbindgen_malloc(n: number): number;
    __wbindgen_free(ptr: number, n: number): void;
    __wbindgen_add_to_stack_pointer(n: number): number;
    compute_chunks(ret: number, ptr: number, len: number, min: number, avg: number, max: number): void;
  };
}
let fastcdcLib: FastCdc | undefined;
/** Loaded on the first cut (compiling its WebAssembly is no part of a run that stores nothing). */
function fastcdc(): FastCdc {
  fastcdcLib ??= require('@dstanesc/wasm-chunking-fastcdc-node') as FastCdc;
  return fastcdcLib;
}

export interface ChunkerParams {
  min: number;
  avg: number;
  max: number;
}

/** The sizes new repositories get: a changed MiB costs about 1.5 MiB (docs/repository.md). */
export const DEFAULT_CHUNKER: ChunkerParams = { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024 };

/** The posix addon's cdcCut once it loaded; null when it did not or is switched off. */
let nativeCut:
  | ((parts: Uint8Array[], min: number, avg: number, max: number) => Uint32Array | number)
  | null
  | undefined;

/**
 * The addon's FastCDC (native/posix, `cdcCut`): the same cut as the WebAssembly module's, byte
 * for byte (test/plugins/native-cdc.test.ts), reading the parts where they are instead of
 * copying them into the module's memory, and with no module to compile in each worker thread.
 * `TWINFS_NATIVE_CDC=0` keeps the WebAssembly (a build without the addon falls back to it).
 */
function native(): typeof nativeCut {
  if (nativeCut === undefined)
    try {
      const addon = posix();
      nativeCut =
        process.env.TWINFS_NATIVE_CDC === '0'
          ? null
          : (parts, min, avg, max) => addon.cdcCut(parts, min, avg, max);
    } catch {
      nativeCut = null;
    }
  return nativeCut;
}

/** The chunks of a buffer (views into it). */
export function cut(data: Buffer, p: ChunkerParams): Buffer[] {
  if (data.length === 0) return [];
  if (data.length <= p.min) return [data];
  const offs = cutOffsets([data], p);
  const out: Buffer[] = [];
  let prev = 0;
  for (const o of offs) {
    if (o <= prev) continue;
    out.push(data.subarray(prev, o));
    prev = o;
  }
  if (prev < data.length) out.push(data.subarray(prev));
  return out;
}

/**
 * The chunk end offsets of parts laid end to end (a stream's carried tail, then its next
 * window), as compute_chunks gives them for the joined bytes: the addon's cut reads the parts
 * where they are; without it, the parts are copied straight into the chunker's WebAssembly
 * memory, never joined in a buffer of their own first. The WebAssembly path mirrors the module's own
 * compute_chunks glue (wasm-bindgen: the input is handed over and freed by the callee, the
 * answer copied out and freed here); test/plugins/dir-workers.test.ts checks both agree.
 */
export function cutOffsets(parts: Uint8Array[], p: ChunkerParams): Uint32Array {
  const n = native();
  if (n) {
    const got = n(parts, p.min, p.avg, p.max);
    if (typeof got !== 'number') return got;
    if (got === -22) throw new Error(`FastCDC refused the chunk sizes ${p.min}/${p.avg}/${p.max}`);
    // Anything else (the gear table not made): the WebAssembly.
  }
  return wasmCutOffsets(parts, p);
}

/** cutOffsets through the WebAssembly module (the fallback; exported for the tests that compare). */
export function wasmCutOffsets(parts: Uint8Array[], p: ChunkerParams): Uint32Array {
  const w = fastcdc().__wasm;
  let len = 0;
  for (const part of parts) len += part.length;
  const ret = w.__wbindgen_add_to_stack_pointer(-16);
  try {
    const ptr = w.__wbindgen_malloc(len);
    // The memory may have grown in malloc: its buffer is taken after.
    const mem = new Uint8Array(w.memory.buffer);
    let at = ptr;
    for (const part of parts) {
      copyInto(mem, part, at);
      at += part.length;
    }
    w.compute_chunks(ret, ptr, len, p.min, p.avg, p.max);
    const words = new Int32Array(w.memory.buffer, ret, 4);
    const [r0, r1, , r3] = [words[0]!, words[1]!, words[2]!, words[3]!];
    if (r3) throw new Error(`FastCDC refused the chunk sizes ${p.min}/${p.avg}/${p.max}`);
    const out = new Uint32Array(w.memory.buffer, r0, r1).slice();
    w.__wbindgen_free(r0, r1 * 4);
    return out;
  } finally {
    w.__wbindgen_add_to_stack_pointer(16);
  }
}

/** Reused plain memory a window of shared memory passes through (copyInto). */
let bounce: Uint8Array | undefined;

/**
 * `dst.set(src, at)`, without V8's slow path: a copy from or to a SharedArrayBuffer is done
 * with relaxed atomic accesses, a word at a time only where source and destination are aligned
 * alike (mod 8), else a byte at a time, about 0.35 ms of CPU per MiB here against 0.03–0.05
 * for a plain memmove. A stream's window (shared memory, 8-aligned) lands in the chunker's
 * memory after the carried tail, at any offset: it is first copied into plain memory at the
 * window's own alignment (the fast shared path), then from there (a plain memmove). Two fast
 * copies cost about a quarter of the slow one; on a large file's serial pass that was about a
 * fifth of the thread's CPU.
 */
export function copyInto(dst: Uint8Array, src: Uint8Array, at: number): void {
  const shared = src.buffer instanceof SharedArrayBuffer || dst.buffer instanceof SharedArrayBuffer;
  const skew = (src.byteOffset - (dst.byteOffset + at)) & 7;
  if (!shared || skew === 0 || src.length < 4096 || dst.buffer instanceof SharedArrayBuffer) {
    dst.set(src, at);
    return;
  }
  const lead = src.byteOffset & 7;
  if (bounce === undefined || bounce.length < src.length + lead)
    bounce = new Uint8Array(Math.max(src.length + lead, 8 * 1024 * 1024 + 8));
  const mid = bounce.subarray(lead, lead + src.length);
  mid.set(src);
  dst.set(mid, at);
}

/** The addon's memcpy, once it loaded; null when it did not (copyShared falls back to set). */
let memcpy: ((dst: Uint8Array, at: number, src: Uint8Array) => number) | null | undefined;

/**
 * `dst.set(src, at)` for a copy between views of shared memory at any alignment: a plain memcpy
 * (posix addon's copyBytes) instead of V8's relaxed copy, byte by byte when source and
 * destination are not aligned alike mod 8 (copyInto), as a chunk cut anywhere in a window and
 * copied into a batch mostly is: 0.35-0.5 s of the JS thread's CPU per GiB of new data against
 * 0.09-0.12 aligned (docs/benchmarks.md). Only where no other thread writes either range.
 */
export function copyShared(dst: Uint8Array, at: number, src: Uint8Array): void {
  if (memcpy === undefined)
    try {
      const addon = posix();
      memcpy = (d, a, s) => addon.copyBytes(d, a, s);
    } catch {
      memcpy = null;
    }
  if (memcpy === null || src.length < 4096 || memcpy(dst, at, src) < 0) dst.set(src, at);
}
