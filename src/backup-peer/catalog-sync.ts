import * as os from 'node:os';
import { TwinError } from '../common/errors.js';
import { RepositoryTarget } from '../repository/index.js';
import { Catalog, type EntryRecord, type SnapshotRecord } from './catalog.js';
import type { BackupTarget, ManifestEntry, SnapshotMeta, SnapshotTotals } from './target.js';
import type { TargetRegistry } from './targets/index.js';

/**
 * The target is the source of truth, the catalog a cache of it (docs/repository.md). These
 * functions read snapshots from the target and bring the catalog in line: rows for snapshots it
 * lacks (no entries: those stay in the manifests at the target), and rows of snapshots the
 * target no longer holds removed.
 */

/** Every committed snapshot at the target with its meta and totals, oldest first. */
export async function targetSnapshots(
  target: BackupTarget,
): Promise<Array<{ meta: SnapshotMeta; totals: SnapshotTotals }>> {
  if (target instanceof RepositoryTarget) return target.ready ? target.repo.listSnapshots() : [];
  // Any other target: the manifest's head (whole manifests for targets that store them whole).
  const out: Array<{ meta: SnapshotMeta; totals: SnapshotTotals }> = [];
  for (const s of await target.listSnapshots()) {
    const m = await target.readManifest(s.snapshotId);
    out.push({ meta: m.meta, totals: m.totals });
  }
  return out;
}

export function recordOf(meta: SnapshotMeta, totals: SnapshotTotals, target: string): SnapshotRecord {
  const selector = (meta.selector ?? {}) as Record<string, unknown>;
  return {
    id: meta.snapshotId,
    time: meta.time,
    server: meta.server,
    deviceId: meta.deviceId,
    selector,
    paths: selector.volume
      ? ['/']
      : typeof selector.subtree === 'string'
        ? [selector.subtree]
        : ((selector.paths as string[] | undefined) ?? []),
    state: 'complete',
    totals,
    target,
    parentId: meta.parentId,
    generation: meta.generation,
    pid: 0,
    host: os.hostname(),
    ...(meta.tags?.length ? { tags: meta.tags } : {}),
  };
}

export interface SyncResult {
  /** The target's snapshots as catalog records, oldest first. */
  snapshots: SnapshotRecord[];
  added: number;
  removed: number;
}

/**
 * Brings the catalog in line with one target: `catalog rebuild`, and what every command given
 * --target does before it uses the catalog.
 */
export async function syncCatalog(catalogDir: string | undefined, target: BackupTarget): Promise<SyncResult>;
/** Then `also` on the synced catalog, in the same opening (one load and lock of the catalog fewer). */
export async function syncCatalog<T>(
  catalogDir: string | undefined,
  target: BackupTarget,
  also: (c: Catalog) => Promise<T>,
): Promise<SyncResult & { also: T }>;
export async function syncCatalog<T>(
  catalogDir: string | undefined,
  target: BackupTarget,
  also?: (c: Catalog) => Promise<T>,
): Promise<SyncResult & { also?: T }> {
  const found = (await targetSnapshots(target)).map((s) => recordOf(s.meta, s.totals, target.spec));
  const ids = new Set(found.map((s) => s.id));
  return Catalog.with(catalogDir, async (c) => {
    const added = await c.adopt(found);
    let removed = 0;
    for (const s of await c.list({ target: target.spec, state: 'complete' }))
      if (!ids.has(s.id)) {
        await c.remove(s.id);
        removed++;
      }
    return { snapshots: found, added, removed, ...(also ? { also: await also(c) } : {}) };
  });
}

/**
 * What syncCatalog does before `also` (a backup's choice of its parent, backup-run.ts), without
 * reading every snapshot object at a repository target: the target's listing says which
 * snapshots exist, and an object is read only when no complete row of this target in the catalog
 * is named by it (a snapshot another catalog's peer wrote, or a lost catalog's). The rows are
 * brought in line as syncCatalog brings them: rows whose object is gone are removed, snapshots
 * the catalog lacks adopted. A row is taken for its object by name: a snapshot object is written
 * once under its id's name (Repository.writeSnapshot) and never rewritten, and its row was made
 * from the same meta and totals (by the run that wrote it, or by a sync that read it). The
 * listing is O(snapshots) in names; reading and parsing every object was O(snapshots) in
 * objects, each a read, a zstd decompression and a JSON parse (docs/benchmarks.md, "Snapshot
 * objects read by name").
 *
 * `skip` runs first in each session and names snapshots whose objects are not to be adopted
 * whatever the listing says: a backup's abandoned runs, failed in that session and deleted at the
 * target after it (the listing, taken before, may still name their objects).
 */
