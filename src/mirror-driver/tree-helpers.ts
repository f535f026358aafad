import type { BigIntStats, Stats } from 'node:fs';
import { promises as fsp, lstatSync } from 'node:fs';

/**
 * Small helpers the mirror driver's parts share for walking the primary and the mirror: one
 * home for each, so the routing, resync, reconciliation and repair code do not carry copies.
 */

export function lstatOrUndefined(p: string): Promise<Stats | undefined> {
  return fsp.lstat(p).catch(() => undefined);
}

/**
 * lstat now, without the libuv pool (for a queue turn every later change waits for);
 * undefined when it fails (gone, or unreachable by path: a long one).
 */
export function lstatNowOrUndefined(p: string): Stats | undefined;
export function lstatNowOrUndefined(p: string, o: { bigint: true }): BigIntStats | undefined;
export function lstatNowOrUndefined(p: string, o?: { bigint: true }): Stats | BigIntStats | undefined {
  try {
    return lstatSync(p, { bigint: o?.bigint ?? false, throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/** Maps with at most `limit` calls in flight; results in input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Same mode and owner (what a size+mtime comparison does not cover). */
export function sameMeta(a: Stats, b: Stats): boolean {
  return a.mode === b.mode && a.uid === b.uid && a.gid === b.gid;
}

/** The paths of a set that are not below another one of it. */
export function outermost(paths: Iterable<string>): string[] {
  const sorted = [...new Set(paths)].sort();
  const out: string[] = [];
  for (const p of sorted) {
    if (out.some((q) => q === '/' || p === q || p.startsWith(q + '/'))) continue;
    out.push(p);
  }
  return out;
}

/** The volume paths of a file's names (a walk of the primary that stops once it has them all). */
export async function namesOf(root: string, file: Stats): Promise<string[]> {
  const out: string[] = [];
  const dirs = [''];
  while (dirs.length > 0 && out.length < file.nlink) {
    const dir = dirs.pop()!;
    const names = await fsp.readdir(root + dir).catch(() => [] as string[]);
    for (const n of names) {
      const st = await lstatOrUndefined(`${root}${dir}/${n}`);
      if (st?.isDirectory()) dirs.push(`${dir}/${n}`);
      else if (st?.ino === file.ino && st.dev === file.dev) out.push(`${dir}/${n}`);
    }
  }
  return out;
}

/** The volume paths of regular files with several names below dir (no symlinks followed). */
export async function multiLinkFiles(root: string, dir: string): Promise<string[]> {
  const out: string[] = [];
  const names = await fsp.readdir(root + dir).catch(() => [] as string[]);
  for (const n of names) {
    const st = await lstatOrUndefined(`${root}${dir}/${n}`);
    if (st?.isFile() && st.nlink > 1) out.push(`${dir}/${n}`);
    if (st?.isDirectory()) out.push(...(await multiLinkFiles(root, `${dir}/${n}`)));
  }
  return out;
}
