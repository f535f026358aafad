import { TwinError } from '../common/errors.js';
import { Catalog, type SnapshotRecord } from './catalog.js';
import { syncCatalog } from './catalog-sync.js';
import type { BackupTarget } from './target.js';
import type { TargetRegistry } from './targets/index.js';

export interface KeepPolicy {
  /** Keep the newest N complete snapshots of each group. */
  keepLast?: number;
  /** Keep the newest snapshot of each of the last N hours / days / ISO weeks / months / years (local time) that have one. */
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  /** Keep every snapshot newer than this many ms before the newest of its group (restic's --keep-within). */
  keepWithinMs?: number;
  /** Keep every snapshot carrying one of these tags. */
  keepTags?: string[];
}

/** A duration as restic writes it: 1y2m3d4h (years, months, days, hours), or 2w. */
export function parseDuration(text: string): number {
  const m = /^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$/.exec(text.trim());
  if (!m || text.trim() === '')
    throw new TwinError('ETWIN_USAGE', `"${text}" is not a duration like 7d, 2w, 1m, 1y2m or 12h`, { text });
  const [y, mo, w, d, h] = m.slice(1).map((x) => Number(x ?? 0)) as [number, number, number, number, number];
  const H = 3600_000;
  return y * 365 * 24 * H + mo * 30 * 24 * H + w * 7 * 24 * H + d * 24 * H + h * H;
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
  const any =
    policy.keepLast ||
    policy.keepHourly ||
    policy.keepDaily ||
    policy.keepWeekly ||
    policy.keepMonthly ||
    policy.keepYearly ||
    policy.keepWithinMs ||
    policy.keepTags?.length;
  if (!any)
    throw new TwinError(
      'ETWIN_USAGE',
      'name a keep policy: --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly N (N ≥ 1), --keep-within DURATION or --keep-tag TAG',
    );
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
    // One per bucket (hour, day, week...), newest first, for the newest N buckets that have one.
    const buckets: Array<[number | undefined, (ms: number) => string]> = [
      [policy.keepHourly, (t) => `${localDay(t)} ${new Date(t).getHours()}`],
      [policy.keepDaily, localDay],
      [policy.keepWeekly, isoWeek],
      [policy.keepMonthly, (t) => `${new Date(t).getFullYear()}-${new Date(t).getMonth() + 1}`],
      [policy.keepYearly, (t) => `${new Date(t).getFullYear()}`],
    ];
    for (const [n, bucketOf] of buckets) {
      if (!n) continue;
      const seen = new Set<string>();
      for (const s of newestFirst) {
        if (seen.size >= n) break;
        const b = bucketOf(s.time);
        if (seen.has(b)) continue;
        seen.add(b);
        kept.add(s.id);
      }
    }
    const newest = newestFirst[0]?.time ?? 0;
    for (const s of newestFirst) {
      if (policy.keepWithinMs && newest - s.time <= policy.keepWithinMs) kept.add(s.id);
      if (policy.keepTags?.some((t) => s.tags?.includes(t))) kept.add(s.id);
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
  /** Plan from this target's snapshots (the source of truth) instead of the catalog's. */
  target?: string;
}): Promise<ForgetResult> {
  if (o.target) return forgetAtTarget({ ...o, target: o.target });
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

/**
 * forget with --target: the plan is made from the snapshots the target holds; each removed
 * snapshot is deleted at the target first (it is gone once its snapshot object is), then its
 * catalog row. The data only it used stays until prune.
 */
async function forgetAtTarget(o: {
  catalogDir?: string;
  policy: KeepPolicy;
  registry: TargetRegistry;
  dryRun?: boolean;
  target: string;
}): Promise<ForgetResult> {
  const t = await o.registry.open(o.target, { create: false });
  try {
    const { snapshots } = await syncCatalog(o.catalogDir, t);
    const plan = planForget(snapshots, o.policy, () => false);
    const result: ForgetResult = { ...plan, orphaned: [] };
    if (o.dryRun) return result;
    for (const s of plan.remove) await t.deleteSnapshot(s.id);
    await Catalog.with(o.catalogDir, async (c) => {
      for (const s of plan.remove) await c.remove(s.id);
    });
    return result;
  } finally {
    await t.close();
  }
}

/** ISO 8601 week (year-Www), local time. */
function isoWeek(ms: number): string {
  const d = new Date(ms);
  const day = (d.getDay() + 6) % 7; // Monday 0
  const thursday = new Date(d.getFullYear(), d.getMonth(), d.getDate() - day + 3);
  const firstThursday = new Date(thursday.getFullYear(), 0, 4);
  const week =
    1 +
    Math.round(
      (thursday.getTime() - firstThursday.getTime()) / (7 * 86_400_000) -
        (((firstThursday.getDay() + 6) % 7) - 3) / 7,
    );
  return `${thursday.getFullYear()}-W${week}`;
}

function localDay(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}
