import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { Disposable } from '../common/lifecycle.js';
import type { BackupService } from '../control/backup-service.js';
import type { ControlEvent } from '../control/control-server.js';
import type { Role } from '../control/token-store.js';
import type { TwinFs } from '../fusefs/filesystem.js';
import type { MirrorDriver } from '../mirror-driver/mirror-driver.js';

/** What the metrics read at scrape time and follow as events. */
export interface MetricSources {
  fs: Pick<TwinFs, 'status'>;
  service?: Pick<BackupService, 'onEvent' | 'status'>;
  mirror?: Pick<MirrorDriver, 'status'>;
  control?: {
    onDidControl(l: (e: ControlEvent) => void): Disposable;
    connectionCounts(): Record<Role, number>;
  };
  /** SMB sessions now (null when SMB is not served or smbstatus failed). */
  smbSessions?: () => Promise<number | null>;
}

/** Write-stall buckets, seconds: the stall budget is 1 s by default, 60 s at most. */
const STALL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const MIRROR_STATES = ['COPY', 'PAIR', 'DEGRADED'] as const;

/**
 * The server's Prometheus metrics (prom-client), served at /metrics of `serve --http`.
 * Conventional names: `twinfs_` prefix, base units (`_bytes`, `_seconds`), `_total` on
 * counters. Gauges are read from the server's parts when scraped; counters and the stall
 * histogram follow the events as they happen. Names and meanings: docs/observability.md.
 */
export class ServerMetrics {
  readonly registry = new Registry();
  private readonly subs: Disposable[] = [];
  private readonly scrapeCache: Array<() => void> = [];

