import cliProgress from 'cli-progress';
import { EtaClock, formatBytes, formatSeconds, type ProgressReport } from '../common/progress.js';

export { formatBytes, type ProgressReport };

/**
 * Where a command's output goes: text or JSON lines on stdout, a progress bar on a TTY's
 * stderr, and nothing of progress when stderr is piped (scripts get --json).
 *
 * Contract: with --json, one JSON object per line on stdout, the last being the result (or
 * {event:"error", code, message}); progress lines are {event:"progress", phase, files,
 * filesTotal, bytes, bytesTotal, etaSec}. Errors are one line on stderr with a stable code.
 */
export class Output {
  private bar: cliProgress.SingleBar | undefined;
  private lastJson = 0;
  private lastPhase: string | undefined;
  private readonly clock = new EtaClock();

  constructor(
    readonly json: boolean,
    private readonly stdout: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout,
    private readonly stderr: NodeJS.WritableStream & { isTTY?: boolean } = process.stderr,
  ) {}

  line(text: string): void {
    this.stdout.write(text + '\n');
  }

  warn(text: string): void {
    this.stopBar();
    this.stderr.write(`twinfs: warning: ${text}\n`);
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
    const etaSec = this.clock.eta(p);
    if (this.json) {
      const now = Date.now();
      if (p.phase === this.lastPhase && now - this.lastJson < 250) return;
      this.lastJson = now;
      this.lastPhase = p.phase;
      const { path: _path, ...rest } = p;
      this.line(JSON.stringify({ event: 'progress', ...rest, bytesTotal: p.bytesTotal ?? 0, etaSec }));
      return;
    }
    if (!this.stderr.isTTY) return;
    const byBytes = (p.bytesTotal ?? 0) > 0;
    const total = byBytes ? (p.bytesTotal ?? 0) : Math.max(p.filesTotal, 1);
    const value = byBytes ? p.bytes : p.files;
    const payload = {
      phase: p.phase.padEnd(7),
      files: p.files,
      filesTotal: p.filesTotal,
      size: formatBytes(p.bytes),
      etaText: etaSec === null ? '-' : formatSeconds(etaSec),
    };
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar(
        {
          format: '{phase} [{bar}] {percentage}% | {files}/{filesTotal} entries | {size} | ETA {etaText}',
          hideCursor: true,
          fps: 8,
          stream: this.stderr,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, value, payload);
    } else {
      this.bar.setTotal(total);
      this.bar.update(value, payload);
    }
  }

  stopBar(): void {
    this.bar?.stop();
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
