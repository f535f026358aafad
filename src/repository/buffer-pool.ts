import { markPageAligned } from '../posix/direct-read.js';
import { posix } from '../posix/native.js';

/** Buffers of at least this many bytes are advised to use transparent huge pages (adviseHuge). */
const HUGE_MIN = 4 * 1024 * 1024;

/**
 * Transparent huge pages for a large buffer not touched yet (the posix addon's adviseHuge:
 * madvise MADV_HUGEPAGE over its 2 MiB-aligned part): its first touch then faults once per
 * 2 MiB, not once per 4 KiB. Nothing else changes; without the addon or THP, nothing does.
 */
function huge(b: Buffer): Buffer {
  if (b.length >= HUGE_MIN && process.env.TWINFS_HUGE_PAGES !== '0') {
    try {
      posix().adviseHuge(b);
    } catch {
      // No addon here: 4 KiB pages, as before.
    }
  }
  return b;
}

/**
 * Buffers of shared memory kept for reuse, of sizes rounded up to a power of two: a buffer
 * taken is the smallest kept one that is large enough, else a new one.
 *
 * Fresh memory is what costs here, not the work done in it: a new SharedArrayBuffer is zeroed
 * on the thread that creates it (a minor page fault per 4 KiB, ~11 µs each on some VMs, more
 * than reading or hashing those bytes), and a buffer sized for the largest batch touches all of
 * its pages even for a small one. Kept buffers were touched once and cost nothing more.
 */
export class SharedBufferPool {
  private readonly kept: Buffer[] = [];
  private keptBytes = 0;

  /**
   * @param maxBytes bytes of buffers kept at most (the largest ones win: they serve any size)
   * @param minSize the smallest buffer made
   */
  constructor(
    private readonly maxBytes: number,
    private readonly minSize = 64 * 1024,
  ) {}

  /** A buffer of at least n bytes (its whole length: the caller uses what it needs). */
  take(n: number): Buffer {
    let best = -1;
    for (let i = 0; i < this.kept.length; i++)
      if (this.kept[i]!.length >= n && (best < 0 || this.kept[i]!.length < this.kept[best]!.length)) best = i;
    if (best >= 0) {
      const b = this.kept.splice(best, 1)[0]!;
      this.keptBytes -= b.length;
      return b;
    }
    let size = this.minSize;
    while (size < n) size *= 2;
    return huge(Buffer.from(new SharedArrayBuffer(size)));
  }

  /**
   * A buffer nobody reads or writes any more (a pending read or transfer of it must have
   * settled: it is handed out again as it is).
   */
  give(b: Buffer): void {
    this.kept.push(b);
    this.keptBytes += b.length;
    this.kept.sort((x, y) => y.length - x.length);
    while (this.keptBytes > this.maxBytes) this.keptBytes -= this.kept.pop()!.length;
  }
}

/** WebAssembly.Memory (the project's TypeScript libraries leave WebAssembly's types out). */
function wasmMemory(): new (d: {
  initial: number;
  maximum: number;
  shared: boolean;
}) => {
  buffer: SharedArrayBuffer;
} {
  return (globalThis as unknown as { WebAssembly: { Memory: ReturnType<typeof wasmMemory> } }).WebAssembly
    .Memory;
}

/** WebAssembly's page: a shared WebAssembly.Memory is a whole number of them. */
const WASM_PAGE = 64 * 1024;

/**
 * n bytes of shared memory that start on a page boundary: a shared WebAssembly.Memory's buffer
 * (a SharedArrayBuffer that V8 maps whole with mmap, so it is page-aligned and its pages are
 * fresh until written, never cleared by calloc from malloc's heap), else a plain
 * SharedArrayBuffer (aligned to 16 bytes). A pack built in page-aligned memory is written to
 * a `dir:` target with O_DIRECT, without a copy through the page cache (plugins/dir,
 * `writeDirect`); the store checks nothing of this and falls back to the page cache when the
 * device refuses the memory.
 */
export function pageAlignedShared(n: number): Buffer {
  try {
    const pages = Math.max(1, Math.ceil(n / WASM_PAGE));
    const mem = new (wasmMemory())({ initial: pages, maximum: pages, shared: true });
    markPageAligned(mem.buffer);
    return huge(Buffer.from(mem.buffer, 0, n));
  } catch {
    return huge(Buffer.from(new SharedArrayBuffer(n)));
  }
}
