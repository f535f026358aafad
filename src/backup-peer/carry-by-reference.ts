import type { BigIntStats } from 'node:fs';
import { errnoCode } from '../common/errors.js';
import type { ChangesMsg, SelectorMsg } from '../control/protocol.js';
import type { EntryRecord, SnapshotRecord } from './catalog.js';
import { changedPaths, rangesOf } from './change-plan.js';
import type { EntryCopier } from './entry-copier.js';
import type { MirrorReader, SourceEntry } from './mirror-source.js';
import { forEachLimit } from './safe-tree.js';
import { isNodeEntry, type ManifestEntry, type SnapshotTotals } from './target.js';

/**
 * An incremental built by reference (issue 13): the target keeps the parent's entries
 * (SnapshotWriter.carryFrom) and the catalog records a delta on them, so the run costs what
 * changed, not what the volume holds: only the paths the server's change answer names are
 * looked at in the mirror, and of the parent's entries only those paths are read
 * (Catalog.entriesAt). Where that cannot be vouched for exactly, the run goes the way of
 * change-plan.ts (every parent entry passed to the target) instead.
 */
export interface ReferencePlan {
  /** Paths to look at in the mirror (sorted), with their split copy's lstat (undefined: gone). */
  dirty: string[];
  stats: Map<string, BigIntStats | undefined>;
  /** Subtrees the answer cannot itemise (renames), and what a walk of each found in the mirror. */
  walk: string[];
  walked: SourceEntry[];
  /** Changed files whose data changed only in these ranges (change-ranges.ts). */
  ranges: Map<string, Array<[number, number]>>;
}

/**
 * Whether an incremental on this parent may go by reference before the server's answer is
 * known: its entries are in this catalog (rows rebuilt from a target hold none), and no source
 * check wants every entry.
 */
export function mayReference(
  parent: SnapshotRecord | undefined,
  hasEntries: boolean,
  checkSource: boolean,
): boolean {
  return !!parent && hasEntries && !checkSource;
}

/**
 * The plan, from the change answer, the stored copies checks flagged (storedCopyKey: looked at
 * again), the parent's hard-linked names (every name of such a file is looked at, as
 * change-plan.ts does), the split copy's lstat of every named path and a walk of every
 * subtree the answer cannot itemise. Undefined when it vouches for nothing, or a file looked at
 * has a name that is not.
 */
export async function referencePlan(
  selector: SelectorMsg,
  parentSelector: unknown,
  changes: ChangesMsg | undefined,
  also: { damaged: ReadonlySet<string>; linked: () => Promise<Set<string>> },
  reader: MirrorReader,
  concurrency: number,
): Promise<ReferencePlan | undefined> {
  const c = changedPaths(selector, parentSelector, changes);
  if (!c) return undefined;
  const underWalk = (p: string) => c.walk.some((w) => p === w || p.startsWith(`${w}/`));
  for (const k of also.damaged) {
    const p = k.slice(k.indexOf('\0') + 1);
    if (c.inside(p)) c.dirty.add(p);
  }
  for (const p of await also.linked()) if (c.inside(p)) c.dirty.add(p);
  const dirty = [...c.dirty].filter((p) => !underWalk(p)).sort();
  const walked: SourceEntry[] = [];
  for (const w of c.walk) for await (const s of reader.walk({ subtree: w })) walked.push(s);
  const stats = new Map<string, BigIntStats | undefined>();
  await forEachLimit(dirty, concurrency, async (p) => {
    stats.set(
      p,
      await reader.lstatNs(p).catch((err) => {
        if (errnoCode(err) === 'ENOENT') return undefined;
        throw err;
      }),
    );
  });
  // The copier links the names of one inode it meets: all of them must be among these.
  const names = new Map<string, bigint>();
  const key = (st: BigIntStats) => `${st.dev}:${st.ino}`;
  const looked = [...stats.values(), ...walked.map((s) => s.stat)];
  for (const st of looked)
    if (st?.isFile() && st.nlink > 1n) names.set(key(st), (names.get(key(st)) ?? 0n) + 1n);
  for (const st of looked)
    if (st?.isFile() && st.nlink > 1n && names.get(key(st))! < st.nlink) return undefined;
  return { dirty, stats, walk: c.walk, walked, ranges: rangesOf(changes!, c.dirty) };
}

