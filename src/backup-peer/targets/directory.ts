import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { errnoCode, TwinError } from '../../common/errors.js';
import { forEachLimit, fsyncPath, SafeTree } from '../safe-tree.js';
import {
  type BackupTarget,
  type BackupTargetProvider,
  Digest,
  type EntryMeta,
  type ManifestEntry,
  type PutResult,
  type SnapshotManifest,
  type SnapshotMeta,
  type SnapshotWriter,
  type TargetCapabilities,
  type TargetSnapshotInfo,
  type TargetStat,
  targetError,
} from '../target.js';

/**
 * The directory target (`dir:/backups`): a plain tree per snapshot, readable with ls and cp.
 *
 *   ROOT/<id>.partial/...        a snapshot being written (invisible to listSnapshots)
 *   ROOT/<id>/...                a committed snapshot: the volume's tree as it was
 *   ROOT/.manifests/<id>.jsonl   its manifest; this file is the commit record
 *
 * Commit order (each step durable before the next): file data, directories, rename of the
 * tree to its final name, then the manifest written beside and renamed into place. A crash
 * anywhere leaves either no manifest (the snapshot does not exist and the leftovers are removed
 * by deleteSnapshot) or a complete snapshot. Unchanged files are hard links to the previous
 * snapshot's, so an incremental snapshot costs the changed files plus one directory tree.
 *
 * Ownership and modes are stored on the files as they were when the peer runs as root. As
 * another user it cannot chown, and it keeps owner read/write(/search) bits so that it can read
 * its own backups; the manifest and the catalog hold the true metadata either way, and restore
 * uses those, never the target files' own metadata.
 */
export class DirectoryTarget implements BackupTarget {
  readonly id = 'dir';
  readonly spec: string;
  readonly capabilities: TargetCapabilities = {
    rangedReads: true,
    dedup: true,
    atomicRename: true,
    maxConcurrency: 8,
  };
  private readonly manifests: string;
  /** Committed snapshots being read, with their checked directories cached. */
  private readonly trees = new Map<string, SafeTree>();

  private constructor(readonly root: string) {
    this.spec = `dir:${root}`;
    this.manifests = path.join(root, '.manifests');
  }

  /** Opens (creating if needed, mode 0700) the target directory. */
  static async open(location: string): Promise<DirectoryTarget> {
    if (!location) throw new TwinError('ETWIN_TARGET_SPEC', 'dir: target needs a directory (dir:/backups)');
    const root = path.resolve(location);
    try {
      await fsp.mkdir(root, { recursive: true, mode: 0o700 });
      await fsp.mkdir(path.join(root, '.manifests'), { mode: 0o700 }).catch((err) => {
        if (errnoCode(err) !== 'EEXIST') throw err;
      });
      const st = await fsp.stat(root);
      if (!st.isDirectory())
        throw new TwinError('ETWIN_TARGET_FAILED', `target ${root} is not a directory`, { root });
    } catch (err) {
      throw targetError(err, `cannot open target directory ${root}`, { root });
    }
    return new DirectoryTarget(root);
  }

  async beginSnapshot(meta: SnapshotMeta): Promise<SnapshotWriter> {
    checkId(meta.snapshotId);
    const partial = path.join(this.root, `${meta.snapshotId}.partial`);
    if (await exists(this.manifestFile(meta.snapshotId)))
      throw new TwinError(
        'ETWIN_TARGET_FAILED',
        `snapshot ${meta.snapshotId} already exists at ${this.spec}`,
        { snapshotId: meta.snapshotId },
      );
    try {
      // Leftovers of an earlier attempt with this id are not ours to keep.
      await fsp.rm(partial, { recursive: true, force: true });
      await fsp.mkdir(partial, { mode: 0o700 });
    } catch (err) {
      throw targetError(err, `cannot start snapshot ${meta.snapshotId}`);
    }
    return new DirectorySnapshotWriter(this, meta.snapshotId, partial);
  }

