import type { Writable } from 'node:stream';
import { formatBytes, formatSeconds, type ProgressReport } from './progress.js';

/** What the bar shows of one report: computed by ProgressMeter, drawn by formatProgressLine. */
export interface ProgressView {
  /** 0..100, never lower than before within a phase. */
  percent: number;
  /** Bytes per second since the phase began (entries per second when no bytes move); null at first. */
  rate: number | null;
  /** Seconds left; null until there is a rate. */
  etaSec: number | null;
}

/**
 * The numbers behind the progress bar: the fraction done (by bytes when their total is known,
 * else by entries), which never goes backwards within a phase even if a total grows, the rate
 * since the phase began and the time left at that rate.
 */
export class ProgressMeter {
  private phase: string | undefined;
  private start = 0;
  private startBytes = 0;
  private startFiles = 0;
  private best = 0;

  constructor(private readonly now: () => number = Date.now) {}

  view(p: ProgressReport): ProgressView {
    const t = this.now();
    if (p.phase !== this.phase) {
      this.phase = p.phase;
      this.start = t;
      this.startBytes = p.bytes;
      this.startFiles = p.files;
      this.best = 0;
    }
    const bytesTotal = p.bytesTotal ?? 0;
    const byBytes = bytesTotal > 0;
    const frac = byBytes ? p.bytes / bytesTotal : p.filesTotal > 0 ? p.files / p.filesTotal : 0;
    this.best = Math.max(this.best, Math.min(1, Math.max(0, frac)));
    const elapsed = (t - this.start) / 1000;
    const byteRate = (p.bytes - this.startBytes) / elapsed;
    const fileRate = (p.files - this.startFiles) / elapsed;
    const known = elapsed > 0.2;
    const rate = known ? (byteRate > 0 ? byteRate : fileRate > 0 ? fileRate : null) : null;
    let etaSec: number | null = null;
    if (known && byBytes && byteRate > 0) etaSec = Math.max(0, (bytesTotal - p.bytes) / byteRate);
    else if (known && !byBytes && fileRate > 0 && p.filesTotal > 0)
      etaSec = Math.max(0, (p.filesTotal - p.files) / fileRate);
    return {
      percent: Math.floor(this.best * 100),
      rate,
      etaSec: etaSec === null ? null : Math.round(etaSec * 10) / 10,
    };
  }
}

/** `backup copy  42% [########------------] 1.2 MiB of 3.0 MiB, 4.5 MiB/s, 12/30 files, ETA 3s` */
export function formatProgressLine(p: ProgressReport, v: ProgressView): string {
  const filled = Math.round(v.percent / 5);
  const bytesTotal = p.bytesTotal ?? 0;
  const size =
    bytesTotal > 0 ? `${formatBytes(p.bytes)} of ${formatBytes(bytesTotal)}` : formatBytes(p.bytes);
  const rate =
    v.rate === null ? '-' : p.bytes > 0 ? `${formatBytes(v.rate)}/s` : `${Math.round(v.rate)} files/s`;
  const files = `${p.files}/${Math.max(p.filesTotal, p.files)} files`;
  return `${p.phase} ${String(v.percent).padStart(3)}% [${'#'.repeat(filled)}${'-'.repeat(20 - filled)}] ${size}, ${rate}, ${files}, ETA ${v.etaSec === null ? '-' : formatSeconds(v.etaSec)}`;
}

/**
 * Clears the terminal line and puts the cursor at its start: what readline's clearLine(out, 0)
 * and cursorTo(out, 0) write (CSI 2K, CSI 1G), without loading node:readline (~1 ms and a few
 * of node's modules of every command's start, for a bar drawn only on a terminal).
 */
function clearLine(out: Writable): void {
  out.write('\x1b[2K\x1b[1G');
}

/**
 * The progress bar of the command line (on stderr) and of the REPL (below its output): one
 * line, redrawn at most 10 times a second; lines printed meanwhile go above it; cleared when
 * the command ends so the prompt or the result comes on a clean line.
 */
export class ProgressLine {
  private text = '';
  private lastDraw = 0;
  private lastPhase: string | undefined;
  private meter = new ProgressMeter();

  constructor(
    private readonly out: Writable & { columns?: number },
    private readonly suffix = '',
  ) {}

  progress(p: ProgressReport): void {
    const view = this.meter.view(p);
    const now = Date.now();
    // A new phase and the end of one are always shown; the rest at most 10 times a second.
    const drawn = p.phase === this.lastPhase && view.percent < 100;
    if (drawn && now - this.lastDraw < 100 && this.text) return;
    this.lastDraw = now;
    this.lastPhase = p.phase;
    this.show(formatProgressLine(p, view) + this.suffix);
  }

  show(text: string): void {
    const width = Math.max(40, (this.out.columns || 80) - 1);
    this.text = text.length > width ? text.slice(0, width) : text;
    clearLine(this.out);
    this.out.write(this.text);
  }

  /** Writes a line above the bar. */
  print(line: string): void {
    this.above(() => this.out.write(line + '\n'));
  }

  /** Runs write (which prints whole lines, here or on another stream of the same terminal) above the bar. */
  above(write: () => void): void {
    if (this.text) {
      clearLine(this.out);
    }
    write();
    if (this.text) this.out.write(this.text);
  }

  /** Removes the bar (the next command starts a new one). */
  clear(): void {
    this.meter = new ProgressMeter();
    this.lastPhase = undefined;
    if (!this.text) return;
    clearLine(this.out);
    this.text = '';
  }
}
