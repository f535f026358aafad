import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as xattr from 'fs-xattr';
import { mknod } from './mirror-writer.js';
import type { RangeSet } from './range-set.js';

const CHUNK = 1 << 20;

export interface SyncResult {
  bytesCopied: number;
}

/**
 * Makes one mirror entry equal to its primary entry: type, content (only `ranges` when given and
 * the mirror file exists, else all of it), size, mode, owner, xattrs and times. A primary entry
 * that is gone is removed from the mirror (recursively).
 */
export async function syncEntry(primary: string, mirror: string, ranges?: RangeSet): Promise<SyncResult> {
  const pst = await fsp.lstat(primary).catch((e) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return undefined;
    throw e;
  });
  if (!pst) {
    await fsp.rm(mirror, { recursive: true, force: true });
    return { bytesCopied: 0 };
  }
  let mst = await fsp.lstat(mirror).catch(() => undefined);
  if (mst && (mst.mode & 0o170000) !== (pst.mode & 0o170000)) {
    await fsp.rm(mirror, { recursive: true, force: true });
    mst = undefined;
  }
  let bytesCopied = 0;
  if (pst.isDirectory()) {
    if (!mst) await fsp.mkdir(mirror, pst.mode & 0o7777);
  } else if (pst.isSymbolicLink()) {
    const target = await fsp.readlink(primary);
    if (!mst || (await fsp.readlink(mirror)) !== target) {
      await fsp.rm(mirror, { force: true });
      await fsp.symlink(target, mirror);
    }
  } else if (pst.isFile()) {
    if (!mst || !ranges) {
      // Whole file: copy_file_range (or a reflink) in the kernel.
      await fsp.copyFile(primary, mirror);
      bytesCopied = pst.size;
    } else {
      bytesCopied = await copyRanges(primary, mirror, ranges, pst.size);
    }
  } else if (!mst) {
    await mknod(mirror, pst.mode, pst.rdev);
  }
  await syncMeta(primary, mirror, pst);
  return { bytesCopied };
}

async function copyRanges(primary: string, mirror: string, ranges: RangeSet, size: number): Promise<number> {
  const src = await fsp.open(primary, 'r');
  const dst = await fsp.open(mirror, 'r+');
  let copied = 0;
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (const [a, b] of ranges.toArray()) {
      const end = Math.min(b, size);
      for (let pos = a; pos < end; ) {
        const { bytesRead } = await src.read(buf, 0, Math.min(CHUNK, end - pos), pos);
        if (bytesRead === 0) break;
        await dst.write(buf, 0, bytesRead, pos);
        pos += bytesRead;
        copied += bytesRead;
      }
    }
    await dst.truncate(size);
  } finally {
    await src.close();
    await dst.close();
  }
  return copied;
}

/** Copies mode, owner, xattrs and times (times last: the others move ctime only). */
export async function syncMeta(primary: string, mirror: string, pst?: fs.Stats): Promise<void> {
  pst ??= await fsp.lstat(primary);
  const link = pst.isSymbolicLink();
  if (!link) await fsp.chmod(mirror, pst.mode & 0o7777);
  await fsp.lchown(mirror, pst.uid, pst.gid);
  if (!link) {
    const want = await xattr.listAttributes(primary).catch(() => [] as string[]);
    const have = await xattr.listAttributes(mirror).catch(() => [] as string[]);
    for (const name of want) {
      const v = await xattr.getAttribute(primary, name).catch(() => undefined);
      if (v) await xattr.setAttribute(mirror, name, v).catch(() => undefined);
    }
    for (const name of have)
      if (!want.includes(name)) await xattr.removeAttribute(mirror, name).catch(() => undefined);
  }
  await fsp.lutimes(mirror, pst.atimeMs / 1000, pst.mtimeMs / 1000);
}

export interface TreeEntry {
  /** Volume path ('/a/b'). */
  path: string;
  stat: fs.Stats;
}

/** Walks a tree depth-first (parents before children), yielding volume paths. */
export async function* walk(root: string, rel = ''): AsyncGenerator<TreeEntry> {
  let names: string[];
  try {
    names = await fsp.readdir(rel ? root + rel : root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  names.sort();
  for (const name of names) {
    const p = `${rel}/${name}`;
    const st = await fsp.lstat(root + p).catch(() => undefined);
    if (!st) continue;
    yield { path: p, stat: st };
    if (st.isDirectory()) yield* walk(root, p);
  }
}

export async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  const stream = fs.createReadStream(file, { highWaterMark: CHUNK });
  for await (const chunk of stream) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function join(root: string, volumePath: string): string {
  return volumePath === '/' ? root : path.join(root, volumePath);
}
