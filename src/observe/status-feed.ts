import { Emitter } from '../common/event.js';
import type { Disposable } from '../common/lifecycle.js';
import type { BackupService } from '../control/backup-service.js';
import type { ControlEvent } from '../control/control-server.js';
import type { TwinFs } from '../fusefs/filesystem.js';
import type { MirrorDriver } from '../mirror-driver/mirror-driver.js';

export interface FeedSources {
  fs: Pick<TwinFs, 'status'>;
  service?: Pick<BackupService, 'onEvent' | 'status'>;
  mirror?: Pick<MirrorDriver, 'status' | 'onDidBreak' | 'onDidChangeState'>;
  control?: { onDidControl(l: (e: ControlEvent) => void): Disposable };
  /** SMB sessions and the service's state (smbstatus), when SMB is served. */
  smb?: () => Promise<unknown>;
  /** Sample period of the cache figures, ms (default 1000). */
  sampleMs?: number;
}

/** One point of the cache plot. */
export interface CacheSample {
  /** Unix time, seconds. */
  t: number;
  dirtyBytes: number;
  /** Written back to the primary since the previous sample, per second. */
  writebackBytesPerSec: number;
}

interface BackupLive {
  backupId: string;
  /** The reporting connection: its backup ends with it, reported or not. */
  owner: string;
  target: string;
  snapshotId?: string;
  phase: string;
  files: number;
  filesTotal: number;
  bytes: number;
  bytesTotal: number;
  copiedBytes: number;
  startedAt: number;
  updatedAt: number;
  bytesPerSec: number | null;
  etaSec: number | null;
}

/** What the status page is sent (GET /api/status and the first SSE message). */
export type FeedMessage =
  | { type: 'state'; state: Record<string, unknown> }
  | { type: 'event'; event: string; data: unknown; time: number }
  | { type: 'sample'; sample: CacheSample };

const KEEP_SAMPLES = 600;
const KEEP_PREPARES = 20;
const KEEP_EVENTS = 50;

/**
 * What the status page shows, kept up to date from the server's events: the last prepares
 * and their stalls, the backups peers report (rate and ETA), the last success per target, a
 * window of cache samples (dirty bytes, write-back rate), the recent events. Everything
 * that happens is fired to the page's subscribers (onDidPush) as it happens; the cache
 * figures are sampled here, once a second, so the page itself never polls.
 */
export class StatusFeed {
  private readonly samples: CacheSample[] = [];
  private readonly prepares: Array<{ backupId: string; selector: unknown; stallMs: number; time: number }> =
    [];
  private readonly backups = new Map<string, BackupLive>();
  private readonly lastSuccess = new Map<
    string,
    { snapshotId?: string; time: number; files: number; copiedBytes: number; elapsedMs: number }
  >();
  private readonly lastFailure = new Map<string, { time: number; code: string; message: string }>();
  private readonly events: Array<{ event: string; data: unknown; time: number }> = [];
  private readonly subs: Disposable[] = [];
  private readonly timer: NodeJS.Timeout;
  private lastFlushed: number;
  private lastSampleAt = Date.now();
  private readonly _onDidPush = new Emitter<FeedMessage>();
  /** Every event and sample, as the page is sent it. */
  readonly onDidPush = this._onDidPush.event;

  constructor(private readonly s: FeedSources) {
    this.lastFlushed = s.fs.status().cache.flushedBytes;
    this.timer = setInterval(() => this.sample(), s.sampleMs ?? 1000);
    this.timer.unref();
    this.sample();
    if (s.service) this.subs.push(s.service.onEvent((e) => this.onService(e.event, e.data)));
    if (s.mirror) {
      this.subs.push(s.mirror.onDidBreak((e) => this.push('broken', e)));
      this.subs.push(s.mirror.onDidChangeState((e) => this.push('state', e)));
    }
    if (s.control)
      this.subs.push(
        s.control.onDidControl((e) => {
          // Connections come and go all the time; the page shows refusals and repairs.
          if (e.event === 'auth-failed' || e.event === 'repaired' || e.event === 'repair-failed')
            this.push(e.event, e);
          // A peer gone without reporting an outcome (killed, cut off): its copy is not in progress.
          if (e.event === 'disconnected')
            for (const b of [...this.backups.values()])
              if (b.owner === e.conn) {
                this.backups.delete(b.backupId);
                this.push('backup-lost', { backupId: b.backupId, target: b.target });
              }
        }),
      );
  }

