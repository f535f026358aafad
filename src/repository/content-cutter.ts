import { createHash } from 'node:crypto';
import { zeros } from '../posix/sparse.js';
import type { CutAnswer, IdsRequest, StreamCutAnswer } from './blob-ops.js';
import { pageAlignedShared } from './buffer-pool.js';
import type { Repository } from './repository.js';
import { repoWorkers, type WorkerPool } from './worker-pool.js';

/**
 * A streamed file is cut in windows of this size (many chunks per message to a worker). Every
 * window a stream holds at once is memory that was fresh pages once (a minor fault per 4 KiB,
 * ~11 µs each on some VMs): with several large files at once, 8 MiB windows were most of a
 * backup's bytes read into fresh memory; at 2 MiB the windows in flight are a quarter of that,
 * for a few more messages per file (a window is still ~8 average chunks).
 */
export const WINDOW = 2 * 1024 * 1024;
/** Windows of one file in the worker's hands while the next one fills (read-ahead). */
const AHEAD = 3;
/** Windows of one file being read at once when its reader reads at positions (ReadInto.at). */
const READS = 4;
/** Files up to this size are hashed on the calling thread: cheaper than a message to a worker. */
const INLINE_MAX = 16 * 1024;

/**
 * A file read into the caller's buffer: fills buf[offset, offset + n) with the next bytes and
 * answers n (at most length), 0 at the end; `{ hole: n }` when those n bytes are zeros of a
 * hole of the file (filled in without a read: their chunks need no hashing, see zeroIds).
 */
import type { ReadInto } from '../backup-peer/target.js';

