import { randomUUID } from 'node:crypto';
import type { Stats } from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Change } from '../fusefs/change-sink.js';
import { ChangeRanges, type SavedRanges } from './change-ranges.js';

/**
 * The volume's change record: one generation counter that every change through the volume
 * advances, and per path the generation of its last change. It answers one question for the
 * backup peer — "did this file change since generation G?" — with "no" only when it can prove
 * it, and otherwise with "unknown since generation F" (VMware CBT's change id, at file grain).
 * The change-aware backups of issue 13 extend this record (ranges, renames, deletions); there is
 * no second one.
 *
 * What makes "unchanged" true:
 * - stamp() runs in the sink's beforeChange, before the primary is touched: a change that has
 *   reached the primary is always in the record. (A change that then fails leaves a stamp: a
 *   file reported changed that is not costs a copy, never a lie.) Unlinks and creates answered
 *   in libfuse's threads reach the primary first and are stamped when reported: every answer
 *   (since, unchangedSince, describe) calls reportAhead first, so none misses one of them.
 * - A rename stamps both names as subtrees (everything below them moved).
 * - A data or metadata change reaches an inode, not a name: names known to share an inode (made
 *   by link, or seen with nlink > 1 by a walk of the primary) form the linked set, and a change
 *   to any of them counts as a change to all (linkedGen).
 * - Generations only grow, across restarts and crashes: the driver journals journalLine() at
 *   every checkpoint and before every split, so a generation handed to a peer is on disk, and a
 *   start takes one above anything recorded. A lost journal starts a new log (another `log`
 *   id), and generations of another log are never comparable.
 *
 * When it cannot vouch (everything before `floor` is unknown):
 * - an unclean start (no clean shutdown record, or a journal of another boot of the machine: the
 *   clock and the page cache may have lied), or a record file that does not match the journal's
 *   last line: floor = the new generation;
 * - a clean start vouches only after the start-up reconciliation walk has seen every entry of
 *   the primary: entries whose ctime is not older than the shutdown (minus CTIME_MARGIN_MS, for
 *   the kernel's coarse clock) were changed behind the server's back and are stamped (a
 *   directory as a subtree: a directory renamed at the primary keeps its children's ctimes), and
 *   files with several names join the linked set. ctime cannot be set by applications. Until
 *   that walk completes (or when the server runs without it, reconcileOnStart: false) nothing is
 *   vouched for in this run. A clock that went back since the shutdown starts a new epoch;
 * - the record keeps at most maxEntries paths: past it the oldest half is dropped and floor
 *   rises to the newest dropped generation;
 * - an answer larger than maxAnswerBytes is "unknown" (the control channel pages the rest).
 *
 * Beyond the changed paths (issue 13): deletions and renames since G, and per file the byte
 * ranges written since G (change-ranges.ts), which vouch only while the file changed through
 * writes and truncations alone; otherwise that file is answered "whole" and nothing else widens.
 */
export interface ChangeRecordOptions {
  /** The record file (written at a clean shutdown only). */
  file: string;
  /** The journal's state at start. */
  journal: { clean: boolean; otherBoot: boolean; missing: boolean; log?: string; gen?: number };
  maxEntries?: number;
  maxAnswerBytes?: number;
  now?: () => number;
  log?: (msg: string) => void;
}

/** A generation of one log: only comparable within the same log. */
export interface Generation {
  log: string;
  generation: number;
}

/** The record's answer to "what changed since G" for one selection. */
export interface ChangeAnswer extends Generation {
  since: number;
  /** Set when nothing can be vouched for: everything before `since` generation is unknown. */
  unknown?: { since: number; reason: string };
  /** Paths changed since (their own data, metadata or name). */
  changed: string[];
  /** Paths under which everything changed (renamed directories, directories changed behind the server's back). */
  trees: string[];
  /** Paths removed since (unlink, rmdir); a path created again since is in `changed` too. */
  deleted: string[];
  /** Renames since, oldest first (both names are also in `trees`). */
  renamed: Array<{ from: string; to: string }>;
  /**
   * For changed files whose data changed through writes and truncations alone since `since`:
   * the byte ranges that may differ, merged ([start, end); end TO_END for "to the end"). A
   * changed file not listed here must be compared whole; an empty list means only its metadata
   * changed.
   */
  ranges: Array<{ path: string; ranges: Array<[number, number]> }>;
}

/** Slack for the kernel's coarse ctime clock (a few ms behind Date.now()), and for a clock nudged by NTP. */
export const CTIME_MARGIN_MS = 2000;

