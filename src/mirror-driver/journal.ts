import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Mutex } from '../common/async.js';
import type { Change } from '../fusefs/change-sink.js';
import { SplitTracker, type TrackerRecord } from './split-tracker.js';

/**
 * The driver's crash record, an append-only file of JSON lines:
 *   intent  a change to this path may have reached the primary but not the mirror (written
 *           before the primary is touched — md's write-intent bitmap, at path granularity)
 *   split / w / tr / ns / m / released   a split and what changed under it
 *   mr      a rename applied to the mirror moved entries a split's held changes name
 *           (SplitTracker.mirrorRenamed): replayed after those changes, as it happened
 *   broken / repaired                    pairs the mirror could not follow
 *   deep    the mirror must be compared by content (the page cache may have lost its writes)
 *   clean   the server shut down cleanly
 *   cg      the change record's log id and generation (change-record.ts): at every checkpoint
 *           and before every split, so no generation handed out is ever handed out again
 * Lines are written without fsync: they survive a kill -9 of the server (the page cache does);
 * after a machine crash the driver cannot trust the record and verifies instead.
 *
 * It lives in the server's state directory, not on the mirror: a full or failing mirror (the
 * very case the record must describe) would lose it.
 *
 * A checkpoint rewrites the file with only what is still live. Its snapshot is taken after the
 * lines being written have landed and while new lines are held back; lines still pending at that
 * instant are dropped, their effect being part of the snapshot. Callers must therefore change
 * their in-memory state and append the matching line in one synchronous step.
 */
export type JournalRecord =
  | { t: 'gen'; at: number; boot: string }
  | { t: 'intent'; p: string }
  | { t: 'split'; s: TrackerRecord }
  | { t: 'w'; id: string; p: string; a: number; b: number }
  | { t: 'ns'; id: string; c: Exclude<Change, { op: 'write' } | { op: 'fsync' }> }
  | { t: 'tr'; id: string; p: string; size: number }
  | { t: 'm'; id: string; p: string }
  | { t: 'mr'; id: string; from: string; to: string }
  | { t: 'released'; id: string }
  | { t: 'broken'; p: string }
  | { t: 'repaired'; p: string }
  | { t: 'deep'; on: boolean }
  | { t: 'clean'; at: number }
  | { t: 'cg'; log: string; gen: number };

export interface RecoveredState {
  /** No journal at all. */
  missing: boolean;
  /** The last generation ended with a clean shutdown. */
  clean: boolean;
  /** Written by an earlier boot of the machine: the page cache may have lost lines. */
  otherBoot: boolean;
  /** A content comparison of the whole mirror was pending. */
  deep: boolean;
  intents: Set<string>;
  splits: Map<string, SplitTracker>;
  broken: Set<string>;
  /** The change record's log id and the highest generation recorded (cg lines). */
  changeLog?: string;
  changeGen?: number;
}

export class Journal {
  private fh: fsp.FileHandle | null = null;
  private pending: string[] = [];
  private writing: Promise<void> | null = null;
  private waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private paused = false;
  private readonly checkpoints = new Mutex();
  readonly file: string;

  constructor(
    file: string,
    private readonly bootId: string,
  ) {
    this.file = file;
  }

  async read(): Promise<RecoveredState> {
    const st: RecoveredState = {
      missing: false,
      clean: false,
      otherBoot: false,
      deep: false,
      intents: new Set(),
      splits: new Map(),
      broken: new Set(),
    };
    let text: string;
    try {
      text = await fsp.readFile(this.file, 'utf8');
    } catch {
      st.missing = true;
      return st;
    }
    for (const line of text.split('\n')) {
      if (!line) continue;
      let r: JournalRecord;
      try {
        r = JSON.parse(line);
      } catch {
        continue; // a torn last line
      }
      st.clean = false;
      switch (r.t) {
        case 'gen':
          st.otherBoot = r.boot !== this.bootId;
          break;
        case 'intent':
          st.intents.add(r.p);
          break;
        case 'split':
          if (!st.splits.has(r.s.id))
            st.splits.set(r.s.id, new SplitTracker(r.s.id, r.s.selector, r.s.since, r.s.owner));
          break;
        case 'w':
          st.splits.get(r.id)?.recordRange(r.p, r.a, r.b);
          break;
        case 'tr':
          st.splits.get(r.id)?.record({ op: 'truncate', path: r.p, size: r.size });
          break;
        case 'ns':
          st.splits.get(r.id)?.record(r.c);
          break;
        case 'm':
          st.splits.get(r.id)?.touched.add(r.p);
          break;
        case 'mr':
          st.splits.get(r.id)?.mirrorRenamed(r.from, r.to);
          break;
        case 'released':
          st.splits.delete(r.id);
          break;
        case 'broken':
          st.broken.add(r.p);
          break;
        case 'repaired':
          st.broken.delete(r.p);
          break;
        case 'deep':
          st.deep = r.on;
          break;
        case 'clean':
          st.clean = true;
          break;
        case 'cg':
          if (st.changeLog !== r.log) st.changeGen = undefined;
          st.changeLog = r.log;
          st.changeGen = Math.max(st.changeGen ?? 0, r.gen);
          break;
      }
    }
    return st;
  }

