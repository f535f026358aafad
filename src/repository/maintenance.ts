import { randomInt } from 'node:crypto';
import { isTargetNotFound } from '../backup-peer/target.js';
import { BlobWriter } from './blob-writer.js';
import { type BlobLocation, openBlob, type PackInfo, packKey, packObjectName, readTrailer } from './pack.js';
import { forEach, type ManifestRef, type Repository, type SnapshotObject } from './repository.js';

export interface RepoProblem {
  kind: 'snapshot' | 'manifest' | 'blob' | 'pack' | 'data';
  /** The snapshot, pack or blob concerned. */
  what: string;
  message: string;
}

export interface RepoCheckResult {
  snapshots: number;
  packs: number;
  blobs: number;
  /** Packs read whole and every blob in them verified (--read-data / --read-data-subset). */
  packsRead: number;
  bytesRead: number;
  problems: RepoProblem[];
  /** Blob copies found bad and flagged at the target: no backup names them again. */
  flagged: number;
  ok: boolean;
}

/** Every blob a snapshot names: its manifest's tree blobs and every file's chunks. */
async function usedBy(repo: Repository, s: SnapshotObject, used: Set<string>): Promise<void> {
  for (let m: ManifestRef | undefined = s.manifest; m; m = m.base) for (const id of m.blobs) used.add(id);
  for (const e of await repo.readManifest(s)) for (const id of e.chunks ?? []) used.add(id);
}

/**
 * Checks a repository (restic's check): every snapshot object and manifest decrypts and
 * verifies, every blob they name is in the index, every indexed pack is at the store with its
 * size; with readData, the chosen packs (all, or a random fraction) are read whole and every blob
 * in them is authenticated and checked against its id. Bad copies are flagged at the target.
 */
export async function checkRepository(
  repo: Repository,
  o: {
    readData?: number;
    onProgress?: (p: { packs: number; packsTotal: number; bytes: number }) => void;
  } = {},
): Promise<RepoCheckResult> {
  const problems: RepoProblem[] = [];
  const lock = await repo.lock(true, 'check');
  try {
    await repo.refreshIndex();
    const snapshots = await repo.listSnapshots().catch((err) => {
      problems.push({ kind: 'snapshot', what: 'snapshots/', message: (err as Error).message });
      return [] as SnapshotObject[];
    });
    const used = new Set<string>();
    for (const s of snapshots) {
      try {
        await usedBy(repo, s, used);
      } catch (err) {
        problems.push({ kind: 'manifest', what: s.meta.snapshotId, message: (err as Error).message });
      }
    }
    for (const id of used)
      if (repo.copies(id).length === 0)
        problems.push({
          kind: 'blob',
          what: id,
          message: 'named by a snapshot, but no intact copy is indexed',
        });
    const stored = new Map((await repo.store.list('data/')).map((o) => [o.name, o.size]));
    const packs = [...repo.packs];
    for (const [pack, size] of packs) {
      const at = stored.get(packObjectName(pack));
      if (at === undefined)
        problems.push({ kind: 'pack', what: pack, message: 'indexed, but not at the store' });
      else if (at !== size)
        problems.push({ kind: 'pack', what: pack, message: `${at} bytes at the store, ${size} indexed` });
    }
    let packsRead = 0;
    let bytesRead = 0;
    const bad: Array<[string, string]> = [];
    if (o.readData !== undefined && o.readData > 0) {
      const present = packs.filter(([p]) => stored.has(packObjectName(p)));
      const n = Math.min(present.length, Math.ceil(present.length * Math.min(1, o.readData)));
      // A random subset: repeated subset checks cover the whole repository over time.
      for (let i = present.length - 1; i > 0; i--) {
        const j = randomInt(i + 1);
        [present[i], present[j]] = [present[j]!, present[i]!];
      }
      const chosen = present.slice(0, n);
      const byPack = new Map<string, Array<[string, BlobLocation]>>();
      for (const [id, locs] of repo.blobs())
        for (const l of locs)
          if (!repo.isDamaged(id, l.pack)) byPack.set(l.pack, [...(byPack.get(l.pack) ?? []), [id, l]]);
      await forEach(chosen, 2, async ([pack]) => {
        let bytes: Buffer;
        try {
          bytes = await repo.store.get(packObjectName(pack));
        } catch (err) {
          problems.push({ kind: 'pack', what: pack, message: (err as Error).message });
          return;
        }
        bytesRead += bytes.length;
        let key: Buffer | null = null;
        try {
          key = packKey(repo.keys, bytes, pack);
          readTrailer(repo.keys, bytes, pack);
        } catch (err) {
          problems.push({ kind: 'pack', what: pack, message: (err as Error).message });
        }
        for (const [id, l] of byPack.get(pack) ?? []) {
          try {
            await openBlob(repo.keys, key, bytes.subarray(l.offset, l.offset + l.length), l, id);
          } catch (err) {
            bad.push([id, pack]);
            problems.push({ kind: 'data', what: id, message: (err as Error).message });
          }
        }
        packsRead++;
        o.onProgress?.({ packs: packsRead, packsTotal: chosen.length, bytes: bytesRead });
      });
      if (bad.length) await repo.writeIndex({ damaged: bad });
    }
    return {
      snapshots: snapshots.length,
      packs: packs.length,
      blobs: repo.blobs().size,
      packsRead,
      bytesRead,
      problems,
      flagged: bad.length,
      ok: problems.length === 0,
    };
  } finally {
    await lock.release();
  }
}