/** Entries and bytes the parent held at the named paths, and what the split copy holds there now. */
export function referenceTotals(
  parent: SnapshotTotals,
  plan: ReferencePlan,
  prev: ReadonlyMap<string, EntryRecord>,
): { entries: number; bytes: number; carriedEntries: number; carriedBytes: number } {
  const all = parent.files + parent.dirs + parent.symlinks + (parent.nodes ?? 0);
  let prevBytes = 0;
  // Bytes count once per file, not per name (a hard link's other names add none).
  for (const e of prev.values()) if (e.type === 'file' && !e.linkTo) prevBytes += e.size;
  let entries = 0;
  let bytes = 0;
  const inodes = new Set<string>();
  for (const st of [...plan.stats.values(), ...plan.walked.map((s) => s.stat)]) {
    if (!st) continue;
    entries++;
    if (!st.isFile() || inodes.has(`${st.dev}:${st.ino}`)) continue;
    inodes.add(`${st.dev}:${st.ino}`);
    bytes += Number(st.size);
  }
  const carriedEntries = all - prev.size;
  const carriedBytes = parent.bytes - prevBytes;
  return { entries: carriedEntries + entries, bytes: carriedBytes + bytes, carriedEntries, carriedBytes };
}

/**
 * Copies the named paths and the walked subtrees from the split copy: their new entries, and
 * the parent's paths among them (`prev`: at the named paths and below the walked ones) that are
 * gone from it (or are now of a kind not recorded).
 */
export async function copyNamed(
  plan: ReferencePlan,
  prev: ReadonlyMap<string, EntryRecord>,
  copier: EntryCopier,
  concurrency: number,
  onDone: (p: string) => void,
): Promise<{ entries: ManifestEntry[]; gone: string[] }> {
  const entries: ManifestEntry[] = [];
  const gone: string[] = [];
  const sources: SourceEntry[] = [...plan.walked];
  for (const p of plan.dirty) {
    const stat = plan.stats.get(p);
    if (stat) sources.push({ path: p, mirrorPath: p, stat });
  }
  await forEachLimit(sources, concurrency, async (s) => {
    const e = await copier.copy(s);
    if (e) entries.push(e);
    onDone(s.path);
  });
  const now = new Set(entries.map((e) => e.path));
  for (const p of prev.keys()) if (!now.has(p)) gone.push(p);
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { entries, gone: gone.sort() };
}

/**
 * The snapshot's totals: the parent's less what it held at the named paths, plus what the copy
 * of those paths counted (copied and reused bytes are this run's; every carried file counts as
 * reused).
 */
export function carriedTotals(
  parent: SnapshotTotals,
  prev: ReadonlyMap<string, EntryRecord>,
  looked: SnapshotTotals,
): SnapshotTotals {
  const t: SnapshotTotals = {
    ...looked,
    files: parent.files + looked.files,
    dirs: parent.dirs + looked.dirs,
    symlinks: parent.symlinks + looked.symlinks,
    bytes: parent.bytes + looked.bytes,
  };
  let carriedFiles = parent.files;
  const nodes = (parent.nodes ?? 0) + (looked.nodes ?? 0);
  let lostNodes = 0;
  let links = (parent.hardLinks ?? 0) + (looked.hardLinks ?? 0);
  for (const e of prev.values()) {
    if (e.type === 'file') {
      t.files--;
      if (!e.linkTo) t.bytes -= e.size;
      carriedFiles--;
      if (e.linkTo) links--;
    } else if (e.type === 'dir') t.dirs--;
    else if (e.type === 'symlink') t.symlinks--;
    else if (isNodeEntry(e)) lostNodes++;
  }
  if (nodes - lostNodes > 0) t.nodes = nodes - lostNodes;
  if (links > 0) t.hardLinks = links;
  else delete t.hardLinks;
  t.reusedFiles = looked.reusedFiles + carriedFiles;
  return t;
}