export type { ReadInto };

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
  /**
   * @param helpers threads of another pool (the small-file readers) that take a window's blob
   *   ids when one of them is idle and running
   */
  constructor(
    private readonly repo: Repository,
    private readonly pool: WorkerPool = repoWorkers(),
    private readonly helpers?: WorkerPool,
  ) {}

  private request(data: Uint8Array, final: boolean, stream?: { id: number; first: boolean; zero: boolean }) {
    return {
      op: 'cut',
      data,
      params: this.repo.config.chunker,
      master: this.repo.keys.material(),
      final,
      ...(stream ? { stream: stream.id, first: stream.first, ...(stream.zero ? { zero: true } : {}) } : {}),
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
    const a = await this.pool.run<CutAnswer>(this.request(copy, true), [copy.buffer as ArrayBuffer], {
      cost: copy.length,
    });
    return { hash: a.hash!, blobs: blobsOf(a) };
  }

  /**
   * Blob ids of chunks of zeros by length: a chunk that lies in a hole the reader reported is
   * all zeros, and its id is the one of zeros of its length (computed once here, not per chunk:
   * a sparse image's holes cut into chunks of the maximum size, nearly all of one length).
   */
  private readonly zeroIds = new Map<number, string>();

  private zeroId(n: number): string {
    let id = this.zeroIds.get(n);
    if (id === undefined) {
      id = this.repo.keys.blobId(zeros(n));
      if (this.zeroIds.size < 64) this.zeroIds.set(n, id);
    }
    return id;
  }

  /** Spare windows (shared memory) of this writer's earlier streams, reused: no fresh pages. */
  private readonly spare: Buffer[] = [];
  /** Spare buffers (shared memory, the largest chunk each) for chunks across two windows. */
  private readonly spareSpans: Buffer[] = [];

  private window(): Buffer {
    // Page-aligned: a large file the page cache does not hold is read into it with O_DIRECT
    // (entry-copier.ts, `directReads`).
    return this.spare.pop() ?? pageAlignedShared(WINDOW);
  }

  /** Room for a chunk across windows: a spare span buffer when it fits, else one of its own. */
  private span(n: number): Buffer {
    const room = this.repo.config.chunker.max;
    if (n > room) return Buffer.from(new SharedArrayBuffer(n));
    return (this.spareSpans.pop() ?? Buffer.from(new SharedArrayBuffer(room))).subarray(0, n);
  }

  /**
   * A streamed file, in windows of shared memory, in three passes that run side by side on the
   * workers while the next window is read (at most AHEAD windows wait there):
   * - one worker cuts the windows in order (FastCDC only; it keeps the uncut tail),
   * - another hashes them in order (it keeps the running SHA-256 of the file),
   * - the blob ids of each window's chunks (a SHA-256 each, keyed in an encrypted repository)
   *   are computed by whichever worker has the least work queued (`ids`, no state): the cut
   *   alone is the one serial pass left per file, a fraction of the per-byte CPU.
   * Each window's chunks are handed to `take` in content order, one window after the other, as
   * views of the windows themselves (nothing is copied back from the workers): they are valid
   * until `take` resolves, then the windows are reused for the next ones.
   */
  async stream(
    source: AsyncIterable<Buffer> | ReadInto,
    take: (blobs: Blob[]) => Promise<void>,
    signal?: AbortSignal,
    onCancel: () => Error = () => new Error('cancelled'),
  ): Promise<{ hash: string; size: number }> {
    const cutter = this.pool.pick();
    const hasher = (cutter + 1) % this.pool.size;
    const stream = ++streamSeq;
    const master = this.repo.keys.material();
    const steps: Array<Promise<string | null>> = [];
    let last: Promise<unknown> = Promise.resolve();
    /** Windows sent and still needed (a chunk of theirs not handed to `take` yet), in order. */
    const held: Window[] = [];
    let win = this.window();
    let fill = 0;
    let size = 0;
    /** The holes the reader reported, [start, end) in the file, in order, adjacent ones joined. */
    const holes: Array<[number, number]> = [];
    const send = (final: boolean) => {
      // A window is never written again until every chunk in it was taken.
      const view = new Uint8Array(win.buffer, 0, fill);
      const first = steps.length === 0;
      held.push({ buf: win, start: size - fill, end: size });
      // A window wholly in a hole the reader reported is zeros: cut without a scan.
      const zero = holes.length > 0 && fill > 0 && inHole(holes, size - fill, size);
      const cut = this.pool.run<StreamCutAnswer>(this.request(view, final, { id: stream, first, zero }), [], {
        worker: cutter,
        cost: fill,
      });
      const hashed = this.pool.run<string | null>({ op: 'hash', data: view, stream, first, final }, [], {
        worker: hasher,
        cost: fill,
      });
      // Answers of one worker come in order: the chunks of this window are sliced before the
      // next window's are, and before a step releases the windows they lie in (those end
      // before the window's tail, which starts after every chunk of this answer).
      const chunked = cut.then(async (a) => {
        const blobs = slices(held, a, (n) => this.span(n));
        if (blobs.length === 0) return { a, blobs };
        // Chunks wholly in a hole are zeros: their ids come from zeroId, not from hashing.
        let need = blobs;
        if (holes.length > 0) {
          need = [];
          let start = a.start;
          for (const [i, b] of blobs.entries()) {
            const end = a.ends[i]!;
            if (inHole(holes, start, end)) b.id = this.zeroId(end - start);
            else need.push(b);
            start = end;
          }
          if (need.length === 0) return { a, blobs };
        }
        let bytes = 0;
        for (const b of need) bytes += b.data.length;
        // On two cores one worker cuts, hashes and names a large file's windows in turn, while
        // the reader thread idles once the small files are read (a backup's tail of large
        // files): the ids go to that thread then. An idle, running one only: never behind a
        // batch of small files waiting on the disk, and no thread started for it.
        const idle = this.helpers?.idleThread();
        const req = { op: 'ids', parts: need.map((b) => b.data), master } satisfies IdsRequest;
        const ids =
          idle !== undefined
            ? await this.helpers!.run<string[]>(req, [], { worker: idle, cost: bytes })
            : await this.pool.run<string[]>(req, [], { cost: bytes });
        for (const [i, b] of need.entries()) b.id = ids[i]!;
        return { a, blobs };
      });
      chunked.catch(() => undefined);
      hashed.catch(() => undefined);
      const step = last.then(async () => {
        const { a, blobs } = await chunked;
        await take(blobs);
        // Taken: the span buffers of this window's chunks are read by no one any more (the
        // ids were computed before). A failed step keeps them, as it keeps its windows.
        for (const b of blobs)
          if (
            b.span &&
            b.data.buffer.byteLength === this.repo.config.chunker.max &&
            this.spareSpans.length < SPARE
          )
            this.spareSpans.push(Buffer.from(b.data.buffer));
        const hash = await hashed;
        // Windows wholly before the uncut tail are read by no one any more.
        while (held.length > 0 && (final || held[0]!.end <= a.tail)) {
          const done = held.shift()!;
          if (this.spare.length < SPARE) this.spare.push(done.buf);
        }
        return hash;
      });
      step.catch(() => undefined);
      last = step;
      steps.push(step);
      win = final ? Buffer.alloc(0) : this.window();
      fill = 0;
    };
    const added = async (n: number) => {
      fill += n;
      size += n;
      if (fill === WINDOW) {
        send(false);
        if (steps.length > AHEAD) await steps[steps.length - 1 - AHEAD];
      }
    };
    /** Reads at positions in flight (ReadInto.at), in file order. */
    const reading: Array<{ buf: Buffer; want: number; n: Promise<number> }> = [];
    try {
      if (typeof source === 'function' && source.at) {
        // Read straight into the windows, READS of them at once, each sent in order when read.
        const at = source.at;
        let pos = 0;
        const issue = () => {
          while (reading.length < READS && pos < at.size) {
            const buf = this.window();
            const want = Math.min(WINDOW, at.size - pos);
            const n = at.read(buf, 0, want, pos);
            n.catch(() => undefined);
            reading.push({ buf, want, n });
            pos += want;
          }
        };
        issue();
        while (reading.length > 0) {
          if (signal?.aborted) throw onCancel();
          const r = reading[0]!;
          const n = await r.n;
          reading.shift();
          // The window made for the next read-into (empty) is kept for later reads.
          if (fill === 0 && win.length > 0 && this.spare.length < SPARE) this.spare.push(win);
          win = r.buf;
          fill = 0;
          if (n > 0) await added(n);
          // Fewer bytes than asked: the file ends here (it shrank; the caller's checks say so).
          if (n < r.want) break;
          issue();
        }
        // Reads past a short one: settled before the end (their windows are not reused).
        await Promise.allSettled(reading.splice(0).map((r) => r.n));
      } else if (typeof source === 'function') {
        // Read straight into the windows: no buffer per read, no copy into the window.
        for (;;) {
          if (signal?.aborted) throw onCancel();
          const r = await source(win, fill, WINDOW - fill);
          let n = r as number;
          if (typeof r !== 'number') {
            n = r.hole;
            const last = holes[holes.length - 1];
            if (last && last[1] === size) last[1] += n;
            else if (n > 0) holes.push([size, size + n]);
          }
          if (n === 0) break;
          await added(n);
        }
      } else
        for await (const chunk of source) {
          if (signal?.aborted) throw onCancel();
          const b = chunk as Buffer;
          for (let off = 0; off < b.length; ) {
            const n = Math.min(b.length - off, WINDOW - fill);
            b.copy(win, fill, off, off + n);
            off += n;
            await added(n);
          }
        }
      if (signal?.aborted) throw onCancel();
      send(true);
      const hash = await last;
      return { hash: hash as string, size };
    } catch (err) {
      // The workers forget the stream (its tail and hash); what is in flight settles first.
      // The windows of a failed stream are not reused (a worker may still be reading one).
      await Promise.allSettled(reading.map((r) => r.n));
      await Promise.allSettled(steps);
      await Promise.allSettled(
        [cutter, hasher].map((worker) => this.pool.run({ op: 'drop', stream }, [], { worker })),
      );
      throw err;
    }
  }
}

