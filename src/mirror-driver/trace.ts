import { createWriteStream, type WriteStream } from 'node:fs';
import type { Change } from '../fusefs/change-sink.js';

/**
 * A diagnostic trace of what the mirror driver did and when: every change it received (tracked
 * by which splits, or applied), splits, resyncs, heals, volume comparisons and broken pairs, one
 * JSON line each with the wall-clock time in ms. Off unless TWINFS_MIRROR_TRACE names a file;
 * the stress harness turns it on so a mismatch can be laid beside the writers' logs
 * (docs/reliability.md).
 *
 * TWINFS_MIRROR_TRACE_RING=N keeps the last N events in memory instead (no file, no JSON per
 * event): cheap enough to leave on in a race finder, whose timing the file trace changed
 * (finding 33 did not fail with it); `ring()` gives them as JSON lines when a check failed.
 */
export class MirrorTrace {
  private readonly out: WriteStream | null;
  private readonly ringSize: number;
  private readonly events: Record<string, unknown>[] = [];
  private next = 0;

  constructor(
    file = process.env.TWINFS_MIRROR_TRACE,
    ringSize = Number(process.env.TWINFS_MIRROR_TRACE_RING ?? 0),
  ) {
    this.out = file ? createWriteStream(file, { flags: 'a' }) : null;
    this.ringSize = this.out || !(ringSize > 0) ? 0 : Math.floor(ringSize);
  }

  get on(): boolean {
    return this.out !== null || this.ringSize > 0;
  }

  event(ev: string, fields: Record<string, unknown> = {}): void {
    if (this.ringSize > 0) {
      const e = { t: Date.now(), ev, ...fields };
      if (this.events.length < this.ringSize) this.events.push(e);
      else this.events[this.next] = e;
      this.next = (this.next + 1) % this.ringSize;
      return;
    }
    if (!this.out) return;
    this.out.write(`${JSON.stringify({ t: Date.now(), ev, ...fields })}\n`);
  }

  /** The ring's events, oldest first, one JSON line each ('' when the ring is off). */
  ring(): string {
    const ordered =
      this.events.length < this.ringSize
        ? this.events
        : [...this.events.slice(this.next), ...this.events.slice(0, this.next)];
    return ordered.map((e) => `${JSON.stringify(e)}\n`).join('');
  }

  change(c: Change, held: string[]): void {
    if (!this.on) return;
    const { op, path } = c;
    const f: Record<string, unknown> = { op, path };
    if ('from' in c) f.from = c.from;
    if (c.op === 'write') {
      f.off = c.offset;
      f.len = c.data.length;
      // The first byte: the attack's writers write one value per write, which names the write.
      f.b0 = c.data[0];
    }
    if (c.op === 'truncate') f.size = c.size;
    if (c.op === 'zero') {
      f.off = c.offset;
      f.len = c.length;
    }
    if (c.op === 'setxattr' || c.op === 'removexattr') f.name = c.name;
    if (held.length) f.held = held;
    this.event('change', f);
  }

  close(): Promise<void> {
    const out = this.out;
    if (!out) return Promise.resolve();
    return new Promise((r) => out.end(r));
  }
}