interface RecordFile {
  version: 1;
  log: string;
  gen: number;
  floor: number;
  savedAt: number;
  linkedGen: number;
  self: Array<[string, number]>;
  trees: Array<[string, number]>;
  linked: string[];
  epoch?: string;
  deleted?: Array<[string, number]>;
  renamed?: Array<[string, string, number]>;
  ranges?: SavedRanges;
}

export class ChangeRecord {
  private log: string;
  private gen = 0;
  private floor = 0;
  private linkedGen = 0;
  private readonly self = new Map<string, number>();
  private readonly trees = new Map<string, number>();
  private readonly linked = new Set<string>();
  private readonly deleted = new Map<string, number>();
  private renamed: Array<[string, string, number]> = [];
  private readonly ranges = new ChangeRanges();
  /** A walk of the primary has completed in this run: behind-the-back changes and links are known. */
  private trusted = false;
  /** While the start-up walk runs: entries with a ctime from this instant on are stamped. */
  private ctimeFrom: number | undefined;
  /**
   * Reports, synchronously, the changes the primary has that were not reported yet (stamping
   * them); set while such changes can exist (ChangeRouter.changesAhead).
   */
  reportAhead: (() => void) | undefined;
  /** Why the record starts where it does (floor): told with every "unknown" below it. */
  private epoch = 'the record is new';
  private readonly maxEntries: number;
  private readonly maxAnswerBytes: number;
  private readonly now: () => number;

  private constructor(
    private readonly o: ChangeRecordOptions,
    log: string,
  ) {
    this.log = log;
    this.maxEntries = o.maxEntries ?? 500_000;
    this.maxAnswerBytes = o.maxAnswerBytes ?? 64 << 20;
    this.now = o.now ?? Date.now;
  }

  /** Loads the record as the journal's state allows (see the class comment). */
  static async open(o: ChangeRecordOptions): Promise<ChangeRecord> {
    const j = o.journal;
    const saved = await readRecordFile(o.file);
    const r = new ChangeRecord(o, j.log ?? saved?.log ?? randomUUID());
    const top = Math.max(j.gen ?? 0, saved?.log === r.log ? saved.gen : 0);
    const why = j.missing
      ? 'no journal'
      : !j.clean
        ? 'unclean shutdown'
        : j.otherBoot
          ? 'the machine rebooted since the shutdown'
          : !saved
            ? 'no change record'
            : saved.log !== r.log || saved.gen !== j.gen
              ? 'the change record does not match the journal'
              : saved.savedAt > r.now()
                ? 'the clock went back since the shutdown'
                : undefined;
    if (why || !saved) {
      // Nothing before this start can be vouched for: a new epoch.
      r.gen = top + 1;
      r.floor = r.gen;
      r.epoch = why ?? 'no change record';
      if (!j.missing) o.log?.(`change record: ${why}; unknown since generation ${r.gen}`);
      return r;
    }
    r.gen = saved.gen;
    r.floor = saved.floor;
    r.linkedGen = saved.linkedGen;
    r.epoch = saved.epoch ?? r.epoch;
    for (const [p, g] of saved.self) r.self.set(p, g);
    for (const [p, g] of saved.trees) r.trees.set(p, g);
    for (const p of saved.linked) r.linked.add(p);
    for (const [p, g] of saved.deleted ?? []) r.deleted.set(p, g);
    r.renamed = saved.renamed ?? [];
    r.ranges.load(saved.ranges);
    r.ctimeFrom = saved.savedAt - CTIME_MARGIN_MS;
    return r;
  }

  get generation(): Generation {
    return { log: this.log, generation: this.gen };
  }

  /** Before a change to p reaches the primary (the sink's beforeChange). */
  stamp(p: string): void {
    const g = ++this.gen;
    this.self.set(p, g);
    if (this.linked.has(p)) this.linkedGen = g;
    this.bound();
  }