/** Whether [start, end) lies wholly in one of the holes (sorted, disjoint, not adjacent). */
export function inHole(holes: ReadonlyArray<readonly [number, number]>, start: number, end: number): boolean {
  let lo = 0;
  let hi = holes.length - 1;
  // The last hole that starts at or before `start`.
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (holes[mid]![0] <= start) lo = mid;
    else hi = mid - 1;
  }
  const h = holes[lo];
  return h !== undefined && h[0] <= start && end <= h[1];
}

/** A window of a stream: its bytes [start, end) of the file. */
interface Window {
  buf: Buffer;
  start: number;
  end: number;
}

/** Spare windows a cutter keeps: enough for the streams that run at once. */
const SPARE = 8;

/**
 * The chunks of a streamed window's answer, as views of the windows that hold them (a chunk
 * across two windows, at most one per window, is copied into shared memory from `span`, so
 * that the worker computing its id reads it in place too; marked `span`). Their ids are filled
 * in by the caller.
 */
function slices(
  held: Window[],
  a: StreamCutAnswer,
  span: (n: number) => Buffer,
): Array<Blob & { span?: true }> {
  const out: Array<Blob & { span?: true }> = [];
  let start = a.start;
  let w = 0;
  for (const end of a.ends) {
    while (held[w]!.end <= start) w++;
    const first = held[w]!;
    let data: Buffer;
    let spans = false;
    if (end <= first.end) data = first.buf.subarray(start - first.start, end - first.start);
    else {
      spans = true;
      data = span(end - start);
      let at = 0;
      for (let k = w; at < data.length; k++) {
        const h = held[k]!;
        const from = Math.max(start, h.start) - h.start;
        const to = Math.min(end, h.end) - h.start;
        h.buf.copy(data, at, from, to);
        at += to - from;
      }
    }
    out.push(spans ? { id: '', data, span: true } : { id: '', data });
    start = end;
  }
  return out;
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
