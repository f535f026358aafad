import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
interface FastCdc {
  compute_chunks(source: Uint8Array, min: number, avg: number, max: number): Uint32Array;
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

/** The chunks of a buffer (views into it). */
export function cut(data: Buffer, p: ChunkerParams): Buffer[] {
  if (data.length === 0) return [];
  if (data.length <= p.min) return [data];
  const offs = fastcdc().compute_chunks(data, p.min, p.avg, p.max);
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
