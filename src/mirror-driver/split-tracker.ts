import { covers, coversUnder, type Selector, selectorsOverlap } from '../common/selector.js';
import type { Change } from '../fusefs/change-sink.js';
import { RangeSet } from './range-set.js';

/**
 * The inode number noted for a name whose file the split could not tell (Splitter.inodeAt): no
 * file has it, so the resync takes no file for the one noted, and a lost name with it counts as
 * an unknown inode (lostUnknown).
 */
export const UNKNOWN_INO = -1;

export { covers, coversUnder, type Selector } from '../common/selector.js';

/** Whether a change touches files a selector covers. */
export function touches(sel: Selector, c: Change): boolean {
  switch (c.op) {
    case 'rename':
      return coversUnder(sel, c.from) || coversUnder(sel, c.path);
    case 'rmdir':
      return coversUnder(sel, c.path);
    case 'link':
      return covers(sel, c.from) || covers(sel, c.path);
    default:
      return covers(sel, c.path);
  }
}

/** A namespace change as recorded (no data). */
export type NamespaceChange = Exclude<Change, { op: 'write' } | { op: 'fsync' }>;

export interface TrackedFile {
  ranges: RangeSet;
  /**
   * The smallest size the file was truncated to since the split. Bytes from there to the end of
   * the frozen copy may have been zeroed by a truncate and an extension, with no write to tell.
   */
  cut?: number;
}

/** Serialisable form, for the journal. */
export interface TrackerRecord {
  id: string;
  selector: Selector;
  since: number;
  owner?: string;
}

/**
 * What changed on the primary under one split since it was taken: byte ranges per file (keyed by
 * the file's current path, moved along with renames), the namespace changes in order, and every
 * path whose metadata may differ. Costs nothing at split time; grows with the changes only.
 *
 * Coverage follows the split's files: once a covered file or directory is renamed (or a covered
 * file gets another hard link), its new name is covered too. Otherwise later writes under the
 * new name would reach the mirror at a path the resync is about to replace with the frozen copy.
 */
export class SplitTracker {
  readonly files = new Map<string, TrackedFile>();
  /** In order; their paths are the mirror's (see mirrorRenamed). */
  readonly namespace: NamespaceChange[] = [];
  /** How many held namespace changes name each path, or something below it (mirrorRenamed). */
  private readonly named = new Map<string, number>();
  /** The same for the sources of held renames and links (holdsSource). */
  private readonly sources = new Map<string, number>();
  readonly touched = new Set<string>();
  /** New names of covered entries (each covers its subtree). */
  readonly followed = new Set<string>();
  /**
   * Mirror inodes of selected files that had other names at split time (mirror inode → the
   * selected path). A change through another name must not reach the frozen copy: that name
   * becomes covered too (see followName), so its changes are tracked and resynced through the
   * same mirror inode, and every name stays one file in the mirror.
   */
  readonly frozenInos = new Map<number, string>();
  /**
   * Paths whose inode (data or metadata) changed under this split → the inode's link count on
   * the primary when that was first seen. Moved along with renames.
   */
  readonly inodeChanged = new Map<string, number>();
  /** The primary's inode number behind each path of inodeChanged (when it could be read). */
  readonly inodeNumbers = new Map<string, number>();
  /**
   * Primary inodes that lost a changed name while they had others (see lostLinks). Their other
   * names are copied whole at resync even when they were noted with one link (their first change
   * came after the name went) or tracked ranges of their own: those miss the lost name's ranges.
   */
  readonly lostInos = new Set<number>();
  /** A changed name with other names went away and its inode number was not known. */
  lostUnknown = false;
  /**
   * A name of a changed inode with other names went away (unlink, or replaced by a rename):
   * what was tracked under it is lost, and the other names, which may not be known here, still
   * need the changes. The resync then compares the whole volume (the only way to find them).
   */
  lostLinks = false;
  /**
   * Names healed as a copy of their own while this split held another name of their file
   * (Reconciler.relinkIndexed leaves held names alone): the resync copies them again and links
   * their names to that copy, or they stayed separate files in the mirror for good.
   */
  readonly relinkAfter = new Set<string>();
  /** The change record's generation at the split (unset for splits recovered from the journal). */
  generation?: { log: string; generation: number };
  private readonly paths: Set<string>;

