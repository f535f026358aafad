import type { SealAnswer } from './blob-worker.js';
import { cut } from './chunker.js';
import { type BlobType, PACK_SIZE, type PackInfo, packObjectName } from './pack.js';
import type { Repository } from './repository.js';
import { repoWorkers, type WorkerPool } from './worker-pool.js';

/**
 * Stores new blobs of one writer into packs. Blobs the repository already holds, or that this
 * writer stored already, are skipped: deduplication. New blobs gather in a batch on the main
 * thread; a batch of PACK_SIZE bytes (before compression) is compressed, encrypted and named
 * by a worker thread (blob-worker.ts, `seal`), then uploaded. At most `ahead` packs are being
 * sealed or uploaded at once: an add waits for the oldest beyond that (backpressure: memory
 * stays bounded at about (ahead + 1) × 2 × PACK_SIZE). The packs reach the index only when
 * the writer's owner writes it (commit).
 */
export class BlobWriter {
  private batch: Array<{ id: string; type: BlobType; data: Buffer }> = [];
  private batchBytes = 0;
  private readonly mine = new Set<string>();
  private readonly sealing: Array<Promise<void>> = [];
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
    if (this.failed) throw this.failed;
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
    if (this.batchBytes >= PACK_SIZE) await this.cut();
  }

  /** Stores a blob even if the repository holds it (prune rewrites a pack it will delete). */
  async addFresh(blob: { id: string; data: Buffer }, type: BlobType): Promise<void> {
    if (this.failed) throw this.failed;
    this.mine.add(blob.id);
    this.queue(blob, type);
    if (this.batchBytes >= PACK_SIZE) await this.cut();
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

  private queue(b: { id: string; data: Buffer }, type: BlobType): void {
    this.batch.push({ id: b.id, type, data: b.data });
    this.batchBytes += b.data.length;
    this.newBytes += b.data.length;
  }

  /** Hands the batch to a worker to become a pack, and the pack to the store. */
  private async cut(): Promise<void> {
    if (this.batch.length === 0) return;
    const blobs = this.batch;
    const total = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    while (this.sealing.length >= this.ahead) await this.sealing.shift();
    // One buffer of its own, moved to the worker (posting views would clone what they view).
    const data = Buffer.allocUnsafeSlow(total);
    const rows: Array<[string, BlobType, number]> = [];
    let at = 0;
    for (const b of blobs) {
      b.data.copy(data, at);
      at += b.data.length;
      rows.push([b.id, b.type, at]);
    }
    const master = this.repo.keys.material();
    const job = this.pool
      .run<SealAnswer>({ op: 'seal', data, blobs: rows, master }, [data.buffer as ArrayBuffer])
      .then(async (a) => {
        const bytes = Buffer.from(a.bytes.buffer, a.bytes.byteOffset, a.bytes.byteLength);
        await this.repo.store.put(packObjectName(a.name), bytes);
        this.storedBytes += a.storedBytes;
        this.packs.push(a.info);
      })
      .catch((err) => {
        this.failed ??= err;
      });
    this.sealing.push(job);
  }

  /** Every blob added so far is durable in a pack; returns the packs of this writer. */
  async flush(): Promise<PackInfo[]> {
    if (!this.failed) await this.cut();
    await Promise.all(this.sealing.splice(0));
    if (this.failed) throw this.failed;
    return this.packs;
  }

  /** Removes the packs this writer uploaded (nobody names them). */
  async discard(): Promise<void> {
    this.batch = [];
    this.batchBytes = 0;
    await Promise.allSettled(this.sealing.splice(0));
    for (const p of this.packs.splice(0))
      await this.repo.store.delete(packObjectName(p.name)).catch(() => undefined);
  }
}
