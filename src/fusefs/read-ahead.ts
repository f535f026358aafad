import * as fs from 'node:fs';

/**
 * Read-ahead for sequential readers of clean files.
 *
 * libfuse2 hands reads over in requests of at most 128 KiB (max_read), each a hop from the
 * JS thread to the thread pool and back. For a file read front to back, one `pread` of a
 * whole window (1 MiB) answers the next eight requests synchronously from memory: one hop per
 * MiB instead of eight (docs/benchmarks.md, "What limits twinfs", item 5).
 *
 * The window holds the primary's bytes as they were when it was filled. It is only used for
 * files with nothing cached (a dirty file's reads overlay cached data and go the direct way),
 * and every change to the file's content goes through the cache, which bumps the file's
 * generation (`ReadAheadState.gen`): a window of an older generation is never served.
 *
 * A reader has up to two windows: the one it reads from and the next, filled in the background
 * once it is past the middle of the first, so the disk works while the requests are answered
 * from memory. Windows come from a small pool of reused buffers (no allocation per read,
 * bounded memory); when it is empty the least recently used idle window is taken over.
 */
export const WINDOW_BYTES = 1024 * 1024;
/** Smaller reads are not worth a window (the kernel's own readahead asks for 128 KiB). */
const MIN_FILL_REQUEST = 64 * 1024;
const WINDOWS_PER_READER = 2;

/** The read-ahead state of one file (kept on the cache's FileNode). */
export class ReadAheadState {
  /** Bumped by every change to the file's content: write, truncate, write-back. */
  gen = 0;
  /** Where the next sequential read would start. */
  nextPos = 0;
  readonly windows: Window[] = [];
}

interface Window {
  buf: Buffer;
  off: number;
  /** Bytes filled; -1 while filling or after a failed fill. */
  len: number;
  /** The fill reached the end of the file (at gen). */
  eof: boolean;
  gen: number;
  /** Set while the buffer is being filled. */
  filling: Promise<void> | null;
  owner: ReadAheadState;
}

export class ReadAheadPool {
  /** Windows in use, least recently used first. */
  private readonly used = new Set<Window>();
  private readonly free: Buffer[] = [];
  private allocated = 0;
  private readonly stats = { hits: 0, fills: 0, prefetches: 0, direct: 0 };

  constructor(private readonly maxWindows = 16) {}

  getStats(): { hits: number; fills: number; prefetches: number; direct: number; windows: number } {
    return { ...this.stats, windows: this.used.size };
  }

  /**
   * Answers a read of a file with nothing cached: synchronously (a number) from a window, or
   * by filling one, or through `slow` (the cache's read, which overlays cached data). `slow`
   * also answers a read whose window went stale while it waited. Returns the bytes read.
   */
  read(
    fd: number,
    st: ReadAheadState,
    buf: Buffer,
    len: number,
    pos: number,
    slow: () => Promise<number>,
  ): number | Promise<number> {
    for (const w of st.windows) {
      if (w.gen !== st.gen || pos < w.off) continue;
      if (w.filling) {
        if (pos + len <= w.off + WINDOW_BYTES)
          return w.filling.then(() => this.afterFill(fd, st, w, buf, len, pos, slow));
      } else if (answers(w, pos, len)) {
        return this.serve(fd, st, w, buf, len, pos);
      }
    }
    // Sequential: where the last read ended, or the start of the file (a new reader).
    if ((pos === st.nextPos || pos === 0) && len >= MIN_FILL_REQUEST && len <= WINDOW_BYTES) {
      const w = this.fill(fd, st, pos);
      if (w) return w.filling!.then(() => this.afterFill(fd, st, w, buf, len, pos, slow));
    }
    this.stats.direct++;
    st.nextPos = pos + len;
    return slow();
  }

  /** The file is being closed: its windows go back to the pool. */
  drop(st: ReadAheadState): void {
    for (const w of st.windows.splice(0)) this.release(w);
  }

  private release(w: Window): void {
    this.used.delete(w);
    // A fill in progress still writes into the buffer: hand it back when that is over.
    if (w.filling) void w.filling.then(() => this.free.push(w.buf));
    else this.free.push(w.buf);
  }

  private serve(fd: number, st: ReadAheadState, w: Window, buf: Buffer, len: number, pos: number): number {
    const n = Math.max(0, Math.min(len, w.off + w.len - pos));
    w.buf.copy(buf, 0, pos - w.off, pos - w.off + n);
    st.nextPos = pos + n;
    this.stats.hits++;
    this.touch(w);
    // Past the middle of the window: fill the next one while this one is read.
    const next = w.off + w.len;
    if (
      !w.eof &&
      pos + n > w.off + w.len / 2 &&
      !st.windows.some((x) => x.off === next && x.gen === st.gen)
    ) {
      if (this.fill(fd, st, next, w)) this.stats.prefetches++;
    }
    return n;
  }

  private afterFill(
    fd: number,
    st: ReadAheadState,
    w: Window,
    buf: Buffer,
    len: number,
    pos: number,
    slow: () => Promise<number>,
  ): number | Promise<number> {
    // Changed (or taken over) while filling, or the fill failed: the slow way, this once.
    if (st.windows.includes(w) && w.gen === st.gen && w.len >= 0 && answers(w, pos, len))
      return this.serve(fd, st, w, buf, len, pos);
    this.stats.direct++;
    return slow();
  }

  /**
   * Starts filling a window of st at pos, reusing one of st's idle windows other than `keep`
   * once it has its two. Undefined when no buffer can be had.
   */
  private fill(fd: number, st: ReadAheadState, pos: number, keep?: Window): Window | undefined {
    let w: Window | undefined;
    if (st.windows.length >= WINDOWS_PER_READER) {
      w = st.windows.find((x) => x !== keep && !x.filling);
      if (!w) return undefined;
    } else {
      const buf = this.take();
      if (!buf) return undefined;
      w = { buf, off: 0, len: -1, eof: false, gen: 0, filling: null, owner: st };
      st.windows.push(w);
    }
    const win = w;
    this.touch(win);
    win.off = pos;
    win.len = -1;
    win.eof = false;
    win.gen = st.gen;
    this.stats.fills++;
    win.filling = new Promise<void>((resolve) => {
      fs.read(fd, win.buf, 0, WINDOW_BYTES, pos, (err, n) => {
        win.filling = null;
        // A failed fill is never served: its readers go the slow way and see the error.
        if (!err) {
          win.len = n;
          win.eof = n < WINDOW_BYTES;
        }
        resolve();
      });
    });
    return win;
  }

  /** Most recently used last. */
  private touch(w: Window): void {
    this.used.delete(w);
    this.used.add(w);
  }

  /** A free buffer: from the pool, newly allocated below the limit, or an idle window's. */
  private take(): Buffer | undefined {
    const b = this.free.pop();
    if (b) return b;
    if (this.allocated < this.maxWindows) {
      this.allocated++;
      return Buffer.allocUnsafe(WINDOW_BYTES);
    }
    for (const w of this.used) {
      if (w.filling) continue;
      this.used.delete(w);
      const ws = w.owner.windows;
      ws.splice(ws.indexOf(w), 1);
      return w.buf;
    }
    return undefined;
  }
}

/** A filled window holds [pos, pos + len), or all of it there is (the end of the file). */
function answers(w: Window, pos: number, len: number): boolean {
  return pos >= w.off && (pos + len <= w.off + w.len || (w.eof && pos <= w.off + w.len));
}
