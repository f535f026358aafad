import { createHash } from 'node:crypto';
import type { CutAnswer } from './blob-worker.js';
import type { Repository } from './repository.js';
import { repoWorkers, type WorkerPool } from './worker-pool.js';

/** A streamed file is cut in windows of this size (many chunks per message to a worker). */
export const WINDOW = 8 * 1024 * 1024;
/** Windows of one file in the worker's hands while the next one fills (read-ahead). */
const AHEAD = 2;
/** Files up to this size are hashed on the calling thread: cheaper than a message to a worker. */
const INLINE_MAX = 16 * 1024;

export interface Blob {
  id: string;
  data: Buffer;
}

let streamSeq = 0;

/**
 * File content → its SHA-256 and its chunks with their blob ids (docs/repository.md, "Blobs and
 * chunking"), cut by a worker thread (blob-worker.ts, `cut`) so that chunking and hashing do
 * not hold the peer's JS thread.
 */
export class ContentCutter {
  constructor(
    private readonly repo: Repository,
    private readonly pool: WorkerPool = repoWorkers(),
  ) {}

  private request(data: Uint8Array, final: boolean, stream?: { id: number; first: boolean }) {
    return {
      op: 'cut',
      data,
      params: this.repo.config.chunker,
      master: this.repo.keys.material(),
      final,
      ...(stream ? { stream: stream.id, first: stream.first } : {}),
    };
  }

  /** A whole file held in memory. */
  async whole(data: Buffer): Promise<{ hash: string; blobs: Blob[] }> {
    if (data.length <= Math.min(INLINE_MAX, this.repo.config.chunker.min)) {
      // One chunk: its id comes from the file's own hash (hashed once).
      const digest = createHash('sha256').update(data).digest();
      return { hash: digest.toString('hex'), blobs: [{ id: this.repo.keys.idOfDigest(digest), data }] };
    }
    // A copy of its own, moved to the worker: the caller keeps its buffer.
    const copy = Buffer.allocUnsafeSlow(data.length);
    data.copy(copy);
    const a = await this.pool.run<CutAnswer>(this.request(copy, true), [copy.buffer as ArrayBuffer]);
    return { hash: a.hash!, blobs: blobsOf(a) };
  }

  /**
   * A streamed file, in windows of shared memory: one worker cuts them in order (it keeps the
   * uncut tail), another hashes them in order (it keeps the running SHA-256), side by side,
   * while the next window is read; at most AHEAD windows wait there. Each window's chunks are
   * handed to `take` in content order, one window after the other.
   */
  async stream(
    source: AsyncIterable<Buffer>,
    take: (blobs: Blob[]) => Promise<void>,
    signal?: AbortSignal,
    onCancel: () => Error = () => new Error('cancelled'),
  ): Promise<{ hash: string; size: number }> {
    const cutter = this.pool.pick();
    const hasher = (cutter + 1) % this.pool.size;
    const stream = ++streamSeq;
    const steps: Array<Promise<string | null>> = [];
    let last: Promise<unknown> = Promise.resolve();
    const fresh = () => Buffer.from(new SharedArrayBuffer(WINDOW));
    let win = fresh();
    let fill = 0;
    let size = 0;
    const send = (final: boolean) => {
      // A window is never written again once sent (a new one is filled): no copy to send it.
      const view = new Uint8Array(win.buffer, 0, fill);
      const first = steps.length === 0;
      const cut = this.pool.run<CutAnswer>(this.request(view, final, { id: stream, first }), [], {
        worker: cutter,
      });
      const hashed = this.pool.run<string | null>({ op: 'hash', data: view, stream, first, final }, [], {
        worker: hasher,
      });
      cut.catch(() => undefined);
      hashed.catch(() => undefined);
      const step = last.then(async () => {
        await take(blobsOf(await cut));
        return hashed;
      });
      step.catch(() => undefined);
      last = step;
      steps.push(step);
      win = final ? Buffer.from(new SharedArrayBuffer(0)) : fresh();
      fill = 0;
    };
    try {
      for await (const chunk of source) {
        if (signal?.aborted) throw onCancel();
        const b = chunk as Buffer;
        size += b.length;
        for (let off = 0; off < b.length; ) {
          const n = Math.min(b.length - off, WINDOW - fill);
          b.copy(win, fill, off, off + n);
          fill += n;
          off += n;
          if (fill === WINDOW) {
            send(false);
            if (steps.length > AHEAD) await steps[steps.length - 1 - AHEAD];
          }
        }
      }
      if (signal?.aborted) throw onCancel();
      send(true);
      const hash = await last;
      return { hash: hash as string, size };
    } catch (err) {
      // The workers forget the stream (its tail and hash); what is in flight settles first.
      await Promise.allSettled(steps);
      await Promise.allSettled(
        [cutter, hasher].map((worker) => this.pool.run({ op: 'drop', stream }, [], { worker })),
      );
      throw err;
    }
  }
}

/** The chunks of a worker's answer, as views of the bytes it moved back. */
function blobsOf(a: CutAnswer): Blob[] {
  const data = Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  let start = 0;
  return a.ends.map((end, i) => {
    const b = { id: a.ids[i]!, data: data.subarray(start, end) };
    start = end;
    return b;
  });
}