  constructor(
    readonly id: string,
    readonly selector: Selector,
    readonly since: number,
    readonly owner?: string,
  ) {
    this.paths = new Set(selector.paths ?? []);
  }

  toRecord(): TrackerRecord {
    return { id: this.id, selector: this.selector, since: this.since, owner: this.owner };
  }

  get trackedBytes(): number {
    let n = 0;
    for (const f of this.files.values()) n += f.ranges.bytes;
    return n;
  }

  /** Is p (a file, or a directory as a whole) held by this split? */
  covers(p: string): boolean {
    if (this.selector.volume || this.paths.has(p)) return true;
    const trees = this.selector.subtrees;
    if (!trees?.length && this.followed.size === 0) return false;
    // p itself and each ancestor, against the subtree roots.
    for (let q = p; ; q = q.slice(0, Math.max(1, q.lastIndexOf('/')))) {
      if (this.followed.has(q) || trees?.includes(q)) return true;
      if (q === '/') return false;
    }
  }

  /** Is anything at or below dir held by this split? */
  coversUnder(dir: string): boolean {
    if (this.covers(dir)) return true;
    const under = (p: string) => dir === '/' || p.startsWith(dir + '/');
    for (const p of this.paths) if (under(p)) return true;
    for (const p of this.followed) if (under(p)) return true;
    return this.selector.subtrees?.some(under) ?? false;
  }

  /**
   * Does a selection reach anything whose mirror entry this split keeps as it was: its own
   * selection, the new names it followed, and every entry its held namespace changes name (a
   * held rename's source, still in the mirror at its old place, say)? A split of such a selection
   * would copy those entries as this split froze them, not as the primary has them. O(held
   * changes): once per split taken while this one lives.
   */
  reaches(sel: Selector): boolean {
    if (selectorsOverlap(this.selector, sel)) return true;
    const hit = (p: string) => selectorsOverlap(sel, { subtrees: [p] });
    for (const f of this.followed) if (hit(f)) return true;
    for (const c of this.namespace) {
      if (hit(c.path)) return true;
      if ((c.op === 'rename' || c.op === 'link') && hit(c.from)) return true;
    }
    return false;
  }

  /** Does the change affect files this split holds? */
  touches(c: Change): boolean {
    switch (c.op) {
      case 'rename':
        return this.coversUnder(c.from) || this.coversUnder(c.path);
      case 'rmdir':
        // Also the directory where a held rename's (or link's) source waits in the mirror for the
        // replay: there it is not empty, and the replay empties it first.
        return this.coversUnder(c.path) || this.sources.has(c.path);
      case 'link':
        return this.covers(c.from) || this.covers(c.path);
      default:
        return this.covers(c.path);
    }
  }