  /** After the primary applied c (the sink's apply): what a name-level stamp cannot say. */
  note(c: Change): void {
    switch (c.op) {
      case 'write': {
        // A generation of its own: a write noted after a split is never "before" it.
        const g = ++this.gen;
        this.self.set(c.path, g);
        this.ranges.write(c.path, g, c.offset, c.offset + c.data.length);
        if (this.linked.has(c.path)) this.linkedGen = g;
        return;
      }
      case 'zero': {
        const g = ++this.gen;
        this.self.set(c.path, g);
        this.ranges.write(c.path, g, c.offset, c.offset + c.length);
        if (this.linked.has(c.path)) this.linkedGen = g;
        return;
      }
      case 'truncate': {
        const g = ++this.gen;
        this.self.set(c.path, g);
        this.ranges.truncate(c.path, g, c.size);
        if (this.linked.has(c.path)) this.linkedGen = g;
        return;
      }
      case 'rename': {
        const g = ++this.gen;
        this.trees.set(c.from, g);
        this.trees.set(c.path, g);
        this.renamed.push([c.from, c.path, g]);
        this.ranges.resetTree(c.from, g);
        this.ranges.resetTree(c.path, g);
        this.linkedGen = this.linked.has(c.path) || this.linked.has(c.from) ? g : this.linkedGen;
        for (const m of [...this.linked])
          if (m === c.from || m.startsWith(c.from + '/')) {
            this.linked.delete(m);
            this.linked.add(c.path + m.slice(c.from.length));
          }
        this.bound();
        return;
      }
      case 'link':
        this.linked.add(c.from);
        this.linked.add(c.path);
        this.linkedGen = ++this.gen;
        this.ranges.reset(c.path, this.gen);
        return;
      case 'unlink':
      case 'rmdir': {
        const g = ++this.gen;
        this.deleted.set(c.path, g);
        this.ranges.reset(c.path, g);
        this.bound();
        return;
      }
      case 'create':
      case 'mkdir':
      case 'mknod':
      case 'symlink':
        this.ranges.reset(c.path, ++this.gen);
        return;
      default:
        // Metadata only (mode, owner, times, xattrs, fsync): the name's stamp says it.
        return;
    }
  }

  /** An entry of the primary as a walk of it found it (reconciliation, repair, resync). */
  notePrimary(p: string, st: Stats): void {
    if (st.isFile() && st.nlink > 1 && !this.linked.has(p)) {
      this.linked.add(p);
      this.linkedGen = ++this.gen;
    }
    if (this.ctimeFrom !== undefined && st.ctimeMs >= this.ctimeFrom) {
      const g = ++this.gen;
      if (st.isDirectory()) {
        this.trees.set(p, g);
        this.ranges.resetTree(p, g);
      } else {
        this.self.set(p, g);
        this.ranges.reset(p, g);
      }
    }
    this.bound();
  }

  /** The start-up walk saw every entry: from now on the record can vouch. */
  startWalkDone(): void {
    this.ctimeFrom = undefined;
    this.trusted = true;
  }

  /** What changed since `since`, among the paths `within` accepts. */
  since(since: Generation, within: (p: string) => boolean = () => true): ChangeAnswer {
    this.reportAhead?.();
    const base = {
      log: this.log,
      generation: this.gen,
      since: since.generation,
      changed: [],
      trees: [],
      deleted: [],
      renamed: [],
      ranges: [],
    };
    const unknown = (reason: string): ChangeAnswer => ({ ...base, unknown: { since: this.floor, reason } });
    if (since.log !== this.log)
      return unknown('generation of another change log (server state lost or replaced)');
    if (!this.trusted) return unknown('the start-up comparison of the primary has not completed');
    if (since.generation < this.floor)
      return unknown(`the record starts at generation ${this.floor} (${this.epoch})`);
    if (since.generation > this.gen) return unknown(`generation ${since.generation} was never handed out`);
    const G = since.generation;
    const changed = new Set<string>();
    const trees: string[] = [];
    const deleted: string[] = [];
    const renamed: Array<{ from: string; to: string }> = [];
    const ranges: ChangeAnswer['ranges'] = [];
    let bytes = 0;
    for (const [p, g] of this.self)
      if (g > G && within(p)) {
        changed.add(p);
        bytes += p.length + 4;
      }
    const linkedChanged = this.linkedGen > G;
    if (linkedChanged)
      for (const p of this.linked)
        if (within(p)) {
          changed.add(p);
          bytes += p.length + 4;
        }
    // Not filtered: a subtree stamp above the selection covers it too (and there are few).
    for (const [p, g] of this.trees)
      if (g > G) {
        trees.push(p);
        bytes += p.length + 4;
      }
    for (const [p, g] of this.deleted)
      if (g > G && within(p)) {
        deleted.push(p);
        bytes += p.length + 4;
      }
    for (const [from, to, g] of this.renamed)
      if (g > G && (within(from) || within(to))) {
        renamed.push({ from, to });
        bytes += from.length + to.length + 16;
      }
    for (const p of changed) {
      // A file of several names changes through any of them: no ranges vouched for.
      if (linkedChanged && this.linked.has(p)) continue;
      const r = this.ranges.since(p, G);
      if (r === undefined) continue;
      ranges.push({ path: p, ranges: r });
      bytes += p.length + 16 + r.length * 24;
    }
    if (bytes > this.maxAnswerBytes)
      return unknown(`too many changes for one answer (${changed.size + trees.length} paths)`);
    return {
      ...base,
      changed: [...changed].sort(),
      trees: trees.sort(),
      deleted: deleted.sort(),
      renamed,
      ranges: ranges.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
    };
  }

