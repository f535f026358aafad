import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const fastcdc = require('@dstanesc/wasm-chunking-fastcdc-node') as {
  compute_chunks(source: Uint8Array, min: number, avg: number, max: number): Uint32Array;
};

export interface ChunkerParams {
  min: number;
  avg: number;
  max: number;
}

/** The sizes new repositories get: a changed MiB costs about 1.5 MiB (docs/repository.md). */
export const DEFAULT_CHUNKER: ChunkerParams = { min: 64 * 1024, avg: 256 * 1024, max: 1024 * 1024 };

/** How much is buffered before cutting: many chunks per call into the wasm module. */
const WINDOW = 8 * 1024 * 1024;

/**
 * Content-defined chunking (FastCDC) of a stream. FastCDC restarts at every chunk start, so
 * cutting a window and carrying its last (possibly cut short) chunk into the next window gives
 * the same boundaries as cutting the whole content at once.
 */
export class StreamChunker {
  private parts: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly p: ChunkerParams) {}

  /** Chunks complete so far (a tail stays buffered). */
  push(b: Buffer): Buffer[] {
    this.parts.push(b);
    this.buffered += b.length;
    if (this.buffered < WINDOW) return [];
    const all = Buffer.concat(this.parts);
    const chunks = cut(all, this.p);
    const tail = chunks.pop()!;
    this.parts = [tail];
    this.buffered = tail.length;
    return chunks;
  }

  /** The remaining chunks. */
  end(): Buffer[] {
    const all = Buffer.concat(this.parts);
    this.parts = [];
    this.buffered = 0;
    return all.length === 0 ? [] : cut(all, this.p);
  }
}

/** The chunks of a buffer (views into it). */
export function cut(data: Buffer, p: ChunkerParams): Buffer[] {
  if (data.length === 0) return [];
  if (data.length <= p.min) return [data];
  const offs = fastcdc.compute_chunks(data, p.min, p.avg, p.max);
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