export interface PruneResult {
  dryRun: boolean;
  /** Packs deleted whole (nothing in them used) and rewritten (some used). */
  packsDeleted: number;
  packsRewritten: number;
  /** Packs at the store that no index names (a backup that died before its commit). */
  packsUnindexed: number;
  blobsRemoved: number;
  /** Bytes the store holds less afterwards (packs deleted minus packs written). */
  bytesFreed: number;
  bytesBefore: number;
  /**
   * Writes a dead writer began at the store and never finished (S3 multipart uploads): found,
   * and removed unless dry-run; their bytes are not in bytesBefore/bytesFreed (the store does not
   * list them as objects). Absent where the store has no such writes.
   */
  incompleteWrites?: { count: number; bytes: number; removed: boolean };
}

/**
 * Removes data no snapshot uses (restic's prune), under an exclusive lock: packs of which nothing
 * is used are deleted, packs partly used are rewritten with their used blobs, packs no index
 * names are deleted. Order (each durable before the next): new packs, one new index naming
 * every kept pack, the old index objects deleted, then the old packs deleted. A crash leaves
 * at worst packs that the next prune removes.
 */
export async function pruneRepository(repo: Repository, o: { dryRun?: boolean } = {}): Promise<PruneResult> {
  const lock = await repo.lock(true, 'prune');
  try {
    await repo.refreshIndex();
    const used = new Set<string>();
    for (const s of await repo.listSnapshots()) await usedBy(repo, s, used);
    const stored = await repo.store.list('data/');
    const bytesBefore = stored.reduce((n, s) => n + s.size, 0);
    const indexed = new Set([...repo.packs.keys()].map(packObjectName));
    const unindexed = stored.filter((s) => !indexed.has(s.name));
    // Which blobs each pack holds (from the index), and whether each is used there.
    const content = new Map<string, Array<[string, BlobLocation]>>();
    for (const [id, locs] of repo.blobs())
      for (const l of locs) content.set(l.pack, [...(content.get(l.pack) ?? []), [id, l]]);
    const keep: PackInfo[] = [];
    const drop: string[] = [];
    const rewrite: string[] = [];
    /** A blob kept in one pack only: duplicates elsewhere are unused copies. */
    const placed = new Set<string>();
    let blobsRemoved = 0;
    for (const [pack, size] of repo.packs) {
      const blobs = content.get(pack) ?? [];
      const live = blobs.filter(([id]) => used.has(id) && !repo.isDamaged(id, pack) && !placed.has(id));
      blobsRemoved += blobs.length - live.length;
      if (live.length === 0) drop.push(pack);
      else if (live.length < blobs.length) rewrite.push(pack);
      else {
        for (const [id] of live) placed.add(id);
        keep.push({
          name: pack,
          size,
          blobs: live.map(([id, l]) => [id, l.type, l.offset, l.length, l.rawLength, l.compressed ? 1 : 0]),
        });
      }
    }
    const freedGuess =
      drop.reduce((n, p) => n + (repo.packs.get(p) ?? 0), 0) + unindexed.reduce((n, s) => n + s.size, 0);
    // Under the exclusive lock no live backup of this repository is writing: an unfinished
    // multipart upload is a dead writer's, and only costs storage.
    const incomplete = await repo.store.incompleteWrites?.({ abort: !o.dryRun });
    const incompleteWrites = incomplete && { ...incomplete, removed: !o.dryRun };
    if (o.dryRun)
      return {
        incompleteWrites,
        dryRun: true,
        packsDeleted: drop.length,
        packsRewritten: rewrite.length,
        packsUnindexed: unindexed.length,
        blobsRemoved,
        bytesFreed: freedGuess,
        bytesBefore,
      };
    const writer = new BlobWriter(repo);
    for (const pack of rewrite)
      for (const [id, l] of content.get(pack) ?? []) {
        if (!used.has(id) || placed.has(id) || repo.isDamaged(id, pack)) continue;
        placed.add(id);
        await writer.addFresh({ id, data: await repo.readBlob(id) }, l.type);
      }
    const written = await writer.flush();
    const oldIndex = (await repo.store.list('index/')).map((s) => s.name);
    // Content-named: an old index holding exactly what is kept is the new one, and stays.
    const kept = await repo.replaceIndex([...keep, ...written]);
    for (const name of oldIndex) if (name !== kept) await repo.store.delete(name);
    for (const pack of [...drop, ...rewrite]) await repo.store.delete(packObjectName(pack));
    for (const s of unindexed)
      await repo.store.delete(s.name).catch((err) => {
        if (!isTargetNotFound(err)) throw err;
      });
    const after = (await repo.store.list('data/')).reduce((n, s) => n + s.size, 0);
    return {
      incompleteWrites,
      dryRun: false,
      packsDeleted: drop.length,
      packsRewritten: rewrite.length,
      packsUnindexed: unindexed.length,
      blobsRemoved,
      bytesFreed: bytesBefore - after,
      bytesBefore,
    };
  } finally {
    await lock.release();
  }
}
