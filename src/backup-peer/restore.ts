import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { errnoCode, TwinError } from '../common/errors.js';
import type { PathPatterns } from '../common/path-patterns.js';
import { servedMountHolding } from '../common/served-mounts.js';
import { installBytePaths } from '../posix/byte-paths.js';
import { mknod, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK } from '../posix/mknod.js';
import { msToNs, setTimesNs } from '../posix/set-times.js';
import { setXattr } from '../posix/xattr.js';
import type { EntryRecord, SnapshotRecord } from './catalog.js';
import { loadSnapshot } from './catalog-sync.js';
import { toVolumePath } from './mirror-source.js';
import { forEachLimit, SafeTree } from './safe-tree.js';
import { type BackupTarget, Digest, isNodeEntry, volumePathParts } from './target.js';
import type { TargetRegistry } from './targets/index.js';

export interface RestoreOptions {
  /** Snapshot id, unique prefix or 'latest'. */
  snapshot: string;
  /** Volume paths to restore (each with everything below it); none = the whole snapshot. */
  paths?: string[];
  /** Destination directory; entries land at TO/<volume path>. */
  to: string;
  catalogDir?: string;
  /** Read the snapshot from this target (TYPE:LOCATION) instead of looking it up in the catalog. */
  target?: string;
  registry: TargetRegistry;
  /** Restore only entries these patterns match (with everything below them and the directories above). */
  include?: PathPatterns;
  /** Leave out entries these patterns match (with everything below them). */
  exclude?: PathPatterns;
  /**
   * What to do with a file, symlink or node that exists at the destination: replace it
   * (`always`, the default), leave it (`never`), or replace it only when the snapshot's is
   * newer (`if-newer`, by mtime). Directories are always merged into.
   */
  overwrite?: OverwritePolicy;
  signal?: AbortSignal;
  onProgress?: (p: {
    files: number;
    filesTotal: number;
    bytes: number;
    bytesTotal: number;
    path: string;
  }) => void;
}

export type OverwritePolicy = 'always' | 'never' | 'if-newer';

export interface RestoreFailure {
  path: string;
  code: string;
  message: string;
}

export interface RestoreResult {
  snapshotId: string;
  entries: number;
  bytes: number;
  /** Entries left as they were at the destination (--overwrite never / if-newer). */
  kept: number;
  failures: RestoreFailure[];
}

/**
 * Loads a snapshot that may be read: complete, with its entries; from the target when one is
 * given (the catalog is only a cache, see catalog-sync.ts).
 */
export async function loadCompleteSnapshot(
  catalogDir: string | undefined,
  ref: string,
  registry?: TargetRegistry,
  target?: string,
): Promise<{ snapshot: SnapshotRecord; entries: EntryRecord[] }> {
  return loadSnapshot({ ref, catalogDir, registry, target });
}

/**
 * Restores a snapshot (or paths of it) into a directory: content byte for byte (verified
 * against the catalog's hash; runs of zeros as holes), mode, owner (as root, symlinks too),
 * xattrs and ACLs, atime and mtime to the ns (when the snapshot recorded them), symlinks as
 * symlinks, the names of a hard-linked file as links of one file, fifos, devices and sockets
 * as nodes (docs/architecture.md, "Faithful restore"). Each file is on disk (fdatasync) before it takes its name, and the directories
 * that received names are fsync'd before restore returns. Nothing is
 * ever written outside `to`: paths with '..' are refused, and so is any existing or restored
 * symlink on the way to an entry. Files are written to a temporary name and renamed into place,
 * so an existing file is replaced whole or not at all. The destination may be any directory, a
 * twinfs mount included.
 *
 * Failures of single entries are collected (the rest is still restored); the caller decides
 * what they mean. Bad arguments and an incomplete snapshot throw before anything is written.
 */
