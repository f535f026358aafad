import { promises as fsp } from 'node:fs';
import * as xattr from 'fs-xattr';
import { hashFile, walk } from './entry-sync.js';

export type DifferenceKind =
  | 'missing-in-mirror'
  | 'extra-in-mirror'
  | 'type'
  | 'size'
  | 'content'
  | 'mode'
  | 'owner'
  | 'mtime'
  | 'symlink'
  | 'xattr';

export interface Difference {
  path: string;
  kind: DifferenceKind;
  primary?: string | number;
  mirror?: string | number;
}

export interface VerifyReport {
  ok: boolean;
  checked: number;
  skipped: number;
  differences: Difference[];
}

export interface VerifyOptions {
  /** Paths not expected to match (split, resyncing or broken pairs). */
  skip?: (volumePath: string) => boolean;
  /** Compare content hashes (default true); false compares metadata and size only. */
  content?: boolean;
  signal?: AbortSignal;
}

/**
 * Compares the primary tree with the mirror's data tree: type, size, content hash, mode, owner,
 * mtime (to the millisecond), symlink targets and xattrs. Every difference is reported.
 */
export async function verifyTrees(
  primaryRoot: string,
  mirrorRoot: string,
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  const diffs: Difference[] = [];
  const skip = opts.skip ?? (() => false);
  let checked = 0;
  let skipped = 0;
  const seen = new Set<string>();
  for await (const { path: p, stat: ps } of walk(primaryRoot)) {
    opts.signal?.throwIfAborted();
    seen.add(p);
    if (skip(p)) {
      skipped++;
      continue;
    }
    checked++;
    const ms = await fsp.lstat(mirrorRoot + p).catch(() => undefined);
    if (!ms) {
      diffs.push({ path: p, kind: 'missing-in-mirror' });
      continue;
    }
    if ((ps.mode & 0o170000) !== (ms.mode & 0o170000)) {
      diffs.push({ path: p, kind: 'type', primary: ps.mode & 0o170000, mirror: ms.mode & 0o170000 });
      continue;
    }
    if ((ps.mode & 0o7777) !== (ms.mode & 0o7777) && !ps.isSymbolicLink())
      diffs.push({
        path: p,
        kind: 'mode',
        primary: (ps.mode & 0o7777).toString(8),
        mirror: (ms.mode & 0o7777).toString(8),
      });
    if (ps.uid !== ms.uid || ps.gid !== ms.gid)
      diffs.push({ path: p, kind: 'owner', primary: `${ps.uid}:${ps.gid}`, mirror: `${ms.uid}:${ms.gid}` });
    if (ps.isSymbolicLink()) {
      const [a, b] = await Promise.all([fsp.readlink(primaryRoot + p), fsp.readlink(mirrorRoot + p)]);
      if (a !== b) diffs.push({ path: p, kind: 'symlink', primary: a, mirror: b });
      continue;
    }
    if (!ps.isDirectory() && Math.abs(ps.mtimeMs - ms.mtimeMs) >= 1)
      diffs.push({ path: p, kind: 'mtime', primary: ps.mtime.toISOString(), mirror: ms.mtime.toISOString() });
    const [xa, xb] = await Promise.all([xattrsOf(primaryRoot + p), xattrsOf(mirrorRoot + p)]);
    if (xa !== xb) diffs.push({ path: p, kind: 'xattr', primary: xa, mirror: xb });
    if (ps.isFile()) {
      if (ps.size !== ms.size) diffs.push({ path: p, kind: 'size', primary: ps.size, mirror: ms.size });
      else if (opts.content !== false) {
        const [ha, hb] = await Promise.all([hashFile(primaryRoot + p), hashFile(mirrorRoot + p)]);
        if (ha !== hb)
          diffs.push({ path: p, kind: 'content', primary: ha.slice(0, 16), mirror: hb.slice(0, 16) });
      }
    }
  }
  for await (const { path: p } of walk(mirrorRoot)) {
    if (!seen.has(p) && !skip(p)) diffs.push({ path: p, kind: 'extra-in-mirror' });
  }
  return { ok: diffs.length === 0, checked, skipped, differences: diffs };
}

async function xattrsOf(file: string): Promise<string> {
  const names = await xattr.listAttributes(file).catch(() => [] as string[]);
  const parts: string[] = [];
  for (const n of names.sort()) {
    const v = await xattr.getAttribute(file, n).catch(() => Buffer.alloc(0));
    parts.push(`${n}=${v.toString('base64')}`);
  }
  return parts.join(',');
}
