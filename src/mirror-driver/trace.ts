import { createWriteStream, type WriteStream } from 'node:fs';
import type { Change } from '../fusefs/change-sink.js';

/**
 * A diagnostic trace of what the mirror driver did and when: every change it received (tracked
 * by which splits, or applied), splits, resyncs, heals, volume comparisons and broken pairs, one
 * JSON line each with the wall-clock time in ms. Off unless TWINFS_MIRROR_TRACE names a file;
 * the stress harness turns it on so a mismatch can be laid beside the writers' logs
 * (docs/reliability.md).
 */
export class MirrorTrace {
  private readonly out: WriteStream | null;

  constructor(file = process.env.TWINFS_MIRROR_TRACE) {
    this.out = file ? createWriteStream(file, { flags: 'a' }) : null;
  }

  get on(): boolean {
    return this.out !== null;
  }

  event(ev: string, fields: Record<string, unknown> = {}): void {
    if (!this.out) return;
    this.out.write(`${JSON.stringify({ t: Date.now(), ev, ...fields })}\n`);
  }

  change(c: Change, held: string[]): void {
    if (!this.out) return;
    const { op, path } = c;
    const f: Record<string, unknown> = { op, path };
    if ('from' in c) f.from = c.from;
    if (c.op === 'write') {
      f.off = c.offset;
      f.len = c.data.length;
    }
    if (c.op === 'truncate') f.size = c.size;
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