  async listSnapshots(): Promise<TargetSnapshotInfo[]> {
    let names: string[];
    try {
      names = await fsp.readdir(this.manifests);
    } catch (err) {
      throw targetError(err, `cannot list ${this.spec}`);
    }
    const out: TargetSnapshotInfo[] = [];
    for (const n of names) {
      if (!n.endsWith('.jsonl')) continue;
      const header = await readFirstLine(path.join(this.manifests, n)).catch(() => undefined);
      const meta = header ? (JSON.parse(header) as { meta?: SnapshotMeta }).meta : undefined;
      if (meta?.snapshotId) out.push({ snapshotId: meta.snapshotId, time: meta.time });
    }
    return out.sort((a, b) => a.time - b.time || a.snapshotId.localeCompare(b.snapshotId));
  }

  async readManifest(snapshotId: string): Promise<SnapshotManifest> {
    checkId(snapshotId);
    let text: string;
    try {
      text = await fsp.readFile(this.manifestFile(snapshotId), 'utf8');
    } catch (err) {
      throw targetError(err, `snapshot ${snapshotId} at ${this.spec}`, { snapshotId });
    }
    const lines = text.split('\n').filter((l) => l.length > 0);
    const head = JSON.parse(lines[0] ?? '{}') as Omit<SnapshotManifest, 'entries'>;
    return { ...head, entries: lines.slice(1).map((l) => JSON.parse(l) as ManifestEntry) };
  }

  async openFile(
    snapshotId: string,
    p: string,
    range: { start?: number; end?: number } = {},
  ): Promise<Readable> {
    const file = await this.committedPath(snapshotId, p);
    let fh: fs.promises.FileHandle | undefined;
    try {
      fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      if (!(await fh.stat()).isFile())
        throw new TwinError('ETWIN_TARGET_NOT_FOUND', `${p} is not a file in snapshot ${snapshotId}`);
      return fh.createReadStream({ start: range.start, end: range.end, highWaterMark: 1 << 20 });
    } catch (err) {
      await fh?.close().catch(() => undefined);
      throw targetError(err, `${p} in snapshot ${snapshotId}`, { snapshotId, path: p });
    }
  }

  async stat(snapshotId: string, p: string): Promise<TargetStat> {
    const file = await this.committedPath(snapshotId, p);
    try {
      const st = await fsp.lstat(file);
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file';
      return { type, size: type === 'file' ? st.size : 0 };
    } catch (err) {
      throw targetError(err, `${p} in snapshot ${snapshotId}`, { snapshotId, path: p });
    }
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    checkId(snapshotId);
    this.trees.delete(snapshotId);
    try {
      // Manifest first: from here on the snapshot no longer exists, whatever else fails.
      await fsp.rm(this.manifestFile(snapshotId), { force: true });
      await fsyncPath(this.manifests).catch(() => undefined);
      await fsp.rm(path.join(this.root, snapshotId), { recursive: true, force: true });
      await fsp.rm(path.join(this.root, `${snapshotId}.partial`), { recursive: true, force: true });
    } catch (err) {
      throw targetError(err, `cannot delete snapshot ${snapshotId} at ${this.spec}`, { snapshotId });
    }
  }

  async close(): Promise<void> {}

  /** @internal */
  manifestFile(snapshotId: string): string {
    return path.join(this.manifests, `${snapshotId}.jsonl`);
  }

  /** @internal Writes the manifest durably: the commit point of a snapshot. */
  async writeManifest(manifest: SnapshotManifest): Promise<void> {
    const { entries, ...head } = manifest;
    const file = this.manifestFile(manifest.meta.snapshotId);
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      // Streamed in slices: a manifest of a large volume is large.
      let buf = JSON.stringify(head) + '\n';
      for (const e of entries) {
        buf += JSON.stringify(e) + '\n';
        if (buf.length > 1 << 20) {
          await fh.write(buf);
          buf = '';
        }
      }
      await fh.write(buf);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await fsyncPath(this.manifests);
  }

  /** A committed snapshot's file, parents checked (a stored symlink is never followed). */
  private async committedPath(snapshotId: string, p: string): Promise<string> {
    checkId(snapshotId);
    if (!(await exists(this.manifestFile(snapshotId))))
      throw new TwinError('ETWIN_TARGET_NOT_FOUND', `no snapshot ${snapshotId} at ${this.spec}`, {
        snapshotId,
      });
    try {
      let tree = this.trees.get(snapshotId);
      if (!tree) this.trees.set(snapshotId, (tree = new SafeTree(path.join(this.root, snapshotId))));
      return await tree.resolve(p);
    } catch (err) {
      // Below a file or a stored symlink there is nothing in the snapshot: not found ('..' stays an escape).
      if (err instanceof TwinError && err.code === 'ETWIN_PATH_ESCAPE' && err.data.at !== undefined)
        throw new TwinError(
          'ETWIN_TARGET_NOT_FOUND',
          `${p} is not in snapshot ${snapshotId} (${err.message})`,
          {
            snapshotId,
            path: p,
          },
        );
      throw targetError(err, `${p} in snapshot ${snapshotId}`, { snapshotId, path: p });
    }
  }
}