  record(c: Change): void {
    switch (c.op) {
      case 'write':
        this.file(c.path).ranges.add(c.offset, c.offset + c.data.length);
        this.touched.add(c.path);
        return;
      case 'zero':
        this.file(c.path).ranges.add(c.offset, c.offset + c.length);
        this.touched.add(c.path);
        return;
      case 'fsync':
        return;
      case 'truncate': {
        const f = this.file(c.path);
        f.ranges.truncate(c.size);
        f.cut = Math.min(f.cut ?? Number.POSITIVE_INFINITY, c.size);
        this.touched.add(c.path);
        return;
      }
      case 'rename': {
        this.follow(c.from, c.path);
        this.pushNamespace(c);
        // The name replaced loses what was tracked under it (its inode may live on elsewhere).
        this.dropName(c.path);
        moveKeys(this.files, c.from, c.path);
        moveKeys(this.inodeChanged, c.from, c.path);
        moveKeys(this.inodeNumbers, c.from, c.path);
        // Metadata changed under the old name must be synced under the new one.
        for (const t of [...this.touched])
          if (t.startsWith(c.from + '/')) this.touched.add(c.path + t.slice(c.from.length));
        this.touched.add(c.from);
        this.touched.add(c.path);
        return;
      }
      case 'unlink':
        this.pushNamespace(c);
        this.dropName(c.path);
        this.touched.add(c.path);
        return;
      case 'rmdir':
        this.pushNamespace(c);
        // A directory made there later is another inode (see the resync's replaced check).
        this.inodeChanged.delete(c.path);
        this.inodeNumbers.delete(c.path);
        this.touched.add(c.path);
        return;
      case 'create':
        this.pushNamespace(c);
        this.files.set(c.path, { ranges: new RangeSet() });
        this.touched.add(c.path);
        return;
      case 'link': {
        if (this.covers(c.from)) this.followed.add(c.path);
        // Both names are of a file with several names now (see lostLinks).
        const n = this.inodeChanged.get(c.from);
        if (n !== undefined) this.inodeChanged.set(c.from, Math.max(n, 2));
        this.pushNamespace(c);
        this.touched.add(c.path);
        return;
      }
      case 'mkdir':
      case 'mknod':
      case 'symlink':
        this.pushNamespace(c);
        this.touched.add(c.path);
        return;
      default:
        // chmod, chown, utimens, xattrs: metadata is synced for every touched path.
        this.touched.add(c.path);
    }
  }

  /**
   * Another name of a frozen inode (frozenInos) is about to change: from now on it is covered
   * like the selected name, so its changes are tracked and its mirror entry, the frozen copy,
   * is left alone until the resync.
   */
  followName(p: string): void {
    this.followed.add(p);
  }

  /** The inode behind p changed under this split; nlink: its link count on the primary. */
  noteInodeChange(p: string, nlink: number, ino?: number): void {
    if (this.inodeChanged.has(p)) return;
    this.inodeChanged.set(p, nlink);
    if (ino !== undefined) this.inodeNumbers.set(p, ino);
  }

  /**
   * Must the resync copy p whole rather than its tracked ranges? Yes when its inode had other
   * names and one of them went away with ranges of its own (lostLinks). primaryIno: p's inode
   * number on the primary now.
   */
  copiesWhole(p: string, primaryIno: number | undefined): boolean {
    if (!this.lostLinks) return false;
    if ((this.inodeChanged.get(p) ?? 1) > 1 || this.lostUnknown) return true;
    return primaryIno !== undefined && this.lostInos.has(primaryIno);
  }

  /**
   * A changed name was found gone from the primary at resync, its unlink or rename still queued
   * behind: what was tracked under it may be owed to other names of its inode, as with dropName.
   */
  nameGone(p: string): void {
    const f = this.files.get(p);
    const data = f !== undefined && (!f.ranges.isEmpty || f.cut !== undefined);
    const nlink = this.inodeChanged.get(p) ?? (data ? 2 : undefined);
    if (nlink === undefined || nlink < 2) return;
    this.lostLinks = true;
    const ino = this.inodeNumbers.get(p);
    if (ino === undefined || ino === UNKNOWN_INO) this.lostUnknown = true;
    else this.lostInos.add(ino);
  }

  /**
   * The resync's copy of a name of a file with other names read the primary after that name had
   * moved on (renamed away, or another file renamed over it, queued behind): what it wrote
   * into the mirror's file, which those names share, may be another file's. They are compared in
   * full, as for a lost name.
   */
  copiedAfterMove(ino: number): void {
    this.lostLinks = true;
    this.lostInos.add(ino);
  }

  /** A name goes away (unlink, or replaced by a rename). */
  private dropName(p: string): void {
    const f = this.files.get(p);
    this.files.delete(p);
    // Live, a name with tracked data always has its link count noted; replayed from the journal
    // it has none: assume other names.
    const data = f !== undefined && (!f.ranges.isEmpty || f.cut !== undefined);
    const nlink = this.inodeChanged.get(p) ?? (data ? 2 : undefined);
    const ino = this.inodeNumbers.get(p);
    this.inodeChanged.delete(p);
    this.inodeNumbers.delete(p);
    if (nlink !== undefined && nlink > 1) {
      this.lostLinks = true;
      if (ino === undefined || ino === UNKNOWN_INO) this.lostUnknown = true;
      else this.lostInos.add(ino);
    }
  }

