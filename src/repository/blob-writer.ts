import { TwinError } from '../common/errors.js';
import type { SealAnswer } from './blob-worker.js';
import { cut } from './chunker.js';
import { type BlobType, PACK_SIZE, type PackInfo, packObjectName } from './pack.js';
import type { Repository } from './repository.js';
import { repoWorkers, type WorkerPool } from './worker-pool.js';

/** Room of a batch buffer: a full pack plus the largest chunk (a batch is cut past PACK_SIZE). */
const BATCH_ROOM = PACK_SIZE + 2 * 1024 * 1024;
/** Room of a pack buffer: a batch plus tags and table of contents (a larger pack gets its own). */
const OUT_ROOM = BATCH_ROOM + 1024 * 1024;

interface Batch {
  buf: Buffer;
  bytes: number;
  rows: Array<[string, BlobType, number]>;
}

/**
 * Stores new blobs of one writer into packs. Blobs the repository already holds, or that this
 * writer stored already, are skipped: deduplication. New blobs are copied into a batch (shared
 * memory) on the main thread; a batch of PACK_SIZE bytes (before compression) is compressed,
 * encrypted and named by a worker thread (blob-worker.ts, `seal`) that reads it in place and
 * builds the pack in a second shared buffer, then uploaded. At most `ahead` packs are being
 * sealed or uploaded at once: the add that filled a batch waits for the oldest beyond that
 * (backpressure: memory stays bounded at about (ahead + 1) × 2 × PACK_SIZE, and the writer
 * keeps up to `ahead` spare buffers of each kind for its later packs until it is dropped). The
 * packs reach the index only when the writer's owner writes it (commit).
 */
export class BlobWriter {
  /** The batch being filled: its blobs' bytes one after another, copied in as they come. */
  private buf: Buffer | undefined;
  private rows: Array<[string, BlobType, number]> = [];
  private batchBytes = 0;
  /** Batches full and waiting for a worker (backpressure). */
  private readonly full: Batch[] = [];
  /** Batch buffers (shared memory) a worker has sealed, reused: no fresh pages per pack. */
  private readonly spare: Buffer[] = [];
  /** Pack buffers (shared memory) the store has written, reused likewise. */
  private readonly spareOut: Buffer[] = [];
  private readonly mine = new Set<string>();
  private readonly sealing: Array<Promise<void>> = [];
  /**
   * Every pack job not yet settled. `sealing` is the backpressure queue, and a dispatch waiting
   * for room takes its oldest job out of it: discard waits for these instead.
   */
  private readonly jobs = new Set<Promise<void>>();
  private discarded = false;
  private readonly ahead: number;
  readonly packs: PackInfo[] = [];
  /** Bytes of new blobs (before compression) and as stored. */
  newBytes = 0;
  storedBytes = 0;
  private failed: unknown;

  constructor(
    private readonly repo: Repository,
    private readonly pool: WorkerPool = repoWorkers(),
  ) {
    this.ahead = pool.size + 1;
  }

  /** Whether the blob is stored: by this writer, or intact in the repository. */
  async has(id: string): Promise<boolean> {
    return this.mine.has(id) || (await this.repo.intactCopy(id)) !== undefined;
  }

  /** Stores chunks (ids computed by the caller); resolves when all are batched for a pack. */
  async add(blobs: Array<{ id: string; data: Buffer }>, type: BlobType): Promise<void> {
    this.throwIfDone();
    for (const b of blobs) {
      if (this.mine.has(b.id)) continue;
      // Claimed before the await: a concurrent put of the same chunk does not store it twice.
      this.mine.add(b.id);
      if ((await this.repo.intactCopy(b.id)) !== undefined) {
        this.mine.delete(b.id);
        continue;
      }
      this.queue(b, type);
    }
    await this.dispatch();
  }

  private throwIfDone(): void {
    if (this.failed) throw this.failed;
    if (this.discarded)
      throw new TwinError('ETWIN_ABORTED', 'the writer was discarded (its run was aborted)');
  }

  /** Stores a blob even if the repository holds it (prune rewrites a pack it will delete). */
  async addFresh(blob: { id: string; data: Buffer }, type: BlobType): Promise<void> {
    this.throwIfDone();
    this.mine.add(blob.id);
    this.queue(blob, type);
    await this.dispatch();
  }

