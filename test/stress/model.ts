import { createHash } from 'node:crypto';
import { Rng } from './prng.js';

/**
 * One writer's model of its own subtree of the volume: names, inodes (hard links share one),
 * content, mode, owner, xattrs, symlink targets. The writer applies every operation to the
 * mount and to this model; the model's state after each operation is what the oracle compares
 * snapshots, the primary and the mirror with. Times are not modelled (the kernel sets them).
 *
 * Each writer owns its subtree alone, so the model is exact whatever the other writers do.
 */

/** What a path holds, as compared: `t` type, `h` sha1 and `size` of a file, `target` of a symlink. */
export interface EntryState {
  /** f file, d directory, l symlink, p fifo, c character device, s socket. */
  t: 'f' | 'd' | 'l' | 'p' | 'c' | 's';
  h?: string;
  size?: number;
  target?: string;
  /** A device's number (st_rdev). */
  rdev?: number;
  /** mtime in ns since the epoch (read for the restore check; the model has no times). */
  mt?: string;
  mode?: number;
  uid: number;
  gid: number;
  /** user.* xattrs, `name=value` sorted, joined by ','. */
  x?: string;
}

export type FallocateMode = 'punch' | 'zero' | 'zerokeep' | 'grow' | 'keep';

export type Op =
  | { op: 'mkdir'; path: string; mode: number }
  | { op: 'create'; path: string; mode: number; len: number; seed: number }
  | { op: 'write'; path: string; offset: number; len: number; seed: number }
  | { op: 'truncate'; path: string; size: number }
  /**
   * fallocate(1) of an existing file: punch (PUNCH_HOLE | KEEP_SIZE), zero (ZERO_RANGE, may grow
   * the file), zerokeep (ZERO_RANGE | KEEP_SIZE), grow (mode 0, may grow it), keep (KEEP_SIZE:
   * allocation only, no byte changes).
   */
  | { op: 'fallocate'; path: string; mode: FallocateMode; offset: number; len: number }
  | {
      op: 'mmap';
      path: string;
      offset: number;
      len: number;
      byte: number;
      msync: boolean;
      /**
       * Without msync: the writing process keeps the mapping (and its dirty pages, which FUSE
       * writes back when a mapping goes) this long after the write, while the writer goes on.
       */
      holdMs?: number;
    }
  | { op: 'rename'; from: string; path: string }
  | { op: 'link'; from: string; path: string }
  | { op: 'unlink'; path: string }
  | { op: 'symlink'; path: string; target: string }
  | { op: 'rmdir'; path: string }
  | { op: 'chmod'; path: string; mode: number }
  | { op: 'chown'; path: string; uid: number; gid: number }
  | { op: 'utimens'; path: string; atime: number; mtime: number }
  | { op: 'setxattr'; path: string; name: string; value: string }
  | { op: 'removexattr'; path: string; name: string }
  | { op: 'mkfifo'; path: string; mode: number }
  /** A character device (rdev: /dev/null, /dev/zero or /dev/full's number) or a socket. */
  | { op: 'mknod'; path: string; kind: 'c' | 's'; mode: number; rdev: number }
  | { op: 'fsync'; path: string };

interface Inode {
  /** f file, l symlink; nodes: p fifo, c character device, s socket. */
  kind: 'f' | 'l' | 'p' | 'c' | 's';
  data: Buffer;
  target?: string;
  rdev?: number;
  mode: number;
  uid: number;
  gid: number;
  xattrs: Map<string, string>;
  hash?: string;
}

interface DirMeta {
  mode: number;
  uid: number;
  gid: number;
  xattrs: Map<string, string>;
}

export interface GeneratorOptions {
  /** Generate mmap writes without msync (dirty pages the kernel writes back later). */
  lazyMmap: boolean;
  /** Generate mmap writes at all (each one starts a python3 process). */
  mmap: boolean;
  /** Generate hard links (default true). */
  links?: boolean;
  /**
   * One new name in four holds a byte that is not UTF-8 (U+DC00 + the byte: docs/architecture.md,
   * "Names are bytes"). Off by default, so the streams of earlier seeds stay the same.
   */
  bytes?: boolean;
}