  /**
   * A rename from → to that this split does not hold was applied to the mirror: the mirror
   * entries its held namespace changes name at or below `from` are at `to` now, and they are
   * replayed from there. The source of a held rename is not covered once the primary moved it,
   * so a later rename of its directory is not held (finding 34 of docs/reliability.md: the
   * attack renamed /w3/d1/r70 over a selected name, held, then /w3/d1 to /w3/d111, applied,
   * which took the mirror's r70 along; the replayed rename found no /w3/d1/r70 and /w3/d111/r70
   * stayed in the mirror, a name the primary no longer had). Only for changes recorded before
   * the rename (all of them, in its turn in the queue): their paths are the mirror's as it was
   * before it. Returns whether a held change moved: the caller journals it (an `mr` line), so
   * a split recovered after a crash replays from where the mirror has the entries too.
   */
  mirrorRenamed(from: string, to: string): boolean {
    // Most renames name nothing held: a map look-up, not a walk of the held changes.
    if (from === to || !this.named.has(from)) return false;
    const map = (p: string) => (p === from || p.startsWith(from + '/') ? to + p.slice(from.length) : p);
    for (let i = 0; i < this.namespace.length; i++) {
      const c = this.namespace[i]!;
      const path = map(c.path);
      let moved: NamespaceChange | undefined;
      if (c.op === 'rename' || c.op === 'link') {
        const src = map(c.from);
        if (path !== c.path || src !== c.from) moved = { ...c, path, from: src };
      } else if (path !== c.path) moved = { ...c, path };
      if (!moved) continue;
      this.index(c, -1);
      this.namespace[i] = moved;
      this.index(moved, 1);
    }
    return true;
  }

  /**
   * Is p (or something below it) the source of a held rename or link, which the mirror still has
   * under that name for the replay? A map look-up (see sources).
   */
  holdsSource(p: string): boolean {
    return this.sources.has(p);
  }

  private pushNamespace(c: NamespaceChange): void {
    this.namespace.push(c);
    this.index(c, 1);
  }

  /** Counts c's paths (and their ancestors) in or out of named and sources. */
  private index(c: NamespaceChange, d: 1 | -1): void {
    const count = (m: Map<string, number>, p: string) => {
      for (let q = p; q.length > 1; q = q.slice(0, q.lastIndexOf('/')) || '/') {
        const n = (m.get(q) ?? 0) + d;
        if (n > 0) m.set(q, n);
        else m.delete(q);
      }
    };
    count(this.named, c.path);
    if (c.op === 'rename' || c.op === 'link') {
      count(this.named, c.from);
      count(this.sources, c.from);
    }
  }

  /** Replays a recorded byte range (journal recovery). */
  recordRange(p: string, start: number, end: number): void {
    this.file(p).ranges.add(start, end);
    this.touched.add(p);
  }

  /** Extends coverage to the new names of whatever a rename from → to moves. */
  private follow(from: string, to: string): void {
    if (this.covers(from)) {
      this.followed.add(to);
      return;
    }
    const map = (p: string) => (p.startsWith(from + '/') ? to + p.slice(from.length) : undefined);
    const add: string[] = [];
    for (const p of [...this.paths, ...this.followed, ...(this.selector.subtrees ?? [])]) {
      const q = map(p);
      if (q) add.push(q);
    }
    for (const q of add) this.followed.add(q);
  }

  private file(p: string): TrackedFile {
    let f = this.files.get(p);
    if (!f) {
      f = { ranges: new RangeSet() };
      this.files.set(p, f);
    }
    return f;
  }
}

/** Moves the keys at and below from to the same places below to (a rename). */
function moveKeys<V>(m: Map<string, V>, from: string, to: string): void {
  const moved: Array<[string, V]> = [];
  for (const [p, v] of m) if (p === from || p.startsWith(from + '/')) moved.push([p, v]);
  for (const [p] of moved) m.delete(p);
  for (const [p, v] of moved) m.set(to + p.slice(from.length), v);
}
