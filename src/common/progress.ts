/**
 * What a long operation (backup, restore, check, a mirror copy or resync) reports as it goes;
 * front ends turn it into a progress bar, a status line or `--json` progress lines.
 */
export interface ProgressReport {
  phase: string;
  /** Entries done and known so far (the total may grow while a tree is walked). */
  files: number;
  filesTotal: number;
  bytes: number;
  /** 0 or absent when unknown. */
  bytesTotal?: number;
  [k: string]: unknown;
}

/**
 * Estimates the seconds left from the rate since the phase began: by bytes when their total is
 * known, else by entries. null until there is a rate to go by.
 */
export class EtaClock {
  private phase: string | undefined;
  private start = 0;
  private startValue = 0;

  constructor(private readonly now: () => number = Date.now) {}

  eta(p: ProgressReport): number | null {
    const byBytes = (p.bytesTotal ?? 0) > 0;
    const value = byBytes ? p.bytes : p.files;
    const total = byBytes ? (p.bytesTotal ?? 0) : p.filesTotal;
    if (p.phase !== this.phase) {
      this.phase = p.phase;
      this.start = this.now();
      this.startValue = value;
      return null;
    }
    const elapsed = (this.now() - this.start) / 1000;
    const rate = (value - this.startValue) / elapsed;
    if (!(elapsed > 0.2) || !(rate > 0)) return null;
    return Math.max(0, Math.round(((total - value) / rate) * 10) / 10);
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function formatSeconds(s: number): string {
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