  constructor(s: MetricSources) {
    const r = this.registry;
    collectDefaultMetrics({ register: r });
    // Each source's status is read once per scrape, not once per metric (expose() clears it):
    // the scrape runs on the event loop that serves the mount.
    const once = <T>(read: () => T) => {
      let v: T | undefined;
      this.scrapeCache.push(() => {
        v = undefined;
      });
      return () => (v ??= read());
    };
    const fsStatus = once(() => s.fs.status());
    new Gauge({
      name: 'twinfs_cache_dirty_bytes',
      help: 'Data written to the mount and not yet written back to the primary',
      registers: [r],
      collect() {
        this.set(fsStatus().cache.dirtyBytes);
      },
    });
    new Gauge({
      name: 'twinfs_cache_limit_bytes',
      help: 'Dirty-data limit of the write-back cache',
      registers: [r],
      collect() {
        this.set(fsStatus().cache.limitBytes);
      },
    });
    new Gauge({
      name: 'twinfs_cache_dirty_files',
      help: 'Files with data not yet written back',
      registers: [r],
      collect() {
        this.set(fsStatus().cache.dirtyFiles);
      },
    });
    // The cache keeps its own monotonic total: a counter mirrors it at scrape time.
    let flushedSeen = 0;
    new Counter({
      name: 'twinfs_writeback_bytes_total',
      help: 'Bytes written back from the cache to the primary',
      registers: [r],
      collect() {
        const n = fsStatus().cache.flushedBytes;
        if (n > flushedSeen) this.inc(n - flushedSeen);
        flushedSeen = Math.max(flushedSeen, n);
      },
    });
    let errorsSeen = 0;
    new Counter({
      name: 'twinfs_writeback_errors_total',
      help: 'Write-backs to the primary that failed',
      registers: [r],
      collect() {
        const n = fsStatus().cache.writeErrors;
        if (n > errorsSeen) this.inc(n - errorsSeen);
        errorsSeen = Math.max(errorsSeen, n);
      },
    });
    new Gauge({
      name: 'twinfs_open_handles',
      help: 'Files open through the mount',
      registers: [r],
      collect() {
        this.set(fsStatus().openHandles);
      },
    });

    if (s.mirror) {
      const mirrorStatus = once(() => s.mirror!.status());
      const mirror = { status: mirrorStatus };
      new Gauge({
        name: 'twinfs_mirror_state',
        help: 'The mirror of the volume: 1 for the state it is in (COPY, PAIR, DEGRADED)',
        labelNames: ['state'],
        registers: [r],
        collect() {
          const st = mirror.status().state;
          for (const x of MIRROR_STATES) this.set({ state: x }, st === x ? 1 : 0);
        },
      });
      new Gauge({
        name: 'twinfs_broken_pairs',
        help: 'Mirror pairs broken (the mirror copy could not be written), waiting for repair',
        registers: [r],
        collect() {
          this.set(mirror.status().broken.length);
        },
      });
      new Gauge({
        name: 'twinfs_mirror_splits',
        help: 'Splits held (pairs split for a backup, not yet resynced)',
        registers: [r],
        collect() {
          this.set(mirror.status().splits.length);
        },
      });
      new Gauge({
        name: 'twinfs_mirror_queue_length',
        help: 'Changes waiting to be applied to the mirror',
        registers: [r],
        collect() {
          this.set(mirror.status().queueLength);
        },
      });
      let mirroredSeen = 0;
      new Counter({
        name: 'twinfs_mirror_bytes_total',
        help: 'Bytes written to the mirror',
        registers: [r],
        collect() {
          const n = mirror.status().stats.bytesMirrored;
          if (n > mirroredSeen) this.inc(n - mirroredSeen);
          mirroredSeen = Math.max(mirroredSeen, n);
        },
      });
    }

    if (s.service) {
      const serviceStatus = once(() => s.service!.status());
      const service = { onEvent: s.service.onEvent, status: serviceStatus };
      const stall = new Histogram({
        name: 'twinfs_write_stall_seconds',
        help: 'How long a successful prepare held writes to its selection',
        buckets: STALL_BUCKETS,
        registers: [r],
      });
      let failedSeen = 0;
      const prepares = new Counter({
        name: 'twinfs_prepares_total',
        help: 'Backup prepares (inhibit, drain, flush, split), by outcome',
        labelNames: ['outcome'],
        registers: [r],
        collect() {
          // Failed prepares fire no event; the service counts them.
          const n = service.status().stall.failedPrepares;
          if (n > failedSeen) this.inc({ outcome: 'failed' }, n - failedSeen);
          failedSeen = Math.max(failedSeen, n);
        },
      });
      prepares.inc({ outcome: 'ok' }, 0);
      const releases = new Counter({
        name: 'twinfs_releases_total',
        help: 'Splits released (by their peer, or when their lease expired), by reason',
        labelNames: ['reason'],
        registers: [r],
      });
      releases.inc({ reason: 'release' }, 0);
      const freezes = new Counter({
        name: 'twinfs_freezes_total',
        help: 'Operator freezes taken',
        registers: [r],
      });
      new Gauge({
        name: 'twinfs_active_leases',
        help: 'Splits held under a lease by a backup peer',
        registers: [r],
        collect() {
          this.set(service.status().backups.length);
        },
      });
      new Gauge({
        name: 'twinfs_active_freezes',
        help: 'Operator freezes holding writes',
        registers: [r],
        collect() {
          this.set(service.status().freezes.length);
        },
      });
      /** Backups being copied, by id, with the connection reporting them. */
      const inProgress = new Map<string, string>();
      this.forgetOwner = (conn) => {
        for (const [id, owner] of inProgress) if (owner === conn) inProgress.delete(id);
      };
      new Gauge({
        name: 'twinfs_backups_in_progress',
        help: 'Backups whose peer reports a copy under way',
        registers: [r],
        collect() {
          this.set(inProgress.size);
        },
      });
      const copied = new Counter({
        name: 'twinfs_backup_copied_bytes_total',
        help: 'Bytes backup peers reported copied to their targets',
        labelNames: ['target'],
        registers: [r],
      });
      const backups = new Counter({
        name: 'twinfs_backups_total',
        help: 'Backups finished, by target and outcome (as their peers reported)',
        labelNames: ['target', 'outcome'],
        registers: [r],
      });
      const lastSuccess = new Gauge({
        name: 'twinfs_backup_last_success_timestamp_seconds',
        help: 'When the last backup to a target succeeded (Unix time)',
        labelNames: ['target'],
        registers: [r],
      });
      const copiedSeen = new Map<string, number>();
      let expired = new Set<string>();
      this.subs.push(
        service.onEvent(({ event, data }) => {
          const d = data as Record<string, any>;
          switch (event) {
            case 'split':
              prepares.inc({ outcome: 'ok' });
              stall.observe(d.stallMs / 1000);
              return;
            case 'lease-expired':
              expired.add(d.backupId);
              if (expired.size > 256) expired = new Set([...expired].slice(-128));
              return;
            case 'released':
              releases.inc({ reason: expired.delete(d.backupId) ? 'lease-expired' : 'release' });
              return;
            case 'frozen':
              freezes.inc();
              return;
            case 'backup-progress':
            case 'backup-done': {
              const seen = copiedSeen.get(d.backupId) ?? 0;
              if (d.copiedBytes > seen) copied.inc({ target: d.target }, d.copiedBytes - seen);
              if (event === 'backup-progress') {
                copiedSeen.set(d.backupId, Math.max(seen, d.copiedBytes));
                inProgress.set(d.backupId, d.owner);
                return;
              }
              copiedSeen.delete(d.backupId);
              inProgress.delete(d.backupId);
              backups.inc({ target: d.target, outcome: d.outcome });
              if (d.outcome === 'ok') lastSuccess.set({ target: d.target }, Date.now() / 1000);
              return;
            }
          }
        }),
      );
    }

    if (s.control) {
      const control = s.control;
      new Gauge({
        name: 'twinfs_control_connections',
        help: 'Authenticated control connections, by role',
        labelNames: ['role'],
        registers: [r],
        collect() {
          for (const [role, n] of Object.entries(control.connectionCounts())) this.set({ role }, n);
        },
      });
      const opened = new Counter({
        name: 'twinfs_control_connections_total',
        help: 'Control connections opened',
        registers: [r],
      });
      const authFailures = new Counter({
        name: 'twinfs_auth_failures_total',
        help: 'Wrong tokens presented (control channel and status page)',
        labelNames: ['channel'],
        registers: [r],
      });
      authFailures.inc({ channel: 'control' }, 0);
      authFailures.inc({ channel: 'http' }, 0);
      this.httpAuthFailure = () => authFailures.inc({ channel: 'http' });
      const repairs = new Counter({
        name: 'twinfs_repairs_total',
        help: 'Mirror repairs asked for over the control channel, by outcome',
        labelNames: ['outcome'],
        registers: [r],
      });
      this.subs.push(
        control.onDidControl((e) => {
          if (e.event === 'connection') opened.inc();
          else if (e.event === 'disconnected') this.forgetOwner(e.conn);
          else if (e.event === 'auth-failed') authFailures.inc({ channel: 'control' });
          else if (e.event === 'repaired') repairs.inc({ outcome: 'ok' });
          else if (e.event === 'repair-failed') repairs.inc({ outcome: 'failed' });
        }),
      );
    }

    if (s.smbSessions) {
      const sessions = s.smbSessions;
      new Gauge({
        name: 'twinfs_smb_sessions',
        help: 'SMB sessions connected to the share',
        registers: [r],
        async collect() {
          const n = await sessions().catch(() => null);
          if (n !== null) this.set(n);
        },
      });
    }
  }

  /** A connection closed: the backups it reported on are no longer in progress. */
  private forgetOwner: (conn: string) => void = () => undefined;

  /** Counts a wrong token presented to the status page. */
  httpAuthFailure: () => void = () => undefined;

  /** The exposition (text format 0.0.4). */
  async expose(): Promise<{ contentType: string; body: string }> {
    for (const clear of this.scrapeCache) clear();
    try {
      return { contentType: this.registry.contentType, body: await this.registry.metrics() };
    } finally {
      for (const clear of this.scrapeCache) clear();
    }
  }

  dispose(): void {
    for (const d of this.subs) d.dispose();
    this.registry.clear();
  }
}
