import { TwinError } from '../common/errors.js';
import { Catalog, type SnapshotRecord } from './catalog.js';
import type { BackupTarget } from './target.js';
import type { TargetRegistry } from './targets/index.js';

export interface KeepPolicy {
  /** Keep the newest N complete snapshots of each group. */
  keepLast?: number;
  /** Keep the newest complete snapshot of each of the last N days (local time) that have one. */
  keepDaily?: number;
}

export interface ForgetPlan {
  keep: SnapshotRecord[];
  remove: Array<SnapshotRecord & { reason: string }>;
}

export interface ForgetResult extends ForgetPlan {
  /** Snapshots gone from the catalog whose target data could not be deleted (orphans to clean by hand). */
  orphaned: Array<{ id: string; target: string; message: string }>;
}

/**
 * Which snapshots a policy keeps. Groups are (device, target, selection): a policy applies to
 * each group on its own, as restic's does per host and paths. Failed and abandoned snapshots
 * are always removed; a snapshot still running in a live process is never touched.
 */
export function planForget(
  all: SnapshotRecord[],
  policy: KeepPolicy,
  isAbandoned: (s: SnapshotRecord) => boolean,
): ForgetPlan {
  if (!policy.keepLast && !policy.keepDaily)
    throw new TwinError('ETWIN_USAGE', 'name a keep policy: --keep-last N and/or --keep-daily N (N ≥ 1)');
  const keep: SnapshotRecord[] = [];
  const remove: ForgetPlan['remove'] = [];
  const groups = new Map<string, SnapshotRecord[]>();
  for (const s of all) {
    if (s.state === 'failed') remove.push({ ...s, reason: 'failed' });
    else if (s.state === 'running') {
      if (isAbandoned(s)) remove.push({ ...s, reason: 'abandoned' });
      else keep.push(s);
    } else {
      const key = JSON.stringify([s.deviceId, s.target, s.paths]);
      groups.set(key, [...(groups.get(key) ?? []), s]);
    }
  }
  for (const g of groups.values()) {
    const newestFirst = [...g].sort((a, b) => b.time - a.time);
    const kept = new Set<string>();
    for (const s of newestFirst.slice(0, policy.keepLast ?? 0)) kept.add(s.id);
    const days = new Set<string>();
    for (const s of newestFirst) {
      if (days.size >= (policy.keepDaily ?? 0)) break;
      const day = localDay(s.time);
      if (days.has(day)) continue;
      days.add(day);
      kept.add(s.id);
    }
    for (const s of newestFirst) {
      if (kept.has(s.id)) keep.push(s);
      else remove.push({ ...s, reason: 'policy' });
    }
  }
  return { keep, remove };
}

/**
 * Applies a keep policy: each removed snapshot leaves the catalog first (durably), then its
 * data is deleted at the target. In that order a crash or a failing target leaves orphaned data
 * at worst, never a catalog entry pointing at deleted data (invariant 8). Data shared with kept
 * snapshots (hard links, content addressing) stays: a target only frees what nothing else uses.
 */
export async function forget(o: {
  catalogDir?: string;
  policy: KeepPolicy;
  registry: TargetRegistry;
  dryRun?: boolean;
}): Promise<ForgetResult> {
  // The catalog part under its lock (short), the target deletions after it (they take a while).
  const plan = await Catalog.with(o.catalogDir, async (c) => {
    const p = planForget(await c.list(), o.policy, (s) => c.isAbandoned(s));
    if (!o.dryRun) for (const s of p.remove) await c.remove(s.id);
    return p;
  });
  const result: ForgetResult = { ...plan, orphaned: [] };
  if (o.dryRun) return result;
  const targets = new Map<string, BackupTarget | Error>();
  try {
    for (const s of plan.remove) {
      let t = targets.get(s.target);
      if (!t) {
        t = await o.registry.open(s.target, { create: false }).catch((err: Error) => err);
        targets.set(s.target, t);
      }
      try {
        if (t instanceof Error) throw t;
        await t.deleteSnapshot(s.id);
      } catch (err) {
        result.orphaned.push({ id: s.id, target: s.target, message: (err as Error).message });
      }
    }
  } finally {
    for (const t of targets.values()) if (!(t instanceof Error)) await t.close().catch(() => undefined);
  }
  return result;
}

function localDay(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}
