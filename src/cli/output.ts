import { formatBytes, type ProgressReport } from '../common/progress.js';
import { ProgressLine, ProgressMeter } from '../common/progress-line.js';

export { formatBytes, type ProgressReport };

/**
 * Where a command's output goes: text or JSON lines on stdout, the progress bar on a TTY's
 * stderr, and nothing of progress when stderr is piped (scripts get --json).
 *
 * Contract: with --json, one JSON object per line on stdout, the last being the result (or
 * {event:"error", code, message}); progress lines are {event:"progress", phase, files,
 * filesTotal, bytes, bytesTotal, percent, rate, etaSec}. Errors are one line on stderr with a
 * stable code.
 */
export class Output {
  private bar: ProgressLine | undefined;
  private lastJson = 0;
  private lastPhase: string | undefined;
  private readonly meter = new ProgressMeter();

  constructor(
    readonly json: boolean,
    private readonly stdout: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout,
    private readonly stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number } = process.stderr,
  ) {}

  line(text: string): void {
    if (this.bar) this.bar.above(() => this.stdout.write(text + '\n'));
    else this.stdout.write(text + '\n');
  }

  warn(text: string): void {
    if (this.bar) this.bar.print(`twinfs: warning: ${text}`);
    else this.stderr.write(`twinfs: warning: ${text}\n`);
  }

  event(obj: Record<string, unknown>, text: string): void {
    if (this.json) this.line(JSON.stringify({ ...obj, time: new Date().toISOString() }));
    else this.line(`twinfs: ${text}`);
  }

  result(obj: Record<string, unknown>, text: string): void {
    this.stopBar();
    this.line(this.json ? JSON.stringify(obj) : `twinfs: ${text}`);
  }

  /** Progress: at most 4 JSON lines a second (and one per phase change), or the bar. */
  progress(p: ProgressReport): void {
    if (this.json) {
      const v = this.meter.view(p);
      const now = Date.now();
      if (p.phase === this.lastPhase && now - this.lastJson < 250) return;
      this.lastJson = now;
      this.lastPhase = p.phase;
      const { path: _path, ...rest } = p;
      this.line(
        JSON.stringify({
          event: 'progress',
          ...rest,
          bytesTotal: p.bytesTotal ?? 0,
          percent: v.percent,
          rate: v.rate === null ? null : Math.round(v.rate),
          etaSec: v.etaSec,
        }),
      );
      return;
    }
    if (!this.stderr.isTTY) return;
    this.bar ??= new ProgressLine(this.stderr as NodeJS.WritableStream as never);
    this.bar.progress(p);
  }

  stopBar(): void {
    this.bar?.clear();
    this.bar = undefined;
  }

  error(err: unknown): void {
    this.stopBar();
    const code = (err as { code?: unknown })?.code;
    const known = typeof code === 'string';
    const message = (err as Error)?.message ?? String(err);
    if (this.json)
      this.line(JSON.stringify({ event: 'error', code: known ? code : 'ETWIN_INTERNAL', message }));
    this.stderr.write(`twinfs: error ${known ? `${code}: ` : ''}${message}\n`);
    if (!known) this.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
  }
}
