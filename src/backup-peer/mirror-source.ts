import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { setImmediate as turn } from 'node:timers/promises';
import { errnoCode, TwinError } from '../common/errors.js';
import type { Item, PrepareResult } from '../control/protocol.js';
import { openNoAtime } from '../posix/open-noatime.js';
import { readdirNoAtime } from '../posix/readdir.js';
import { readXattrs } from '../posix/xattr.js';
import { SafeTree } from './safe-tree.js';
import { volumePathParts } from './target.js';

/**
 * The peer's side of the mirror: the "second storage device" as this host sees it. The server
 * names a device id and its own path of the mirror's data directory; the peer maps the id to a
 * path of its own (the same path by default), proves the device there is the one the server
 * means (device.json), refuses to read through a FUSE mount (that would be reading the live
 * volume through the server, the very thing a split exists to avoid), and then reads split
 * copies by volume path without following symlinks.
 *
 * This module reads device.json and /proc/self/mountinfo itself rather than importing the
 * mirror driver or fusefs: the peer may depend on the control client only (ARCHITECTURE.md).
 */
export interface MirrorLocation {
  deviceId: string;
  /** Real path of the mirror root (holding device.json). */
  root: string;
  /** Real path of its data directory: the volume's copy. */
  data: string;
}

/**
 * Finds the local mirror for a prepare reply. mirrorMap maps a device id to either the mirror
 * root (the directory holding device.json) or its data directory.
 */
export async function locateMirror(
  prep: Pick<PrepareResult, 'deviceId' | 'mirrorRoot'>,
  mirrorMap: Record<string, string> = {},
): Promise<MirrorLocation> {
  const mapped = mirrorMap[prep.deviceId];
  const given = path.resolve(mapped ?? prep.mirrorRoot);
  let real: string;
  try {
    real = await fsp.realpath(given);
  } catch (err) {
    throw new TwinError(
      'ETWIN_MIRROR_UNREADABLE',
      `mirror of device ${prep.deviceId} is not readable at ${given} (${errnoCode(err) ?? (err as Error).message})${
        mapped
          ? ''
          : '; if this host sees the mirror elsewhere, map it: mirrorMap {"' +
            prep.deviceId +
            '": "/local/path"}'
      }`,
      { deviceId: prep.deviceId, path: given },
    );
  }
  const fuse = await fuseMountOf(real);
  if (fuse)
    throw new TwinError(
      'ETWIN_MIRROR_ON_MOUNT',
      `refusing to back up from ${real}: it lies on the FUSE mount ${fuse.mountPoint} (${fuse.fsType}${
        fuse.source ? `, ${fuse.source}` : ''
      }); point the peer at the mirror directory itself (mirrorMap), not at the mount`,
      { path: real, mountPoint: fuse.mountPoint, fsType: fuse.fsType },
    );
  const candidates = [
    { root: real, data: path.join(real, 'data') },
    { root: path.dirname(real), data: real },
  ];
  for (const c of candidates) {
    const dev = await readDevice(path.join(c.root, 'device.json'));
    if (!dev) continue;
    if (dev.deviceId !== prep.deviceId)
      throw new TwinError(
        'ETWIN_DEVICE_MISMATCH',
        `${c.root} holds device ${dev.deviceId}, but the server backs up device ${prep.deviceId}; fix mirrorMap`,
        { path: c.root, found: dev.deviceId, expected: prep.deviceId },
      );
    const st = await fsp.stat(c.data).catch(() => undefined);
    if (!st?.isDirectory())
      throw new TwinError('ETWIN_MIRROR_UNREADABLE', `mirror ${c.root} has no data directory`, {
        path: c.root,
      });
    return { deviceId: dev.deviceId, root: c.root, data: await fsp.realpath(c.data) };
  }
  throw new TwinError(
    'ETWIN_MIRROR_UNREADABLE',
    `${real} is not a twinfs mirror (no device.json in it or beside it); map device ${prep.deviceId} to the mirror root`,
    { path: real, deviceId: prep.deviceId },
  );
}

async function readDevice(file: string): Promise<{ deviceId: string } | undefined> {
  try {
    const d = JSON.parse(await fsp.readFile(file, 'utf8'));
    return typeof d?.deviceId === 'string' ? d : undefined;
  } catch {
    return undefined;
  }
}

/** The FUSE mount a real path lies on, if any (the innermost mount containing it). */
export async function fuseMountOf(
  realPath: string,
): Promise<{ mountPoint: string; fsType: string; source: string } | undefined> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  let best: { mountPoint: string; fsType: string; source: string } | undefined;
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const mp = unescapeMount(left!.split(' ')[4] ?? '');
    const [fsType = '', source = ''] = (right ?? '').split(' ');
    const inside = mp === '/' || realPath === mp || realPath.startsWith(mp + '/');
    // Later lines are mounted on top of earlier ones: on equal length the later one wins.
    if (inside && (!best || mp.length >= best.mountPoint.length))
      best = { mountPoint: mp, fsType, source: unescapeMount(source) };
  }
  return best && (best.fsType === 'fuse' || best.fsType.startsWith('fuse.')) ? best : undefined;
}

