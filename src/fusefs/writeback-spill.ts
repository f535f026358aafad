import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { nsToMs, setFdTimesNs } from '../posix/set-times.js';
import type { ChangeSink } from './change-sink.js';

/** Cached data of one file that could not be written to the primary. */
export interface UnwrittenFile {
  path: string;
  ino: number;
  /** The application's last write (ms), the mtime the file gets when the data lands. */
  mtime: number;
  /** Instead of mtime (0 then): the mtime utimens set after the last write, to the ns. */
  mtimeNs?: string;
  extents: Array<{ off: number; data: Buffer }>;
  /** Why the write-back failed (errno code), for the message. */
  error?: string;
}

interface SpillMeta {
  path: string;
  ino: number;
  mtime: number;
  mtimeNs?: string;
  extents: Array<[number, number]>;
}

const MAGIC = Buffer.from('TWSPILL1');
/** Magic (8 bytes), end of the records (8), length of the header JSON (4). */
const FIXED_HEADER = 20;
/** Room for the header JSON (the primary's path) and, per file, its record header. */
const HEADER_ROOM = 4096;

/**
 * The write-back spill journal: where cached data goes when it cannot reach the primary at
 * shutdown (its disk is full, its device failed), so that nothing close() or write()
 * acknowledged is discarded (invariant 10). One file per volume in the state directory, its
 * space reserved at start (a full state disk is found at start, not at shutdown), all zeros
 * while empty. Spilled records are written first and the header with the magic last, each
 * followed by fsync: a crash while spilling leaves either the previous (empty) journal or a
 * complete one. The next start replays it onto the primary before mounting.
 */
export class WritebackSpill {
  private constructor(
    readonly file: string,
    readonly primary: string,
    readonly reserveBytes: number,
  ) {}

  /** The journal file for a primary directory (by its real path) in a state directory. */
  static fileFor(spillDir: string, primaryReal: string): string {
    const key = createHash('sha256').update(primaryReal).digest('hex').slice(0, 20);
    return path.join(spillDir, `${key}.journal`);
  }

  /**
   * Opens the journal and reserves its space: the dirty-data limit plus room for the record
   * headers of as many files as the cache may hold. Throws ETWIN_SPILL_RESERVE when the state
   * directory cannot hold it.
   */
  static async open(opts: {
    spillDir: string;
    primary: string;
    reserveBytes: number;
  }): Promise<WritebackSpill> {
    const file = WritebackSpill.fileFor(opts.spillDir, opts.primary);
    const spill = new WritebackSpill(file, opts.primary, opts.reserveBytes);
    try {
      await fsp.mkdir(opts.spillDir, { recursive: true, mode: 0o700 });
      await collectOrphans(opts.spillDir);
      await fsp.writeFile(`${file}.primary`, `${opts.primary}\n`, { mode: 0o600 });
      const st = await fsp.stat(file).catch(() => undefined);
      // A journal holding data keeps its size; an empty one is (re)reserved.
      if (!st || (!(await spill.hasData()) && st.blocks * 512 < opts.reserveBytes))
        await reserve(file, opts.reserveBytes);
    } catch (err) {
      throw new TwinError(
        'ETWIN_SPILL_RESERVE',
        `cannot reserve ${mib(opts.reserveBytes)} for the write-back spill journal ${file}: ${(err as Error).message}`,
        { journal: file, bytes: opts.reserveBytes },
        { cause: err },
      );
    }
    return spill;
  }

  /** True when the journal holds spilled data not yet written back. */
  async hasData(): Promise<boolean> {
    const fh = await fsp.open(this.file, 'r').catch(() => undefined);
    if (!fh) return false;
    try {
      const head = Buffer.alloc(MAGIC.length);
      await fh.read(head, 0, head.length, 0);
      return head.equals(MAGIC);
    } finally {
      await fh.close();
    }
  }