const FILE_MODES = [0o644, 0o600, 0o640, 0o664, 0o755, 0o444];
const DIR_MODES = [0o755, 0o700, 0o750, 0o775];
const IDS = [0, 4, 30, 1000, 65534];
const MAX_ENTRIES = 70;
const MAX_DEPTH = 3;

/** The content an op's seed stands for (writers and the model derive the same bytes). */
export function opData(seed: number, len: number): Buffer {
  return new Rng(seed).bytes(len);
}

export function sameState(a: EntryState | null, b: EntryState | null, fields: 'all' | 'content'): boolean {
  if (!a || !b) return a === b;
  if (a.t !== b.t || a.h !== b.h || a.size !== b.size || a.target !== b.target || a.rdev !== b.rdev)
    return false;
  if (fields === 'content') return true;
  return a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && (a.x ?? '') === (b.x ?? '');
}

export function xattrString(entries: Iterable<[string, string]>): string {
  return [...entries]
    .map(([k, v]) => `${k}=${v}`)
    .sort()
    .join(',');
}

export class SubtreeModel {
  private readonly names = new Map<string, Inode>();
  private readonly dirs = new Map<string, DirMeta>();
  private counter = 0;

  constructor(readonly root: string) {}

  /** The state of every path of the subtree (the root included once it exists). */
  state(): Map<string, EntryState> {
    const out = new Map<string, EntryState>();
    for (const [p, d] of this.dirs)
      out.set(p, { t: 'd', mode: d.mode, uid: d.uid, gid: d.gid, x: xattrString(d.xattrs) });
    for (const [p, n] of this.names) out.set(p, this.inodeState(n));
    return out;
  }

  private inodeState(n: Inode): EntryState {
    if (n.kind === 'l') return { t: 'l', target: n.target, uid: n.uid, gid: n.gid };
    if (n.kind !== 'f')
      return {
        t: n.kind,
        ...(n.kind === 'c' ? { rdev: n.rdev } : {}),
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        x: xattrString(n.xattrs),
      };
    n.hash ??= createHash('sha1').update(n.data).digest('hex');
    return {
      t: 'f',
      h: n.hash,
      size: n.data.length,
      mode: n.mode,
      uid: n.uid,
      gid: n.gid,
      x: xattrString(n.xattrs),
    };
  }