/** lstat with ns times; undefined when the entry is gone or cannot be lstat'ed. */
function lstatQuiet(abs: string): fs.BigIntStats | undefined {
  try {
    return fs.lstatSync(abs, { bigint: true, throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** One entry to back up: where it goes in the snapshot and where its split copy is. */
export interface SourceEntry {
  /** Volume path ('/a/b'). */
  path: string;
  /** The same, relative to the mirror data directory. */
  mirrorPath: string;
  /** What the server announced (absent when the peer walked the mirror itself). */
  item?: Item;
  /** The split copy's lstat (ns times), when the walk already took it. */
  stat?: fs.BigIntStats;
}

/** Normalises a server path to a volume path, refusing '..' and friends (ETWIN_PATH_ESCAPE). */
export function toVolumePath(p: string): string {
  return '/' + volumePathParts(p.startsWith('/') ? p : '/' + p).join('/');
}

/** The xattrs of an absolute path as MirrorReader.xattrs gives them. */
function xattrsAt(abs: string): Array<[string, string]> | undefined {
  const all = readXattrs(abs);
  if (all.size === 0) return undefined;
  return [...all].map(([name, value]) => [name, value.toString('base64')]);
}

/** lstats in flight at once while a directory is walked. */
const WALK_LSTATS = 64;
/**
 * An lstat answered within this was answered from the kernel's inode cache: the rest of its
 * batch is taken on the JS thread, one after the other, rather than as thread-pool round trips.
 */
const CACHED_LSTAT_MS = 0.1;

export interface MirrorReaderOptions {
  /**
   * A walk's batch of lstats is taken on the JS thread when its first lstat took less than this
   * (ms), else in the thread pool (default CACHED_LSTAT_MS; 0: always the pool).
   */
  cachedLstatMs?: number;
}

/** Reads split copies under the mirror's data directory by volume path. */
export class MirrorReader {
  private readonly tree: SafeTree;

  /**
   * `skip`: volume paths a walk leaves out, with everything below them (backup --exclude).
   */
  private readonly cachedLstatMs: number;

  constructor(
    readonly data: string,
    private readonly skip?: (volumePath: string) => boolean,
    opts: MirrorReaderOptions = {},
  ) {
    this.tree = new SafeTree(data);
    this.cachedLstatMs = opts.cachedLstatMs ?? CACHED_LSTAT_MS;
  }

  /** lstat of an entry (parents checked: no symlink on the way is followed). */
  async lstat(mirrorPath: string): Promise<fs.Stats> {
    return fsp.lstat(await this.tree.resolve(mirrorPath));
  }

  /** The same with times to the ns (what a snapshot records). */
  lstatNs(mirrorPath: string): Promise<fs.BigIntStats> {
    // A walk's entries: their directory was just resolved, no promise more for the path.
    let known: string | undefined;
    try {
      known = this.tree.resolveKnown(mirrorPath);
    } catch (err) {
      // A bad path ('..') rejects, as from resolve: callers catch it on the promise.
      return Promise.reject(err);
    }
    if (known !== undefined) return fsp.lstat(known, { bigint: true });
    return this.tree.resolve(mirrorPath).then((abs) => fsp.lstat(abs, { bigint: true }));
  }

  /**
   * The lstats (ns times) of a batch of a walk's entries, undefined for one that is gone or
   * unreadable. Taken on the JS thread when the first answers from the inode cache (a walked
   * directory's inodes mostly are, once the first is read: ext4 reads the inode table ahead);
   * else in parallel in the thread pool, so that storage that must be asked (a cold disk, a
   * network filesystem) answers them side by side. A thread-pool round trip costs more CPU than
   * a cached lstat itself (a wake of a pool thread, of the loop, a promise): 12,000 of them
   * were ~0.4 s of a full backup's CPU here (docs/benchmarks.md).
   */
  async lstatBatch(paths: string[]): Promise<Array<fs.BigIntStats | undefined>> {
    const first = paths.length > 0 ? this.tree.resolveKnown(paths[0]!) : undefined;
    if (first === undefined || this.cachedLstatMs <= 0)
      return Promise.all(paths.map((p) => this.lstatNs(p).catch(() => undefined)));
    const t0 = performance.now();
    const out = [lstatQuiet(first)];
    if (performance.now() - t0 >= this.cachedLstatMs) {
      const rest = await Promise.all(paths.slice(1).map((p) => this.lstatNs(p).catch(() => undefined)));
      return out.concat(rest);
    }
    for (let i = 1; i < paths.length; i++) {
      const abs = this.tree.resolveKnown(paths[i]!);
      out.push(abs === undefined ? await this.lstatNs(paths[i]!).catch(() => undefined) : lstatQuiet(abs));
    }
    // A turn of the event loop between batches: the copy's completions and the split lease's
    // pings are not held for a whole directory.
    await turn();
    return out;
  }

  /**
   * An entry's own extended attributes (never a symlink's target's), POSIX ACLs included, as
   * [name, base64] pairs sorted by name; undefined when it has none. An attribute removed
   * between list and get is simply not there.
   */
  async xattrs(mirrorPath: string): Promise<Array<[string, string]> | undefined> {
    return xattrsAt(await this.tree.resolve(mirrorPath));
  }

  /**
   * The same, without a promise, when the entry's parents are known to be real directories
   * (resolveKnown); 'unknown' when they are not (the caller then takes xattrs()).
   */
  xattrsKnown(mirrorPath: string): Array<[string, string]> | undefined | 'unknown' {
    const abs = this.tree.resolveKnown(mirrorPath);
    return abs === undefined ? 'unknown' : xattrsAt(abs);
  }

  /** The absolute path of an entry, every parent checked to be a real directory (SafeTree). */
  resolve(mirrorPath: string): Promise<string> {
    return this.tree.resolve(mirrorPath);
  }

  /** The same when every parent is known already (SafeTree.resolveKnown), else undefined. */
  resolveKnown(mirrorPath: string): string | undefined {
    return this.tree.resolveKnown(mirrorPath);
  }

  async readlink(mirrorPath: string): Promise<string> {
    return fsp.readlink(await this.tree.resolve(mirrorPath));
  }

  /** Opens a regular file for reading, never through a symlink. */
  async open(mirrorPath: string): Promise<{ fh: fs.promises.FileHandle; stat: fs.Stats }> {
    const file = await this.tree.resolve(mirrorPath);
    const flags = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW;
    // O_NOATIME where allowed: a backup must not change what the next one records.
    const fh = await openNoAtime(file, flags);
    try {
      const stat = await fh.stat();
      if (!stat.isFile())
        throw new TwinError('ETWIN_MIRROR_CHANGED', `${mirrorPath} in the mirror is not a regular file`);
      return { fh, stat };
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /**
   * A regular file of at most maxBytes, whole, with its fstat before and after the read.
   * Asynchronous: the copy reads many small files at once, so a cold cache's latencies overlap
   * instead of stopping the one JS thread one file after the other. Undefined when the file is
   * larger. Never through a symlink.
   */
  async readSmall(
    mirrorPath: string,
    maxBytes: number,
  ): Promise<{ stat: fs.Stats; after: fs.Stats; data: Buffer } | undefined> {
    const { fh, stat } = await this.open(mirrorPath);
    try {
      if (stat.size > maxBytes) return undefined;
      const data = Buffer.allocUnsafe(stat.size);
      let off = 0;
      while (off < data.length) {
        const { bytesRead } = await fh.read(data, off, data.length - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      return { stat, after: await fh.stat(), data: off === data.length ? data : data.subarray(0, off) };
    } finally {
      await fh.close();
    }
  }

  /**
   * The entries of a selection, by walking the mirror (when the server's item list was cut
   * short): parents before children, sorted, symlinks not followed. Depth first; with
   * `dirsLast` every entry of a directory comes before what its subdirectories hold (the
   * sizing walk: a large file beside many subdirectories is found at once, not after them).
   */
  async *walk(
    selector: {
      paths?: string[];
      subtree?: string;
      volume?: boolean;
    },
    opts: { dirsLast?: boolean } = {},
  ): AsyncGenerator<SourceEntry> {
    const roots = selector.volume ? ['/'] : selector.subtree ? [selector.subtree] : (selector.paths ?? []);
    for (const r of roots) {
      const top = toVolumePath(r);
      const st = await this.lstatNs(top).catch((err) => {
        if (errnoCode(err) === 'ENOENT') return undefined;
        throw err;
      });
      if (!st || this.skip?.(top)) continue;
      yield { path: top, mirrorPath: top, stat: st };
      if (st.isDirectory() && !selector.paths) yield* this.walkDir(top, !!opts.dirsLast);
    }
  }

  private async *walkDir(dir: string, dirsLast: boolean): AsyncGenerator<SourceEntry> {
    // Without moving the copy's atime: the next snapshot records it (readdirNoAtime).
    const names = readdirNoAtime(await this.tree.resolve(dir)).sort();
    // Read without following a final symlink: a real directory, whose entries resolve at once.
    this.tree.knownDirectory(dir);
    const subdirs: string[] = [];
    // The lstats of a directory's entries go out WALK_LSTATS at a time, not one after the
    // other: one at a time, a walk of 10,000 files is 10,000 thread-pool round trips in a row.
    for (let i = 0; i < names.length; i += WALK_LSTATS) {
      const paths = names
        .slice(i, i + WALK_LSTATS)
        .map((name) => (dir === '/' ? `/${name}` : `${dir}/${name}`));
      const stats = await this.lstatBatch(paths);
      for (const [j, p] of paths.entries()) {
        const st = stats[j];
        if (!st || this.skip?.(p)) continue;
        yield { path: p, mirrorPath: p, stat: st };
        if (!st.isDirectory()) continue;
        if (dirsLast) subdirs.push(p);
        else yield* this.walkDir(p, false);
      }
    }
    for (const p of subdirs) yield* this.walkDir(p, true);
  }
}
