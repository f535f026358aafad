import { promises as fsp } from 'node:fs';
import { delay } from '../common/async.js';
import { Emitter } from '../common/event.js';
import { type BackupHooks, BackupRun } from './backup-run.js';
import { forget } from './forget.js';
import { type PeerConfig, readToken, selectorFor } from './peer-config.js';
import type { BackupTarget } from './target.js';
import type { TargetRegistry } from './targets/index.js';

export type PeerEvent =
  | { event: 'started'; server: string; target: string; intervalSec: number }
  | { event: 'backup-started'; run: number }
  | {
      event: 'backup-complete';
      run: number;
      snapshotId: string;
      files: number;
      bytes: number;
      copiedBytes: number;
      reusedFiles: number;
      ms: number;
    }
  | { event: 'backup-warning'; run: number; code: string; message: string }
  | { event: 'backup-failed'; run: number; code: string; message: string }
  | { event: 'forget'; removed: string[]; orphaned: string[] }
  | { event: 'stopped' };

/**
 * `twinfs peer`: runs a backup now and then every intervalSec (measured from the end of the
 * previous run: runs never overlap), applying the keep policy after each complete one. A failed
 * run is reported and retried at the next interval. Aborting `signal` (SIGTERM) stops the
 * current run cleanly (the target snapshot aborted, the split released, the catalog saying
 * failed) and ends run().
 */
export class PeerDaemon {
  private readonly _onDidReport = new Emitter<PeerEvent>();
  readonly onDidReport = this._onDidReport.event;
  /**
   * The target, open from one run to the next: a repository's index is read once, then only
   * what other processes added (each snapshot still checks its packs afresh). Reopened after
   * a failed run.
   */
  private target: BackupTarget | undefined;

  constructor(
    private readonly config: PeerConfig,
    private readonly registry: TargetRegistry,
    /** Plugin events and onWillFreeze hooks (the CLI passes its plugin host). */
    private readonly hooks?: BackupHooks,
  ) {}

  async run(signal: AbortSignal): Promise<void> {
    const c = this.config;
    const selector = selectorFor({ paths: c.paths, subtree: c.subtree });
    this._onDidReport.fire({
      event: 'started',
      server: c.server,
      target: c.target,
      intervalSec: c.intervalSec,
    });
    for (let n = 1; !signal.aborted; n++) {
      await this.once(n, selector, signal);
      if (signal.aborted) break;
      await delay(c.intervalSec * 1000, signal).catch(() => undefined);
    }
    await this.closeTarget();
    this._onDidReport.fire({ event: 'stopped' });
    this._onDidReport.dispose();
  }

  private async once(
    run: number,
    selector: ReturnType<typeof selectorFor>,
    signal: AbortSignal,
  ): Promise<void> {
    const c = this.config;
    const started = Date.now();
    this._onDidReport.fire({ event: 'backup-started', run });
    try {
      // Read every run: the token and the CA may be rotated while the daemon lives.
      const token = await readToken(c.tokenFile);
      const ca = c.caFile ? await fsp.readFile(c.caFile) : undefined;
      this.target ??= await this.registry.open(c.target);
      const target = this.target;
      const backup = new BackupRun({
        server: c.server,
        token,
        ca,
        target,
        catalogDir: c.catalog,
        selector,
        leaseMs: c.leaseSec ? c.leaseSec * 1000 : undefined,
        mirrorMap: c.mirrorMap,
        signal,
        hooks: this.hooks,
        freezeHookTimeoutMs: c.freezeHookTimeoutSec ? c.freezeHookTimeoutSec * 1000 : undefined,
        onHookFailure: c.onHookFailure,
      });
      backup.onDidWarn((w) =>
        this._onDidReport.fire({ event: 'backup-warning', run, code: w.code, message: w.message }),
      );
      const r = await backup.run();
      const t = r.snapshot.totals;
      this._onDidReport.fire({
        event: 'backup-complete',
        run,
        snapshotId: r.snapshot.id,
        files: t.files,
        bytes: t.bytes,
        copiedBytes: t.copiedBytes,
        reusedFiles: t.reusedFiles,
        ms: Date.now() - started,
      });
      if (c.keepLast || c.keepDaily) {
        const f = await forget({
          catalogDir: c.catalog,
          policy: { keepLast: c.keepLast, keepDaily: c.keepDaily },
          registry: this.registry,
        });
        if (f.remove.length > 0)
          this._onDidReport.fire({
            event: 'forget',
            removed: f.remove.map((s) => s.id),
            orphaned: f.orphaned.map((o) => o.id),
          });
      }
    } catch (err) {
      await this.closeTarget();
      const e = err as { code?: string; message?: string };
      this._onDidReport.fire({
        event: 'backup-failed',
        run,
        code: e?.code ?? 'ETWIN_INTERNAL',
        message: e?.message ?? String(err),
      });
    }
  }

  private async closeTarget(): Promise<void> {
    const t = this.target;
    this.target = undefined;
    await t?.close().catch(() => undefined);
  }
}
