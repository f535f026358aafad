import { TwinError } from '../common/errors.js';
import { type SealAnswer, type SealRequest, sealOp } from './blob-ops.js';
import { pageAlignedShared } from './buffer-pool.js';
import { copyShared, cut } from './chunker.js';
import { TAG } from './crypto.js';
import { type BlobType, PACK_HEADER, PACK_SIZE, type PackInfo, packObjectName } from './pack.js';
import type { Repository } from './repository.js';
import { repoWorkers, type WorkerPool } from './worker-pool.js';

/**
 * Room of a batch buffer: a full pack plus the largest chunk (a batch is cut past PACK_SIZE),
 * the header and tags, and the table of contents (the pack is built in it; a larger pack gets
 * a buffer of its own).
 */
const BATCH_ROOM = PACK_SIZE + 3 * 1024 * 1024;

/**
 * A batch of at most this many bytes is sealed on the main thread (a flush's last batch of a
 * few small files, a small manifest's tree blobs): starting a worker thread for it costs
 * thousands of page faults (~11 µs each on this project's VM), far more than its zstd and
 * encryption.
 */
export const SEAL_HERE_MAX = 256 * 1024;

interface Batch {
  buf: Buffer;
  /** Bytes of the batch used (header room, blobs, tag room). */
  fill: number;
  rows: Array<[string, BlobType, number, number]>;
}

/**
 * Stores new blobs of one writer into packs. Blobs the repository already holds, or that this
 * writer stored already, are skipped: deduplication. New blobs are copied into a batch (shared
 * memory) on the main thread, each where it would lie in the pack uncompressed (after the
 * header, room for its tag after it); a batch of PACK_SIZE bytes (before compression) is
 * compressed, encrypted and named by a worker thread (blob-worker.ts, `seal`) that builds the
 * pack in the batch itself, over the plaintext, then uploaded from there. At most `ahead`
 * packs are being sealed or uploaded at once: the add that filled a batch waits for the oldest
 * beyond that (backpressure: memory stays bounded at about (ahead + 2) × PACK_SIZE, and the
 * writer keeps up to `ahead` spare batches for its later packs until it is dropped: fresh
 * memory costs a page fault per 4 KiB, ~11 µs each on some VMs, more than sealing the bytes).
 * The packs reach the index only when the writer's owner writes it (commit).
 */
export class BlobWriter {
  /** The batch being filled: its blobs' bytes copied in as they come (see `queue`). */
  private buf: Buffer | undefined;
  private rows: Array<[string, BlobType, number, number]> = [];
  /** Plaintext bytes in the batch (a pack is cut at PACK_SIZE of them). */
  private batchBytes = 0;
  /** Bytes of the batch used: header room, blobs, tag room. */
  private fill = PACK_HEADER;
  /** Room left after each blob for its tag. */
  private readonly gap: number;
  /** Batches full and waiting for a worker (backpressure). */
  private readonly full: Batch[] = [];
  /** Batch buffers (shared memory) whose pack the store has written, reused: no fresh pages. */
  private readonly spare: Buffer[] = [];
  private readonly mine = new Set<string>();
  private readonly sealing: Array<Promise<void>> = [];
  /**
   * Every pack job not yet settled. `sealing` is the backpressure queue, and a dispatch waiting
   * for room takes its oldest job out of it: discard waits for these instead.
   */
  private readonly jobs = new Set<Promise<void>>();
  private discarded = false;
  private readonly ahead: number;
  /** Batches closed and not yet written (or dropped): waiting for a worker, sealing, put. */
  private inFlight = 0;
  /** Adds waiting for a batch to be written before they start a new one (`room`). */
  private waiters: Array<() => void> = [];
  readonly packs: PackInfo[] = [];
  /** Bytes of new blobs (before compression) and as stored. */
  newBytes = 0;
  /** Batch buffers this writer made (each a pack's worth of fresh pages). */
  batchBuffers = 0;
  storedBytes = 0;
  private failed: unknown;

  /**
   * @param before what every pack's put waits for (the snapshot's lock in a repository being
   *   created: the blobs are cut and sealed meanwhile); a failure of it fails the writer
   */
  constructor(
    private readonly repo: Repository,
    private readonly pool: WorkerPool = repoWorkers(),
    private readonly before?: Promise<unknown>,
  ) {
    // One pack per worker: a third one in flight was one more batch of fresh pages (~4,300
    // faults on the main thread's copy into it) for no gain in a run whose puts are short
    // beside the seals (bench/repository.mjs --only speed, docs/benchmarks.md).
    this.ahead = Math.max(2, pool.size);
    this.gap = repo.keys.encrypted ? TAG : 0;
  }

