import { selectorText } from '../commands/control.js';
import { formatBytes } from '../common/progress.js';

/** A server event (docs/protocol.md, "Events") in one line for people. */
export function describeEvent(event: string, data: unknown): string {
  const d = (data ?? {}) as Record<string, any>;
  const sel = (s: unknown) => (s && typeof s === 'object' ? selectorText(s as any) : '?');
  switch (event) {
    case 'frozen':
      return `${sel(d.selector)} frozen (${d.freezeId})`;
    case 'thawed':
      return `${d.freezeId} thawed after ${((d.heldMs ?? 0) / 1000).toFixed(1)} s (${d.reason})`;
    case 'split':
      return `${sel(d.selector)} split for ${d.backupId}, writes held ${Number(d.stallMs ?? 0).toFixed(1)} ms`;
    case 'prepare-failed':
      return `prepare of ${sel(d.selector)} failed: ${d.code}: ${d.message}`;
    case 'released':
      return `${d.backupId} released; resyncing`;
    case 'resynced':
      return `${d.backupId} resynced: ${formatBytes(Number(d.bytesCopied ?? 0))} copied${d.entries !== undefined ? `, ${d.entries} entries` : ''}`;
    case 'lease-expired':
      return `${d.backupId} lease expired (its peer went quiet); released by the server`;
    case 'broken':
      return `mirror pair ${d.path} BROKEN: ${d.error}`;
    case 'state': {
      const where =
        d.paths === 'volume' ? 'volume' : Array.isArray(d.paths) ? d.paths.join(' ') : String(d.paths);
      return `${where}: ${d.state}${d.splitId ? ` (${d.splitId})` : ''}`;
    }
    case 'backup-progress':
      return `backup ${d.backupId} to ${d.target}: ${formatBytes(Number(d.bytes ?? 0))}${d.bytesTotal ? ` of ${formatBytes(Number(d.bytesTotal))}` : ''}, ${d.files ?? 0} entries`;
    case 'backup-done':
      return d.outcome === 'ok'
        ? `backup ${d.snapshotId ?? d.backupId} to ${d.target} done: ${d.files ?? 0} entries, ${formatBytes(Number(d.copiedBytes ?? 0))} copied`
        : `backup ${d.snapshotId ?? d.backupId} to ${d.target} failed: ${d.error?.code}: ${d.error?.message}`;
    case 'progress':
      return `${d.phase ?? 'work'}: ${d.entries ?? d.files ?? 0} entries, ${formatBytes(Number(d.bytes ?? 0))}${d.done ? ', done' : ''}`;
    default:
      return JSON.stringify(d);
  }
}

/**
 * Whether the REPL shows an event above the prompt. Pair-state changes a split, release or
 * resync already announced are left out; the initial copy, breaks and repairs are shown.
 */
export function isNoteworthy(event: string, data: unknown): boolean {
  // Shown on the status line of the running command (a backup's, for its own peer).
  if (event === 'progress' || event === 'backup-progress') return false;
  if (event !== 'state') return true;
  const d = (data ?? {}) as Record<string, unknown>;
  return !d.splitId && d.state !== 'SPLIT' && d.state !== 'RESYNC';
}