  /** Chunks and stores a buffer; returns the chunk ids in order. */
  async addContent(data: Buffer, type: BlobType): Promise<string[]> {
    const chunks = cut(data, this.repo.config.chunker).map((c) => ({
      id: this.repo.keys.blobId(c),
      data: c,
    }));
    await this.add(chunks, type);
    return chunks.map((c) => c.id);
  }

  /**
   * Copies a blob into the batch (the caller's buffer may be reused once add resolves: a
   * streamed file's windows are); a batch that reaches PACK_SIZE is full.
   */
  private queue(b: { id: string; data: Buffer }, type: BlobType): void {
    const n = b.data.length;
    if (this.buf && this.batchBytes + n > this.buf.length) this.close();
    if (!this.buf) this.buf = this.batchBuffer(n);
    b.data.copy(this.buf, this.batchBytes);
    this.batchBytes += n;
    this.rows.push([b.id, type, this.batchBytes]);
    this.newBytes += n;
    if (this.batchBytes >= PACK_SIZE) this.close();
  }

  private batchBuffer(atLeast: number): Buffer {
    if (atLeast > BATCH_ROOM) return Buffer.from(new SharedArrayBuffer(atLeast));
    return this.spare.pop() ?? Buffer.from(new SharedArrayBuffer(BATCH_ROOM));
  }

  /** The batch being filled is full: it waits for a worker. */
  private close(): void {
    if (!this.buf || this.batchBytes === 0) return;
    this.full.push({ buf: this.buf, bytes: this.batchBytes, rows: this.rows });
    this.buf = undefined;
    this.rows = [];
    this.batchBytes = 0;
  }

  /** Hands the full batches to workers to become packs, and the packs to the store. */
  private async dispatch(): Promise<void> {
    for (let batch = this.full.shift(); batch; batch = this.full.shift()) {
      // Claimed before the wait: the other adds go on filling the next batch meanwhile.
      while (this.sealing.length >= this.ahead) await this.sealing.shift();
      // Discarded while this dispatch waited for room: the batch is dropped, not stored.
      if (this.discarded) return;
      // Shared memory: the worker reads the batch where it is; it is reused once sealed.
      const data = new Uint8Array(batch.buf.buffer, 0, batch.bytes);
      const master = this.repo.keys.material();
      const out = this.spareOut.pop() ?? Buffer.from(new SharedArrayBuffer(OUT_ROOM));
      const sealed = this.pool.run<SealAnswer>({ op: 'seal', data, blobs: batch.rows, master, out }, [], {
        cost: batch.bytes,
      });
      const job = sealed
        .then(async (a) => {
          if (batch.buf.length === BATCH_ROOM && this.spare.length < this.ahead) this.spare.push(batch.buf);
          const bytes = Buffer.from(a.bytes.buffer, a.bytes.byteOffset, a.bytes.byteLength);
          await this.repo.store.put(packObjectName(a.name), bytes);
          // Written: reused (a put that failed may still hold it, then it is never reused).
          if (this.spareOut.length < this.ahead) this.spareOut.push(out);
          this.storedBytes += a.storedBytes;
          this.packs.push(a.info);
        })
        .catch((err) => {
          this.failed ??= err;
        });
      this.sealing.push(job);
      this.jobs.add(job);
      void job.then(() => this.jobs.delete(job));
    }
  }

  /** Every blob added so far is durable in a pack; returns the packs of this writer. */
  async flush(): Promise<PackInfo[]> {
    if (!this.failed) {
      this.close();
      await this.dispatch();
    }
    await Promise.all(this.sealing.splice(0));
    if (this.failed) throw this.failed;
    return this.packs;
  }

  /** Removes the packs this writer uploaded (nobody names them). */
  async discard(): Promise<void> {
    this.discarded = true;
    this.buf = undefined;
    this.rows = [];
    this.batchBytes = 0;
    this.full.length = 0;
    this.sealing.length = 0;
    // Every job started, including one a dispatch took out of `sealing` while it waited for
    // room (its pack was once left behind, written after this had deleted the others).
    await Promise.allSettled([...this.jobs]);
    for (const p of this.packs.splice(0))
      await this.repo.store.delete(packObjectName(p.name)).catch(() => undefined);
  }
}
