import { type FileOutcome, type FilesAnswer, type FilesRequest, filesOp } from './blob-ops.js';
import { SharedBufferPool } from './buffer-pool.js';
import type { Blob } from './content-cutter.js';
import type { Repository } from './repository.js';
import { repoReaders, type WorkerPool } from './worker-pool.js';

/** A batch goes to a worker at this many files, or this many bytes, or when the thread idles. */
export const BATCH_FILES = 16;
const BATCH_BYTES = 4 * 1024 * 1024;

/** Bytes of batch buffers a reader keeps for reuse: about the batches in flight at once. */
const KEPT_BYTES = 6 * BATCH_BYTES;
/** Batches larger than this (a last file past BATCH_BYTES) get a buffer of their own. */
const POOLED_MAX = 2 * BATCH_BYTES;

/**
 * Files, and bytes, a reader reads on the main thread while its pool has no thread running:
 * a backup of a handful of changed files starts no reader thread (a thread's start costs
 * thousands of page faults, ~0.1 s of CPU on this project's VM, for work of a millisecond).
 * Bounded so that a large backup blocks the event loop on at most these few reads.
 */
export const INLINE_FILES = 32;
const INLINE_BYTES = 256 * 1024;

/**
 * What reading one small file in a worker gave. The blobs of a file read are views of its
 * batch's buffer, reused for a later batch once every file of this one called `release` (after
 * its blobs were copied into a pack batch); a file never released only keeps that buffer
 * from being reused.
 */
export type SmallFileRead =
  | { kind: 'read'; size: number; mtimeMs: number; hash: string; blobs: Blob[]; release: () => void }
  | Exclude<FileOutcome, { kind: 'read' }>;

interface Waiting {
  file: { path: string; size: number; max: number };
  resolve: (r: SmallFileRead) => void;
  reject: (err: unknown) => void;
}

/**
 * Reads small files of the mirror in the repository's reader threads (repoReaders: apart from
 * the threads that cut large files and seal packs), a batch at a time
 * (blob-worker.ts, `files`): one message per batch instead of an open, fstat, read, fstat and
 * close through the thread pool per file on the JS thread, and the file's SHA-256, chunks and
 * blob ids computed in the same worker as the read. Requests made while the thread is busy
 * gather into one batch; it leaves when full or when the thread turns to I/O (setImmediate).
 */
export class SmallFileReader {
  private queue: Waiting[] = [];
  private bytes = 0;
  private scheduled = false;
  /** Batch buffers (shared memory) whose files were all released: no fresh pages per batch. */
  private readonly buffers = new SharedBufferPool(KEPT_BYTES);
  /** Files and bytes left to read on the main thread (INLINE_FILES). */
  private inlineFiles = INLINE_FILES;
  private inlineBytes = INLINE_BYTES;

  constructor(
    private readonly repo: Repository,
    private readonly pool: WorkerPool = repoReaders(),
  ) {}

  /**
   * The file at an absolute path (its parents checked by the caller; the file itself is opened
   * without following a symlink), expected to be `size` bytes and at most `max`.
   */
  read(path: string, size: number, max: number): Promise<SmallFileRead> {
    return new Promise<SmallFileRead>((resolve, reject) => {
      this.queue.push({ file: { path, size, max }, resolve, reject });
      this.bytes += size;
      if (this.queue.length >= BATCH_FILES || this.bytes >= BATCH_BYTES) this.send();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.send();
        });
      }
    });
  }

  private send(): void {
    if (this.queue.length === 0) return;
    const batch = this.queue;
    this.queue = [];
    this.bytes = 0;
    let cost = 0;
    for (const w of batch) cost += w.file.size;
    if (this.readHere(batch.length, cost)) {
      let a: FilesAnswer;
      try {
        a = filesOp({
          op: 'files',
          files: batch.map((w) => w.file),
          params: this.repo.config.chunker,
          master: this.repo.keys.material(),
        }).value;
      } catch (err) {
        for (const w of batch) w.reject(err);
        return;
      }
      // A buffer of its own (not shared, not reused): nothing to release.
      const data = Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength);
      for (const [i, w] of batch.entries()) w.resolve(outcome(a.files[i]!, data, () => undefined));
      return;
    }
    // A buffer of this reader's, read into in place by the worker (a larger batch gets one of
    // its own there, moved back, not reused).
    const out = cost > 0 && cost <= POOLED_MAX ? this.buffers.take(cost) : undefined;
    const req = {
      op: 'files',
      files: batch.map((w) => w.file),
      params: this.repo.config.chunker,
      master: this.repo.keys.material(),
      ...(out ? { out } : {}),
    } satisfies FilesRequest;
    this.pool.run<FilesAnswer>(req, [], { cost }).then(
      (a) => {
        const data = Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength);
        // Reused once no file read into it is held any more (a failed run keeps it).
        let held = a.files.filter((f) => f.kind === 'read').length;
        const reuse = () => {
          // Read into `out` (shared memory comes back as a new SharedArrayBuffer object over
          // the same memory), not into a buffer of the worker's own (moved back).
          if (out && a.data.buffer instanceof SharedArrayBuffer) this.buffers.give(out);
        };
        const release = () => {
          if (--held === 0) reuse();
        };
        if (held === 0) reuse();
        for (const [i, w] of batch.entries()) w.resolve(outcome(a.files[i]!, data, once(release)));
      },
      (err) => {
        for (const w of batch) w.reject(err);
      },
    );
  }

  /**
   * Whether a batch is read here, on the main thread: within what is left of INLINE_FILES /
   * INLINE_BYTES, and only while no reader thread runs (one that does reads it sooner than
   * the main thread, busy with the rest of the backup).
   */
  private readHere(files: number, bytes: number): boolean {
    if (files > this.inlineFiles || bytes > this.inlineBytes) {
      this.inlineFiles = 0;
      return false;
    }
    if (this.pool.threads().length > 0) return false;
    this.inlineFiles -= files;
    this.inlineBytes -= bytes;
    return true;
  }
}

/** A function that does its work on its first call only. */
function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    f();
  };
}

/** A worker's outcome for one file, its chunks as views of the batch's bytes. */
function outcome(o: FileOutcome, data: Buffer, release: () => void): SmallFileRead {
  if (o.kind !== 'read') return o;
  let start = o.at;
  const blobs = o.ends.map((end, i) => {
    const b = { id: o.ids[i]!, data: data.subarray(start, o.at + end) };
    start = o.at + end;
    return b;
  });
  return { kind: 'read', size: o.size, mtimeMs: o.mtimeMs, hash: o.hash, blobs, release };
}
