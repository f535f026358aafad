import { RepositoryTarget } from '../repository/index.js';
import { Catalog, type DamageRecord } from './catalog.js';
import { loadCompleteSnapshot } from './restore.js';
import { Digest, isNodeEntry, isTargetNotFound } from './target.js';
import type { TargetRegistry } from './targets/index.js';

export interface CheckProblem {
  path: string;
  kind: 'missing' | 'type' | 'size' | 'hash' | 'stamp' | 'manifest' | 'unreadable' | 'emptied';
  message: string;
  /** A coded problem (ETWIN_…), where the kind alone does not say what to do. */
  code?: string;
}

export interface CheckResult {
  snapshotId: string;
  checked: number;
  bytes: number;
  problems: CheckProblem[];
  ok: boolean;
  /** Stored copies recorded as damaged in the catalog: no later snapshot shares them. */
  flagged: number;
}

/** Problems that say a stored file's data is not what was stored. */
const DATA_PROBLEMS = new Set<CheckProblem['kind']>(['missing', 'size', 'hash', 'stamp', 'type']);

/** How far up its parents a snapshot without entries looks for one that had some. */
const EMPTIED_MAX_ANCESTORS = 64;

/** Entries that are not directories: what a volume's content is made of. */
function contentEntries(entries: readonly { type: string }[]): number {
  let n = 0;
  for (const e of entries) if (e.type !== 'dir') n++;
  return n;
}

/**
 * A snapshot with no files, symlinks or nodes whose parent (or the nearest parent up a chain of
 * such snapshots) had some: the shape a backup before 8227586 left when the catalog row of its
 * parent held no entries (a lost catalog's rows adopted from the target, another peer's
 * snapshot): it planned from the server's change answer over an empty parent and committed a
 * consistent, empty manifest, and every snapshot carried by reference after it was empty too
 * (finding 41, docs/reliability.md). A volume really emptied between two backups looks the same
 * to a check that cannot ask the server, so the problem says both; undefined when the snapshot
 * has content or no ancestor had any.
 */
async function emptiedProblem(
  o: { catalogDir?: string; target?: string; registry: TargetRegistry },
  snapshot: { id: string; parentId?: string },
  entries: readonly { type: string }[],
): Promise<CheckProblem | undefined> {
  if (contentEntries(entries) > 0) return undefined;
  const seen = new Set([snapshot.id]);
  let parentId = snapshot.parentId;
  for (let depth = 0; parentId && !seen.has(parentId) && depth < EMPTIED_MAX_ANCESTORS; depth++) {
    seen.add(parentId);
    let parent: Awaited<ReturnType<typeof loadCompleteSnapshot>>;
    try {
      parent = await loadCompleteSnapshot(o.catalogDir, parentId, o.registry, o.target);
    } catch {
      return undefined; // forgotten, or not complete: nothing to compare with
    }
    const n = contentEntries(parent.entries);
    if (n > 0)
      return {
        path: '/',
        kind: 'emptied',
        code: 'ETWIN_SNAPSHOT_EMPTIED',
        message:
          `no files, while ${parentId === snapshot.parentId ? 'its parent' : 'its ancestor'} ${parentId} has ${n} ` +
          `entries other than directories${parentId === snapshot.parentId ? '' : ` (every snapshot between them is empty too)`}: ` +
          'a backup before 8227586 recorded such an empty snapshot on a parent whose catalog row had no entries; ' +
          'unless the volume was emptied, run backup --full (a run built on this snapshot carries nothing)',
      };
    parentId = parent.snapshot.parentId;
  }
  return undefined;
}

/**
 * Re-reads a snapshot's data at its target and compares it with the catalog: every file's
 * length and sha256, every entry's type, and the target's own manifest (same entries, same
 * hashes). metadataOnly: no data is read, only each entry's type and size and, where the target
 * stamps its copies, the stamp (a stored file rewritten in place shows there): cheap, but blind
 * to bit rot that leaves size and mtime alone. Read-only at the target; what it finds wrong with
 * stored files is recorded in the catalog (Catalog.flagDamaged), so the next backup stores those
 * files again instead of sharing them.
 */