export async function syncCatalogByName<T>(
  catalogDir: string | undefined,
  target: RepositoryTarget,
  also: (c: Catalog) => Promise<T>,
  opts: { skip?: (c: Catalog) => Promise<string[]> } = {},
): Promise<T> {
  const repo = target.ready ? target.repo : undefined;
  const names = new Set(repo ? await repo.snapshotObjectNames() : []);
  const adopted: SnapshotRecord[] = [];
  const adoptedNames = new Set<string>();
  /** Names never adopted: objects of the snapshots `skip` named (being deleted since the listing). */
  const skipped = new Set<string>();
  for (;;) {
    // One session when every name is known (the usual case); else the unknown objects are read
    // outside the catalog's lock (a fresh catalog of a large repository reads them all) and the
    // session runs again.
    const r = await Catalog.with(catalogDir, async (c): Promise<{ unknown: string[] } | { also: T }> => {
      for (const id of (await opts.skip?.(c)) ?? []) if (repo) skipped.add(repo.snapshotObjectName(id));
      // Ids only: the catalog's head answers without loading snapshots.db (catalog-head.ts).
      const rows = await c.completeIds(target.spec);
      const nameOf = (id: string) => repo!.snapshotObjectName(id);
      const known = new Set(repo ? rows.map(nameOf) : []);
      const unknown = [...names].filter((n) => !known.has(n) && !adoptedNames.has(n) && !skipped.has(n));
      if (unknown.length > 0) return { unknown };
      await c.adopt(adopted);
      for (const id of rows) if (!repo || !names.has(nameOf(id))) await c.remove(id);
      return { also: await also(c) };
    });
    if ('also' in r) return r.also;
    const asked = new Set(r.unknown);
    for (const s of await repo!.readSnapshotObjects(r.unknown)) {
      const name = repo!.snapshotObjectName(s.meta.snapshotId);
      // Stored under a name that is not its id's: not taken for a snapshot of the target.
      if (!asked.has(name)) continue;
      adopted.push(recordOf(s.meta, s.totals, target.spec));
      adoptedNames.add(name);
    }
    // Gone since the listing, or not a snapshot of its name: no row.
    for (const n of r.unknown) if (!adoptedNames.has(n)) names.delete(n);
  }
}

/** What a user typed (full id, unique prefix, 'latest') among a list, oldest first. */
export function pickSnapshot(list: SnapshotRecord[], ref: string, where: string): SnapshotRecord {
  if (ref === 'latest') {
    const c = list.filter((s) => s.state === 'complete').pop();
    if (!c) throw new TwinError('ETWIN_UNKNOWN_SNAPSHOT', `${where} holds no complete snapshot`, { ref });
    return c;
  }
  const exact = list.find((s) => s.id === ref);
  if (exact) return exact;
  const hits = list.filter((s) => s.id.startsWith(ref));
  if (hits.length === 1) return hits[0]!;
  throw new TwinError(
    'ETWIN_UNKNOWN_SNAPSHOT',
    hits.length > 1
      ? `snapshot "${ref}" is ambiguous (${hits.length} match)`
      : `no snapshot "${ref}" in ${where}`,
    { ref },
  );
}

/**
 * A complete snapshot and its entries. With `target`, straight from the target (the catalog
 * is brought in line on the way); without, the catalog names the snapshot and its target, and
 * the entries come from the catalog's cache or, for rebuilt rows, from the target's manifest.
 */
export async function loadSnapshot(o: {
  ref: string;
  catalogDir?: string;
  target?: string;
  registry?: TargetRegistry;
}): Promise<{ snapshot: SnapshotRecord; entries: EntryRecord[] }> {
  if (o.target) {
    if (!o.registry) throw new TwinError('ETWIN_INTERNAL', 'loadSnapshot: a target needs a registry');
    const t = await o.registry.open(o.target, { create: false });
    try {
      const { snapshots } = await syncCatalog(o.catalogDir, t);
      const snapshot = pickSnapshot(snapshots, o.ref, t.spec);
      return { snapshot, entries: withId(snapshot.id, (await t.readManifest(snapshot.id)).entries) };
    } finally {
      await t.close();
    }
  }
  const { snapshot, cached } = await Catalog.with(o.catalogDir, async (c) => {
    const snapshot = await c.resolve(o.ref);
    if (snapshot.state !== 'complete')
      throw new TwinError(
        'ETWIN_SNAPSHOT_INCOMPLETE',
        `snapshot ${snapshot.id} is ${c.isAbandoned(snapshot) ? 'abandoned' : snapshot.state}, not complete`,
        { snapshotId: snapshot.id, state: snapshot.state },
      );
    return { snapshot, cached: (await c.hasEntries(snapshot.id)) ? await c.entries(snapshot.id) : undefined };
  });
  if (cached || !o.registry) return { snapshot, entries: cached ?? [] };
  const t = await o.registry.open(snapshot.target, { create: false });
  try {
    return { snapshot, entries: withId(snapshot.id, (await t.readManifest(snapshot.id)).entries) };
  } finally {
    await t.close();
  }
}

function withId(id: string, entries: ManifestEntry[]): EntryRecord[] {
  return entries
    .map((e) => ({ ...e, snapshotId: id }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
