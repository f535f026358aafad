import * as fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { errnoCode } from '../common/errors.js';
import { posix } from './native.js';
import { openNoAtime } from './open-noatime.js';

/**
 * Large files read once, past the page cache (docs/architecture.md, "Large files read with
 * O_DIRECT"). A buffered read of a file the cache does not hold fills a page-cache page and
 * copies it per 4 KiB: on this project's VMs 1.3 s of system CPU per GiB (`dd bs=2M` of a cold
 * 858 MiB file: 1.37 s, 1.33 s of it system), against 0.04 s with O_DIRECT (0.43 s). A full
 * backup reads every byte once and never again, so the fill buys nothing. Only files the cache
 * does not hold (cachestat(2)) are read this way; a cached file, or a kernel without cachestat,
 * keeps buffered reads.
 */

/** The alignment O_DIRECT transfers keep here: offset, length and memory (every block size met). */
export const DIRECT_ALIGN = 4096;

/** Files smaller than this are read through the page cache whatever it holds. */
export const DIRECT_MIN_BYTES = 8 * 1024 * 1024;

/** Memory whose first byte is on a page boundary (pageAlignedShared in the repository). */
const aligned = new WeakSet<ArrayBufferLike>();

/** Records that buffer starts on a page boundary (its maker knows: an mmap'd WebAssembly memory). */
export function markPageAligned(buffer: ArrayBufferLike): void {
  aligned.add(buffer);
}

/** Whether buf[offset] lies on a page boundary of memory marked with markPageAligned. */
export function pageAlignedAt(buf: Uint8Array, offset: number): boolean {
  return aligned.has(buf.buffer) && (buf.byteOffset + offset) % DIRECT_ALIGN === 0;
}

/**
 * `TWINFS_DIRECT_READ`: `auto` (the default: files of DIRECT_MIN_BYTES or more, by cachestat),
 * `always` (every file handed to directReads, whatever its size and the cache: tests and the
 * stress harness), `off`.
 */
function mode(): 'auto' | 'always' | 'off' {
  const v = process.env.TWINFS_DIRECT_READ;
  return v === 'always' || v === 'off' ? v : 'auto';
}

/**
 * A positional read of fh's file that takes O_DIRECT where it can: when the file is at least
 * DIRECT_MIN_BYTES, the page cache holds under a quarter of it, and the file can be opened again
 * with O_DIRECT (through /proc/self/fd, the same file whatever its path does meanwhile). Each
 * read goes direct when its position and memory are page-aligned and the buffer has room for the
 * length rounded up to a page (a file's last block is read whole; the kernel stops at the end
 * of the file and the count is cut to what was asked); any other read, and every read after the
 * filesystem refused O_DIRECT (EINVAL), goes through fh. The answer counts bytes as fh.read's
 * does. `direct` says whether the file was opened for O_DIRECT, `directBytes` how many bytes
 * were read that way; `close` closes the second descriptor.
 */
export async function directReads(fh: FileHandle, size: number): Promise<DirectReader> {
  const buffered = async (buf: Buffer, offset: number, length: number, position: number) =>
    (await fh.read(buf, offset, length, position)).bytesRead;
  const m = mode();
  let direct: FileHandle | undefined;
  if (m === 'always' || (m === 'auto' && size >= DIRECT_MIN_BYTES)) {
    let cold = m === 'always';
    if (!cold) {
      const cached = posix().cachedPages(fh.fd, 0, 0);
      cold = cached >= 0 && cached * DIRECT_ALIGN < size / 4;
    }
    if (cold) direct = await reopenDirect(fh.fd);
  }
  if (direct === undefined)
    return { direct: false, directBytes: 0, read: buffered, close: async () => undefined };
  let d: FileHandle | undefined = direct;
  const reader: DirectReader = {
    direct: true,
    directBytes: 0,
    async read(buf, offset, length, position) {
      const whole = Math.ceil(length / DIRECT_ALIGN) * DIRECT_ALIGN;
      if (
        d !== undefined &&
        length > 0 &&
        position % DIRECT_ALIGN === 0 &&
        offset + whole <= buf.length &&
        pageAlignedAt(buf, offset)
      ) {
        try {
          const n = Math.min((await d.read(buf, offset, whole, position)).bytesRead, length);
          reader.directBytes += n;
          return n;
        } catch (err) {
          if (errnoCode(err) !== 'EINVAL') throw err;
          // The filesystem (or this memory) refuses O_DIRECT after all: buffered from here on.
          const gone = d;
          d = undefined;
          await gone.close().catch(() => undefined);
        }
      }
      return buffered(buf, offset, length, position);
    },
    async close() {
      const gone = d;
      d = undefined;
      await gone?.close().catch(() => undefined);
    },
  };
  return reader;
}

export interface DirectReader {
  /** Whether the file was opened again with O_DIRECT (cold, large, and the open succeeded). */
  readonly direct: boolean;
  /** Bytes read with O_DIRECT so far. */
  directBytes: number;
  /** Reads as FileHandle.read does (a count, 0 at the end), with O_DIRECT where it may. */
  read(buf: Buffer, offset: number, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

/** fd's file opened again for reading with O_DIRECT (and O_NOATIME where allowed), or undefined. */
async function reopenDirect(fd: number): Promise<FileHandle | undefined> {
  const file = `/proc/self/fd/${fd}`;
  const flags = fs.constants.O_RDONLY | fs.constants.O_DIRECT;
  try {
    return await openNoAtime(file, flags);
  } catch {
    // No /proc, or a filesystem that refuses O_DIRECT at open (EINVAL): buffered reads.
    return undefined;
  }
}