  /** Applies an op that succeeded on the mount. */
  apply(o: Op): void {
    switch (o.op) {
      case 'mkdir':
        this.dirs.set(o.path, { mode: o.mode, uid: 0, gid: 0, xattrs: new Map() });
        return;
      case 'create':
        this.names.set(o.path, {
          kind: 'f',
          data: opData(o.seed, o.len),
          mode: o.mode,
          uid: 0,
          gid: 0,
          xattrs: new Map(),
        });
        return;
      case 'write': {
        const n = this.names.get(o.path)!;
        const end = o.offset + o.len;
        const data =
          end > n.data.length ? Buffer.concat([n.data, Buffer.alloc(end - n.data.length)]) : n.data;
        opData(o.seed, o.len).copy(data, o.offset);
        this.setData(n, data);
        return;
      }
      case 'mmap': {
        const n = this.names.get(o.path)!;
        const data = Buffer.from(n.data);
        data.fill(o.byte, o.offset, o.offset + o.len);
        this.setData(n, data);
        return;
      }
      case 'fallocate': {
        const n = this.names.get(o.path)!;
        const end = o.offset + o.len;
        const grows = (o.mode === 'zero' || o.mode === 'grow') && end > n.data.length;
        const data = Buffer.alloc(grows ? end : n.data.length);
        n.data.copy(data);
        if (o.mode === 'punch' || o.mode === 'zero' || o.mode === 'zerokeep')
          data.fill(0, o.offset, Math.min(end, n.data.length));
        this.setData(n, data);
        return;
      }
      case 'truncate': {
        const n = this.names.get(o.path)!;
        const data = Buffer.alloc(o.size);
        n.data.copy(data, 0, 0, Math.min(o.size, n.data.length));
        this.setData(n, data);
        return;
      }
      case 'rename': {
        if (this.dirs.has(o.from)) {
          for (const m of [this.dirs, this.names] as Array<Map<string, unknown>>)
            for (const [p, v] of [...m])
              if (p === o.from || p.startsWith(o.from + '/')) {
                m.delete(p);
                m.set(o.path + p.slice(o.from.length), v);
              }
          return;
        }
        const n = this.names.get(o.from)!;
        // rename(2) of two names of one inode does nothing.
        if (this.names.get(o.path) === n) return;
        this.names.delete(o.from);
        this.names.set(o.path, n);
        return;
      }
      case 'link':
        this.names.set(o.path, this.names.get(o.from)!);
        return;
      case 'unlink':
        this.names.delete(o.path);
        return;
      case 'symlink':
        this.names.set(o.path, {
          kind: 'l',
          data: Buffer.alloc(0),
          target: o.target,
          mode: 0o777,
          uid: 0,
          gid: 0,
          xattrs: new Map(),
        });
        return;
      case 'mkfifo':
      case 'mknod':
        this.names.set(o.path, {
          kind: o.op === 'mkfifo' ? 'p' : o.kind,
          ...(o.op === 'mknod' && o.kind === 'c' ? { rdev: o.rdev } : {}),
          data: Buffer.alloc(0),
          mode: o.mode,
          uid: 0,
          gid: 0,
          xattrs: new Map(),
        });
        return;
      case 'rmdir':
        this.dirs.delete(o.path);
        return;
      case 'chmod':
        this.meta(o.path).mode = o.mode;
        return;
      case 'chown': {
        const m = this.meta(o.path);
        m.uid = o.uid;
        m.gid = o.gid;
        return;
      }
      case 'setxattr':
        this.meta(o.path).xattrs.set(o.name, o.value);
        return;
      case 'removexattr':
        this.meta(o.path).xattrs.delete(o.name);
        return;
      case 'utimens':
      case 'fsync':
        return;
    }
  }

  private setData(n: Inode, data: Buffer): void {
    n.data = data;
    n.hash = undefined;
  }

  private meta(p: string): DirMeta | Inode {
    return this.dirs.get(p) ?? this.names.get(p)!;
  }

  /** The next operation, valid against the current model. */
  /** The inode behind a name (one object for all its names), undefined for none. */
  inodeOf(p: string): object | undefined {
    return this.names.get(p);
  }

  next(rng: Rng, o: GeneratorOptions): Op {
    if (!this.dirs.has(this.root)) return { op: 'mkdir', path: this.root, mode: 0o755 };
    const files = [...this.names].filter(([, n]) => n.kind === 'f').map(([p]) => p);
    const nonDirs = [...this.names.keys()];
    const dirs = [...this.dirs.keys()];
    const full = this.names.size + this.dirs.size >= MAX_ENTRIES;
    for (;;) {
      const kind = rng.weighted({
        create: full ? 0 : 10,
        write: files.length ? 22 : 0,
        truncate: files.length ? 5 : 0,
        fallocate: files.length ? 3 : 0,
        mmap: files.length && o.mmap ? (o.lazyMmap ? 4 : 1) : 0,
        rename: nonDirs.length ? 8 : 0,
        renameDir: dirs.length > 1 ? 2 : 0,
        link: files.length && !full && o.links !== false ? 5 : 0,
        unlink: nonDirs.length ? (full ? 10 : 5) : 0,
        symlink: full ? 0 : 3,
        mkdir: full ? 0 : 3,
        rmdir: dirs.length > 1 ? 3 : 0,
        chmod: 4,
        chown: 5,
        utimens: 4,
        setxattr: 4,
        removexattr: 2,
        mkfifo: full ? 0 : 1,
        mknod: full ? 0 : 1,
        fsync: files.length ? 1 : 0,
      });
      const op = this.make(kind, rng, o, files, nonDirs, dirs);
      if (op) return op;
    }
  }