  /**
   * Starts a new generation holding only the live state, as listed by snapshot() at the instant
   * the file is quiet (see the class comment).
   */
  checkpoint(snapshot: () => JournalRecord[]): Promise<void> {
    return this.checkpoints.run(async () => {
      this.paused = true;
      try {
        while (this.writing) await this.writing;
        const dropped = this.waiters.splice(0);
        this.pending = [];
        const lines: JournalRecord[] = [{ t: 'gen', at: Date.now(), boot: this.bootId }, ...snapshot()];
        try {
          await fsp.mkdir(path.dirname(this.file), { recursive: true });
          const tmp = `${this.file}.tmp`;
          await fsp.writeFile(tmp, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
          const fh = await fsp.open(tmp, 'r');
          await fh.sync();
          await fh.close();
          await this.fh?.close();
          this.fh = null;
          await fsp.rename(tmp, this.file);
          this.fh = await fsp.open(this.file, 'a');
        } catch (err) {
          for (const w of dropped) w.reject(err);
          throw err;
        }
        for (const w of dropped) w.resolve();
      } finally {
        this.paused = false;
        this.kick();
      }
    });
  }

  append(r: JournalRecord): Promise<void> {
    this.pending.push(JSON.stringify(r) + '\n');
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  /**
   * append, but written at once when it can be: one write(2) on the JS thread instead of a trip
   * through libuv's pool, which the caller (a write intent, before the primary is touched) would
   * wait for, behind whatever data writes and syncs hold the pool's threads. Only while no line is
   * pending or being written and no checkpoint holds lines back, so the file's order is the
   * appends' order and a checkpoint's snapshot sees the line landed or not yet appended, as with
   * append. Returns undefined when written (a failed write is dropped, as append's callers drop
   * its rejection), else append's promise.
   */
  appendNow(r: JournalRecord): Promise<void> | undefined {
    if (this.fh === null || this.writing !== null || this.paused || this.pending.length > 0)
      return this.append(r);
    try {
      fs.writeSync(this.fh.fd, JSON.stringify(r) + '\n');
    } catch {
      // As a rejected append: the line is lost, the caller goes on (see beforeChange).
    }
    return undefined;
  }

  /** Resolves when every line appended so far is written (not synced). */
  async flush(): Promise<void> {
    await this.checkpoints.run(async () => {
      while (this.writing) await this.writing;
    });
  }

  async close(clean: boolean): Promise<void> {
    if (clean) {
      await this.append({ t: 'clean', at: Date.now() });
      await this.fh?.sync();
    } else await this.flush();
    await this.fh?.close();
    this.fh = null;
  }

  private kick(): void {
    if (!this.writing && !this.paused && this.pending.length > 0) this.writing = this.writeLoop();
  }

  private async writeLoop(): Promise<void> {
    try {
      while (this.pending.length > 0 && !this.paused) {
        const batch = this.pending.splice(0).join('');
        const waiters = this.waiters.splice(0);
        try {
          if (!this.fh) {
            await fsp.mkdir(path.dirname(this.file), { recursive: true });
            this.fh = await fsp.open(this.file, 'a');
          }
          await this.fh.write(batch);
          for (const w of waiters) w.resolve();
        } catch (err) {
          for (const w of waiters) w.reject(err);
        }
      }
    } finally {
      this.writing = null;
    }
  }
}