  /**
   * Writes the files' cached data into the reserved journal and makes it durable. Returns the
   * bytes kept. Throws (the errno error) when even that fails.
   */
  async write(files: UnwrittenFile[]): Promise<number> {
    const fh = await fsp.open(this.file, 'r+');
    try {
      let pos = HEADER_ROOM;
      let bytes = 0;
      for (const f of files) {
        const meta: SpillMeta = {
          path: f.path,
          ino: f.ino,
          mtime: f.mtime,
          ...(f.mtimeNs !== undefined ? { mtimeNs: f.mtimeNs } : {}),
          extents: f.extents.map((e) => [e.off, e.data.length]),
        };
        const json = Buffer.from(JSON.stringify(meta));
        const len = Buffer.alloc(4);
        len.writeUInt32LE(json.length);
        await writeAll(fh, Buffer.concat([len, json]), pos);
        pos += 4 + json.length;
        for (const e of f.extents) {
          await writeAll(fh, e.data, pos);
          pos += e.data.length;
          bytes += e.data.length;
        }
      }
      await fh.sync();
      const headerJson = Buffer.from(JSON.stringify({ primary: this.primary, files: files.length, bytes }));
      const head = Buffer.alloc(FIXED_HEADER);
      MAGIC.copy(head, 0);
      head.writeBigUInt64LE(BigInt(pos), 8);
      head.writeUInt32LE(headerJson.length, 16);
      await writeAll(fh, Buffer.concat([head, headerJson]), 0);
      await fh.sync();
      return bytes;
    } finally {
      await fh.close();
    }
  }

  /**
   * Writes the journal's data back onto the primary (and through the sink to the mirror), then
   * empties the journal. Files whose name is gone or now names another inode get their data
   * in a recovery file beside the journal instead (reported through log). Throws
   * ETWIN_SPILL_REPLAY, keeping the journal, when the data cannot be written (replaying again
   * is harmless: the same bytes land at the same offsets).
   */
  async replay(sink: ChangeSink, log: (msg: string) => void): Promise<{ files: number; bytes: number }> {
    if (!(await this.hasData())) return { files: 0, bytes: 0 };
    const fh = await fsp.open(this.file, 'r');
    let files = 0;
    let bytes = 0;
    try {
      const head = Buffer.alloc(FIXED_HEADER);
      await fh.read(head, 0, FIXED_HEADER, 0);
      const end = Number(head.readBigUInt64LE(8));
      let pos = HEADER_ROOM;
      while (pos < end) {
        const len = Buffer.alloc(4);
        await fh.read(len, 0, 4, pos);
        const json = Buffer.alloc(len.readUInt32LE(0));
        await fh.read(json, 0, json.length, pos + 4);
        pos += 4 + json.length;
        const meta = JSON.parse(json.toString('utf8')) as SpillMeta;
        const extents: Array<{ off: number; data: Buffer }> = [];
        for (const [off, n] of meta.extents) {
          const data = Buffer.alloc(n);
          await fh.read(data, 0, n, pos);
          pos += n;
          extents.push({ off, data });
          bytes += n;
        }
        await this.replayFile(meta, extents, sink, log);
        files++;
      }
    } catch (err) {
      if (err instanceof TwinError) throw err;
      throw new TwinError(
        'ETWIN_SPILL_REPLAY',
        `the write-back spill journal ${this.file} could not be written back to ${this.primary}: ${(err as Error).message}; it is kept, and the next start tries again`,
        { journal: this.file, primary: this.primary },
        { cause: err },
      );
    } finally {
      await fh.close();
    }
    await this.clear();
    log(`wrote back ${bytes} byte(s) of ${files} file(s) from the spill journal ${this.file}`);
    return { files, bytes };
  }

  /** Removes the reservation (clean shutdown: nothing was spilled). */
  async removeIfEmpty(): Promise<void> {
    if (await this.hasData()) return;
    await fsp.rm(this.file, { force: true });
    await fsp.rm(`${this.file}.primary`, { force: true });
  }

