import * as readline from 'node:readline';
import type { Writable } from 'node:stream';
import { EtaClock, formatBytes, formatSeconds, type ProgressReport } from '../common/progress.js';

/**
 * The one line at the bottom of an interactive REPL that shows the running command's progress.
 * Lines printed meanwhile go above it; it is redrawn below them and cleared when the command
 * ends, so the prompt comes back on a clean line.
 */
export class StatusLine {
  private text = '';
  private lastDraw = 0;
  private readonly clock = new EtaClock();

  constructor(private readonly out: Writable & { columns?: number }) {}

  /** Shows progress (redrawn at most 10 times a second). */
  progress(p: ProgressReport): void {
    const now = Date.now();
    const eta = this.clock.eta(p);
    if (now - this.lastDraw < 100 && this.text) return;
    this.lastDraw = now;
    this.show(formatProgress(p, eta));
  }

  show(text: string): void {
    const width = Math.max(20, (this.out.columns ?? 80) - 1);
    this.text = text.length > width ? text.slice(0, width) : text;
    readline.clearLine(this.out, 0);
    readline.cursorTo(this.out, 0);
    this.out.write(this.text);
  }

  /** Writes a line above the status line. */
  print(line: string): void {
    if (this.text) {
      readline.clearLine(this.out, 0);
      readline.cursorTo(this.out, 0);
    }
    this.out.write(line + '\n');
    if (this.text) this.out.write(this.text);
  }

  clear(): void {
    if (!this.text) return;
    readline.clearLine(this.out, 0);
    readline.cursorTo(this.out, 0);
    this.text = '';
  }
}

/** `backup copy  42% [########------------] 12/30 entries, 1.2 MiB of 3.0 MiB, ETA 3s` */
export function formatProgress(p: ProgressReport, etaSec: number | null): string {
  const byBytes = (p.bytesTotal ?? 0) > 0;
  const frac = byBytes ? p.bytes / (p.bytesTotal ?? 1) : p.filesTotal > 0 ? p.files / p.filesTotal : 0;
  const pct = Math.max(0, Math.min(100, Math.floor(frac * 100)));
  const filled = Math.round(pct / 5);
  const size = byBytes
    ? `${formatBytes(p.bytes)} of ${formatBytes(p.bytesTotal ?? 0)}`
    : formatBytes(p.bytes);
  return `${p.phase} ${String(pct).padStart(3)}% [${'#'.repeat(filled)}${'-'.repeat(20 - filled)}] ${p.files}/${p.filesTotal} entries, ${size}, ETA ${etaSec === null ? '-' : formatSeconds(etaSec)} (Ctrl-C cancels)`;
}