export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  installBytePaths();
  await refuseOwnMount(path.resolve(o.to));
  const wanted = (o.paths ?? []).map((p) => {
    try {
      return toVolumePath(p);
    } catch {
      throw new TwinError(
        'ETWIN_PATH_ESCAPE',
        `restore path ${JSON.stringify(p)} escapes the volume root (and would escape --to)`,
        { path: p },
      );
    }
  });
  const { snapshot, entries: all } = await loadCompleteSnapshot(
    o.catalogDir,
    o.snapshot,
    o.registry,
    o.target,
  );
  for (const e of all) volumePathParts(e.path);
  const under = (p: string, top: string) => top === '/' || p === top || p.startsWith(top + '/');
  const selected = all.filter(
    (e) =>
      (wanted.length === 0 || wanted.some((w) => under(e.path, w))) &&
      (!o.include || o.include.matches(e.path)) &&
      !o.exclude?.matches(e.path),
  );
  for (const w of wanted)
    if (!all.some((e) => under(e.path, w)))
      throw new TwinError('ETWIN_NOT_FOUND', `${w} is not in snapshot ${snapshot.id}`, {
        path: w,
        snapshotId: snapshot.id,
      });
  // Directories above the selection get their recorded metadata too.
  const byPath = new Map(all.map((e) => [e.path, e]));
  const selectedPaths = new Set(selected.map((e) => e.path));
  const ancestors = new Map<string, EntryRecord>();
  for (const e of selected)
    for (let p = path.posix.dirname(e.path); p !== '/'; p = path.posix.dirname(p)) {
      const a = byPath.get(p);
      if (a?.type === 'dir' && !selectedPaths.has(p)) ancestors.set(p, a);
    }

  const to = path.resolve(o.to);
  await fsp.mkdir(to, { recursive: true });
  const tree = new SafeTree(await fsp.realpath(to));
  const target = await o.registry.open(snapshot.target, { create: false });
  const result: RestoreResult = { snapshotId: snapshot.id, entries: 0, bytes: 0, kept: 0, failures: [] };
  const bytesTotal = selected.reduce((n, e) => n + (e.type === 'file' && !e.linkTo ? e.size : 0), 0);
  const fail = (p: string, err: unknown) =>
    result.failures.push({
      path: p,
      code: (err as { code?: string })?.code ?? 'ETWIN_INTERNAL',
      message: (err as Error)?.message ?? String(err),
    });
  const asRoot = (process.getuid?.() ?? 1) === 0;
  const dirs = selected.filter((e) => e.type === 'dir' && e.path !== '/');
  /** Directories that received a name: fsync'd once the files are in. */
  const touchedDirs = new Set<string>();
  const { leaves, links } = planLinks(selected.filter((e) => e.type !== 'dir'));
  /** Where each restored file landed, for the other names of its inode. */
  const placed = new Map<string, string>();
  let done = 0;
  /** One entry dealt with: restored (counted with its bytes) or kept as it was. */
  const step = (e: EntryRecord, bytes = 0, kept = false) => {
    if (kept) result.kept++;
    else result.entries++;
    result.bytes += bytes;
    o.onProgress?.({
      files: ++done,
      filesTotal: selected.length,
      bytes: result.bytes,
      bytesTotal,
      path: e.path,
    });
  };
  const overwrite = o.overwrite ?? 'always';
  try {
    for (const d of dirs) {
      try {
        // Owner-writable while children are restored; the recorded mode comes last.
        await tree.mkdir(d.path);
        step(d);
      } catch (err) {
        fail(d.path, err);
      }
    }
    const restoreLeaf = async (e: EntryRecord) => {
      if (o.signal?.aborted) throw new TwinError('ETWIN_ABORTED', 'restore cancelled');
      try {
        if (overwrite !== 'always' && (await keepExisting(e, tree, overwrite))) {
          step(e, 0, true);
          return;
        }
        if (e.type === 'file') {
          const leader = links.get(e.path);
          const at = leader !== undefined ? placed.get(leader) : undefined;
          // Another name of a file restored above: a hard link to it (its data, metadata and
          // xattrs are the inode's). Without one (it failed) the name gets the data itself.
          if (at !== undefined) step(e, await restoreHardLink(e, at, tree, touchedDirs));
          else {
            const { bytes, dest } = await restoreFile(target, snapshot.id, e, tree, asRoot, touchedDirs);
            placed.set(e.path, dest);
            step(e, bytes);
          }
        } else if (e.type === 'symlink') {
          await restoreSymlink(e, tree, asRoot, touchedDirs);
          step(e);
        } else if (isNodeEntry(e)) {
          await restoreNode(e, tree, asRoot, touchedDirs);
          step(e);
        }
      } catch (err) {
        fail(e.path, err);
      }
    };
    const concurrency = Math.min(4, target.capabilities.maxConcurrency);
    // Names of hard links after the names they link to.
    await forEachLimit(leaves, concurrency, restoreLeaf);
    await forEachLimit(
      selected.filter((e) => links.has(e.path)),
      concurrency,
      restoreLeaf,
    );
    await syncDirs(touchedDirs);
    const metaDirs = [...dirs, ...ancestors.values()].sort(
      (a, b) => b.path.split('/').length - a.path.split('/').length,
    );
    for (const d of metaDirs) {
      try {
        const dir = await tree.resolve(d.path);
        // chmod follows symlinks: touch only a real directory (a symlink here was refused above).
        if ((await fsp.lstat(dir)).isDirectory()) await applyMeta(dir, d, asRoot, false);
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') fail(d.path, err);
      }
    }
  } finally {
    await target.close();
  }
  return result;
}

