import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { fsPath } from '../posix/byte-names.js';
import { FALLOC_SUPPORTED } from '../posix/fallocate.js';
import { mknod } from '../posix/mknod.js';
import { posix } from '../posix/native.js';
import { nsToMs, setFdTimesNs, setTimesNs } from '../posix/set-times.js';
import { writeAll } from '../posix/write-all.js';
import { getXattr, listXattrs, removeXattr, setXattr } from '../posix/xattr.js';
import { type ChangeSink, nullSink, syncAlongside, type WriteGate } from './change-sink.js';
import { errnoError } from './errno.js';
import { HandleNodes } from './handle-nodes.js';
import { HiddenLinks, HiddenRenames, isHiddenEntry, isHiddenPath } from './hidden-renames.js';
import type { KernelNames, ShownAttrs } from './kernel-names.js';
import type {
  ClosedFile,
  NativeCreated,
  NativeEntry,
  NativeOpened,
  NativeSetattr,
} from './native-changes.js';
import { OpenNames } from './open-names.js';
import { parentOf, type VolumePaths } from './volume-paths.js';
import type { FileNode, WritebackCache } from './writeback-cache.js';

/** Who is calling (from fuse_get_context); undefined when the binding cannot tell. */
export interface CallerContext {
  uid: number;
  gid: number;
  pid: number;
  /** write only: the kernel writing back pages (mmap, laundering), not a write(2). */
  writepage?: boolean;
}

/** What getattr returns (fuse-native's stat shape). */
export interface VolumeStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  dev: number;
  nlink: number;
  ino: number;
  rdev: number;
  blksize: number;
  blocks: number;
  /** Times in ns since the epoch, exactly as the primary has them. */
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
}

export interface VolumeStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

export interface VolumeOpsOptions {
  paths: VolumePaths;
  cache: WritebackCache;
  sink: ChangeSink;
  gate: WriteGate;
  /** Flush a file's cached data when the application closes it (default false). */
  flushOnClose?: boolean;
  /**
   * Forget every path known to have no security.capability, in layers below this one (the
   * patched fuse-native answers those lookups itself: Fuse.forgetNoCapabilities).
   */
  forgetNoCapabilities?: () => void;
  /**
   * libfuse3 path: the names the kernel caches attributes and pages under, invalidated after
   * every change (kernel-names.ts). Undefined: nothing is cached in the kernel (libfuse2).
   */
  kernelNames?: KernelNames;
  /** readdir returns each entry's attributes too (readdirplus: no lookup per entry). */
  readdirStats?: boolean;
  /** The mount point (libfuse3: ownerRefreshed stats other names through it). */
  mountPoint?: string;
}

/** readdir's answer with attributes (readdirStats). */
export interface DirListing {
  names: string[];
  stats: VolumeStat[];
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
/** renameat2(2)'s flag: fail with EEXIST rather than replace the target. */
const RENAME_NOREPLACE = 1;
const S_IFDIR = 0o040000;
const S_ISGID = 0o2000;
const S_ISUID = 0o4000;
const S_ISVTX = 0o1000;
const NO_ID = 0xffffffff;
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;
const UINT32_MAX = 0xffffffff;
/** Writes this large (libfuse's max_write: what large write(2)s arrive as) bypass the cache. */
const PASS_THROUGH_BYTES = 128 * 1024;
/**
 * Whether the primary's early write-back runs: by default, with a mirror or without (it was
 * measured to win in both, docs/benchmarks.md "Sequential write with a mirror: the floor, and the
 * primary's write-back beside the mirror's"); TWINFS_PRIMARY_WRITEBACK=0 turns it off (A/B runs).
 */
function primaryWriteBackOn(): boolean {
  return process.env.TWINFS_PRIMARY_WRITEBACK !== '0';
}

/** The first handle number of creates answered natively (native-create.h); JS's are below. */
const NATIVE_HANDLES = 0x40000000;

const O_ACCMODE = 0o3;
const POSIX_ACL_NAMES = new Set(['system.posix_acl_access', 'system.posix_acl_default']);

/**
 * The names listxattr shows: no POSIX ACLs (not supported through the mount, see setxattr), and
 * trusted.* to root only (as ext4 lists them to CAP_SYS_ADMIN only). A name that is not UTF-8
 * goes back to the kernel as its bytes (src/posix/byte-names.ts).
 */
function shownXattrNames(all: string[], ctx?: CallerContext): Array<string | Buffer> {
  let names = all;
  if (names.some((n) => POSIX_ACL_NAMES.has(n))) names = names.filter((n) => !POSIX_ACL_NAMES.has(n));
  if (notRoot(ctx) && names.some((n) => n.startsWith(TRUSTED_PREFIX)))
    names = names.filter((n) => !n.startsWith(TRUSTED_PREFIX));
  return names.map(fsPath);
}

/** POSIX ACLs are not supported through the mount (see VolumeOps.setxattr). */
function refuseAcl(name: string): void {
  if (POSIX_ACL_NAMES.has(name))
    throw errnoError('EOPNOTSUPP', 'POSIX ACLs are not supported through the mount');
}

/**
 * The filesystem's operations over volume paths, as promises that reject with errno errors.
 * Regular-file data goes through the write-back cache; everything else passes through to the
 * primary directory and is then reported to the change sink. The FUSE adapter
 * (fuse-adapter.ts) is the only caller and the one place where errors become errno numbers.
 */
export class VolumeOps {
  private readonly paths: VolumePaths;
  private readonly cache: WritebackCache;
  private readonly sink: ChangeSink;
  private readonly gate: WriteGate;
  private readonly flushOnClose: boolean;
  private readonly handles = new Map<number, FileNode>();
  /** Names with a handle open for writing: where the kernel may hold dirty mapped pages. */
  readonly openNames = new OpenNames();
  /** libfuse's hides of open rename targets (see rename). */
  private readonly hides = new HiddenRenames();
  /** libfuse's hidden names per file, not counted in the nlink getattr answers. */
  private readonly hiddenLinks = new HiddenLinks();
  private nextHandle = 1;
  private readonly myUid = process.getuid?.() ?? 0;
  private readonly myGid = process.getgid?.() ?? 0;
  private readonly forgetNoCapabilities: (() => void) | undefined;
  private readonly kernelNames: KernelNames | undefined;
  private readonly readdirStats: boolean;

  constructor(opts: VolumeOpsOptions) {
    this.paths = opts.paths;
    this.cache = opts.cache;
    this.sink = opts.sink;
    this.gate = opts.gate;
    this.flushOnClose = opts.flushOnClose ?? false;
    this.forgetNoCapabilities = opts.forgetNoCapabilities;
    this.kernelNames = opts.kernelNames;
    this.readdirStats = opts.readdirStats ?? false;
    this.mountPoint = opts.mountPoint;
    this.primaryWriteBack = primaryWriteBackOn();
  }
  private readonly mountPoint: string | undefined;

  /** Can a chmod or chown have other names to refresh (ownerRefreshed)? */
  private get refreshesOwners(): boolean {
    return this.mountPoint !== undefined && this.kernelNames !== undefined && !this.kernelNames.isEmpty;
  }