class DirectorySnapshotWriter implements SnapshotWriter {
  private readonly tree: SafeTree;
  /** Files whose data still has to be synced at commit. */
  private readonly unsynced: string[] = [];
  /** Directories with their metadata, applied at commit (children change a dir's mtime). */
  private readonly dirMeta = new Map<string, EntryMeta>();
  private inflight = 0;
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';
  private readonly asRoot = (process.getuid?.() ?? 1) === 0;
  /** Earlier snapshots reuseFile reads, with their checked directories cached. */
  private readonly sources = new Map<string, SafeTree>();

  constructor(
    private readonly target: DirectoryTarget,
    readonly snapshotId: string,
    private readonly partial: string,
  ) {
    this.tree = new SafeTree(partial);
  }

  putFile(
    p: string,
    data: Readable,
    meta: EntryMeta,
    opts: { signal?: AbortSignal } = {},
  ): Promise<PutResult> {
    return this.op(`put ${p}`, async () => {
      const file = await this.tree.prepareParents(p);
      // O_EXCL: never write through an existing entry (a symlink included).
      const fh = await fsp.open(
        file,
        fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
        0o600,
      );
      const digest = new Digest();
      let ok = false;
      try {
        for await (const chunk of data) {
          if (opts.signal?.aborted) throw new TwinError('ETWIN_ABORTED', `put ${p} cancelled`);
          const b = chunk as Buffer;
          // Hash (CPU, this thread) while the write runs on the thread pool.
          const written = writeAll(fh, b);
          digest.update(b);
          await written;
        }
        await this.applyMeta(fh, meta);
        ok = true;
      } finally {
        await fh.close();
        if (!ok) {
          data.destroy();
          await fsp.rm(file, { force: true });
        }
      }
      this.unsynced.push(file);
      return digest.result();
    });
  }

  reuseFile(p: string, fromSnapshotId: string, entry: ManifestEntry): Promise<void> {
    return this.op(`reuse ${p}`, async () => {
      checkId(fromSnapshotId);
      const from = await this.committedTree(fromSnapshotId).resolve(p);
      const st = await fsp.lstat(from);
      if (!st.isFile() || st.size !== entry.size)
        throw new TwinError('ETWIN_TARGET_NOT_FOUND', `${p} in ${fromSnapshotId} is not the file to reuse`, {
          path: p,
        });
      const file = await this.tree.prepareParents(p);
      try {
        await fsp.link(from, file);
      } catch (err) {
        // Too many links to one inode (ext4: 65000): give this snapshot its own copy.
        if (errnoCode(err) !== 'EMLINK') throw err;
        await fsp.copyFile(from, file, fs.constants.COPYFILE_EXCL);
        const fh = await fsp.open(file, 'r+');
        try {
          await this.applyMeta(fh, entry);
        } finally {
          await fh.close();
        }
        this.unsynced.push(file);
      }
    });
  }

  putDir(p: string, meta: EntryMeta): Promise<void> {
    return this.op(`mkdir ${p}`, async () => {
      await this.tree.mkdir(p);
      this.dirMeta.set(p, meta);
    });
  }

  putSymlink(p: string, linkTarget: string, meta: EntryMeta): Promise<void> {
    return this.op(`symlink ${p}`, async () => {
      const file = await this.tree.prepareParents(p);
      await fsp.symlink(linkTarget, file);
      if (this.asRoot) await fsp.lchown(file, meta.uid, meta.gid);
      await fsp.lutimes(file, meta.mtime / 1000, meta.mtime / 1000);
    });
  }