  /**
   * Takes over the spare batch buffers of a writer that will add nothing more (its flush
   * started): a snapshot's tree writer reuses the data writer's instead of a new 19 MiB buffer,
   * which V8 zero-fills whole when malloc serves it from its heap (~4,900 faults at a peer
   * CLI's commit, docs/benchmarks.md).
   */
  adoptSpares(from: BlobWriter): void {
    for (const b of from.spare.splice(0)) if (this.spare.length < this.ahead) this.spare.push(b);
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
      if (this.mustWait(b.data.length)) await this.room(b.data.length);
      this.queue(b, type);
    }
    await this.dispatch();
  }

  /**
   * Waits, before a blob that needs a new batch, until at most ahead + 1 closed batches would
   * be unwritten with it (so ahead + 2 batch buffers at most: sealing, waiting, filling). The dispatch of a full batch waits for a worker, but the other adds in
   * flight (64 small files, the windows of two large ones) went on filling new batches
   * meanwhile: up to five or six batches of fresh pages (~4,300 faults each) where three or
   * four are ever sealed or written at once. A blob that fits in the batch being filled goes
   * in without waiting (the batch stays bounded by BATCH_ROOM).
   */
  private async room(n: number): Promise<void> {
    for (;;) {
      this.throwIfDone();
      if (!this.mustWait(n)) return;
      // The closed batches must be on their way: an add waiting here may hold the one a worker
      // is waiting for (dispatch is safe to run from several adds at once).
      void this.dispatch();
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Whether a blob of n bytes needs a new batch while ahead + 1 closed ones are unwritten. */
  private mustWait(n: number): boolean {
    if (this.buf && this.fill + n + this.gap <= this.buf.length) return false;
    // The batch being filled is closed by queue() when the blob does not fit: it counts.
    return this.inFlight + (this.buf ? 1 : 0) > this.ahead + 1;
  }

  /** A closed batch was written or dropped: the adds waiting for room look again. */
  private settled(): void {
    this.inFlight--;
    for (const w of this.waiters.splice(0)) w();
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
    if (this.mustWait(blob.data.length)) await this.room(blob.data.length);
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
   * Copies a blob into the batch where it would lie in the pack uncompressed (the caller's
   * buffer may be reused once add resolves: a streamed file's windows are); a batch that
   * reaches PACK_SIZE is full.
   */
  private queue(b: { id: string; data: Buffer }, type: BlobType): void {
    const n = b.data.length;
    if (this.buf && this.fill + n + this.gap > this.buf.length) this.close();
    if (!this.buf) this.buf = this.batchBuffer(PACK_HEADER + n + this.gap);
    // Its window and the batch are shared memory: a memcpy, not V8's relaxed copy (copyShared).
    copyShared(this.buf, this.fill, b.data);
    this.rows.push([b.id, type, this.fill, this.fill + n]);
    this.fill += n + this.gap;
    this.batchBytes += n;
    this.newBytes += n;
    if (this.batchBytes >= PACK_SIZE) this.close();
  }

  private batchBuffer(atLeast: number): Buffer {
    const spare = atLeast > BATCH_ROOM ? undefined : this.spare.pop();
    if (spare) return spare;
    this.batchBuffers++;
    // Page-aligned: the pack built in it goes to a dir: target with O_DIRECT (no copy into the
    // page cache's fresh pages).
    return pageAlignedShared(Math.max(atLeast, BATCH_ROOM));
  }

  /** The batch being filled is full: it waits for a worker. */
  private close(): void {
    if (!this.buf || this.rows.length === 0) return;
    this.full.push({ buf: this.buf, fill: this.fill, rows: this.rows });
    this.inFlight++;
    this.buf = undefined;
    this.rows = [];
    this.batchBytes = 0;
    this.fill = PACK_HEADER;
  }

  /** Hands the full batches to workers to become packs, and the packs to the store. */
  private async dispatch(): Promise<void> {
    for (let batch = this.full.shift(); batch; batch = this.full.shift()) {
      // Claimed before the wait: the other adds go on filling the next batch meanwhile.
      while (this.sealing.length >= this.ahead) await this.sealing.shift();
      // Discarded while this dispatch waited for room: the batch is dropped, not stored.
      if (this.discarded) return this.settled();
      // Shared memory: the worker reads the batch and builds the pack where it is (all of the
      // buffer: the pack needs room for its table of contents after the blobs).
      const data = new Uint8Array(batch.buf.buffer, 0, batch.buf.length);
      const master = this.repo.keys.material();
      const req = { op: 'seal', data, blobs: batch.rows, master } satisfies SealRequest;
      const sealed =
        batch.fill <= SEAL_HERE_MAX
          ? sealOp(req).then((r) => r.value)
          : this.pool.run<SealAnswer>(req, [], { cost: batch.fill });
      const job = sealed
        .then(async (a) => {
          const bytes = Buffer.from(a.bytes.buffer, a.bytes.byteOffset, a.bytes.byteLength);
          if (this.before) await this.before;
          await this.repo.store.put(packObjectName(a.name), bytes);
          // Written: reused (a put that failed may still hold it, then it is never reused; a
          // worker that failed may still write in it, then it is not reused either).
          if (batch.buf.length === BATCH_ROOM && this.spare.length < this.ahead) this.spare.push(batch.buf);
          this.storedBytes += a.storedBytes;
          this.packs.push(a.info);
        })
        .catch((err) => {
          this.failed ??= err;
        })
        .finally(() => this.settled());
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
    this.fill = PACK_HEADER;
    this.inFlight -= this.full.length;
    this.full.length = 0;
    for (const w of this.waiters.splice(0)) w();
    this.sealing.length = 0;
    // Every job started, including one a dispatch took out of `sealing` while it waited for
    // room (its pack was once left behind, written after this had deleted the others).
    await Promise.allSettled([...this.jobs]);
    for (const p of this.packs.splice(0))
      await this.repo.store.delete(packObjectName(p.name)).catch(() => undefined);
  }
}