  /**
   * A per-path question for comparisons of the mirror (Reconciler): "did p's data, metadata or
   * name change since G?" answered "no" (true) only when the record can prove it, read live at
   * each call (later changes only add stamps). Undefined when the record cannot vouch for
   * anything since G (another log, below the floor, not trusted yet): then nothing is.
   */
  unchangedSince(since: Generation): ((p: string) => boolean) | undefined {
    this.reportAhead?.();
    if (since.log !== this.log || !this.trusted || since.generation < this.floor) return undefined;
    if (since.generation > this.gen) return undefined;
    const G = since.generation;
    return (p) => {
      this.reportAhead?.();
      // The floor rose past G since (the record dropped its oldest paths): nothing is vouched.
      if (G < this.floor) return false;
      if ((this.self.get(p) ?? 0) > G) return false;
      if (this.linkedGen > G && this.linked.has(p)) return false;
      // p or a directory above it renamed (or changed behind the server's back) since G.
      for (let q = p; q.length > 0; q = q.slice(0, q.lastIndexOf('/')))
        if ((this.trees.get(q) ?? 0) > G) return false;
      return true;
    };
  }

  /** For status: the current generation, where the record starts, and whether it can vouch now. */
  describe(): Generation & { floor: number; vouching: boolean; paths: number } {
    this.reportAhead?.();
    const paths = this.self.size + this.trees.size;
    return { log: this.log, generation: this.gen, floor: this.floor, vouching: this.trusted, paths };
  }

  /** The line the journal carries at every checkpoint and before every split. */
  journalLine(): { t: 'cg'; log: string; gen: number } {
    return { t: 'cg', log: this.log, gen: this.gen };
  }

  /**
   * Written at a clean shutdown, durably. A record that could not vouch in this run (its start
   * walk did not finish) is saved as a new epoch.
   */
  async save(): Promise<void> {
    if (!this.trusted) {
      this.floor = this.gen;
      this.epoch = 'the start-up comparison of the primary did not complete';
    }
    const rec: RecordFile = {
      version: 1,
      log: this.log,
      gen: this.gen,
      floor: this.floor,
      savedAt: this.now(),
      linkedGen: this.linkedGen,
      self: [...this.self],
      trees: [...this.trees],
      linked: [...this.linked],
      epoch: this.epoch,
      deleted: [...this.deleted],
      renamed: this.renamed,
      ranges: this.ranges.save(),
    };
    await fsp.mkdir(path.dirname(this.o.file), { recursive: true });
    const tmp = `${this.o.file}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(rec));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, this.o.file);
  }

  /** Keeps the record bounded: past maxEntries the oldest half goes and the floor rises. */
  private bound(): void {
    if (this.self.size + this.trees.size + this.deleted.size + this.renamed.length <= this.maxEntries) return;
    const gens = [
      ...this.self.values(),
      ...this.trees.values(),
      ...this.deleted.values(),
      ...this.renamed.map((r) => r[2]),
    ].sort((a, b) => a - b);
    const cut = gens[Math.floor(gens.length / 2)]!;
    for (const m of [this.self, this.trees, this.deleted]) for (const [p, g] of m) if (g <= cut) m.delete(p);
    this.renamed = this.renamed.filter(([, , g]) => g > cut);
    this.ranges.forget((p) => this.self.has(p));
    this.floor = Math.max(this.floor, cut);
    this.epoch = `older changes dropped to keep the record within ${this.maxEntries} paths`;
  }
}

async function readRecordFile(file: string): Promise<RecordFile | undefined> {
  try {
    const r = JSON.parse(await fsp.readFile(file, 'utf8')) as RecordFile;
    return r?.version === 1 && typeof r.log === 'string' && Number.isFinite(r.gen) ? r : undefined;
  } catch {
    return undefined;
  }
}