export async function checkSnapshot(o: {
  snapshot: string;
  catalogDir?: string;
  /** Read the snapshot from this target (TYPE:LOCATION) instead of looking it up in the catalog. */
  target?: string;
  registry: TargetRegistry;
  metadataOnly?: boolean;
  onProgress?: (p: { files: number; filesTotal: number; bytes: number; path: string }) => void;
}): Promise<CheckResult> {
  const { snapshot, entries } = await loadCompleteSnapshot(o.catalogDir, o.snapshot, o.registry, o.target);
  const target = await o.registry.open(snapshot.target, { create: false });
  const problems: CheckProblem[] = [];
  /** Copies of blobs a verified read refused (repository targets). */
  const badCopies: Array<[string, string]> = [];
  let bytes = 0;
  let done = 0;
  try {
    try {
      const manifest = await target.readManifest(snapshot.id);
      const theirs = new Map(manifest.entries.map((e) => [e.path, e]));
      for (const e of entries) {
        const t = theirs.get(e.path);
        if (!t || t.type !== e.type || t.hash !== e.hash)
          problems.push({
            path: e.path,
            kind: 'manifest',
            message: `the target's manifest ${t ? 'differs' : 'lacks it'}`,
          });
      }
      if (manifest.entries.length !== entries.length)
        problems.push({
          path: '/',
          kind: 'manifest',
          message: `manifest has ${manifest.entries.length} entries, catalog ${entries.length}`,
        });
    } catch (err) {
      problems.push({
        path: '/',
        kind: isTargetNotFound(err) ? 'missing' : 'unreadable',
        message: `manifest: ${(err as Error).message}`,
      });
    }
    const emptied = await emptiedProblem(o, snapshot, entries);
    if (emptied) problems.push(emptied);
    for (const e of entries) {
      try {
        // Fifos, devices and sockets live in the manifest alone (compared above).
        if (isNodeEntry(e)) {
          o.onProgress?.({ files: ++done, filesTotal: entries.length, bytes, path: e.path });
          continue;
        }
        const st = await target.stat(snapshot.id, e.path);
        if (st.type !== e.type) {
          problems.push({
            path: e.path,
            kind: 'type',
            message: `catalog says ${e.type}, target holds ${st.type}`,
          });
        } else if (e.type === 'file' && o.metadataOnly) {
          if (st.size !== e.size)
            problems.push({
              path: e.path,
              kind: 'size',
              message: `${st.size} bytes, catalog says ${e.size}`,
            });
          else if (st.stamp !== undefined && e.stored !== undefined && st.stamp !== e.stored)
            problems.push({
              path: e.path,
              kind: 'stamp',
              message: `changed at the target since it was stored (stamp ${st.stamp}, stored ${e.stored})`,
            });
        } else if (e.type === 'file') {
          const digest = new Digest();
          for await (const chunk of await target.openFile(snapshot.id, e.path))
            digest.update(chunk as Buffer);
          const got = digest.result();
          bytes += got.bytes;
          if (got.bytes !== e.size)
            problems.push({
              path: e.path,
              kind: 'size',
              message: `${got.bytes} bytes, catalog says ${e.size}`,
            });
          else if (got.hash !== e.hash)
            problems.push({
              path: e.path,
              kind: 'hash',
              message: `sha256 ${got.hash}, catalog says ${e.hash}`,
            });
        }
      } catch (err) {
        // A repository's verified read failing is the content not being what was stored.
        const code = (err as { code?: string })?.code;
        const bad = (err as { data?: { blob?: string; pack?: string } })?.data;
        if (code === 'ETWIN_REPO_CORRUPT' && bad?.blob && bad.pack) badCopies.push([bad.blob, bad.pack]);
        problems.push({
          path: e.path,
          kind: isTargetNotFound(err) ? 'missing' : code === 'ETWIN_REPO_CORRUPT' ? 'hash' : 'unreadable',
          message: (err as Error).message,
        });
      }
      o.onProgress?.({ files: ++done, filesTotal: entries.length, bytes, path: e.path });
    }
    // Flagged at the target too: no later backup names those copies (it stores the chunk again).
    if (badCopies.length && target instanceof RepositoryTarget)
      await target.repo.writeIndex({ damaged: badCopies });
  } finally {
    await target.close();
  }
  const byPath = new Map(entries.map((e) => [e.path, e]));
  const found: DamageRecord[] = [];
  for (const p of problems) {
    const e = byPath.get(p.path);
    if (e?.type !== 'file' || !DATA_PROBLEMS.has(p.kind)) continue;
    const { kind, message } = p;
    found.push({
      storedIn: e.storedIn ?? snapshot.id,
      path: e.path,
      foundBy: snapshot.id,
      at: Date.now(),
      kind,
      message,
    });
  }
  await Catalog.with(o.catalogDir, (c) => c.flagDamaged(found));
  return {
    snapshotId: snapshot.id,
    checked: entries.length,
    bytes,
    problems,
    ok: problems.length === 0,
    flagged: found.length,
  };
}
