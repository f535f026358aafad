import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';

/** The fields of a snapshots.db row the head orders and keeps rows by. */
export interface HeadDoc {
  _id: string;
  time: number;
  state: string;
  deviceId: string;
  target: string;
  entriesBase?: string;
}

/** snapshots.db's identity (Catalog's FileStamp): a write, an append or a compaction changes it. */
export interface HeadStamp {
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
}

const FORMAT = 'twinfs-catalog-head';

/** The order of Catalog.list: by time, then by id. */
const older = (a: HeadDoc, b: HeadDoc) => a.time - b.time || a._id.localeCompare(b._id);

/**
 * What a backup needs of snapshots.db, kept beside it (`snapshots.head`) so that a run does not
 * load the whole file: every running row (abandoned runs are cleared from them), each device's
 * newest complete row at each target (the parent an incremental builds on) with the rows its
 * entries are a delta on (entriesBase, at most MAX_DELTA_CHAIN), and the ids of the complete
 * snapshots of each target (what the run checks against the target's listing of `snapshots/`).
 *
 * nedb loads snapshots.db whole (a parse of every line, a promise per line, its indexes) and its
 * queries copy every matching row: with 1,000 snapshots kept that was ~160 ms of CPU and ~2,200
 * page faults a session's load, and a few ms per query, in every run (docs/benchmarks.md, "The
 * no-change incremental with many snapshots kept"). The head holds rows in proportion to the
 * devices and targets and the running runs, not to the snapshots kept; only the ids grow with
 * them (~25 bytes each, as the target's listing does).
 *
 * A cache, never the record: it names the stamp (inode, size, mtime in ns) of the snapshots.db
 * it describes, and is used only while the file is exactly that; anything else (another writer,
 * a crash between an append and the head's write, a torn or foreign file) and the session loads
 * snapshots.db and writes the head anew. Written by rename, not synced.
 */
export class CatalogHead<D extends HeadDoc> {
  private constructor(
    private readonly rows: Map<string, D>,
    private readonly complete: Map<string, Set<string>>,
  ) {}

  /** The head of these rows (every row of snapshots.db). */
  static of<D extends HeadDoc>(docs: Iterable<D>): CatalogHead<D> {
    const rows = new Map<string, D>();
    const complete = new Map<string, Set<string>>();
    for (const d of docs) {
      rows.set(d._id, d);
      if (d.state === 'complete') idsOf(complete, d.target).add(d._id);
    }
    const head = new CatalogHead(rows, complete);
    head.prune();
    return head;
  }

  /** The head in `file`, when it describes snapshots.db as it is (`stamp`); else undefined. */
  static async read<D extends HeadDoc>(file: string, stamp: HeadStamp): Promise<CatalogHead<D> | undefined> {
    let j: {
      format?: unknown;
      version?: unknown;
      of?: { ino?: unknown; size?: unknown; mtimeNs?: unknown };
      rows?: unknown;
      complete?: unknown;
    };
    try {
      j = JSON.parse(await fsp.readFile(file, 'utf8'));
    } catch {
      return undefined;
    }
    if (
      j?.format !== FORMAT ||
      j.version !== 1 ||
      j.of?.ino !== String(stamp.ino) ||
      j.of.size !== String(stamp.size) ||
      j.of.mtimeNs !== String(stamp.mtimeNs) ||
      !Array.isArray(j.rows) ||
      typeof j.complete !== 'object' ||
      j.complete === null
    )
      return undefined;
    const rows = new Map<string, D>();
    for (const d of j.rows as D[]) {
      if (typeof d?._id !== 'string' || typeof d.time !== 'number') return undefined;
      rows.set(d._id, d);
    }
    const complete = new Map<string, Set<string>>();
    for (const [t, ids] of Object.entries(j.complete as Record<string, unknown>)) {
      if (!Array.isArray(ids) || !ids.every((i) => typeof i === 'string')) return undefined;
      complete.set(t, new Set(ids));
    }
    return new CatalogHead(rows, complete);
  }

  /** Writes the head of snapshots.db as it is now (`stamp`): a temporary file renamed into place. */
  async write(file: string, stamp: HeadStamp): Promise<void> {
    const text = JSON.stringify({
      format: FORMAT,
      version: 1,
      of: { ino: String(stamp.ino), size: String(stamp.size), mtimeNs: String(stamp.mtimeNs) },
      rows: [...this.rows.values()],
      complete: Object.fromEntries([...this.complete].map(([t, ids]) => [t, [...ids]])),
    });
    const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      await fsp.writeFile(tmp, text, { mode: 0o600 });
      await fsp.rename(tmp, file);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
  }

  /** A row the head holds (undefined: not held, which does not mean there is none). */
  row(id: string): D | undefined {
    return this.rows.get(id);
  }

  /** Every running row, oldest first (the head holds them all). */
  running(): D[] {
    return [...this.rows.values()].filter((d) => d.state === 'running').sort(older);
  }

  /** The newest complete row of a device at a target (the head holds each one). */
  latest(deviceId: string, target: string): D | undefined {
    let best: D | undefined;
    for (const d of this.rows.values())
      if (d.state === 'complete' && d.deviceId === deviceId && d.target === target)
        if (!best || older(best, d) < 0) best = d;
    return best;
  }

  /** The ids of every complete snapshot at a target. */
  completeIds(target: string): string[] {
    return [...(this.complete.get(target) ?? [])];
  }

  /**
   * Takes a row as snapshots.db now holds it (inserted, or updated: the whole row). False when
   * the head can no longer say what it must (the row's entries chain names a row it does not
   * hold): the caller loads snapshots.db instead.
   */
  put(doc: D): boolean {
    const prev = this.rows.get(doc._id);
    if (prev?.state === 'complete' && (doc.state !== 'complete' || doc.target !== prev.target))
      this.complete.get(prev.target)?.delete(doc._id);
    if (doc.state === 'complete') idsOf(this.complete, doc.target).add(doc._id);
    this.rows.set(doc._id, doc);
    return this.prune();
  }

  /**
   * Drops the rows a backup does not need (complete rows that are neither a device's newest at
   * a target nor in such a row's entries chain, failed rows). False when a chain names a row
   * that is not held.
   */
  private prune(): boolean {
    const keep = new Set<string>();
    const newest = new Map<string, D>();
    for (const d of this.rows.values()) {
      if (d.state === 'running') keep.add(d._id);
      if (d.state !== 'complete') continue;
      const k = `${d.deviceId}\0${d.target}`;
      const n = newest.get(k);
      if (!n || older(n, d) < 0) newest.set(k, d);
    }
    let whole = true;
    for (const d of newest.values()) {
      // A chain is bounded (MAX_DELTA_CHAIN); the bound here only guards against a cycle.
      let at: D | undefined = d;
      for (let i = 0; at && i < 64; i++) {
        keep.add(at._id);
        if (!at.entriesBase) break;
        const base = this.rows.get(at.entriesBase);
        if (!base) whole = false;
        at = base;
      }
    }
    for (const id of [...this.rows.keys()]) if (!keep.has(id)) this.rows.delete(id);
    return whole;
  }
}

function idsOf(m: Map<string, Set<string>>, target: string): Set<string> {
  let s = m.get(target);
  if (!s) m.set(target, (s = new Set()));
  return s;
}