  private make(
    kind: string,
    rng: Rng,
    o: GeneratorOptions,
    files: string[],
    nonDirs: string[],
    dirs: string[],
  ): Op | undefined {
    const seed = rng.u32();
    switch (kind) {
      case 'create': {
        // Mostly small, some over 1 MiB (several write requests, chunked resync).
        const len = rng.chance(0.06)
          ? rng.range(1 << 20, 3 << 20)
          : rng.chance(0.5)
            ? rng.int(4096)
            : rng.int(200_000);
        return { op: 'create', path: this.newName(rng, dirs, 'f', o), mode: rng.pick(FILE_MODES), len, seed };
      }
      case 'write': {
        const p = rng.pick(files);
        const size = this.names.get(p)!.data.length;
        const len = rng.chance(0.1) ? rng.range(65_536, 400_000) : rng.range(1, 16_384);
        const offset = rng.chance(0.3) ? size : rng.int(size + 8192);
        return { op: 'write', path: p, offset, len, seed };
      }
      case 'truncate': {
        const p = rng.pick(files);
        const size = this.names.get(p)!.data.length;
        return {
          op: 'truncate',
          path: p,
          size: rng.chance(0.5) ? rng.int(size + 1) : size + rng.int(100_000),
        };
      }
      case 'fallocate': {
        const p = rng.pick(files);
        const size = this.names.get(p)!.data.length;
        const mode = rng.pick<FallocateMode>(['punch', 'punch', 'zero', 'zerokeep', 'grow', 'keep']);
        // Mostly inside the file (page-aligned or not), sometimes across or past its end.
        const offset = rng.chance(0.8) ? rng.int(size + 1) : size + rng.int(100_000);
        const len = 1 + (rng.chance(0.2) ? rng.int(1 << 20) : rng.int(65_536));
        return { op: 'fallocate', path: p, mode, offset, len };
      }
      case 'mmap': {
        const p = rng.pick(files);
        const size = this.names.get(p)!.data.length;
        if (size < 1) return undefined;
        const offset = rng.int(size);
        const len = 1 + rng.int(Math.min(size - offset, 200_000));
        const byte = 0x41 + rng.int(26);
        const msync = !o.lazyMmap || rng.chance(0.5);
        return {
          op: 'mmap',
          path: p,
          offset,
          len,
          byte,
          msync,
          ...(msync ? {} : { holdMs: 200 + rng.int(1300) }),
        };
      }
      case 'rename': {
        const from = rng.pick(nonDirs);
        // Sometimes over an existing non-directory (atomic replace).
        const to = rng.chance(0.3) ? rng.pick(nonDirs) : this.newName(rng, dirs, 'r', o);
        if (to === from) return undefined;
        return { op: 'rename', from, path: to };
      }
      case 'renameDir': {
        const from = rng.pick(dirs.filter((d) => d !== this.root));
        const parents = dirs.filter(
          (d) => d !== from && !d.startsWith(from + '/') && depth(d, this.root) < MAX_DEPTH,
        );
        if (!parents.length) return undefined;
        const to = `${rng.pick(parents)}/${this.newLeaf(rng, 'd', o)}`;
        if (depth(to, this.root) + this.height(from) > MAX_DEPTH + 1) return undefined;
        return { op: 'rename', from, path: to };
      }
      case 'link':
        return { op: 'link', from: rng.pick(files), path: this.newName(rng, dirs, 'h', o) };
      case 'unlink':
        return { op: 'unlink', path: rng.pick(nonDirs) };
      case 'symlink': {
        const target =
          rng.chance(0.5) && nonDirs.length ? rng.pick(nonDirs).split('/').pop()! : `t${rng.int(1000)}`;
        return { op: 'symlink', path: this.newName(rng, dirs, 'l', o), target };
      }
      case 'mkdir': {
        const parents = dirs.filter((d) => depth(d, this.root) < MAX_DEPTH);
        return {
          op: 'mkdir',
          path: `${rng.pick(parents)}/${this.newLeaf(rng, 'd', o)}`,
          mode: rng.pick(DIR_MODES),
        };
      }
      case 'rmdir': {
        const empty = dirs.filter((d) => d !== this.root && !this.hasChildren(d));
        return empty.length ? { op: 'rmdir', path: rng.pick(empty) } : undefined;
      }
      case 'chmod': {
        const p = this.pickMeta(rng, nonDirs, dirs, false);
        if (!p) return undefined;
        return { op: 'chmod', path: p, mode: rng.pick(this.dirs.has(p) ? DIR_MODES : FILE_MODES) };
      }
      case 'chown': {
        // Symlinks included: lchown (the owner the issue saw lost).
        const p = rng.chance(0.3) ? this.pickKind(rng, 'l') : this.pickMeta(rng, nonDirs, dirs, true);
        if (!p || p === this.root) return undefined;
        return { op: 'chown', path: p, uid: rng.pick(IDS), gid: rng.pick(IDS) };
      }
      case 'utimens': {
        const p = this.pickMeta(rng, nonDirs, dirs, false);
        if (!p) return undefined;
        const base = 1_500_000_000_000 + rng.int(200_000_000) * 1000;
        return { op: 'utimens', path: p, atime: base + rng.int(1000), mtime: base - rng.int(1_000_000) };
      }
      case 'setxattr': {
        const p = this.pickMeta(rng, nonDirs, dirs, false, true);
        if (!p) return undefined;
        return { op: 'setxattr', path: p, name: `user.k${rng.int(4)}`, value: `v${rng.int(100_000)}` };
      }
      case 'removexattr': {
        const withX = [...this.dirs, ...this.names].filter(([, m]) => m.xattrs.size > 0);
        if (!withX.length) return undefined;
        const [p, m] = rng.pick(withX);
        return { op: 'removexattr', path: p, name: rng.pick([...m.xattrs.keys()]) };
      }
      case 'mkfifo':
        return { op: 'mkfifo', path: this.newName(rng, dirs, 'p', o), mode: 0o644 };
      case 'mknod': {
        const kind = rng.chance(0.5) ? 'c' : 's';
        // 1:3, 1:5, 1:7 (null, zero, full) as glibc's makedev encodes them.
        const rdev = kind === 'c' ? 0x100 + rng.pick([3, 5, 7]) : 0;
        return {
          op: 'mknod',
          path: this.newName(rng, dirs, kind === 'c' ? 'c' : 's', o),
          kind,
          mode: 0o640,
          rdev,
        };
      }
      case 'fsync':
        return { op: 'fsync', path: rng.pick(files) };
    }
    return undefined;
  }

