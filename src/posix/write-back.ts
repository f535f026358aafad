import { posix } from './native.js';

/**
 * Starts the write-back of a range of a file's dirty pages (sync_file_range(2) with
 * SYNC_FILE_RANGE_WRITE, in libuv's thread pool) and resolves once it is under way, not once it
 * is on the disk. A hint: it makes nothing durable (no metadata, no flush of the disk's cache),
 * so an fsync still decides durability; it only leaves that fsync less to write. Never rejects:
 * a file system without it (or a descriptor closed meanwhile) leaves the pages to the kernel's
 * own write-back, as before. Resolves the errno code, or undefined when it started.
 */
export async function startWriteBack(fd: number, offset: number, len: number): Promise<string | undefined> {
  try {
    const rc = await posix().syncFileRange(fd, offset, len);
    return rc === 0 ? undefined : `errno ${-rc}`;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * A file's early write-back starts once this much of it (the span of its writes since the last
 * one) is waiting: one call per MiB written made the next writes of the file wait (the file
 * system's locks), and a `dd` slower than with no early write-back at all (docs/benchmarks.md).
 * Less than this left when the file's descriptor closes is left to the kernel's write-back.
 */
export const WRITEBACK_BATCH_BYTES = 8 * 1024 * 1024;

/**
 * How many early write-backs run at once: 'global', one for all the descriptors (the mirror's:
 * one thread of libuv's pool at most, however many files are written, the others keep the
 * writes); 'per-file', one per descriptor (the primary's).
 */
export type WriteBackConcurrency = 'global' | 'per-file';

/**
 * The early write-back of large writes (docs/architecture.md, "The mirror's write-back starts
 * with the write" and "The primary's write-back starts with the write"): each descriptor's
 * ranges written since its last write-back merge into one waiting range, handed to
 * startWriteBack once WRITEBACK_BATCH_BYTES wide; what waits while one runs is merged into the
 * next, started when the one running settles. Never waited for by the writes; a hint only.
 * The owner of a descriptor closes it only once forget's promise settled, so its number cannot
 * name another file while sync_file_range runs.
 */
export class WriteBackScheduler {
  /** Write-backs started, and refused by the file system (a hint lost). */
  readonly counts = { started: 0, refused: 0 };
  /** Per descriptor, [from, to) written and not yet handed to the kernel (in the order first written). */
  private readonly waiting = new Map<number, [number, number]>();
  private readonly running = new Map<number, Promise<void>>();

  constructor(private readonly concurrency: WriteBackConcurrency) {}

  /** Notes that [offset, offset + len) of fd was written; starts a write-back if one is due. */
  written(fd: number, offset: number, len: number): void {
    const w = this.waiting.get(fd);
    if (!w) this.waiting.set(fd, [offset, offset + len]);
    else {
      w[0] = Math.min(w[0], offset);
      w[1] = Math.max(w[1], offset + len);
    }
    this.next(fd);
  }

  /**
   * Drops fd's waiting range; resolves once its running write-back (undefined: none runs) has
   * settled, and only then may fd be closed. Never rejects. No writes of fd may follow.
   */
  forget(fd: number): Promise<void> | undefined {
    this.waiting.delete(fd);
    return this.running.get(fd);
  }

  /** Drops every waiting range; resolves once no write-back runs (every descriptor may close). */
  async forgetAll(): Promise<void> {
    this.waiting.clear();
    await Promise.all(this.running.values());
  }

  /** Starts what is due, fd's range first where each file has its own write-back. */
  private next(fd: number): void {
    if (this.concurrency === 'per-file') {
      if (!this.running.has(fd)) this.start(fd);
      return;
    }
    if (this.running.size > 0) return;
    for (const f of this.waiting.keys()) if (this.start(f)) return;
  }

  /** Starts fd's waiting range if it is wide enough; false if not. */
  private start(fd: number): boolean {
    const w = this.waiting.get(fd);
    if (!w || w[1] - w[0] < WRITEBACK_BATCH_BYTES) return false;
    this.waiting.delete(fd);
    this.counts.started++;
    const done = startWriteBack(fd, w[0], w[1] - w[0]).then((err) => {
      if (err !== undefined) this.counts.refused++;
      this.running.delete(fd);
      this.next(fd);
    });
    this.running.set(fd, done);
    return true;
  }
}