  /** Everything the page shows, now. */
  async state(): Promise<Record<string, unknown>> {
    const fs = this.s.fs.status();
    const mirror = this.s.mirror?.status();
    const svc = this.s.service?.status();
    const smb = this.s.smb
      ? await this.s.smb().catch((err) => ({ error: String(err?.message ?? err) }))
      : null;
    return {
      time: Date.now(),
      pid: process.pid,
      fs: {
        primary: fs.primary,
        mount: fs.mount,
        writeThrough: fs.writeThrough,
        openHandles: fs.openHandles,
        cache: {
          dirtyBytes: fs.cache.dirtyBytes,
          limitBytes: fs.cache.limitBytes,
          dirtyFiles: fs.cache.dirtyFiles,
          flushedBytes: fs.cache.flushedBytes,
        },
      },
      mirror: mirror
        ? {
            deviceId: mirror.deviceId,
            state: mirror.state,
            splits: mirror.splits,
            broken: mirror.broken,
            brokenReasons: mirror.brokenReasons,
            queueLength: mirror.queueLength,
          }
        : null,
      stall: svc
        ? {
            maxStallMs: svc.maxStallMs,
            prepares: svc.stall.prepares,
            failedPrepares: svc.stall.failedPrepares,
            recentMs: svc.stall.recentMs,
          }
        : null,
      freezes: svc?.freezes ?? [],
      leases: svc?.backups ?? [],
      prepares: [...this.prepares],
      backups: [...this.backups.values()],
      lastSuccess: Object.fromEntries(this.lastSuccess),
      lastFailure: Object.fromEntries(this.lastFailure),
      samples: [...this.samples],
      events: [...this.events],
      smb,
    };
  }

  dispose(): void {
    clearInterval(this.timer);
    for (const d of this.subs) d.dispose();
    this._onDidPush.dispose();
  }

  private sample(): void {
    const now = Date.now();
    const c = this.s.fs.status().cache;
    const secs = Math.max(0.001, (now - this.lastSampleAt) / 1000);
    const sample: CacheSample = {
      t: now / 1000,
      dirtyBytes: c.dirtyBytes,
      writebackBytesPerSec: Math.max(0, Math.round((c.flushedBytes - this.lastFlushed) / secs)),
    };
    this.lastFlushed = c.flushedBytes;
    this.lastSampleAt = now;
    this.samples.push(sample);
    if (this.samples.length > KEEP_SAMPLES) this.samples.shift();
    this._onDidPush.fire({ type: 'sample', sample });
  }

  private onService(event: string, data: Record<string, unknown>): void {
    const d = data as Record<string, any>;
    const now = Date.now();
    if (event === 'split') {
      this.prepares.unshift({ backupId: d.backupId, selector: d.selector, stallMs: d.stallMs, time: now });
      if (this.prepares.length > KEEP_PREPARES) this.prepares.pop();
    } else if (event === 'backup-progress' || event === 'backup-done') {
      const prev = this.backups.get(d.backupId);
      const startedAt = prev?.startedAt ?? now - (d.elapsedMs ?? 0);
      const secs = (now - startedAt) / 1000;
      const bytesPerSec = secs > 0.5 ? Math.round(d.bytes / secs) : null;
      const etaSec =
        bytesPerSec && d.bytesTotal > 0
          ? Math.max(0, Math.round((d.bytesTotal - d.bytes) / bytesPerSec))
          : null;
      if (event === 'backup-done') {
        this.backups.delete(d.backupId);
        if (d.outcome === 'ok')
          this.lastSuccess.set(d.target, {
            snapshotId: d.snapshotId,
            time: now,
            files: d.files,
            copiedBytes: d.copiedBytes,
            elapsedMs: d.elapsedMs,
          });
        else this.lastFailure.set(d.target, { time: now, code: d.error?.code, message: d.error?.message });
      } else
        this.backups.set(d.backupId, {
          backupId: d.backupId,
          owner: d.owner,
          target: d.target,
          snapshotId: d.snapshotId,
          phase: d.phase,
          files: d.files,
          filesTotal: d.filesTotal,
          bytes: d.bytes,
          bytesTotal: d.bytesTotal,
          copiedBytes: d.copiedBytes,
          startedAt,
          updatedAt: now,
          bytesPerSec,
          etaSec,
        });
    }
    this.push(event, data);
  }

  private push(event: string, data: unknown): void {
    const e = { event, data, time: Date.now() };
    this.events.unshift(e);
    if (this.events.length > KEEP_EVENTS) this.events.pop();
    this._onDidPush.fire({ type: 'event', ...e });
  }
}