  /** A path for files, dirs (all=true: symlinks too; xattrOk: only where user.* xattrs go). */
  private pickMeta(
    rng: Rng,
    nonDirs: string[],
    dirs: string[],
    all: boolean,
    xattrOk = false,
  ): string | undefined {
    const ok = nonDirs.filter((p) => {
      const k = this.names.get(p)!.kind;
      return all || k === 'f' || (k !== 'l' && !xattrOk);
    });
    const pool = rng.chance(0.3) ? dirs : ok;
    return pool.length ? rng.pick(pool) : undefined;
  }

  private pickKind(rng: Rng, kind: Inode['kind']): string | undefined {
    const ps = [...this.names].filter(([, n]) => n.kind === kind).map(([p]) => p);
    return ps.length ? rng.pick(ps) : undefined;
  }

  private newName(rng: Rng, dirs: string[], prefix: string, o: GeneratorOptions): string {
    return `${rng.pick(dirs)}/${this.newLeaf(rng, prefix, o)}`;
  }

  /** prefix and a counter; with o.bytes, one in four with a byte that is not UTF-8 between them. */
  private newLeaf(rng: Rng, prefix: string, o: GeneratorOptions): string {
    const raw = o.bytes && rng.chance(0.25) ? String.fromCharCode(0xdc80 + rng.int(128)) : '';
    return `${prefix}${raw}${this.counter++}`;
  }

  private hasChildren(d: string): boolean {
    for (const m of [this.dirs, this.names] as Array<Map<string, unknown>>)
      for (const p of m.keys()) if (p.startsWith(d + '/')) return true;
    return false;
  }

  /** Levels of directories at and below d. */
  private height(d: string): number {
    let h = 1;
    for (const p of this.dirs.keys())
      if (p.startsWith(d + '/')) h = Math.max(h, 1 + p.slice(d.length).split('/').length - 1);
    return h;
  }
}

function depth(p: string, root: string): number {
  return p === root ? 0 : p.slice(root.length).split('/').length - 1;
}
