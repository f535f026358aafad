import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Worker } from 'node:worker_threads';
import { TwinError } from '../common/errors.js';

/**
 * node:worker_threads, required when the first thread starts: loading it (with its messaging
 * and error-serialization modules) is ~120 fresh pages of every command that loads the
 * repository, and a no-change backup or a handful of small files starts no thread.
 */
let workerThreads: typeof import('node:worker_threads') | undefined;
function threadsModule(): typeof import('node:worker_threads') {
  workerThreads ??= createRequire(import.meta.url)(
    'node:worker_threads',
  ) as typeof import('node:worker_threads');
  return workerThreads;
}

/**
 * A small pool of worker threads for the repository's CPU work (blob-worker.ts: chunking,
 * hashing, compression, encryption), so that the peer's one JS thread only reads, dedups and
 * writes.
 *
 * Written on node:worker_threads rather than a pool library because the large-file path needs
 * affinity: the windows of one file go to the worker that holds that file's running SHA-256
 * and its uncut tail (`run(..., { worker })`), which piscina and tinypool do not offer.
 *
 * A worker that dies (an uncaught error, a terminated thread, out of memory) fails exactly the
 * tasks it held with ETWIN_REPO_WORKER, never leaves them pending; the next task starts a new
 * worker. Workers keep the process alive only while they hold tasks.
 */

export interface WorkerRequest {
  op: string;
  [key: string]: unknown;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending & { cost: number }>;
  dead: boolean;
  /** Bytes of the work it holds (the `cost` of its pending requests). */
  load: number;
}

/**
 * The compiled worker: dist/repository/blob-worker.js, found from this file in dist/repository or
 * from the CLI's bundle in dist/cli-bundle (the same depth), or dist/ when this runs as TypeScript.
 */
function workerFile(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return path.resolve(path.dirname(here), '..', 'repository', 'blob-worker.js');
  const root = path.resolve(path.dirname(here), '../..');
  const built = path.join(root, 'dist', 'repository', 'blob-worker.js');
  if (!fs.existsSync(built))
    throw new TwinError('ETWIN_REPO_WORKER', `${built} is missing: build twinfs first (npm run build)`);
  return built;
}

export class WorkerPool {
  private readonly slots: Array<Slot | undefined>;
  private seq = 0;
  private next = 0;

  constructor(readonly size = defaultPoolSizes().workers) {
    this.slots = new Array(Math.max(1, size)).fill(undefined);
  }

  /**
   * Runs a request on a worker (the one `worker` names: 0..size-1, else the least loaded) and
   * resolves with its answer. `transfer` lists ArrayBuffers moved, not copied, to the worker;
   * `cost` (bytes the request works on) counts in the worker's load until it answers.
   */
  run<T>(
    req: WorkerRequest,
    transfer: ArrayBuffer[] = [],
    opts: { worker?: number; cost?: number } = {},
  ): Promise<T> {
    const i = opts.worker ?? this.idlest();
    const slot = this.slot(i % this.slots.length);
    const id = ++this.seq;
    const cost = opts.cost ?? 0;
    return new Promise<T>((resolve, reject) => {
      slot.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, cost });
      slot.load += cost;
      if (slot.pending.size === 1) slot.worker.ref();
      slot.worker.postMessage({ id, ...req }, transfer);
    });
  }

  /** A worker index for a sequence of requests that must meet the same worker. */
  pick(): number {
    this.next = (this.next + 1) % this.slots.length;
    return this.next;
  }

  /**
   * The worker with the least work queued (bytes of its pending requests, then their number;
   * round robin among equals): work any worker can do goes where it starts soonest, so that a
   * worker busy cutting a large file does not also get the next pack to seal.
   */
  idlest(): number {
    const n = this.slots.length;
    let best = -1;
    let bestLoad = Number.POSITIVE_INFINITY;
    let bestCount = Number.POSITIVE_INFINITY;
    for (let k = 1; k <= n; k++) {
      const i = (this.next + k) % n;
      const s = this.slots[i];
      const load = s && !s.dead ? s.load : 0;
      const count = s && !s.dead ? s.pending.size : 0;
      if (load < bestLoad || (load === bestLoad && count < bestCount)) {
        best = i;
        bestLoad = load;
        bestCount = count;
      }
    }
    this.next = best;
    return best;
  }

  /**
   * A live thread with nothing queued (its index), else undefined: where work that any thread
   * can do goes without waiting, and without starting a thread.
   */
  idleThread(): number | undefined {
    const i = this.slots.findIndex((s) => s !== undefined && !s.dead && s.pending.size === 0);
    return i < 0 ? undefined : i;
  }

  /** The live worker threads (for tests that provoke a crash). */
  threads(): Worker[] {
    return this.slots.filter((s): s is Slot => s !== undefined && !s.dead).map((s) => s.worker);
  }

  async close(): Promise<void> {
    const live = this.slots.splice(0, this.slots.length, ...new Array(this.slots.length).fill(undefined));
    await Promise.all(live.map((s) => s?.worker.terminate()));
  }

  private slot(i: number): Slot {
    const cur = this.slots[i];
    if (cur && !cur.dead) return cur;
    const worker = new (threadsModule().Worker)(workerFile());
    worker.unref();
    const slot: Slot = { worker, pending: new Map(), dead: false, load: 0 };
    this.slots[i] = slot;
    worker.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: WireError }) => {
      const p = slot.pending.get(m.id);
      if (!p) return;
      slot.pending.delete(m.id);
      slot.load -= p.cost;
      if (slot.pending.size === 0) worker.unref();
      if (m.ok) p.resolve(m.value);
      else p.reject(fromWire(m.error));
    });
    const die = (why: string) => {
      if (slot.dead) return;
      slot.dead = true;
      if (this.slots[i] === slot) this.slots[i] = undefined;
      const held = [...slot.pending.values()];
      slot.pending.clear();
      slot.load = 0;
      for (const p of held)
        p.reject(new TwinError('ETWIN_REPO_WORKER', `a repository worker thread ${why}`, { reason: why }));
    };
    worker.on('error', (err) => die(`failed: ${err?.message ?? err}`));
    worker.on('exit', (code) => die(`exited (code ${code})`));
    return slot;
  }
}