  /**
   * After a chmod or chown of a file with other names the kernel knows (libfuse3, KernelNames):
   * the kernel decides ownership (chmod, chown, utimens, the sticky directory's rule) and the
   * setuid/setgid kill of a write from the attributes its inode of the name used holds in
   * memory, without asking first; an invalidation only marks them old, and they are fetched
   * again at the next stat or permission check of that name. Until then a user kept, through a
   * hard link, rights to a file root had just taken back, or lacked those just given
   * (bench/handle-diff.py --user, streams 42500 and 52202). So each other name is stat'ed
   * through the mount before the change is answered, which makes the kernel fetch them now.
   * From libuv's pool, never on the JS thread: the GETATTRs are answered by libfuse's threads
   * or by this thread, which is not waiting. Bounded (OWNER_REFRESH_MS): a name that does not
   * answer is left to its next use. Names without a path (their handles' keys) and hidden names
   * are not reached: fstat through such a descriptor fetches them.
   */
  private async ownerRefreshed(ino: number, through?: string): Promise<void> {
    const names = this.kernelNames;
    if (!this.refreshesOwners || names === undefined || this.mountPoint === undefined) return;
    // Not libfuse's hidden names: a lookup of one through the mount gave the kernel a name for
    // a node that twinfs may drop the name of itself (dropHiddenNames), and that node kept the
    // nlink it had then (bench/handle-diff.py --user --meta --dirs, stream 62801).
    const others = names
      .namesOf(ino)
      .filter((n) => n !== through && !HandleNodes.isKey(n) && !isHiddenPath(n));
    if (others.length === 0) return;
    const root = this.mountPoint;
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, OWNER_REFRESH_MS);
    });
    try {
      await Promise.race([
        Promise.all(others.map((n) => fsp.lstat(fsPath(`${root}${n}`)).catch(() => undefined))),
        bound,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  get openHandles(): number {
    return this.handles.size;
  }

  async getattr(path: string): Promise<VolumeStat> {
    this.hides.touched(path);
    const out = this.statOf(path);
    this.kernelNames?.observe(path, out.ino, out.nlink, (out.mode & S_IFMT) === S_IFDIR);
    return this.shownLinks(out, path);
  }

  /** The attributes as answered: nlink without libfuse's hidden names (HiddenLinks). */
  private shownLinks(st: VolumeStat, path: string | null): VolumeStat {
    if ((st.mode & S_IFMT) === S_IFDIR) return st;
    const nlink = this.hiddenLinks.shown(st.ino, st.nlink, path);
    return nlink === st.nlink ? st : { ...st, nlink };
  }

  /**
   * getattr through a handle: by the path while there is one, else (a file whose path is gone,
   * see dropHiddenNames) by the cache's descriptor of the open file.
   */
  async fgetattr(fh: number, path: string | null): Promise<VolumeStat> {
    if (path !== null) return this.getattr(path);
    const node = this.handle(fh);
    return this.shownLinks(this.statOf(fs.fstatSync(node.fd, { bigint: true })), null);
  }

  /** What getattr answers for a volume path: the primary's attributes, cached writes included. */
  private statOf(path: string | fs.BigIntStats): VolumeStat {
    // bigint: the times in whole ns, so a stat through the mount shows exactly the primary's
    // (Node's Date fields round to the ms, which can even move a time into the next second).
    // Synchronous: see lstatNow.
    const st = typeof path === 'string' ? this.paths.at([path], lstatNow) : path;
    const out: VolumeStat = {
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      dev: Number(st.dev),
      nlink: Number(st.nlink),
      ino: Number(st.ino),
      rdev: Number(st.rdev),
      blksize: Number(st.blksize),
      blocks: Number(st.blocks),
      atime: st.atimeNs,
      mtime: st.mtimeNs,
      ctime: st.ctimeNs,
    };
    if ((out.mode & S_IFMT) === S_IFREG) {
      // A file with several names written back: ctime, mtime and st_blocks as answered before
      // its write-back (KernelNames.recordedAttrs), so that no name's kernel attributes moved.
      const rec = this.kernelNames?.recordedAttrs(out.ino, st.ctimeNs);
      if (rec !== undefined) {
        out.ctime = rec.ctime;
        out.mtime = rec.mtime;
        out.blocks = rec.blocks;
      }
      const node = this.cache.get(out.ino);
      if (node?.isDirty) {
        // Cached writes count as if they were on the primary: size and mtime show them. The
        // libfuse3 build applies the same rules natively (native-attrs.h): change both or none.
        out.size = Math.max(out.size, node.cachedEnd);
        // Allocation as the primary will have it: what it holds plus the cached bytes, in whole
        // blocks, at most the whole file (sparse files stay sparse for du and cp --sparse).
        // Recorded attributes already count the bytes being written back.
        const block = out.blksize > 0 ? out.blksize : 4096;
        const units = (bytes: number) => Math.ceil(bytes / block) * (block / 512);
        const cached = rec !== undefined ? node.dirty.size : node.cachedBytes;
        out.blocks = Math.max(out.blocks, Math.min(units(out.size), out.blocks + units(cached)));
        // The last cached write's time, even where the primary's mtime is later (set ahead by
        // utimens: a write moves mtime back to now, as on ext4); the primary's where utimens set
        // it after the last write (lastWriteAt is then TIMES_SET_MS).
        const written = BigInt(Math.trunc(node.lastWriteAt)) * 1_000_000n;
        if (node.lastWriteAt > 0 || written > out.mtime) {
          out.mtime = written;
          if (written > out.ctime) out.ctime = written;
        }
      }
    }
    return out;
  }

  /** What getattr answers now for the attributes a write-back moves (KernelNames.writeBackStarting). */
  shownAttrs(fd: number): ShownAttrs {
    const out = this.statOf(fs.fstatSync(fd, { bigint: true }));
    return { ctime: out.ctime, mtime: out.mtime, blocks: out.blocks };
  }

  async access(path: string, _mode: number): Promise<void> {
    // The kernel checks permissions itself (default_permissions); existence is what is left.
    this.paths.at([path], lstatNow);
  }

  /** Listings read (each READDIR/READDIRPLUS at offset 0 of an open directory). */
  readdirs = 0;

  async readdir(path: string): Promise<string[] | DirListing> {
    this.readdirs++;
    // readdir(3) on a local filesystem lists '.' and '..' too (`ls -a`, some tools rely on it);
    // libfuse passes on exactly what we return.
    const entries = await this.paths.at([path], (b) => fsp.readdir(b));
    if (!this.readdirStats) return ['.', '..', ...entries];
    // readdirplus: the kernel caches these as each entry's attributes, so they are exactly
    // what getattr would answer, and the names of multi-link files are learnt here too.
    const names = ['.', '..'];
    const self = this.statOf(path);
    const stats = [self, path === '/' ? self : this.statOf(parentOf(path))];
    for (const name of entries) {
      const child = path === '/' ? `/${name}` : `${path}/${name}`;
      let st: VolumeStat;
      try {
        st = this.statOf(child);
      } catch {
        continue; // gone since the listing
      }
      this.kernelNames?.observe(child, st.ino, st.nlink, (st.mode & S_IFMT) === S_IFDIR);
      names.push(name);
      stats.push(this.shownLinks(st, child));
    }
    return { names, stats };
  }

  async readlink(path: string): Promise<string> {
    return this.paths.at([path], (b) => fs.readlinkSync(b));
  }

  async statfs(path: string): Promise<VolumeStatfs> {
    const s = await this.paths.at([path], (b) => fsp.statfs(b));
    // fuse-native carries these as uint32: scale the block size up until the counts fit.
    let { blocks, bfree, bavail, bsize } = s;
    while (blocks > UINT32_MAX) {
      blocks = Math.floor(blocks / 2);
      bfree = Math.floor(bfree / 2);
      bavail = Math.floor(bavail / 2);
      bsize *= 2;
    }
    return {
      bsize,
      frsize: bsize,
      blocks,
      bfree,
      bavail,
      files: Math.min(s.files, UINT32_MAX),
      ffree: Math.min(s.ffree, UINT32_MAX),
      favail: Math.min(s.ffree, UINT32_MAX),
      fsid: 0,
      flag: 0,
      namemax: 255,
    };
  }

  // ---- open files -------------------------------------------------------------------------

  async open(path: string, flags: number): Promise<number> {
    return this.paths.at([path], (backing) => this.openAt(path, backing, flags));
  }

  private async openAt(path: string, backing: string, flags: number): Promise<number> {
    const st = fs.lstatSync(backing);
    const existing = this.cache.get(st.ino);
    if (existing && !existing.dead) {
      if (wantsWrite(flags) && !existing.writable) {
        // The cache's fd cannot write this file back: refuse now, with the errno the primary
        // gives (ETXTBSY, EROFS, EACCES...), rather than fail the write-back later.
        closeQuietly(openCacheFd(backing, flags).fd);
        throw errnoError('EBUSY', `${path} is cached read-only; close it everywhere and reopen`);
      }
      this.openedAgain(existing, path);
      return this.appending(this.newHandle(existing, path, wantsWrite(flags)), flags);
    }
    const { fd, writable } = openCacheFd(backing, flags);
    const fst = fstatFd(fd);
    return this.appending(
      this.newHandle(this.cache.adopt(fst.ino, path, fd, writable, fst.size), path, wantsWrite(flags)),
      flags,
    );
  }

  /** One more handle of a node the cache holds, opened under `path`. */
  private openedAgain(node: FileNode, path: string): void {
    node.refs++;
    // A hard link may have been opened under another name, since unlinked: report changes
    // under a name that exists.
    node.path = path;
    node.nameless = false;
  }

  /**
   * Handles opened with O_APPEND. The kernel sends their WRITEs at the end of file as its inode
   * of that name knows it (its i_size, not asked of twinfs: there is no kernel write-back
   * cache). On the libfuse3 path a file with several names has a kernel inode per name, so an
   * end another name moved can be stale there, and the append overwrote bytes or left a hole
   * (the two-name fsx finding, cause 3 in docs/reliability.md). POSIX puts every write of an
   * O_APPEND descriptor at the end of the file: every such WRITE is written at twinfs's own
   * end of the file instead (`appendAt`; it was only for files with several names the kernel
   * knew, and a name made while the file was open, or the libfuse2 path, which records none,
   * still overwrote: bench/handle-diff.py; `appendsOffEnd` counts the moved ones; what the
   * kernel's inode of that name holds then, see appendWithPass). Page write-backs are never moved (their offset is the page's). The flags are
   * the open's or the create's (fuse-native patch level 10 passes the create's): an O_APPEND set
   * or cleared later with fcntl(F_SETFL) is not seen here (libfuse has the WRITE's own flags;
   * fuse-native does not pass them).
   */
  private readonly appendHandles = new Set<number>();
  /** O_APPEND WRITEs that did not start at the file's end (moved to it). */
  appendsOffEnd = 0;
  /**
   * The end of the file past the appends in flight (moved or not) of a file with several names:
   * two appends through two names (two kernel inodes, not serialized by the kernel) must not
   * both take the end before either has reached the cache or the primary.
   */
  private readonly appendEnds = new Map<FileNode, { end: number; inFlight: number }>();

  /** Where an append of len bytes to node goes: the file's end (cached data and appends in flight included). */
  private appendAt(node: FileNode, pos: number, len: number): number {
    const r = this.appendEnds.get(node);
    const end = Math.max(fstatFd(node.fd).size, node.cachedEnd, r?.end ?? 0);
    if (pos !== end) this.appendsOffEnd++;
    if (r) {
      r.end = end + len;
      r.inFlight++;
    } else this.appendEnds.set(node, { end: end + len, inFlight: 1 });
    return end;
  }

  private appendDone(node: FileNode): void {
    const r = this.appendEnds.get(node);
    if (r && --r.inFlight === 0) this.appendEnds.delete(node);
  }

  private appending(fh: number, flags: number): number {
    if (flags & fs.constants.O_APPEND) this.appendHandles.add(fh);
    return fh;
  }

  async create(path: string, mode: number, ctx: CallerContext | undefined, flags = 0): Promise<number> {
    const pass = await this.gate.enter(path);
    try {
      await this.sink.beforeChange?.(path);
      const fd = this.paths.at([path], (backing) =>
        fs.openSync(backing, fs.constants.O_CREAT | fs.constants.O_RDWR, mode & 0o7777),
      );
      const { uid, gid } = await this.ownFor(ctx, path);
      if (uid !== undefined) await fchownFd(fd, uid, gid!);
      const fst = fstatFd(fd);
      // The fstat above is the file's size too: one syscall less per create.
      const node = this.cache.adopt(fst.ino, path, fd, true, fst.size);
      await this.sink.apply({ op: 'create', path, mode: fst.mode, uid: fst.uid, gid: fst.gid });
      return this.appending(this.newHandle(node, path, true), flags);
    } finally {
      pass.done();
    }
  }

  read(fh: number, buf: Buffer, len: number, pos: number): number | Promise<number> {
    const node = this.handle(fh);
    return this.cache.read(node, buf, len, pos);
  }

  /**
   * Accepts a write. Synchronous (returns the byte count) on the hot path: no inhibition and
   * room in the cache; otherwise a promise.
   */
  write(
    fh: number,
    buf: Buffer,
    len: number,
    pos: number,
    path?: string,
    writepage = false,
  ): number | Promise<number> {
    const node = this.handle(fh);
    const data = buf.length === len ? buf : buf.subarray(0, len);
    const names = this.kernelNames;
    // An append: at the file's end when the pass is taken (see appendAt). The kernel's offset
    // is its inode's size for the name the file was opened by; high-level libfuse gives each
    // name its own inode, so after a change through another name (or one the kernel did not
    // see: a hard link made while the file was open) that offset is short, whether or not the
    // kernel has the other names cached (bench/handle-diff.py found it with libfuse2 too).
    const append = !writepage && this.appendHandles.size > 0 && this.appendHandles.has(fh);
    // The name written through: this WRITE holds its pages locked until answered, so until
    // then no change waits for that name (KernelNames, "never waited for"); noted before the
    // write, which may ask for it to be invalidated after (a moved append).
    // Without a path (its node has none, see handle-nodes.ts): that node's key.
    const watched = names !== undefined && !names.isEmpty;
    const name = watched ? this.changedThrough(node, path, fh) : path;
    const tracked = watched && name !== undefined;
    if (tracked) names.writeStarted(name);
    let r: number | Promise<number>;
    try {
      const pass = this.gate.enter(node.path, node.ino);
      r = append
        ? this.appendWithPass(node, pass, data, pos)
        : pass instanceof Promise
          ? pass.then((p) => this.writeWithPass(node, p, data, pos))
          : this.writeWithPass(node, pass, data, pos);
    } catch (e) {
      if (tracked) names.writeDone(name);
      throw e;
    }
    // `tracked` once noted, writeDone must follow even if the table emptied meanwhile.
    if (names === undefined || (names.isEmpty && !tracked)) return r;
    // The file's other names: answered once the kernel dropped their attributes and pages. Not
    // the name written through (`path`), see above.
    // A page write-back is not waited for: it may be the laundering of a notify the helper
    // is sending right now, which an invalidation queued behind it would never let finish. The
    // close(2) or fsync that wrote the pages back waits instead (flush, fsync).
    const done = <T>(v: T): T => {
      if (tracked) names.writeDone(name);
      return v;
    };
    const after = (n: number): number | Promise<number> => {
      if (writepage) {
        names.pageWrittenBack(node.ino, name);
        return done(n);
      }
      // A cached write (a direct one forgot the file's recorded attributes before it started).
      const w = names.changed([node.ino], name, true);
      if (w === undefined) return done(n);
      return w.then(
        () => done(n),
        (e: unknown) => {
          done(0);
          throw e;
        },
      );
    };
    try {
      return typeof r === 'number'
        ? after(r)
        : r.then(after, (e: unknown) => {
            done(0);
            throw e;
          });
    } catch (e) {
      done(0);
      throw e;
    }
  }

  /** An append (see appendAt) written once the pass is taken. */
  private appendWithPass(
    node: FileNode,
    pass: { done(): void } | Promise<{ done(): void }>,
    data: Buffer,
    pos: number,
  ): number | Promise<number> {
    const write = (p: { done(): void }): number | Promise<number> => {
      let at: number;
      try {
        at = this.appendAt(node, pos, data.length);
      } catch (err) {
        p.done();
        throw err;
      }
      // Moved: the kernel put the bytes in this name's pages at its offset and grows its size
      // from there. Nothing is invalidated: the WRITE itself marks that inode's size stale in
      // the kernel, so its next stat, lseek or read asks twinfs, and the answer's size differs
      // from the one the kernel computed, which makes it drop the inode's pages (libfuse3's
      // default auto_inval_data, no explicit_inval_data). An invalidation sent after the answer
      // made the kernel drop that very GETATTR's reply when it crossed it: the name then kept
      // the wrong size (docs/reliability.md, "Handles held open across operations", item 8).
      let r: number | Promise<number>;
      try {
        r = this.writeWithPass(node, p, data, at);
      } catch (err) {
        this.appendDone(node);
        throw err;
      }
      if (typeof r === 'number') {
        this.appendDone(node);
        return r;
      }
      return r.finally(() => this.appendDone(node));
    };
    return pass instanceof Promise ? pass.then(write) : write(pass);
  }

  private writeWithPass(
    node: FileNode,
    pass: { done(): void },
    data: Buffer,
    pos: number,
  ): number | Promise<number> {
    // Large writes to a file with nothing cached go straight to the primary: the cache would
    // copy them twice (into its buffers, then out of them cold) for nothing to absorb.
    if (this.cache.writeThrough)
      // Not under the file's lock: the sink's copy follows the primary's, one after the other.
      return this.writeDirect(node, pass, data, pos, false);
    // With a mirror too, when its copy can be written beside the primary's (applyAlongside):
    // one after the other, a change per 128 KiB request cost 15-20% more than the cache's 1 MiB
    // write-backs in the background (bench/mirror.mjs section A, SMB); at once, it costs what a
    // write without a mirror does plus the mirror's pwrite (docs/benchmarks.md).
    if (
      data.length >= PASS_THROUGH_BYTES &&
      !node.isDirty &&
      (this.sink === nullSink || this.sink.applyAlongside !== undefined)
    )
      // Under the node's lock: a flush of data cached meanwhile (newer) lands after this one.
      // The lock also orders the mirror's copies of overlapping writes as the primary's.
      return node.lock.run(() => this.writeDirect(node, pass, data, pos, true));
    let r: void | Promise<void>;
    try {
      r = this.cache.write(node, pos, data);
    } catch (err) {
      pass.done();
      throw err;
    }
    if (r === undefined) {
      pass.done();
      return data.length;
    }
    // The writer waits for the flusher; libfuse's buffer stays valid until we answer.
    return r.then(
      () => {
        pass.done();
        return data.length;
      },
      (err) => {
        pass.done();
        throw err;
      },
    );
  }

  /** Writes to the primary before answering (libfuse's buffer stays valid until then). */
  private async writeDirect(
    node: FileNode,
    pass: { done(): void },
    data: Buffer,
    pos: number,
    locked: boolean,
  ): Promise<number> {
    try {
      // A file with no name left (FileNode.nameless) is not reported: its path names another
      // file now, or none (as the cache's write-back does).
      if (!node.nameless) await this.sink.beforeChange?.(node.path);
      node.contentChanged();
      // The primary's ctime, mtime and blocks move: getattr answers them from now on.
      this.kernelNames?.forgetRecorded(node.ino);
      const change = { op: 'write' as const, path: node.path, offset: pos, data };
      if (!locked || node.nameless || this.sink.applyAlongside === undefined) {
        await writeAll(node.fd, data, pos).finally(() => node.contentChanged());
        this.writeBack(node, pos, data.length);
        if (!node.nameless) await this.sink.apply(change);
        return data.length;
      }
      // Primary and mirror written at once. Both are waited for, also when the primary failed:
      // the sink reads libfuse's buffer until it settles. The generation moves again once the
      // primary has the bytes: the file stays clean, so a read meanwhile may fill a read-ahead
      // window with the old bytes under the generation bumped above (as in cache.truncate).
      const primary = writeAll(node.fd, data, pos).finally(() => node.contentChanged());
      const [p, m] = await Promise.allSettled([primary, this.sink.applyAlongside(change, primary)]);
      if (p.status === 'rejected') throw p.reason;
      this.writeBack(node, pos, data.length);
      if (m.status === 'rejected') throw m.reason;
      return data.length;
    } finally {
      pass.done();
    }
  }

  /**
   * Notes a large direct write that reached the primary: its early write-back
   * (WritebackCache.earlyWriteBacks, one at a time per file) starts sync_file_range(WRITE) once
   * WRITEBACK_BATCH_BYTES of the file wait, so the fsync that ends a large sequential write finds
   * little left to write (docs/architecture.md, "The primary's write-back starts with the
   * write"). Beside the request, never waited for; a hint: durability stays the fsync's.
   */
  private writeBack(node: FileNode, pos: number, len: number): void {
    if (this.primaryWriteBack && len >= PASS_THROUGH_BYTES)
      this.cache.earlyWriteBacks.written(node.fd, pos, len);
  }

  /** Early write-backs of the primary started, and refused by its file system (a hint lost). */
  get primaryWriteBacks(): { started: number; refused: number } {
    return this.cache.earlyWriteBacks.counts;
  }
  private readonly primaryWriteBack: boolean;

  /** close(2) of one descriptor: report write-back errors (and flush first if configured). */
  async flush(fh: number): Promise<void> {
    const node = this.handles.get(fh);
    if (!node) return;
    // The kernel wrote the file's dirty mmap pages back before this FLUSH: the close returns
    // once the other names dropped their old pages (KernelNames.pageWrittenBack).
    await this.kernelNames?.pageWriteBacksSettled(node.ino);
    if (this.flushOnClose && node.isDirty) {
      try {
        await this.cache.flush(node);
      } catch (err) {
        this.cache.takeError(node);
        throw err;
      }
    }
    const err = this.cache.takeError(node);
    if (err) throw err;
  }

  async release(fh: number): Promise<void> {
    const node = this.handles.get(fh);
    if (!node) return;
    this.handles.delete(fh);
    this.openNames.delete(fh);
    this.kernelNames?.handles.closed(fh);
    this.appendHandles.delete(fh);
    await this.cache.unref(node);
  }

  async fsync(path: string | null, datasync: boolean, fh: number): Promise<void> {
    const handled = this.handles.get(fh);
    // (No path: a handle whose file has none left, see dropHiddenNames.)
    if (path === null && !handled) throw errnoError('EBADF');
    const node = handled ?? this.nodeNow(path!);
    if (!node) {
      if (path === null) throw errnoError('EBADF');
      // No cached state: make the primary file durable anyway (and the sink's copy, at once:
      // it has every change of the file already, see syncAlongside).
      const fd = await this.paths.at([path], (b) => openFd(b, fs.constants.O_RDONLY, 0));
      try {
        await syncAlongside(
          new Promise<void>((res, rej) => fs.fsync(fd, (e) => (e ? rej(e) : res()))),
          this.sink.apply({ op: 'fsync', path, datasync }),
        );
      } finally {
        fs.close(fd, () => undefined);
      }
      return;
    }
    // A node no handle of this request holds is held for the flush: another handle's release,
    // or its write-back ending with none left, would close the descriptor it syncs (EBADF).
    if (!handled) node.refs++;
    try {
      await this.cache.flush(node, { sync: datasync ? 'data' : 'full' });
    } catch (err) {
      this.cache.takeError(node);
      throw err;
    } finally {
      if (!handled) await this.cache.unref(node);
    }
    const err = this.cache.takeError(node);
    if (err) throw err;
    // fsync and msync(MS_SYNC) wrote the dirty mmap pages back before this FSYNC (see flush).
    await this.kernelNames?.pageWriteBacksSettled(node.ino);
  }

  /**
   * fsync(2) of a directory. null: a directory removed or renamed over while this descriptor was
   * open (libfuse passes no path for a node that has none). Nothing of it is left to make
   * durable, and ext4 answers such an fsync with success; so does twinfs (it failed with EINVAL).
   */
  async fsyncdir(path: string | null): Promise<void> {
    if (path === null) return;
    const fd = await this.paths.at([path], (b) =>
      openFd(b, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY, 0),
    );
    try {
      await new Promise<void>((res, rej) => fs.fsync(fd, (e) => (e ? rej(e) : res())));
    } finally {
      fs.close(fd, () => undefined);
    }
  }

  async truncate(path: string, size: number): Promise<void> {
    const pass = await this.gate.enter(path);
    let ino: number | undefined;
    try {
      const node = this.nodeNow(path);
      ino = node?.ino;
      if (node) {
        // A reference for the duration: a write-back finishing meanwhile would otherwise close
        // the fd of a node no handle holds, under the truncate waiting for its lock (EBADF).
        node.refs++;
        try {
          await this.cache.truncate(node, size);
        } finally {
          await this.cache.unref(node);
        }
      } else {
        await this.sink.beforeChange?.(path);
        await this.paths.at([path], (b) => truncateAt(b, size));
        await this.sink.apply({ op: 'truncate', path, size });
        if (this.kernelNames && !this.kernelNames.isEmpty) ino = this.paths.at([path], lstatOrUndefined)?.ino;
      }
    } finally {
      pass.done();
    }
    // After the pass (see guarded); the kernel keeps `path` itself exact from our reply.
    if (ino !== undefined) await this.kernelNames?.changed([ino], path);
  }

  async ftruncate(fh: number, size: number, path?: string): Promise<void> {
    const node = this.handle(fh);
    const pass = await this.gate.enter(node.path, node.ino);
    try {
      await this.cache.truncate(node, size);
    } finally {
      pass.done();
    }
    await this.kernelNames?.changed([node.ino], this.changedThrough(node, path, fh));
  }

  /**
   * fallocate(2) through a handle: modes 0, KEEP_SIZE, PUNCH_HOLE | KEEP_SIZE, ZERO_RANGE (with or
   * without KEEP_SIZE), as the primary's filesystem answers them (WritebackCache.fallocate); any
   * other mode is EOPNOTSUPP. A data change: it waits for a freeze of the file, like a write.
   */
  async fallocate(fh: number, mode: number, offset: number, len: number, path?: string): Promise<void> {
    if ((mode & ~FALLOC_SUPPORTED) !== 0) throw errnoError('EOPNOTSUPP', `fallocate mode ${mode}`);
    const node = this.handle(fh);
    const pass = await this.gate.enter(node.path, node.ino);
    try {
      await this.cache.fallocate(node, mode, offset, len);
    } finally {
      pass.done();
    }
    await this.kernelNames?.changed([node.ino], this.changedThrough(node, path, fh));
  }

  /**
   * lseek(2) SEEK_DATA (3) or SEEK_HOLE (4) through a handle: where the file's next data or hole
   * is, from the primary (a hole there is a hole of the file), so that `cp --sparse`, `tar -S` or
   * qemu-img keep a sparse file sparse when they copy it out of the mount. Where the primary may
   * not hold all of the file's bytes, the generic answer instead (the whole file is data, the
   * one hole at its end), which is always right: while the file has cached data, and while any
   * handle has it open for writing (a shared writable mapping keeps its handle open, and its
   * dirty pages reach twinfs only when the kernel writes them back: the kernel sends LSEEK
   * without writing them first). ENXIO at or past the end, as ext4 answers.
   */
  lseek(fh: number, offset: number, whence: number): number {
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw errnoError('EINVAL', `lseek whence ${whence}`);
    const node = this.handle(fh);
    const size = this.statOf(fs.fstatSync(node.fd, { bigint: true })).size;
    if (offset < 0 || offset >= size) throw errnoError('ENXIO', `lseek ${offset} of ${size}`);
    if (!node.isDirty && !this.openNames.hasInode(node.ino)) {
      const r = posix().seekData(node.fd, offset, whence === SEEK_HOLE);
      if (r >= 0) return Math.min(r, size);
      if (r === NEG_ENXIO) throw errnoError('ENXIO', `lseek ${offset}`);
      // Any other answer (a primary without the seeks): the generic one below.
    }
    return whence === SEEK_DATA ? offset : size;
  }

  // ---- namespace ----------------------------------------------------------------------------

  /** ctx: the caller, for the sticky directory's rule (stickyOnly). */
  async unlink(path: string, ctx?: CallerContext): Promise<void> {
    // A hidden name (libfuse's removal at the last close): nothing the kernel shows moves, and no
    // name is invalidated (KernelNames.hiddenNameRemoving says why).
    const hidden = this.kernelNames !== undefined && isHiddenPath(path);
    await this.guarded(
      [path],
      () => {
        if (notRoot(ctx)) this.stickyOnly(path, ctx!);
        return this.unlinkNow(path, hidden);
      },
      !hidden,
    );
  }

  /**
   * The sticky directory's rule again, on the primary, for a caller other than root: an entry of
   * a sticky directory goes only by its owner's or the directory's owner's hand (EPERM). The
   * kernel checked it from the victim's kernel inode, whose owner a chown through another name
   * of the file can have left stale (one kernel inode per name: bench/handle-diff.py --user,
   * stream 42500). libfuse's own removal of a hidden name at the last close runs with the
   * closer's identity and is not checked (the unlink that hid the file was).
   */
  private stickyOnly(path: string, ctx: CallerContext): void {
    if (isHiddenPath(path)) return;
    const slash = path.lastIndexOf('/');
    const parent = slash <= 0 ? '/' : path.slice(0, slash);
    this.paths.at([parent, path], (dir, entry) => {
      const d = fs.lstatSync(dir!);
      if ((d.mode & S_ISVTX) === 0 || d.uid === ctx.uid) return;
      const e = lstatOrUndefined(entry!);
      if (e !== undefined && e.uid !== ctx.uid) throw errnoError('EPERM', 'sticky directory');
    });
  }

  /**
   * unlink(2) on the primary, reported; the caller holds the gate passes (see guarded).
   * dropped: a hidden name twinfs drops itself (dropHiddenNames) while libfuse's node of it may
   * still be open: that node has no path from now on (handle-nodes.ts). An UNLINK libfuse sends
   * (a program's, or its own removal of a hidden name at the node's last release) never leaves
   * an open node without a path: libfuse hides an open node's name instead.
   */
  private async unlinkNow(path: string, hidden = false, dropped = false): Promise<void> {
    const st = this.paths.at([path], (b) => fs.lstatSync(b));
    const node = (st.mode & S_IFMT) === S_IFREG ? this.cache.get(st.ino) : undefined;
    // Another name keeps the inode alive: its cached data must be reported under a path that
    // still exists. A name known to be the same file takes it over in the unlink's own
    // synchronous step (the data stays cached); with none known, it is written back first.
    const keeper = node?.isDirty && st.nlink > 1 ? this.otherNameNow(node, st, path) : undefined;
    if (node?.isDirty && st.nlink > 1 && keeper === undefined) await this.cache.flush(node);
    // Taken after any flush above (a write-back moves the primary's ctime).
    const now =
      hidden && st.nlink > 1 && (st.mode & S_IFMT) === S_IFREG ? this.paths.at([path], lstatNow) : undefined;
    // The primary's own attributes: getattr overlays cached writes on a record as on them.
    const recorded = now
      ? this.kernelNames?.hiddenNameRemoving(st.ino, {
          ctime: now.ctimeNs,
          mtime: now.mtimeNs,
          blocks: Number(now.blocks),
        })
      : undefined;
    this.paths.at([path], (b) => fs.unlinkSync(b));
    if (recorded) recorded(st.nlink > 2 ? this.ctimeOfOtherName(st.ino, path) : undefined);
    if (node && keeper !== undefined) node.path = keeper;
    this.kernelNames?.remove(path);
    // Handles still open under this name (a hidden name dropped by rmdir): their node has no path.
    if (dropped) this.kernelNames?.handles.removed(path);
    else this.kernelNames?.handles.forget(path);
    this.hides.removed(path);
    if (isHiddenPath(path)) this.hiddenLinks.removed(st.ino);
    this.hiddenGone(path);
    // No name left: nothing of it may be reported from here on (a flush in flight included).
    if (node && st.nlink <= 1) node.nameless = true;
    await this.sink.apply({ op: 'unlink', path });
    // Still open (a hidden name dropped by rmdir): its handles keep reading and writing it.
    if (node && st.nlink <= 1 && node.refs === 0) await this.cache.discard(node);
    else if (node) {
      if (node.path === path) await this.renameNode(node, st);
      await this.releaseIfIdle(node);
    }
  }

  /**
   * libfuse removes a hidden file (an open file's unlinked or replaced name) at its last close
   * with no request of the kernel's: a listing of its directory the kernel cached still has it.
   */
  private hiddenGone(path: string): void {
    if (this.kernelNames && isHiddenPath(path)) this.kernelNames.listingChangedBehind(parentOf(path));
  }

  /**
   * An unlink libfuse3's worker thread already did on the primary (native-changes.ts), reported
   * in its turn: the bookkeeping of unlink() after its unlink(2). The native side did it only
   * for a non-directory with one name, of which the cache holds no unwritten data, with no
   * inhibition active and no other change in flight here.
   */
  /**
   * A create done in libfuse's thread (native-create.h), taken from the queue before any op
   * that may name its handle (native-changes.ts): what create does after its open, synchronously
   * up to the sink's report. As for nativeUnlinked, the path's own stamp and intent follow the
   * primary's change; what precedes it is the sink's hold (ChangeSink.changesAhead): the mirror's
   * intent for the whole volume, on disk before native changes were turned on, and a change
   * record that reports the queue before it answers.
   */
  nativeCreated(path: string, c: NativeCreated): Promise<void> {
    this.stampBehind(path);
    // Closed natively too (its RELEASE came first): nothing to hold, its writes come by path.
    if (c.fd < 0) return this.sink.apply({ op: 'create', path, mode: c.mode, uid: c.uid, gid: c.gid });
    // A new file: size 0 (the space account's size, as create's fstat).
    const node = this.cache.adopt(c.ino, path, c.fd, true, 0);
    this.handles.set(c.fh, node);
    this.openNames.add(c.fh, path, node.ino);
    this.kernelNames?.handles.opened(c.fh, path, node.ino);
    return this.sink.apply({ op: 'create', path, mode: c.mode, uid: c.uid, gid: c.gid });
  }

  /**
   * An open libfuse3's thread did (native-open.h), taken from the queue before any op that may
   * name its handle: what open() does after its open(2), synchronously. `fd` is a duplicate of
   * the native handle's descriptor (opened as openCacheFd opens, `writable` as it says), for the
   * cache to adopt; the native side keeps its own for the handle's reads and closes it at the
   * handle's RELEASE, which reaches JS from now on. No JS op ran between the open and this take
   * (each takes the queue first), and the native changes after it in the queue are reported
   * after it: the path still names the opened file here, as for open(). An open for writing
   * (level 27: never O_APPEND, never with a read-only descriptor) is noted as open() notes one
   * (openNames). Where the cache holds the file through a read-only descriptor (the primary
   * refused writing when it was opened, ETXTBSY or EROFS, and allows it now: the native open
   * read-write succeeded), open() would refuse with EBUSY, but this open was answered already:
   * the node takes this read-write descriptor instead (FileNode.upgrade).
   */
  nativeOpened(path: string, o: NativeOpened): void {
    const existing = this.cache.get(o.ino);
    let node: FileNode;
    if (existing && !existing.dead) {
      if (o.write && !existing.writable && o.fd >= 0 && o.writable) existing.upgrade(o.fd);
      // A duplicate (the native handle keeps its own descriptor until its RELEASE): closing it
      // releases no file and never waits, so not through libuv's pool (a thread's wake).
      else if (o.fd >= 0) fs.closeSync(o.fd);
      this.openedAgain(existing, path);
      node = existing;
    } else {
      // The native side could not duplicate its descriptor (EMFILE): the handle stays unknown
      // here, and an op naming it gets EBADF (handle()).
      if (o.fd < 0) throw new Error(`no descriptor for the native open of ${path} (handle ${o.fh})`);
      node = this.cache.adopt(o.ino, path, o.fd, o.writable, fstatFd(o.fd).size);
    }
    this.handles.set(o.fh, node);
    if (o.write) this.openNames.add(o.fh, path, node.ino);
    this.kernelNames?.handles.opened(o.fh, path, node.ino);
  }

  /**
   * A write libfuse3's thread did to a file it created (native-create.h) before JS took the
   * create, or through a handle it opened (native-open.h, level 29) before JS took the open: the
   * bookkeeping of writeDirect after the primary's write, in its turn. The file is the
   * create's or the open's (registered by nativeCreated or nativeOpened in the same take, just
   * before, or `closed`: closed natively too), which no JS op touched meanwhile: nothing of it
   * the primary lacks is cached, it has one name. A clean node the cache keeps of an existing
   * file (JS opened it before) learns the new size, and its read-ahead windows are dropped.
   * `data` is a copy of the bytes when the sink wants them (the mirror's copy), else their count.
   */
  nativeWritten(fh: number, offset: number, data: Buffer | number, closed?: ClosedFile): Promise<void> {
    const f = this.nativeHandleFile(fh, closed);
    if (f === undefined) return Promise.reject(new Error(`no file for native handle ${fh}`));
    const len = typeof data === 'number' ? data : data.length;
    if (f.named) this.stampBehind(f.path);
    if (f.node) {
      f.node.contentChanged();
      this.cache.primaryWritten(f.node, offset, len);
    }
    this.kernelNames?.forgetRecorded(f.ino);
    if (!f.named || typeof data === 'number') return Promise.resolve();
    return this.sink.apply({ op: 'write', path: f.path, offset, data });
  }

  /**
   * An ftruncate libfuse3's thread did through a handle JS had not taken (native-create.h,
   * level 30), or since level 31 through an opened one JS took, on the conditions of a native
   * write (one name, no data of it cached, nothing in flight here), in its turn among the
   * handle's writes.
   */
  nativeTruncated(fh: number, size: number, closed?: ClosedFile): Promise<void> {
    const f = this.nativeHandleFile(fh, closed);
    if (f === undefined) return Promise.reject(new Error(`no file for native handle ${fh}`));
    if (f.named) this.stampBehind(f.path);
    return this.reportTruncated(f.named ? f.path : undefined, f.ino, size, f.node);
  }

  /**
   * An fallocate libfuse3's thread did (native-create.h, level 31) through a created handle JS
   * had not taken or an opened one (before or after JS took it): mode 0 or KEEP_SIZE
   * (allocation, no byte changed), on the conditions of a native write, in its turn among the
   * handle's writes. Reported as WritebackCache.fallocate reports the
   * primary's call: a size it changed as a truncate, a moved mtime (ext4 moves it in every mode)
   * as a utimens to the ns; a clean node JS keeps of the file learns the new end.
   */
  async nativeAllocated(
    fh: number,
    before: number,
    after: number,
    mtimeNs: bigint | null,
    closed?: ClosedFile,
  ): Promise<void> {
    const f = this.nativeHandleFile(fh, closed);
    if (f === undefined) throw new Error(`no file for native handle ${fh}`);
    if (f.named) this.stampBehind(f.path);
    if (f.node) {
      f.node.contentChanged();
      // Its end on the primary, as a write's ending there would move it.
      this.cache.primaryWritten(f.node, after, 0);
    }
    this.kernelNames?.forgetRecorded(f.ino);
    if (!f.named) return;
    const changes: Promise<void>[] = [];
    if (after !== before) changes.push(this.sink.apply({ op: 'truncate', path: f.path, size: after }));
    if (mtimeNs !== null) changes.push(this.sink.apply(utimensChange(f.path, null, mtimeNs)));
    await Promise.all(changes);
  }

  /**
   * The file a native handle's write or truncation is of: the handle's node, or for a handle
   * closed natively (`closed`) its path and the node the cache may still keep of it. `named`:
   * the change is reported (a node with no name left is not, as the cache's write-back does).
   */
  private nativeHandleFile(
    fh: number,
    closed?: ClosedFile,
  ): { node: FileNode | undefined; path: string; ino: number; named: boolean } | undefined {
    const known = closed ? this.cache.get(closed.ino) : undefined;
    const node = closed ? (known && !known.dead ? known : undefined) : this.handles.get(fh);
    const path = closed?.path ?? node?.path;
    if (path === undefined) return undefined;
    return { node, path, ino: closed?.ino ?? node!.ino, named: closed !== undefined || !node?.nameless };
  }

  /**
   * The bookkeeping of cache.truncate after a truncation libfuse's thread made on the primary
   * (native-create.h's ftruncate, native-setattr.h's truncate by path), the path's stamp taken:
   * a clean node JS keeps of the file learns its new end, the kernel's recorded attributes go,
   * and the sink gets the change (none without a path: a node with no name left).
   */
  private reportTruncated(
    path: string | undefined,
    ino: number,
    size: number,
    node?: FileNode,
  ): Promise<void> {
    if (node) {
      node.contentChanged();
      this.cache.primaryTruncated(node, size);
    }
    this.kernelNames?.forgetRecorded(ino);
    return path === undefined ? Promise.resolve() : this.sink.apply({ op: 'truncate', path, size });
  }

  /**
   * The change record's stamp and intent of a change libfuse's thread already made on the
   * primary (native creates, writes, unlinks): taken now, not waited for; what precedes the
   * change is the sink's hold (ChangeSink.changesAhead).
   */
  private stampBehind(path: string): void {
    const before = this.sink.beforeChange?.(path);
    if (before instanceof Promise) before.catch(() => undefined);
  }

  /**
   * A chmod, chown (by root), utimens, setxattr of a user.* name (level 27) or truncate by path
   * (level 30) libfuse's thread made on the primary (native-setattr.h:
   * a file with one name or a directory; for utimens, one the cache holds no data of, so no
   * write-back moves its mtime and nothing is pinned). Reported as chmod, chown and utimens
   * report theirs (chown: the owner as the primary has it after the change): the path's
   * stamp and intent behind the change (the sink's hold precedes it), then the sink's change,
   * queued synchronously. No other name to refresh (one name).
   */
  nativeSetattr(path: string, set: NativeSetattr): Promise<void> {
    this.stampBehind(path);
    if (set[0] === 'z') {
      // A truncate by path (level 30; truncate(2), an open(O_TRUNC)) of a file the cache holds
      // no data of.
      const node = this.cache.get(set[2]);
      return this.reportTruncated(path, set[2], set[1], node && !node.dead ? node : undefined);
    }
    if (set[0] === 'o') return this.sink.apply({ op: 'chown', path, uid: set[1], gid: set[2] });
    if (set[0] === 'X') return this.sink.apply({ op: 'setxattr', path, name: set[1], value: set[2] });
    return this.sink.apply(
      set[0] === 'm' ? { op: 'chmod', path, mode: set[1] & 0o7777 } : utimensChange(path, set[1], set[2]),
    );
  }

  /**
   * A rename libfuse3's worker thread already did on the primary (native-rename.h), reported in
   * its turn: the bookkeeping of rename() after its rename(2). The native side did it only for a
   * non-directory with one name that the cache holds no unwritten data of, onto nothing or onto
   * such a file (not open: libfuse hides an open target first, and that request is JS's), not a
   * hidden name, with no inhibition active and no other change in flight here. What follows
   * libfuse's node of `from` moves to `to` (nodeMoved); a replaced file the cache still knows
   * (clean) has no name left.
   */
  nativeRenamed(from: string, to: string, ino: number, replacedIno: number): Promise<void> {
    this.beforeNativeChange(from, to);
    const replaced = replacedIno !== 0 ? this.cache.get(replacedIno) : undefined;
    this.cache.renamed(from, to, ino);
    this.nodeMoved(from, to);
    if (replaced) replaced.nameless = true;
    return this.droppedWhenReported(this.sink.apply({ op: 'rename', path: to, from }), replaced);
  }

  /**
   * A mkdir, symlink or rmdir libfuse3's worker thread already did on the primary
   * (native-entries.h), reported in its turn as mkdir, symlink and rmdir report theirs: the
   * path's stamp behind the change (the sink's hold precedes it), then the sink's change with the
   * new entry's attributes as the primary has them. The native side did it only when no owner
   * change was needed (ownFor), for rmdir of an empty directory (nothing of it is JS's), not for
   * a hidden name, with no inhibition active and no other change in flight here.
   */
  nativeEntry(path: string, e: NativeEntry): Promise<void> {
    this.beforeNativeChange(path);
    if (e[0] === 'x') return this.sink.apply({ op: 'rmdir', path });
    if (e[0] === 'd') return this.sink.apply({ op: 'mkdir', path, mode: e[1], uid: e[2], gid: e[3] });
    return this.sink.apply({
      op: 'symlink',
      path,
      target: e[1],
      uid: e[2],
      gid: e[3],
      atimeNs: String(e[4]),
      mtimeNs: String(e[5]),
    });
  }

  /**
   * What `guarded` does before a JS change, for a namespace change libfuse's thread already made
   * at these paths: lookups forget what they knew of names and capabilities, a hide of the name
   * is not the one just before a rename any more, and the change record's stamp is taken now (the
   * primary already changed; the record took the queue before any answer); its intent line is
   * written behind the change, which the sink's intent for the whole volume covers
   * (ChangeSink.changesAhead).
   */
  private beforeNativeChange(...paths: string[]): void {
    this.forgetNoCapabilities?.();
    for (const p of paths) {
      this.hides.touched(p);
      this.stampBehind(p);
    }
  }

  /**
   * A file whose last name a change reported as `applied` took (marked nameless before): its
   * cached data goes once the sink has the change, unless a handle still holds the file
   * (libfuse's removal of a hidden name at its node's last release, while another node of the
   * file stays open: its name dropped by rmdir, handle-nodes.ts, keeps reading and writing it, as
   * in unlinkNow; dropping the data there lost the writes a read through that handle then missed).
   */
  private droppedWhenReported(applied: Promise<void>, node: FileNode | undefined): Promise<void> {
    if (!node) return applied;
    return applied.then(() => (node.refs === 0 ? this.cache.discard(node) : undefined));
  }

  nativeUnlinked(path: string, ino: number): Promise<void> {
    this.beforeNativeChange(path);
    this.kernelNames?.remove(path);
    this.kernelNames?.handles.forget(path);
    this.hides.removed(path);
    if (isHiddenPath(path)) this.hiddenLinks.removed(ino);
    this.hiddenGone(path);
    const node = this.cache.get(ino);
    if (node) node.nameless = true;
    // Queued now, synchronously: the sink sees it before any change JS makes after this call.
    return this.droppedWhenReported(this.sink.apply({ op: 'unlink', path }), node);
  }

  async rmdir(path: string, ctx?: CallerContext): Promise<void> {
    await this.guarded([path], async () => {
      if (notRoot(ctx)) this.stickyOnly(path, ctx!);
      try {
        this.paths.at([path], (b) => fs.rmdirSync(b));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOTEMPTY' || !(await this.dropHiddenNames(path)))
          throw err;
        this.paths.at([path], (b) => fs.rmdirSync(b));
      }
      await this.sink.apply({ op: 'rmdir', path });
    });
  }

  /**
   * rmdir met a directory (or a directory rename over one failed) whose entries are all
   * libfuse's hidden names: files unlinked while open, which high-level libfuse renames to
   * `.fuse_hidden…` and removes at the last release (waiting for that here deadlocks: libfuse
   * holds the directory's path lock for the RMDIR, and the release's unlink waits for it). For
   * the application they are gone, so rmdir succeeds (as on ext4): the names are unlinked now,
   * and the open handles keep reading and writing the file through the cache's descriptor
   * (libfuse passes them a null path once the directory is gone: the native patch sets
   * nullpath_ok). False (nothing done) when anything else is there.
   */
  private async dropHiddenNames(dir: string): Promise<boolean> {
    const names = await this.paths.at([dir], (b) => fsp.readdir(b));
    const paths = names.map((n) => (dir === '/' ? `/${n}` : `${dir}/${n}`));
    if (
      !names.every(isHiddenEntry) ||
      paths.some((p) => ((this.lstatIfAny(p)?.mode ?? 0) & S_IFMT) !== S_IFREG)
    )
      return false;
    for (const p of paths) {
      await this.sink.beforeChange?.(p);
      await this.unlinkNow(p, false, true);
    }
    return true;
  }

  async mkdir(path: string, mode: number, ctx: CallerContext | undefined): Promise<void> {
    await this.guarded([path], async () => {
      this.paths.at([path], (b) => fs.mkdirSync(b, mode & 0o7777));
      const st = await this.ownNew(ctx, path);
      await this.sink.apply({ op: 'mkdir', path, mode: st.mode, uid: st.uid, gid: st.gid });
    });
  }

  async mknod(path: string, mode: number, dev: number, ctx: CallerContext | undefined): Promise<void> {
    await this.guarded([path], async () => {
      await this.paths.at([path], (b) => mknod(b, mode, dev));
      const st = await this.ownNew(ctx, path);
      await this.sink.apply({
        op: 'mknod',
        path,
        mode: st.mode,
        dev,
        uid: st.uid,
        gid: st.gid,
        atimeNs: st.atimeNs,
        mtimeNs: st.mtimeNs,
      });
    });
  }

  async symlink(target: string, path: string, ctx: CallerContext | undefined): Promise<void> {
    await this.guarded([path], async () => {
      this.paths.at([path], (b) => fs.symlinkSync(target, b));
      const st = await this.ownNew(ctx, path);
      await this.sink.apply({
        op: 'symlink',
        path,
        target,
        uid: st.uid,
        gid: st.gid,
        atimeNs: st.atimeNs,
        mtimeNs: st.mtimeNs,
      });
    });
  }

  async link(from: string, path: string): Promise<void> {
    await this.guarded([from, path], () => this.linkNow(from, path));
  }

  /** link(2) on the primary, reported; the caller holds the gate passes (see guarded). */
  private async linkNow(from: string, path: string): Promise<void> {
    this.paths.at([from, path], (a, b) => fs.linkSync(a, b));
    if (this.kernelNames) {
      // Both names now belong to a multi-link file: `from`'s kernel inode has the old nlink.
      const ino = this.paths.at([path], (b) => fs.lstatSync(b)).ino;
      this.kernelNames.add(from, ino);
      this.kernelNames.add(path, ino);
    }
    await this.sink.apply({ op: 'link', path, from });
  }

  /**
   * rename(2). followsHide: whether libfuse hid `to` in this same request (fuse-native patch
   * level 10 can tell); undefined when not known, and then a hide of `to` not followed by any
   * lookup or change of it counts as this request's. flags: 0 or RENAME_NOREPLACE (EEXIST when
   * `to` exists, checked and done in one synchronous step: the kernel holds both directories for
   * the request, and nothing else changes the primary while it is mounted).
   */
  async rename(
    from: string,
    to: string,
    followsHide?: boolean,
    flags = 0,
    ctx?: CallerContext,
  ): Promise<void> {
    if ((flags & ~RENAME_NOREPLACE) !== 0) throw errnoError('EINVAL');
    // Taken before the passes: a hide of `to` counts only as the step just before this one.
    const hidden = this.hides.take(to);
    const hiddenAs = followsHide === false ? undefined : hidden;
    await this.guarded([from, to], async () => {
      const src = this.lstatIfAny(from);
      const dest = this.lstatIfAny(to);
      // The sticky rule for what goes (stickyOnly); two names of one file: nothing goes.
      if (notRoot(ctx) && !(src && dest && sameFile(src, dest))) {
        this.stickyOnly(from, ctx!);
        if (dest) this.stickyOnly(to, ctx!);
      }
      // (libfuse hides an open target before any rename, NOREPLACE too; the kernel never sends
      // that one: its lookup of `to` finds the open file, and it fails with EEXIST itself.)
      if (flags & RENAME_NOREPLACE && src && dest) throw errnoError('EEXIST');
      // Two names of one file: POSIX rename does nothing, and neither the mirror nor the change
      // record may see a rename (f would be gone there). libfuse moves its node of `from` to
      // `to` all the same (and drops the node `to` had, which no handle holds: it would have
      // hidden an open one first), so what follows libfuse's nodes follows it here too: the
      // handles open on that node, the names whose kernel inodes may hold its dirty pages, the
      // kernel names of the file. Without this, a handle opened by `from` was thought to be still
      // there, and once its node lost its path (its new name unlinked while open, then its
      // directory removed) no change through it invalidated the file's other names, nor one
      // through them its node: fstat through it kept an old size (bench/handle-diff.py --meta
      // --dirs, stream 26700).
      if (src && dest && sameFile(src, dest)) {
        this.nodeMoved(from, to);
        return;
      }
      if (src && !dest && hiddenAs !== undefined) {
        const hidden = this.lstatIfAny(hiddenAs);
        if (hidden && sameFile(src, hidden)) {
          // libfuse hid the open target `to` just now, and it is the source's file: give the
          // name back instead of moving the source onto it. The hidden name stays a third
          // name until libfuse removes it at the last release. libfuse moves its node of `from`
          // to `to` all the same.
          await this.linkNow(from, to);
          this.nodeMoved(from, to);
          return;
        }
      }
      const replaced = dest && (dest.mode & S_IFMT) === S_IFREG ? this.cache.get(dest.ino) : undefined;
      // As in unlink: another name of the replaced file takes its cached data over, or it is
      // written back first.
      const keeper =
        replaced?.isDirty && dest!.nlink > 1 ? this.otherNameNow(replaced, dest!, to) : undefined;
      if (replaced?.isDirty && dest!.nlink > 1 && keeper === undefined) await this.cache.flush(replaced);
      try {
        this.paths.at([from, to], (a, b) => fs.renameSync(a, b));
      } catch (err) {
        // A directory renamed over one whose entries are all hidden names: they go, and the
        // rename is tried again, as for rmdir (dropHiddenNames). Only then: listing the target
        // on every directory-over-directory rename cost a readdir each.
        const code = (err as NodeJS.ErrnoException).code;
        if (
          (code !== 'ENOTEMPTY' && code !== 'EEXIST') ||
          !isDir(src) ||
          !isDir(dest) ||
          !(await this.dropHiddenNames(to))
        )
          throw err;
        this.paths.at([from, to], (a, b) => fs.renameSync(a, b));
      }
      if (replaced && keeper !== undefined) replaced.path = keeper;
      // Update cached paths and report in one synchronous step, so a concurrent flush reports
      // its writes either before the rename under the old path or after it under the new one.
      this.cache.renamed(from, to, src && (src.mode & S_IFMT) !== S_IFDIR ? src.ino : undefined);
      this.nodeMoved(from, to);
      this.hides.renamed(from, to);
      if (src && !isDir(src)) {
        if (isHiddenPath(to)) this.hiddenLinks.added(src.ino);
        if (isHiddenPath(from)) this.hiddenLinks.removed(src.ino);
      }
      if (dest && !isDir(dest) && isHiddenPath(to)) this.hiddenLinks.removed(dest.ino);
      // The replaced file has no name left: nothing of it may be reported from here on (a flush
      // in flight included), or it would land in the mirror's copy of the file renamed over it.
      if (replaced && dest!.nlink <= 1) replaced.nameless = true;
      await this.sink.apply({ op: 'rename', path: to, from });
      if (replaced && dest!.nlink <= 1 && replaced.refs === 0) await this.cache.discard(replaced);
      else if (replaced) {
        // With other names: the name it was known by is another file's now.
        if (dest!.nlink > 1 && replaced.path === to) await this.renameNode(replaced, dest!);
        await this.releaseIfIdle(replaced);
      }
    });
  }

  /**
   * ctx: the caller (chmod, chown: see ownerOnly). The kernel checks ownership before it sends
   * either, from the inode it has for the name used; another name of the file may have changed
   * the owner since (one kernel inode per name), so the owner is checked here again on the
   * primary for callers other than root.
   */
  /**
   * libfuse moved its node of `from` (a directory: the nodes below it too) to `to`, which it
   * does on every successful rename: what follows libfuse's nodes follows it (the names whose
   * kernel inodes may hold dirty mmap pages, the kernel names of files with several names, the
   * nodes of open handles).
   */
  private nodeMoved(from: string, to: string): void {
    this.openNames.renamed(from, to);
    this.kernelNames?.renamed(from, to);
    this.kernelNames?.handles.renamed(from, to);
  }

  async chmod(path: string, mode: number, ctx?: CallerContext): Promise<void> {
    let ino: number | undefined;
    await this.guarded([path], async () => {
      this.paths.at([path], (b) => {
        // One lstat, and only when it is needed: the owner's check or the other names' refresh.
        const st = notRoot(ctx) || this.refreshesOwners ? fs.lstatSync(b) : undefined;
        if (notRoot(ctx)) ownerOnly(st!, ctx!, mode);
        fs.chmodSync(b, mode & 0o7777);
        ino = st?.ino;
      });
      await this.sink.apply({ op: 'chmod', path, mode: mode & 0o7777 });
    });
    if (ino !== undefined) await this.ownerRefreshed(ino, path);
  }

  async chown(path: string, uid: number, gid: number, ctx?: CallerContext): Promise<void> {
    let ino: number | undefined;
    await this.guarded([path], async () => {
      const u = uid === NO_ID ? -1 : uid;
      const g = gid === NO_ID ? -1 : gid;
      const st = this.paths.at([path], (b) => {
        if (notRoot(ctx)) ownerOnly(fs.lstatSync(b), ctx!, undefined, u);
        fs.lchownSync(b, u, g);
        return fs.lstatSync(b);
      });
      ino = st.ino;
      await this.sink.apply({ op: 'chown', path, uid: st.uid, gid: st.gid });
    });
    if (ino !== undefined) await this.ownerRefreshed(ino, path);
  }

  /** Times in ns since the epoch, set exactly; null leaves that time unchanged. */
  async utimens(path: string, atime: bigint | null, mtime: bigint | null): Promise<void> {
    if (atime === null && mtime === null) return;
    await this.guarded([path], async () => {
      // Cached data will move mtime when it is written back: the cache puts this one back
      // then, so nothing is written back here (a write-back never moves atime). One
      // synchronous step with setting the times: a write-back finishing around it puts back
      // either its own time before them or this one after its writes.
      const node = mtime !== null ? this.nodeNow(path) : undefined;
      this.paths.at([path], (b) => setTimesNs(b, atime, mtime));
      if (node) this.cache.timesSet(node, mtime!);
      await this.sink.apply(utimensChange(path, atime, mtime));
    });
  }

  /**
   * chmod, chown and utimens through a handle whose node has no path (fuse-native level 12 names
   * it "#FH", handle-nodes.ts): made on the cache's descriptor of the file and reported under
   * the name the cache knows it by (nothing when it has none left); the file's other names are
   * invalidated as after any change.
   */
  private async setattrByHandle(
    fh: number,
    change: (node: FileNode) => Parameters<ChangeSink['apply']>[0] | undefined,
  ): Promise<void> {
    const node = this.handle(fh);
    const pass = await this.gate.enter(node.path, node.ino);
    try {
      if (!node.nameless) await this.sink.beforeChange?.(node.path);
      const c = change(node);
      if (c !== undefined && !node.nameless) await this.sink.apply(c);
    } finally {
      pass.done();
    }
    await this.kernelNames?.changed([node.ino], this.changedThrough(node, undefined, fh));
  }

  async fchmod(fh: number, mode: number, ctx?: CallerContext): Promise<void> {
    let ino: number | undefined;
    await this.setattrByHandle(fh, (node) => {
      if (notRoot(ctx)) ownerOnly(fs.fstatSync(node.fd), ctx!, mode);
      fs.fchmodSync(node.fd, mode & 0o7777);
      ino = node.ino;
      return { op: 'chmod', path: node.path, mode: mode & 0o7777 };
    });
    if (ino !== undefined) await this.ownerRefreshed(ino);
  }

  async fchown(fh: number, uid: number, gid: number, ctx?: CallerContext): Promise<void> {
    let ino: number | undefined;
    await this.setattrByHandle(fh, (node) => {
      if (notRoot(ctx)) ownerOnly(fs.fstatSync(node.fd), ctx!, undefined, uid === NO_ID ? -1 : uid);
      fs.fchownSync(node.fd, uid === NO_ID ? -1 : uid, gid === NO_ID ? -1 : gid);
      const st = fs.fstatSync(node.fd);
      ino = node.ino;
      return { op: 'chown', path: node.path, uid: st.uid, gid: st.gid };
    });
    if (ino !== undefined) await this.ownerRefreshed(ino);
  }

  async futimens(fh: number, atime: bigint | null, mtime: bigint | null): Promise<void> {
    if (atime === null && mtime === null) return;
    await this.setattrByHandle(fh, (node) => {
      // As utimens: the cache puts this mtime back after a write-back of cached data.
      setFdTimesNs(node.fd, atime, mtime);
      if (mtime !== null) this.cache.timesSet(node, mtime);
      return utimensChange(node.path, atime, mtime);
    });
  }

  // ---- extended attributes ------------------------------------------------------------------

  async setxattr(path: string, name: string, value: Buffer, flags: number): Promise<void> {
    // The kernel does not enforce POSIX ACLs here (no FUSE_POSIX_ACL; libfuse2 cannot ask for
    // it): it checks mode bits only, where an ACL's mask shows up as group bits. An ACL stored
    // on the primary would grant through the mount what it does not grant on a local disk, and
    // deny what it grants: refuse them as a filesystem without ACL support does (cp -p and tar
    // then fall back to chmod).
    refuseAcl(name);
    await this.guarded([path], async () => {
      const copy = Buffer.from(value);
      // XATTR_CREATE and XATTR_REPLACE passed on: the primary answers EEXIST and ENODATA.
      this.onEntry(path, (entry) => setXattr(entry, name, copy, flags & (XATTR_CREATE | XATTR_REPLACE)));
      await this.sink.apply({ op: 'setxattr', path, name, value: copy });
    });
  }

  async getxattr(path: string, name: string): Promise<Buffer> {
    // Not shown either (as without ACL support: EOPNOTSUPP, also for an ACL already on the
    // primary); GNU ls -l then stops asking every entry for one. The native getxattr
    // (native-attrs.h) answers the same.
    refuseAcl(name);
    // The kernel's security.capability lookup before every write(2) reaches here once per
    // path: the patched fuse-native remembers an ENODATA answer and repeats it itself, until
    // forgetNoCapabilities (see guarded).
    const value = this.onEntry(path, (entry) => getXattr(entry, name));
    if (value === undefined) throw errnoError('ENODATA', `${path}: no ${name}`);
    return value;
  }

  /**
   * ctx: the caller. trusted.* names are listed to root only, as a local filesystem lists them
   * to CAP_SYS_ADMIN only (ext4's trusted list handler); the kernel's FUSE code passes the
   * server's list on unfiltered, where reading or setting them is refused to others by the VFS
   * itself. (uid 0 stands for the capability: FUSE tells no capabilities.)
   */
  async listxattr(path: string, ctx?: CallerContext): Promise<Array<string | Buffer>> {
    return shownXattrNames(this.onEntry(path, listXattrs), ctx);
  }

  async removexattr(path: string, name: string): Promise<void> {
    refuseAcl(name);
    await this.guarded([path], async () => {
      this.onEntry(path, (entry) => removeXattr(entry, name));
      await this.sink.apply({ op: 'removexattr', path, name });
    });
  }

  /*
   * The xattr calls of a node without a path, by a handle of it (fuse-native level 19 names it
   * "#FH"): a descriptor of a file unlinked while open whose directory was then removed. The
   * file's descriptor in the cache is what they go through (f*xattr); the same rules as by path.
   * A nameless file's change reaches neither the mirror nor the change record (setattrByHandle).
   */

  async fsetxattr(fh: number, name: string, value: Buffer, flags: number): Promise<void> {
    refuseAcl(name);
    const copy = Buffer.from(value);
    await this.setattrByHandle(fh, (node) => {
      setXattr(node.fd, name, copy, flags & (XATTR_CREATE | XATTR_REPLACE));
      return { op: 'setxattr', path: node.path, name, value: copy };
    });
  }

  async fgetxattr(fh: number, name: string): Promise<Buffer> {
    refuseAcl(name);
    const value = getXattr(this.handle(fh).fd, name);
    if (value === undefined) throw errnoError('ENODATA', `handle ${fh}: no ${name}`);
    return value;
  }

  async flistxattr(fh: number, ctx?: CallerContext): Promise<Array<string | Buffer>> {
    return shownXattrNames(listXattrs(this.handle(fh).fd), ctx);
  }

  async fremovexattr(fh: number, name: string): Promise<void> {
    refuseAcl(name);
    await this.setattrByHandle(fh, (node) => {
      removeXattr(node.fd, name);
      return { op: 'removexattr', path: node.path, name };
    });
  }

  /**
   * Runs an xattr call on the entry itself, on the JS thread (see lstatNow). The kernel has
   * already followed any symlinks, so a FUSE path that names a symlink means the link (getfattr
   * -h, ls -l on a dangling link): the l*xattr calls of src/posix/xattr.ts.
   */
  private onEntry<T>(path: string, fn: (entry: string) => T): T {
    return this.paths.at([path], fn);
  }

  // ---- helpers ------------------------------------------------------------------------------

  private handle(fh: number): FileNode {
    const node = this.handles.get(fh);
    if (!node) throw errnoError('EBADF');
    return node;
  }

  /**
   * A cached file lost the name its changes are reported under (unlinked, or renamed over)
   * while open or with other names: it is reported under one of its other names from now on
   * (found by a walk of the primary), or not at all when it has none left (FileNode.nameless).
   */
  private async renameNode(node: FileNode, st: fs.Stats): Promise<void> {
    const other =
      Number(st.nlink) > 1
        ? (this.otherNameNow(node, st, node.path) ?? (await this.nameOf(Number(st.ino), Number(st.dev))))
        : undefined;
    if (other !== undefined) node.path = other;
    else node.nameless = true;
  }

  /**
   * Another name of a cached file than `gone` (about to be unlinked or renamed over), known
   * without a walk and checked on the primary now: the name its changes are reported under, or
   * one the kernel was told of (kernel-names.ts: every name made by link, and the names of
   * multi-link files lookups and listings returned). Synchronous, so the caller can hand the
   * node over to it in the same step as the change (no flush can report in between).
   */
  private otherNameNow(node: FileNode, st: fs.Stats, gone: string): string | undefined {
    const candidates = [node.path, ...(this.kernelNames?.namesOf(node.ino) ?? [])];
    for (const name of candidates) {
      if (name === gone) continue;
      const other = this.lstatIfAny(name);
      if (other && sameFile(other, st)) return name;
    }
    return undefined;
  }

  /** The primary's ctime of inode ino through a name of it the kernel knows other than `gone`. */
  private ctimeOfOtherName(ino: number, gone: string): bigint | undefined {
    for (const name of this.kernelNames?.namesOf(ino) ?? []) {
      if (name === gone) continue;
      try {
        const st = this.paths.at([name], lstatNow);
        if (Number(st.ino) === ino) return st.ctimeNs;
      } catch {
        // Gone meanwhile: try the next.
      }
    }
    return undefined;
  }

  /** A volume path of the primary's inode ino (a walk of the primary), or undefined. */
  private async nameOf(ino: number, dev: number): Promise<string | undefined> {
    const root = this.paths.backing('/');
    const dirs = [''];
    while (dirs.length > 0) {
      const dir = dirs.pop()!;
      const names = await fsp.readdir(root + dir).catch(() => [] as string[]);
      for (const n of names) {
        const st = await fsp.lstat(`${root}${dir}/${n}`).catch(() => undefined);
        if (st?.isDirectory()) dirs.push(`${dir}/${n}`);
        else if (st?.ino === ino && st.dev === dev) return `${dir}/${n}`;
      }
    }
    return undefined;
  }

  /**
   * The name a change through handle fh comes by, as KernelNames tracks it: its path, or the key
   * of its node when that has none (handle-nodes.ts). Then the file's name the cache knows is
   * made one of its tracked names: a file with one name has a kernel inode per node here (the
   * named one and the pathless one), and the named one must drop what a change through the
   * other made stale (KernelNames tracks the names of files with several names only).
   */
  private changedThrough(node: FileNode, path: string | undefined, fh: number): string | undefined {
    const names = this.kernelNames;
    if (path !== undefined || names === undefined) return path;
    const key = names.handles.keyOf(fh);
    if (key !== undefined && !node.nameless && !node.dead) names.add(node.path, node.ino);
    return key;
  }

  /** path: the name the handle was opened under (see open-names.ts and handle-nodes.ts). */
  private newHandle(node: FileNode, path: string, writable: boolean): number {
    let fh = this.nextHandle++;
    // Handles from NATIVE_HANDLES up are the native creates' (native-create.h).
    if (this.nextHandle >= NATIVE_HANDLES) this.nextHandle = 1;
    while (this.handles.has(fh)) fh = this.nextHandle++;
    this.handles.set(fh, node);
    if (writable) this.openNames.add(fh, path, node.ino);
    this.kernelNames?.handles.opened(fh, path, node.ino);
    return fh;
  }

  /**
   * Closes the cache's fd of a node that no handle uses and that holds no dirty data any more,
   * as after writing it back for a namespace change (otherwise the fd stays open until the
   * inode is opened again, or forever). Taking and dropping a reference lets the cache decide.
   */
  private async releaseIfIdle(node: FileNode): Promise<void> {
    if (node.refs > 0 || node.isDirty) return;
    node.refs++;
    await this.cache.unref(node);
  }

  /** The cache's node of a regular file's path, if it has one. */
  private nodeNow(path: string): FileNode | undefined {
    const st = this.lstatIfAny(path);
    if (!st || (st.mode & S_IFMT) !== S_IFREG) return undefined;
    return this.cache.get(st.ino);
  }

  /** The primary's lstat of a volume path, undefined when anything on the way is missing. */
  private lstatIfAny(path: string): fs.Stats | undefined {
    try {
      return this.paths.at([path], lstatOrUndefined);
    } catch {
      return undefined;
    }
  }

  /** Runs a namespace change with gate passes for each path it touches. */
  /** invalidate: false for a change no name of the file shows (a hidden name's removal). */
  private async guarded(paths: string[], fn: () => Promise<void>, invalidate = true): Promise<void> {
    // Any change through the volume may give a name a different file or new xattrs: forget
    // before (lookups from now on ask the primary) and after (an answer computed while the
    // change was on its way must not stay).
    this.forgetNoCapabilities?.();
    for (const p of paths) this.hides.touched(p);
    const passes = [];
    // libfuse3: the files the change touches (before and after it: an unlinked name, a
    // replaced rename target, a new link), whose names the kernel must forget.
    const names = this.kernelNames;
    const inos = new Set<number>();
    try {
      for (const p of paths) passes.push(await this.gate.enter(p));
      for (const p of paths) await this.sink.beforeChange?.(p);
      if (names && !names.isEmpty) this.collectInos(paths, inos);
      await fn();
      if (names && !names.isEmpty) this.collectInos(paths, inos);
    } finally {
      this.forgetNoCapabilities?.();
      for (const p of passes) p.done();
    }
    // Invalidated after the passes are done: a freeze that starts meanwhile waits for changes
    // in flight, and its held WRITEs lock pages an invalidation waits for. The caller is
    // answered once the kernel has dropped every name's attributes.
    if (invalidate && inos.size > 0) await names?.changed(inos);
  }

  private collectInos(paths: string[], into: Set<number>): void {
    for (const p of paths) {
      const st = this.paths.at([p], lstatOrUndefined);
      if (st && (st.mode & S_IFMT) !== S_IFDIR) into.add(st.ino);
    }
  }

  /**
   * The owner a new entry must get: the caller's uid, and the caller's gid unless the parent
   * directory is setgid (then the backing filesystem already gave it the parent's gid).
   * Undefined when the server already created it as the caller (root creating as root).
   */
  /**
   * Gives a new entry its owner (see ownFor) and returns what its change reports: mode, owner
   * and its times to the ns (a symlink's or device node's times never change again but by
   * utimens, so the mirror sets them from the change, not from a later read of the path, which
   * may name another entry by then).
   */
  private async ownNew(ctx: CallerContext | undefined, path: string): Promise<NewEntry> {
    const { uid, gid } = await this.ownFor(ctx, path);
    return this.paths.at([path], async (b) => {
      if (uid !== undefined) await fsp.lchown(b, uid, gid!);
      const st = fs.lstatSync(b, { bigint: true });
      return {
        mode: Number(st.mode),
        uid: Number(st.uid),
        gid: Number(st.gid),
        atimeNs: String(st.atimeNs),
        mtimeNs: String(st.mtimeNs),
      };
    });
  }

  private async ownFor(
    ctx: CallerContext | undefined,
    path: string,
  ): Promise<{ uid?: number; gid?: number }> {
    if (!ctx || this.myUid !== 0) return {};
    if (ctx.uid === this.myUid && ctx.gid === this.myGid) return {};
    const parent = this.paths.at([parentOf(path)], (b) => fs.statSync(b));
    const gid = parent.mode & S_ISGID ? parent.gid : ctx.gid;
    return { uid: ctx.uid, gid };
  }
}

/** A new entry as its change reports it (ownNew). */
interface NewEntry {
  mode: number;
  uid: number;
  gid: number;
  atimeNs: string;
  mtimeNs: string;
}

function wantsWrite(flags: number): boolean {
  return (flags & O_ACCMODE) !== fs.constants.O_RDONLY;
}

/**
 * The cache's own fd for a file: read-write when possible, because every handle of the inode
 * shares it. When that is refused, fall back to what the application asked for, so an open
 * for writing fails here with the primary's errno instead of a later write-back.
 */
function openCacheFd(backing: string, flags: number): { fd: number; writable: boolean } {
  // On the JS thread (see lstatNow): only regular files reach open, which opens at once.
  try {
    return { fd: fs.openSync(backing, fs.constants.O_RDWR, 0), writable: true };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS' && code !== 'ETXTBSY') throw err;
    const acc = flags & O_ACCMODE;
    if (acc === fs.constants.O_RDONLY)
      return { fd: fs.openSync(backing, fs.constants.O_RDONLY, 0), writable: false };
    if (acc === fs.constants.O_WRONLY)
      return { fd: fs.openSync(backing, fs.constants.O_WRONLY, 0), writable: true };
    throw err;
  }
}

function closeQuietly(fd: number): void {
  fs.close(fd, () => undefined);
}

function openFd(p: string, flags: number, mode: number): Promise<number> {
  return new Promise((res, rej) => fs.open(p, flags, mode, (e, fd) => (e ? rej(e) : res(fd))));
}
/** fstat on the JS thread (see lstatNow). */
function fstatFd(fd: number): fs.Stats {
  return fs.fstatSync(fd);
}
function fchownFd(fd: number, uid: number, gid: number): Promise<void> {
  return new Promise((res, rej) => fs.fchown(fd, uid, gid, (e) => (e ? rej(e) : res())));
}
/**
 * lstat on the JS thread, as every stat in this file. getattr is by far the most frequent
 * request (with attr_timeout 0, one per path component walked), and a thread-pool round trip
 * costs far more than the call: done synchronously, create/stat/unlink went 1.6–2.4× faster
 * (docs/benchmarks.md). An lstat of a cached inode takes microseconds; a cold one waits for
 * the disk while no other request is served (reads and writes of the cache included). The
 * namespace changes of the small-file hot path (create's open, unlink, rename) are done on the
 * JS thread too: each thread-pool round trip adds two thread hand-offs to the request, about what
 * bindfs spends on the whole request, for a call of microseconds on a local filesystem (a journal
 * commit does not hold them; fsync does). So are the other metadata calls of a request (link,
 * symlink, mkdir, rmdir, readlink, chmod, lchown, the xattr calls, truncate of a file up to
 * SYNC_TRUNCATE_BYTES): docs/benchmarks.md, "Metadata operations on the JS thread". What stays
 * on the thread pool is what can take long (fsync, reads and writes of data, readdir, statfs,
 * truncate of a large file) and mknod.
 */
function lstatNow(p: string): fs.BigIntStats {
  return fs.lstatSync(p, { bigint: true });
}

function isDir(st: fs.Stats | undefined): boolean {
  return st !== undefined && (st.mode & S_IFMT) === S_IFDIR;
}

const TRUSTED_PREFIX = 'trusted.';
/** How long a chmod or chown waits for the stats of the file's other names (ownerRefreshed). */
const OWNER_REFRESH_MS = 2000;

/** A caller known and not root (uid 0 stands for the capabilities: FUSE tells none). */
function notRoot(ctx: CallerContext | undefined): boolean {
  return ctx !== undefined && ctx.uid !== 0;
}

/**
 * chmod and chown by a caller other than root: only the file's owner (EPERM), and chown gives a
 * file to no one else (uid -1 or the owner's). The kernel checked the same from the attributes
 * of the name's own kernel inode, which a change through another name of the file can have left
 * stale (high-level libfuse keeps one per name): a user could make a file that root had just
 * taken from them, through a hard link, setuid (bench/handle-diff.py --user found the stale
 * owner). What the kernel checked besides (group membership for chgrp, the setgid bit a chmod
 * drops) is left to it.
 */
function ownerOnly(st: fs.Stats, ctx: CallerContext, mode?: number, uid?: number): void {
  if (st.uid === ctx.uid) {
    if (uid !== undefined && uid !== -1 && uid !== st.uid) throw errnoError('EPERM', 'chown to another user');
    return;
  }
  // The kernel's own kill of setuid/setgid when someone else writes the file (file_remove_privs:
  // a chmod with the writer's identity) takes those bits off and nothing else: always allowed.
  if (mode !== undefined) {
    const was = st.mode & 0o7777;
    const now = mode & 0o7777;
    if ((now & ~was) === 0 && (was & ~now & ~(S_ISUID | S_ISGID)) === 0) return;
  }
  throw errnoError('EPERM', 'not the owner');
}

function sameFile(a: fs.Stats, b: fs.Stats): boolean {
  return a.ino === b.ino && a.dev === b.dev;
}

function lstatOrUndefined(p: string): fs.Stats | undefined {
  try {
    // ENOENT without an exception (the common miss: a rename's new name); ENOTDIR still throws.
    return fs.lstatSync(p, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/**
 * A file at most this large on the primary is truncated on the JS thread; a larger one on the
 * thread pool: freeing its blocks is work that grows with the size, and no other request would
 * be served meanwhile.
 */
const SYNC_TRUNCATE_BYTES = 64 * 1024 * 1024;

/** truncate(2) of a primary path (see lstatNow, and SYNC_TRUNCATE_BYTES). */
function truncateAt(p: string, size: number): void | Promise<void> {
  if (fs.statSync(p).size <= SYNC_TRUNCATE_BYTES) return fs.truncateSync(p, size);
  return fsp.truncate(p, size);
}

/** The utimens change the sink gets: times to the ms and, exactly, to the ns (null: unchanged). */
function utimensChange(path: string, atime: bigint | null, mtime: bigint | null) {
  const ms = (t: bigint | null) => (t === null ? null : nsToMs(t));
  const ns = (t: bigint | null) => (t === null ? null : String(t));
  return {
    op: 'utimens' as const,
    path,
    atime: ms(atime),
    mtime: ms(mtime),
    atimeNs: ns(atime),
    mtimeNs: ns(mtime),
  };
}

/** lseek(2)'s whence values for data and holes (Linux), and -ENXIO as the addon answers it. */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const NEG_ENXIO = -6;