  async commit(manifest: SnapshotManifest): Promise<void> {
    if (this.state !== 'open')
      throw new TwinError('ETWIN_TARGET_FAILED', `snapshot ${this.snapshotId} is ${this.state}`);
    if (this.inflight > 0)
      throw new TwinError(
        'ETWIN_TARGET_FAILED',
        `commit of ${this.snapshotId} while ${this.inflight} puts are in flight`,
      );
    if (manifest.meta.snapshotId !== this.snapshotId)
      throw new TwinError('ETWIN_TARGET_FAILED', 'manifest names another snapshot');
    this.state = 'committing';
    const final = path.join(this.target.root, this.snapshotId);
    try {
      // Deepest first: a parent's times must be set after its children are complete.
      const dirs = [...this.dirMeta.keys()].sort((a, b) => b.split('/').length - a.split('/').length);
      for (const d of dirs) await this.applyDirMeta(d, this.dirMeta.get(d)!);
      await forEachLimit(this.unsynced, 16, fsyncPath);
      await forEachLimit(await listDirs(this.partial), 16, fsyncPath);
      await fsp.rename(this.partial, final);
      await fsyncPath(this.target.root);
      await this.target.writeManifest(manifest);
      this.state = 'committed';
    } catch (err) {
      this.state = 'open';
      // A half-renamed tree without its manifest is not a snapshot; put it back for abort().
      if (await exists(final)) await fsp.rename(final, this.partial).catch(() => undefined);
      throw targetError(err, `commit of snapshot ${this.snapshotId} failed`, { snapshotId: this.snapshotId });
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'committed' || this.state === 'aborted') return;
    this.state = 'aborted';
    await fsp.rm(this.partial, { recursive: true, force: true }).catch(() => undefined);
  }

  private committedTree(snapshotId: string): SafeTree {
    let t = this.sources.get(snapshotId);
    if (!t) this.sources.set(snapshotId, (t = new SafeTree(path.join(this.target.root, snapshotId))));
    return t;
  }

  private async op<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.state !== 'open')
      throw new TwinError('ETWIN_TARGET_FAILED', `${what}: snapshot ${this.snapshotId} is ${this.state}`);
    this.inflight++;
    try {
      return await fn();
    } catch (err) {
      throw targetError(err, what, { snapshotId: this.snapshotId });
    } finally {
      this.inflight--;
    }
  }

  /** Owner before mode (chown clears set-id bits), times last. */
  private async applyMeta(fh: fs.promises.FileHandle, meta: EntryMeta): Promise<void> {
    if (this.asRoot) await fh.chown(meta.uid, meta.gid);
    await fh.chmod(this.asRoot ? meta.mode & 0o7777 : (meta.mode & 0o7777) | 0o600);
    await fh.utimes(meta.mtime / 1000, meta.mtime / 1000);
  }

  private async applyDirMeta(p: string, meta: EntryMeta): Promise<void> {
    const dir = this.tree.abs(p);
    if (this.asRoot) await fsp.lchown(dir, meta.uid, meta.gid);
    await fsp.chmod(dir, this.asRoot ? meta.mode & 0o7777 : (meta.mode & 0o7777) | 0o700);
    await fsp.utimes(dir, meta.mtime / 1000, meta.mtime / 1000);
  }
}

/** Snapshot ids become file names: keep them to a safe alphabet. */
function checkId(id: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id) || id.endsWith('.partial') || id.includes('..'))
    throw new TwinError('ETWIN_TARGET_SPEC', `bad snapshot id ${JSON.stringify(id)}`, { snapshotId: id });
}

async function writeAll(fh: fs.promises.FileHandle, b: Buffer): Promise<void> {
  for (let off = 0; off < b.length; ) off += (await fh.write(b, off, b.length - off)).bytesWritten;
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}

async function readFirstLine(file: string): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    let text = '';
    const buf = Buffer.alloc(64 * 1024);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) return text;
      text += buf.subarray(0, bytesRead).toString('utf8');
      const i = text.indexOf('\n');
      if (i >= 0) return text.slice(0, i);
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

/** Every directory of a tree, the root included (no symlinks followed). */
async function listDirs(root: string): Promise<string[]> {
  const out = [root];
  for (let i = 0; i < out.length; i++) {
    for (const d of await fsp.readdir(out[i]!, { withFileTypes: true }))
      if (d.isDirectory()) out.push(path.join(out[i]!, d.name));
  }
  return out;
}

export const directoryTargetProvider: BackupTargetProvider = {
  id: 'dir',
  open: (location) => DirectoryTarget.open(location),
};
