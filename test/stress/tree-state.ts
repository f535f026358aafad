import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { readXattrs } from '../../src/posix/xattr.js';
import { type EntryState, xattrString } from './model.js';

/**
 * Reads real trees (the primary, a split mirror copy, a backup snapshot) as the model's
 * EntryStates, keyed by volume path. Never used on the mount itself from a serving process.
 */

/** The state of one entry, or null when there is none; `times`: with its mtime (`mt`). */
export async function readEntry(file: string, times = false): Promise<EntryState | null> {
  const st = await fsp.lstat(file, { bigint: true }).catch(() => undefined);
  if (!st) return null;
  const own = { uid: Number(st.uid), gid: Number(st.gid), ...(times ? { mt: String(st.mtimeNs) } : {}) };
  if (st.isSymbolicLink()) return { t: 'l', target: await fsp.readlink(file), ...own };
  const x = xattrString(await userXattrs(file));
  const mode = Number(st.mode & 0o7777n);
  if (st.isDirectory()) return { t: 'd', mode, ...own, x };
  if (st.isFIFO()) return { t: 'p', mode, ...own, x };
  if (st.isCharacterDevice()) return { t: 'c', rdev: Number(st.rdev), mode, ...own, x };
  if (st.isSocket()) return { t: 's', mode, ...own, x };
  if (!st.isFile()) return { t: 'p', mode: -1, ...own };
  const h = createHash('sha1')
    .update(await fsp.readFile(file))
    .digest('hex');
  return { t: 'f', h, size: Number(st.size), mode, ...own, x };
}

/** Every entry at and below the volume path `top` of the tree at `root` (see readEntry). */
export async function readTree(root: string, top: string, times = false): Promise<Map<string, EntryState>> {
  const out = new Map<string, EntryState>();
  const walk = async (p: string): Promise<void> => {
    const s = await readEntry(root + p, times);
    if (!s) return;
    out.set(p, s);
    if (s.t !== 'd') return;
    const names = await fsp.readdir(root + p).catch(() => [] as string[]);
    for (const n of names.sort()) await walk(`${p}/${n}`);
  };
  await walk(top);
  return out;
}

/**
 * user.* xattrs, by the project's addon (the path's own, l*xattr: readEntry never asks for a
 * symlink's; names as bytes, which fs-xattr would encode as UTF-8). None when unreadable.
 */
async function userXattrs(file: string): Promise<Array<[string, string]>> {
  let all: Map<string, Buffer>;
  try {
    all = readXattrs(file);
  } catch {
    return [];
  }
  return [...all].filter(([n]) => n.startsWith('user.')).map(([n, v]) => [n, v.toString('utf8')]);
}
