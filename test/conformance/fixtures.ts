import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { EntryMeta, ManifestEntry, SnapshotManifest, SnapshotMeta, SnapshotTotals } from 'twinfs';

/** Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced byte for byte. */
export function pseudoRandom(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A stream of `data` in chunks of `chunk` bytes, yielding to the event loop between chunks. */
export function streamOf(data: Buffer, chunk = 64 * 1024): Readable {
  return Readable.from(
    (async function* () {
      for (let off = 0; off < data.length; off += chunk) {
        yield data.subarray(off, Math.min(off + chunk, data.length));
        await new Promise((r) => setImmediate(r));
      }
    })(),
    { objectMode: false },
  );
}

/** A stream that yields `good` bytes, then fails the way a vanished source or a broken pipe does. */
export function failingStream(good: Buffer, message = 'source failed mid-file'): Readable {
  return Readable.from(
    (async function* () {
      yield good;
      await new Promise((r) => setImmediate(r));
      throw Object.assign(new Error(message), { code: 'EIO' });
    })(),
    { objectMode: false },
  );
}

/** Reads a stream to the end. */
export async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s as AsyncIterable<Buffer | string>)
    parts.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(parts);
}

export const T0 = Date.UTC(2026, 0, 2, 3, 4, 5, 678);

export function fileMeta(size: number, mode = 0o100644): EntryMeta {
  return { size, mode, uid: 1000, gid: 1000, mtime: T0 + 0.5 };
}

export function dirMeta(): EntryMeta {
  return { size: 0, mode: 0o040755, uid: 1000, gid: 1000, mtime: T0 };
}

export function linkMeta(): EntryMeta {
  return { size: 0, mode: 0o120777, uid: 1000, gid: 1000, mtime: T0 };
}

export function snapMeta(snapshotId: string, time = T0, parentId?: string): SnapshotMeta {
  return {
    snapshotId,
    time,
    server: 'ws://127.0.0.1:7070',
    deviceId: 'dev-conformance',
    selector: { volume: true },
    ...(parentId ? { parentId } : {}),
  };
}

/** A manifest naming `entries`, with totals that add up. */
export function manifest(meta: SnapshotMeta, entries: ManifestEntry[]): SnapshotManifest {
  const totals: SnapshotTotals = {
    files: entries.filter((e) => e.type === 'file').length,
    dirs: entries.filter((e) => e.type === 'dir').length,
    symlinks: entries.filter((e) => e.type === 'symlink').length,
    bytes: entries.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0),
    copiedBytes: entries.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0),
    reusedFiles: 0,
    skipped: 0,
  };
  return { version: 1, meta, totals, entries };
}

export function fileEntry(path: string, data: Buffer): ManifestEntry {
  return { path, type: 'file', ...fileMeta(data.length), hash: sha256(data) };
}