/**
 * The default sizes of the two pools: the workers (repoWorkers: cuts, ids, seals) get half the
 * cores rounded up, the readers (repoReaders: small files) the other half, each 1 to 8;
 * TWINFS_REPO_WORKERS / TWINFS_REPO_READERS override either. One thread per core in each pool
 * was twice as many busy threads as cores (the main thread besides), and a thread costs far
 * more than its start (~2,000 page faults and ~0.08 s of CPU): its isolate's heap, its malloc
 * arena, its zstd and chunker memory, all fresh pages (~11 µs a fault on this project's VM).
 * On two cores, one worker and one reader instead of two and two: ~48,000 → ~35,000 faults and
 * less CPU for a 256 MiB backup (bench/repository.mjs --only speed, docs/benchmarks.md).
 */
export function defaultPoolSizes(
  cores: number = os.availableParallelism(),
  env: NodeJS.ProcessEnv = process.env,
): { workers: number; readers: number } {
  const given = (v: string | undefined) => {
    const n = Number(v);
    return Number.isInteger(n) && n > 0 ? Math.min(n, 64) : undefined;
  };
  return {
    workers: given(env.TWINFS_REPO_WORKERS) ?? Math.max(1, Math.min(8, Math.ceil(cores / 2))),
    readers: given(env.TWINFS_REPO_READERS) ?? Math.max(1, Math.min(8, Math.floor(cores / 2))),
  };
}

/** An error as it crosses from a worker: a TwinError keeps its code and data. */
export interface WireError {
  code?: string;
  message: string;
  data?: Record<string, unknown>;
}

export function toWire(err: unknown): WireError {
  if (err instanceof TwinError) return { code: err.code, message: err.message, data: err.data };
  return { message: (err as Error)?.message ?? String(err) };
}

function fromWire(e: WireError | undefined): Error {
  if (e?.code) return new TwinError(e.code as TwinError['code'], e.message, e.data ?? {});
  return new TwinError('ETWIN_REPO_WORKER', `a repository worker failed: ${e?.message ?? 'no reason given'}`);
}

let shared: WorkerPool | undefined;
let readers: WorkerPool | undefined;

/** The process's pool (created on first use). */
export function repoWorkers(): WorkerPool {
  shared ??= new WorkerPool();
  return shared;
}

/**
 * The process's pool for small files (blob-worker.ts, `files`), apart from repoWorkers(): those
 * read with blocking calls, and on a cold page cache a batch waits on the disk for most of its
 * time. In threads of their own, that wait holds neither the cut of a large file nor the seal
 * of a pack, and with more than one reader several batches read at once (the disk gets more
 * than one request at a time). Half the cores (the workers have the other half), 1 to 8 (TWINFS_REPO_READERS overrides):
 * each thread costs about 0.1 s of CPU and thousands of page faults to start and warm up, so
 * no more of them than the cores that can run them beside the workers.
 */
export function repoReaders(): WorkerPool {
  readers ??= new WorkerPool(readerPoolSize());
  return readers;
}

function readerPoolSize(): number {
  return defaultPoolSizes().readers;
}