  private async replayFile(
    meta: SpillMeta,
    extents: Array<{ off: number; data: Buffer }>,
    sink: ChangeSink,
    log: (msg: string) => void,
  ): Promise<void> {
    const target = this.primary + meta.path;
    const fh = await fsp.open(target, 'r+').catch(() => undefined);
    if (!fh || (await fh.stat()).ino !== meta.ino) {
      await fh?.close();
      // The name is gone or names another file now (changed on the primary while the server
      // was down): the data is kept apart rather than written over someone else's file.
      const dir = `${this.file}.recovered`;
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      const out = path.join(dir, `${meta.ino}-${meta.path.replace(/\//g, '_')}`);
      const rh = await fsp.open(out, 'w');
      try {
        for (const e of extents) await writeAll(rh, e.data, e.off);
        await rh.sync();
      } finally {
        await rh.close();
      }
      log(`${meta.path} is no longer the spilled file (inode ${meta.ino}): its data is in ${out}`);
      return;
    }
    try {
      await sink.beforeChange?.(meta.path);
      for (const e of extents) await writeAll(fh, e.data, e.off);
      if (meta.mtime > 0) {
        const st = await fh.stat();
        await fh.utimes(st.atime, new Date(meta.mtime));
      } else if (meta.mtimeNs !== undefined) setFdTimesNs(fh.fd, null, BigInt(meta.mtimeNs));
      await fh.datasync();
    } finally {
      await fh.close();
    }
    for (const e of extents) await sink.apply({ op: 'write', path: meta.path, offset: e.off, data: e.data });
    if (meta.mtime > 0) await sink.apply({ op: 'utimens', path: meta.path, atime: null, mtime: meta.mtime });
    else if (meta.mtimeNs !== undefined) {
      const ns = BigInt(meta.mtimeNs);
      await sink.apply({
        op: 'utimens',
        path: meta.path,
        atime: null,
        mtime: nsToMs(ns),
        mtimeNs: meta.mtimeNs,
      });
    }
    await sink.apply({ op: 'fsync', path: meta.path, datasync: true });
  }

  /** Marks the journal empty (zeros over the magic), keeping the reserved space. */
  private async clear(): Promise<void> {
    const fh = await fsp.open(this.file, 'r+');
    try {
      await writeAll(fh, Buffer.alloc(FIXED_HEADER), 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}

/**
 * The reservation a cache of limitBytes needs: the data, plus its record headers (a path and
 * about 25 bytes per extent: a quarter more covers extents down to ~100 bytes). A spill that
 * needs more grows the file, which works as long as the state directory has room.
 */
export function spillReserveBytes(limitBytes: number): number {
  return HEADER_ROOM + limitBytes + Math.ceil(limitBytes / 4) + (1 << 20);
}

/**
 * Removes empty journals (reservations) whose primary directory no longer exists: left by a
 * server killed with -9 on a volume since deleted (test runs, temporary volumes). A journal
 * holding data is never removed.
 */
async function collectOrphans(spillDir: string): Promise<void> {
  const names = await fsp.readdir(spillDir).catch(() => [] as string[]);
  for (const n of names) {
    if (!n.endsWith('.journal')) continue;
    const file = path.join(spillDir, n);
    const primary = (await fsp.readFile(`${file}.primary`, 'utf8').catch(() => '')).trim();
    const exists = await fsp.stat(primary).then(
      () => true,
      () => false,
    );
    if (!primary || exists) continue;
    const head = Buffer.alloc(MAGIC.length);
    const fh = await fsp.open(file, 'r').catch(() => undefined);
    if (!fh) continue;
    try {
      await fh.read(head, 0, head.length, 0);
    } finally {
      await fh.close();
    }
    if (head.equals(MAGIC)) continue;
    await fsp.rm(file, { force: true });
    await fsp.rm(`${file}.primary`, { force: true });
  }
}

async function writeAll(fh: fsp.FileHandle, data: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, pos + done);
    if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    done += bytesWritten;
  }
}

/** Allocates the file's blocks (fallocate(1); zeros where the filesystem cannot). */
async function reserve(file: string, bytes: number): Promise<void> {
  await (await fsp.open(file, 'a', 0o600)).close();
  const ok = await new Promise<boolean>((resolve) =>
    execFile('fallocate', ['-l', String(bytes), file], { timeout: 30_000 }, (err) => resolve(!err)),
  );
  const st = await fsp.stat(file).catch(() => undefined);
  if (ok && st && st.blocks * 512 >= bytes) return;
  const fh = await fsp.open(file, 'r+');
  try {
    const chunk = Buffer.alloc(1 << 20);
    for (let pos = 0; pos < bytes; pos += chunk.length)
      await writeAll(fh, chunk.subarray(0, Math.min(chunk.length, bytes - pos)), pos);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await fsp.rm(file, { force: true });
    throw err;
  }
  await fh.close();
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}
