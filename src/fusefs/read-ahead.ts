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
 * Windows come from a small pool of reused buffers (no allocation per read, bounded memory);
 * when it is empty the least recently used idle window is taken over.
 */
export const WINDOW_BYTES = 1024 * 1024;
/** Smaller reads are not worth a window (the kernel's own readahead asks for 128 KiB). */
const MIN_FILL_REQUEST = 64 * 1024;

/** The read-ahead state of one file (kept on the cache's FileNode). */
export class ReadAheadState {
  /** Bumped by every change to the file's content: write, truncate, write-back. */
  gen = 0;
  /** Where the next sequential read would start. */
  nextPos = 0;
  window: Window | null = null;
}

interface Window {
  buf: Buffer;
  off: number;
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
  private readonly stats = { hits: 0, fills: 0, direct: 0 };

  constructor(private readonly maxWindows = 16) {}

  getStats(): { hits: number; fills: number; direct: number; windows: number } {
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
    const w = st.window;
    if (w && w.gen === st.gen && pos >= w.off) {
      if (w.filling) {
        if (pos + len <= w.off + WINDOW_BYTES)
          return w.filling.then(() => this.afterFill(st, w, buf, len, pos, slow));
      } else if (pos + len <= w.off + w.len || (w.eof && pos <= w.off + w.len)) {
        return this.serve(st, w, buf, len, pos);
      }
    }
    // Sequential: where the last read ended, or the start of the file (a new reader).
    if ((pos === st.nextPos || pos === 0) && len >= MIN_FILL_REQUEST && len <= WINDOW_BYTES && !w?.filling) {
      const fill = this.fill(fd, st, pos);
      if (fill) return fill.then((filled) => this.afterFill(st, filled, buf, len, pos, slow));
    }
    this.stats.direct++;
    st.nextPos = pos + len;
    return slow();
  }

  /** The file is being closed: its window goes back to the pool. */
  drop(st: ReadAheadState): void {
    const w = st.window;
    if (!w) return;
    st.window = null;
    this.used.delete(w);
    // A fill in progress still writes into the buffer: hand it back when that is over.
    if (w.filling) void w.filling.then(() => this.free.push(w.buf));
    else this.free.push(w.buf);
  }

  private serve(st: ReadAheadState, w: Window, buf: Buffer, len: number, pos: number): number {
    const n = Math.max(0, Math.min(len, w.off + w.len - pos));
    w.buf.copy(buf, 0, pos - w.off, pos - w.off + n);
    st.nextPos = pos + n;
    this.stats.hits++;
    // Most recently used last.
    this.used.delete(w);
    this.used.add(w);
    return n;
  }

  private afterFill(
    st: ReadAheadState,
    w: Window,
    buf: Buffer,
    len: number,
    pos: number,
    slow: () => Promise<number>,
  ): number | Promise<number> {
    // Changed (or taken over) while filling, or the fill failed: the slow way, this once.
    if (st.window === w && w.gen === st.gen && (pos + len <= w.off + w.len || w.eof))
      return this.serve(st, w, buf, len, pos);
    this.stats.direct++;
    return slow();
  }

  /** Starts filling a window at pos; undefined when no buffer is free (all windows filling). */
  private fill(fd: number, st: ReadAheadState, pos: number): Promise<Window> | undefined {
    let w = st.window;
    if (!w) {
      const buf = this.take();
      if (!buf) return undefined;
      w = { buf, off: 0, len: 0, eof: false, gen: 0, filling: null, owner: st };
      st.window = w;
    }
    this.used.delete(w);
    this.used.add(w);
    const win = w;
    win.off = pos;
    win.len = -1;
    win.eof = false;
    win.gen = st.gen;
    this.stats.fills++;
    const done = new Promise<Window>((resolve) => {
      fs.read(fd, win.buf, 0, WINDOW_BYTES, pos, (err, n) => {
        win.filling = null;
        if (err)
          win.gen = -1; // never served: the readers go the slow way and see the error
        else {
          win.len = n;
          win.eof = n < WINDOW_BYTES;
        }
        resolve(win);
      });
    });
    win.filling = done.then(() => undefined);
    return done;
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
      w.owner.window = null;
      return w.buf;
    }
    return undefined;
  }
}