/**
 * Whether an entry's destination holds something the overwrite policy keeps: anything
 * (`never`), or something at least as new as the snapshot's entry (`if-newer`, by mtime).
 */
async function keepExisting(e: EntryRecord, tree: SafeTree, policy: OverwritePolicy): Promise<boolean> {
  let st: fs.Stats;
  try {
    st = await fsp.lstat(await tree.resolve(e.path));
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw err;
  }
  return policy === 'never' || st.mtimeMs >= e.mtime;
}

async function restoreFile(
  target: BackupTarget,
  snapshotId: string,
  e: EntryRecord,
  tree: SafeTree,
  asRoot: boolean,
  touchedDirs: Set<string>,
): Promise<{ bytes: number; dest: string }> {
  const { dest, tmp } = await placeFor(e, tree, touchedDirs);
  const fh = await fsp.open(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  let ok = false;
  try {
    const digest = new Digest();
    const stream = await target.openFile(snapshotId, e.path);
    // Runs of zeros become holes (the file is new: what is not written reads as zeros), so
    // sparse files come back sparse, as with cp --sparse / rsync -S.
    let pos = 0;
    for await (const chunk of stream) {
      const b = chunk as Buffer;
      digest.update(b);
      for (let at = 0; at < b.length; at += HOLE_BLOCK) {
        const piece = b.subarray(at, Math.min(b.length, at + HOLE_BLOCK));
        if (!isZero(piece)) {
          let off = 0;
          while (off < piece.length)
            off += (await fh.write(piece, off, piece.length - off, pos + off)).bytesWritten;
        }
        pos += piece.length;
      }
    }
    await fh.truncate(pos);
    // On disk before it takes the name: a crash leaves the old file or the whole new one.
    await fh.datasync();
    const got = digest.result();
    if (got.bytes !== e.size || (e.hash && got.hash !== e.hash))
      throw new TwinError(
        'ETWIN_CHECK_FAILED',
        `${e.path}: the backup data does not match the catalog (size ${got.bytes}/${e.size}, sha256 ${got.hash.slice(0, 12)}…)`,
        {
          path: e.path,
        },
      );
    await fh.close().catch(() => undefined);
    await applyMeta(tmp, e, asRoot, false);
    await fsp.rename(tmp, dest);
    ok = true;
    return { bytes: got.bytes, dest };
  } finally {
    await fh.close().catch(() => undefined);
    if (!ok) await fsp.rm(tmp, { force: true });
  }
}

async function restoreSymlink(
  e: EntryRecord,
  tree: SafeTree,
  asRoot: boolean,
  touchedDirs: Set<string>,
): Promise<void> {
  if (e.target === undefined)
    throw new TwinError('ETWIN_CATALOG', `${e.path}: symlink without a target in the catalog`, {
      path: e.path,
    });
  const { dest, tmp } = await placeFor(e, tree, touchedDirs);
  await fsp.symlink(e.target, tmp);
  try {
    await applyMeta(tmp, e, asRoot, true);
    await fsp.rename(tmp, dest);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

/** Another name of a restored file: linked under a temporary name, renamed into place. */
async function restoreHardLink(
  e: EntryRecord,
  existing: string,
  tree: SafeTree,
  touchedDirs: Set<string>,
): Promise<number> {
  const { dest, tmp } = await placeFor(e, tree, touchedDirs);
  await fsp.link(existing, tmp);
  try {
    await fsp.rename(tmp, dest);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  return 0;
}

const NODE_BITS: Record<string, number> = {
  fifo: S_IFIFO,
  char: S_IFCHR,
  block: S_IFBLK,
  socket: S_IFSOCK,
};

/** A fifo, device or socket, made with mknod (devices need root, as with tar and cpio). */
async function restoreNode(
  e: EntryRecord,
  tree: SafeTree,
  asRoot: boolean,
  touchedDirs: Set<string>,
): Promise<void> {
  const { dest, tmp } = await placeFor(e, tree, touchedDirs);
  await mknod(tmp, NODE_BITS[e.type]! | (e.mode & 0o7777), e.rdev ?? 0);
  try {
    await applyMeta(tmp, e, asRoot, false);
    await fsp.rename(tmp, dest);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

/**
 * The hard links of a selection: each entry that is another name of a selected file, mapped to
 * the name restored with the data (the one its linkTo names, or the first selected name of the
 * group when that one is not selected); leaves are the rest.
 */
function planLinks(entries: EntryRecord[]): { leaves: EntryRecord[]; links: Map<string, string> } {
  const groups = new Map<string, EntryRecord[]>();
  for (const e of entries)
    if (e.type === 'file') {
      const key = e.linkTo ?? e.path;
      const g = groups.get(key);
      if (g) g.push(e);
      else groups.set(key, [e]);
    }
  const links = new Map<string, string>();
  for (const [key, g] of groups) {
    if (g.length < 2) continue;
    const leader = g.find((e) => e.path === key) ?? g[0]!;
    for (const e of g) if (e !== leader) links.set(e.path, leader.path);
  }
  return { leaves: entries.filter((e) => !links.has(e.path)), links };
}

/**
 * In the server's own process (the REPL of `twinfs serve --repl`) a restore into its mount
 * would wait on itself forever. Checked on the nearest existing ancestor, before anything is
 * created.
 */
async function refuseOwnMount(to: string): Promise<void> {
  let p = to;
  for (;;) {
    const real = await fsp.realpath(p).catch(() => undefined);
    if (real !== undefined) {
      const m = servedMountHolding(real);
      if (m)
        throw new TwinError(
          'ETWIN_OWN_MOUNT',
          `${to} is inside ${m}, which this process serves: it cannot restore into its own mount. ` +
            'Run `twinfs restore` from another shell (or restore elsewhere and copy).',
          { to, mount: m },
        );
      return;
    }
    const up = path.dirname(p);
    if (up === p) return;
    p = up;
  }
}

/**
 * Where entry e goes (parents created, nothing but a file or symlink in the way) and the
 * temporary name beside it that it is written under before being renamed into place.
 */
async function placeFor(
  e: EntryRecord,
  tree: SafeTree,
  touchedDirs: Set<string>,
): Promise<{ dest: string; tmp: string }> {
  const dest = await tree.prepareParents(e.path, 0o755);
  touchedDirs.add(path.dirname(dest));
  await refuseDirInTheWay(dest, e.path);
  const tmp = path.join(
    path.dirname(dest),
    `.${path.basename(dest)}.twinfs-restore-${randomBytes(4).toString('hex')}`,
  );
  return { dest, tmp };
}

async function refuseDirInTheWay(dest: string, p: string): Promise<void> {
  const st = await fsp.lstat(dest).catch(() => undefined);
  if (st?.isDirectory())
    throw new TwinError(
      'ETWIN_RESTORE_FAILED',
      `${p}: a directory is in the way at the destination; not replacing it`,
      { path: p },
    );
}

/**
 * Owner first (chown clears set-id bits), then mode, then xattrs (an ACL sets the group bits
 * the mode showed), times last, to the ns when the entry has them (older entries: mtime in ms,
 * atime = mtime). As another user than root, owners stay the restorer's and only user.* xattrs
 * and ACLs are set (trusted.* and security.* need privileges), as with tar and rsync.
 */
async function applyMeta(p: string, m: EntryRecord, asRoot: boolean, link: boolean): Promise<void> {
  if (asRoot) await fsp.lchown(p, m.uid, m.gid);
  if (!link) await fsp.chmod(p, m.mode & 0o7777);
  for (const [name, value] of m.xattrs ?? [])
    if (asRoot || name.startsWith('user.') || name.startsWith('system.posix_acl_'))
      setXattr(p, name, Buffer.from(value, 'base64'));
  const mtime = m.mtimeNs !== undefined ? BigInt(m.mtimeNs) : msToNs(m.mtime);
  setTimesNs(p, m.atimeNs !== undefined ? BigInt(m.atimeNs) : mtime, mtime);
}

const HOLE_BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(HOLE_BLOCK);
const isZero = (b: Buffer) => b.equals(b.length === HOLE_BLOCK ? ZEROS : ZEROS.subarray(0, b.length));

/** fsync of directories: the names restored into them survive a crash. */
async function syncDirs(dirs: Iterable<string>): Promise<void> {
  for (const d of dirs) {
    const fh = await fsp.open(d, 'r').catch(() => undefined);
    if (!fh) continue;
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}
