import { TwinError } from '../common/errors.js';
import { DisposableStore } from '../common/lifecycle.js';
import { ControlClient } from '../control/client.js';
import type { SelectorMsg } from '../control/protocol.js';
import { locateMirror, MirrorReader } from './mirror-source.js';
import { loadCompleteSnapshot } from './restore.js';
import { vouchedBy } from './reuse-oracle.js';
import { checkAgainstSource, type SourceCheckResult } from './source-check.js';
import { type BackupControl, SplitLease } from './split-lease.js';
import type { TargetRegistry } from './targets/index.js';

export interface SnapshotSourceCheck extends SourceCheckResult {
  snapshotId: string;
  /** Entries not compared: changed since the snapshot's split (or directories, whose times move with their children). */
  skipped: number;
  /** Set when the server vouched for nothing: nothing was compared, and the check is not ok. */
  unknownSince?: { since: number; reason: string };
}

/**
 * `twinfs check SNAPSHOT --source`: compares an earlier snapshot with the mirror. The split copy
 * that snapshot came from is gone, so the server splits the same selection again and says,
 * from its change record, which files did not change since the snapshot's split: for exactly
 * those, today's split copy is the copy the snapshot was read from, and they are compared
 * (checkAgainstSource). Everything else is skipped and counted. A server that cannot vouch
 * ("unknown since G") makes the check fail rather than pass having compared nothing.
 */
export async function checkSnapshotAgainstSource(o: {
  snapshot: string;
  catalogDir?: string;
  /** Read the snapshot from this target (TYPE:LOCATION) instead of looking it up in the catalog. */
  target?: string;
  registry: TargetRegistry;
  server: string;
  token: string;
  ca?: string | Buffer;
  mirrorMap?: Record<string, string>;
  readData?: boolean;
  leaseMs?: number;
  connect?: (url: string, token: string) => Promise<BackupControl>;
}): Promise<SnapshotSourceCheck> {
  const { snapshot, entries } = await loadCompleteSnapshot(o.catalogDir, o.snapshot, o.registry, o.target);
  if (!snapshot.generation)
    throw new TwinError(
      'ETWIN_USAGE',
      `snapshot ${snapshot.id} records no change generation (taken by an older peer): it cannot be compared with the mirror`,
      { snapshotId: snapshot.id },
    );
  const leaseMs = o.leaseMs ?? 60_000;
  const store = new DisposableStore();
  const stop = new AbortController();
  const target = await o.registry.open(snapshot.target, { create: false });
  store.add({ dispose: () => target.close() });
  try {
    const control = await (
      o.connect ??
      ((url, token) => ControlClient.connect(url, { token, ca: o.ca, client: `twinfs-check/${process.pid}` }))
    )(o.server, o.token);
    store.add({ dispose: () => control.close() });
    const prep = await control.prepare(snapshot.selector as SelectorMsg, {
      leaseMs,
      listItems: false,
      since: snapshot.generation,
    });
    const lease = store.add(new SplitLease(control, prep.backupId, leaseMs, (err) => stop.abort(err)));
    if (prep.deviceId !== snapshot.deviceId)
      throw new TwinError(
        'ETWIN_DEVICE_MISMATCH',
        `snapshot ${snapshot.id} is of device ${snapshot.deviceId}, the server serves ${prep.deviceId}`,
        { expected: snapshot.deviceId, found: prep.deviceId },
      );
    const reader = new MirrorReader((await locateMirror(prep, o.mirrorMap)).data);
    const vouched = vouchedBy(prep.changes);
    const comparable = entries.filter((e) => e.type !== 'dir' && vouched(e.path));
    const r = await checkAgainstSource({
      target,
      snapshotId: snapshot.id,
      entries: comparable,
      reader,
      readData: o.readData,
      signal: stop.signal,
    });
    // Every comparison read a frozen copy only if the split held all along.
    await lease.confirm();
    const unknownSince = prep.changes?.unknown;
    return {
      ...r,
      ok: r.ok && !unknownSince,
      snapshotId: snapshot.id,
      skipped: entries.length - comparable.length,
      unknownSince,
    };
  } finally {
    await store.dispose().catch(() => undefined);
  }
}
