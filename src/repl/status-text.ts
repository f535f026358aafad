import { formatBytes } from '../common/progress.js';
import type { StatusResult } from '../control/protocol.js';

/** A snapshot as `status` shows it (from the local catalog). */
export interface SnapshotSummary {
  id: string;
  time: number;
  state: string;
  files: number;
  bytes: number;
  target: string;
  paths: string[];
}

/** The last backups of a volume in a catalog; note says why there are none to show (busy, missing). */
export interface RecentSnapshots {
  catalog: string;
  snapshots: SnapshotSummary[];
  note?: string;
}

/** The value below which a fraction q of the sorted samples lie (nearest rank). */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

const ms = (v: number) => `${v.toFixed(1)} ms`;
const sel = (s: { volume?: boolean; paths?: string[]; subtree?: string; subtrees?: string[] }) =>
  s.volume
    ? '/'
    : [...(s.paths ?? []), ...[s.subtree, ...(s.subtrees ?? [])].filter(Boolean).map((t) => `${t}/**`)].join(
        ' ',
      );

/**
 * The server's status (the control channel's `status` result) in lines for people: the volume,
 * the cache, pair states, stalls, leases and freezes, and the last backups from the catalog.
 *
 * Stall percentiles need the durations of recent prepares: the server reports them as
 * `backup.stall.recentMs` when it keeps them; otherwise the count, the longest and the last.
 */
export function describeStatus(s: StatusResult, recent: RecentSnapshots | null, now = Date.now()): string[] {
  const out: string[] = [];
  const c = s.fs.cache;
  out.push(`volume   ${s.fs.primary} at ${s.fs.mount}${s.fs.writeThrough ? ' (write-through)' : ''}`);
  out.push(
    `cache    ${formatBytes(c.dirtyBytes)} dirty of ${formatBytes(c.limitBytes)} in ${c.dirtyFiles} file(s); ${c.openFiles} open; ${c.writeErrors} write-back error(s)`,
  );
  if (s.mirror) {
    out.push(
      `mirror   ${s.mirror.state} device ${s.mirror.deviceId} at ${s.mirror.mirrorRoot}; queue ${s.mirror.queueLength}`,
    );
    for (const sp of s.mirror.splits)
      out.push(
        `  split  ${sp.splitId} ${sel(sp.selector)}: ${formatBytes(sp.trackedBytes)} in ${sp.trackedFiles} file(s) changed since`,
      );
    for (const b of s.mirror.broken)
      out.push(
        `  BROKEN ${b}${s.mirror.brokenReasons?.[b] ? `: ${s.mirror.brokenReasons[b]}` : ''} (twinfs mirror repair)`,
      );
  } else out.push('mirror   none');
  const st = s.backup.stall;
  const recentMs: number[] = Array.isArray(st.recentMs) ? [...st.recentMs].sort((a, b) => a - b) : [];
  const pct = recentMs.length
    ? `; last ${recentMs.length}: p50 ${ms(percentile(recentMs, 0.5))}, p90 ${ms(percentile(recentMs, 0.9))}, p99 ${ms(percentile(recentMs, 0.99))}`
    : '';
  out.push(
    `stall    ${st.prepares} prepare(s), ${st.failedPrepares} failed${pct}; max ${ms(st.maxStallMs)}; last ${st.lastStallMs === null ? '-' : ms(st.lastStallMs)} (budget ${s.backup.maxStallMs} ms)`,
  );
  if (st.inhibitor && st.inhibitor.held > 0)
    out.push(
      `         ${st.inhibitor.held} write(s) held by freezes or prepares, longest ${ms(st.inhibitor.maxStallMs)}`,
    );
  for (const b of s.backup.backups)
    out.push(
      `lease    ${b.backupId} ${sel(b.selector)} expires in ${Math.max(0, Math.round((b.expiresAt - now) / 1000))} s`,
    );
  for (const f of s.backup.freezes)
    out.push(`frozen   ${f.freezeId} ${sel(f.selector)} for ${Math.round((now - f.since) / 1000)} s`);
  if (s.smb) {
    const m = s.smb;
    const where = m.url ? ` at ${m.url}` : m.port ? ` on port ${m.port}` : '';
    const clients = Array.isArray(m.clients) ? `; ${m.clients.length} client(s)` : '';
    const restarts = m.restarts ? `; ${m.restarts} restart(s)` : '';
    const error = m.lastError ? `; last error ${m.lastError.code}: ${m.lastError.message}` : '';
    out.push(
      `smb      ${m.state ?? (m.running ? 'running' : 'stopped')}${where}${clients}${restarts}${error}`,
    );
  }
  if (recent) {
    if (recent.note) out.push(`backups  catalog ${recent.catalog}: ${recent.note}`);
    else if (recent.snapshots.length === 0) out.push(`backups  none of this volume in ${recent.catalog}`);
    for (const [i, b] of recent.snapshots.entries())
      out.push(
        `${i === 0 ? 'backups ' : '        '} ${b.id}  ${new Date(b.time).toISOString().replace('T', ' ').slice(0, 19)}  ${b.state.padEnd(8)}  ${b.files} files ${formatBytes(b.bytes)}  ${b.paths.join(',')}  ${b.target}`,
      );
  }
  return out;
}
