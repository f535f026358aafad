/**
 * Types for fuse-native 2.2.6 **as patched by patches/fuse-native+2.2.6.patch** (twinfs patch
 * level 31; see docs/fuse-native-patch.md). They describe what the patched index.js actually
 * passes to handlers and accepts back, not upstream's README.
 *
 * Result convention: every callback's first argument is the op's result, a number: 0 for
 * success or a negative errno (`Fuse.ENOENT`, Node's `err.errno`). The patched build also
 * accepts `null`/`undefined` (= 0) and an Error with a numeric `errno`; anything else is EIO.
 * read and write are different: their single argument is the byte count (or a negative errno).
 */
/// <reference types="node" />

declare module 'fuse-native' {
  namespace Fuse {
    /** 0 = success, < 0 = -errno. null / undefined / omitted also mean 0. */
    type Result = number | null | undefined;
    /** Plain status callback. */
    type StatusCallback = (err?: Result) => void;
    /** Callback of read/write: bytes transferred (>= 0) or a negative errno. A second argument is ignored. */
    type BytesCallback = (bytesOrErrno: number) => void;
    /**
     * Callback of open/opendir/create: fh (int32) is handed back to read/write/flush/release/
     * fsync/ftruncate/fgetattr (or releasedir/fsyncdir). 0 or omitted means "no handle" (those ops get 0).
     */
    type HandleCallback = (err: Result, fh?: number) => void;

    /** One native invalidation lane (patch level 8): counts, and the kernel's slowest notify. */
    interface InvalidationLaneStats {
      queued: number;
      done: number;
      sent: number;
      /** Notifies the kernel took over 100 ms to process (a locked page, a laundering). */
      slow: number;
      maxMs: number;
    }

    /** Identity of the process that caused the current op (fuse_get_context()). */
    interface Context {
      readonly uid: number;
      readonly gid: number;
      /** Thread id of the caller as the kernel reports it (0 for kernel-originated requests). */
      readonly pid: number;
      /** write only (patch level 5): the kernel writing back pages (mmap, laundering), not a write(2). */
      readonly writepage?: boolean;
    }

    /**
     * What getattr/fgetattr (and readdir's optional stats) return. Every field is optional;
     * missing numbers are 0 except nlink (1), missing times are "now".
     * Encoding limits (native side): mode/uid/gid/dev/ino/rdev/blksize/nlink are uint32 (ino is
     * truncated to 32 bits and ignored unless the `use_ino` option is set); size/blocks are
     * integers up to 2^53; times are a Date, ms since the epoch (fractional allowed) or a bigint
     * of ns since the epoch (delivered exactly, before 1970 too: twinfs patch level 4).
     */
    interface Stat {
      mode?: number;
      uid?: number;
      gid?: number;
      size?: number;
      dev?: number;
      nlink?: number;
      ino?: number;
      rdev?: number;
      blksize?: number;
      /** 512-byte blocks. */
      blocks?: number;
      atime?: Date | number | bigint;
      mtime?: Date | number | bigint;
      ctime?: Date | number | bigint;
    }

    /** statfs result. Every field is carried as uint32: scale bsize/frsize up so counts fit. */
    interface Statfs {
      bsize?: number;
      frsize?: number;
      blocks?: number;
      bfree?: number;
      bavail?: number;
      files?: number;
      ffree?: number;
      favail?: number;
      fsid?: number;
      flag?: number;
      namemax?: number;
    }

    type OpName =
      | 'init'
      | 'access'
      | 'statfs'
      | 'fgetattr'
      | 'getattr'
      | 'flush'
      | 'fsync'
      | 'fsyncdir'
      | 'readdir'
      | 'truncate'
      | 'ftruncate'
      | 'fallocate'
      | 'lseek'
      | 'utimens'
      | 'readlink'
      | 'chown'
      | 'chmod'
      | 'mknod'
      | 'setxattr'
      | 'getxattr'
      | 'listxattr'
      | 'removexattr'
      | 'open'
      | 'opendir'
      | 'read'
      | 'write'
      | 'release'
      | 'releasedir'
      | 'create'
      | 'unlink'
      | 'rename'
      | 'link'
      | 'symlink'
      | 'mkdir'
      | 'rmdir';

    /**
     * Per-op timeout in ms after which fuse-native answers the kernel ETIMEDOUT by itself (the
     * handler keeps running; its late answer is dropped). `false` or 0 disable the timer.
     */
    type TimeoutMs = number | false;

    /** `{ default, <op>: ms | false }`: ops not listed use `default`; no `default` means 15 000 ms. */
    type TimeoutConfig = { default?: TimeoutMs } & { [op in OpName]?: TimeoutMs };

    interface Options {
      /** Per-op timeout: ms, false/0 (none), or per-op config. Default: 15 000 ms for every op. */
      timeout?: TimeoutMs | TimeoutConfig;
      /**
       * Raw libfuse `-o` options appended verbatim after the options below, e.g.
       * `['big_writes', 'max_write=131072', 'max_read=131072', 'max_readahead=1048576', 'use_ino',
       * 'hard_remove', 'negative_timeout=1']`. Entries must be non-empty strings; the whole `-o`
       * string must stay under 1024 bytes (otherwise mount() calls back with an Error). libfuse
       * rejects unknown options at mount time ("fuse failed").
       */
      extraOptions?: readonly string[];
      /**
       * twinfs patch level 5: 3 uses build/Release/fuse3.node (the same C source against
       * libfuse3 3.14; throws at construction if it was not built). Its options are libfuse3's:
       * no big_writes/nonempty; use_ino, hard_remove, max_write (1 MiB gives 1 MiB requests),
       * max_readahead and readdirplus=yes|no|auto are understood. Default 2.
       */
      libfuse?: 2 | 3;
      /** `kernel_cache`: keep the kernel's page cache across opens. */
      kernelCache?: boolean;
      /** Unmount a stale (ENOTCONN) mount at the mountpoint before mounting. */
      force?: boolean;
      /** Create the mountpoint if missing. */
      mkdir?: boolean;
      /** libfuse `debug` (also enabled by DEBUG=fuse-bindings): logs every request to stderr. */
      debug?: boolean;
      allowOther?: boolean;
      allowRoot?: boolean;
      autoUnmount?: boolean;
      defaultPermissions?: boolean;
      blkdev?: boolean;
      blksize?: number;
      maxRead?: number;
      fd?: number;
      userId?: number | string;
      fsname?: string;
      subtype?: string;
      kernelCache?: boolean;
      autoCache?: boolean;
      /** A number is written in octal (0o022 -> `umask=22`); a string is passed verbatim (octal digits). */
      umask?: number | string;
      uid?: number;
      gid?: number;
      /** Seconds (may be fractional). 0 is honoured (= no caching). Default 1. */
      entryTimeout?: number | string;
      /** Seconds (may be fractional). 0 is honoured (= no caching). Default 1. */
      attrTimeout?: number | string;
      acAttrTimeout?: number | string;
      noforget?: boolean;
      remember?: number | string;
      modules?: string;
      /** macOS only. */
      displayFolder?: boolean;
      /** macOS only (volume name with displayFolder). */
      name?: string;
    }

    /**
     * Handlers, called as `ops.<name>(...)` (with `this` = the ops object) on the JS main
     * thread. Many ops are in flight at once and async handlers interleave. Paths are relative
     * to the mount root and start with '/'. Only implemented ops are registered with libfuse
     * (getattr always is: without it only '/' exists).
     *
     * Caller identity: `fuse.context` ({ uid, gid, pid }) is set synchronously right before
     * each handler is called. Read it at handler entry, before any await or callback; a fresh
     * object is created per op, so the object you read may be kept.
     */
    interface Operations {
      /** After the mount is up (mount()'s callback fires before this). */
      init?(cb: StatusCallback): void;
      /** mode: R_OK | W_OK | X_OK bits, or F_OK (0). */
      access?(path: string, mode: number, cb: StatusCallback): void;
      statfs?(path: string, cb: (err: Result, statfs?: Statfs) => void): void;
      getattr?(path: string, cb: (err: Result, stat?: Stat) => void): void;
      /**
       * getattr on an open file (libfuse2 calls it after create and ftruncate, and for fstat
       * when the kernel passes a handle). If not implemented libfuse falls back to getattr.
       */
      fgetattr?(path: string, fh: number, cb: (err: Result, stat?: Stat) => void): void;
      /** Called on every close(2) of a file descriptor (may be several per open). */
      flush?(path: string, fh: number, cb: StatusCallback): void;
      /** datasync: 1 for fdatasync(2), 0 for fsync(2). Note the order: (path, datasync, fh). */
      fsync?(path: string, datasync: number, fh: number, cb: StatusCallback): void;
      /** path: null for a directory removed or renamed over while open (it has no path). */
      fsyncdir?(path: string | null, datasync: number, fh: number, cb: StatusCallback): void;
      /**
       * The whole listing at once (no offsets). names must not include '.' and '..' unless you
       * want them listed. stats are used (for d_type / d_ino) only if stats.length === names.length.
       * The opendir handle is not passed.
       */
      readdir?(path: string, cb: (err: Result, names?: string[], stats?: Stat[]) => void): void;
      truncate?(path: string, size: number, cb: StatusCallback): void;
      ftruncate?(path: string, fh: number, size: number, cb: StatusCallback): void;
      /**
       * fallocate(2) through a handle (twinfs patch, level 13): mode as the kernel sent it
       * (FALLOC_FL_KEEP_SIZE 0x01, PUNCH_HOLE 0x02, ZERO_RANGE 0x10), offset and length in bytes.
       * ENOSYS makes the kernel answer every later fallocate with EOPNOTSUPP itself.
       */
      fallocate?(
        path: string | null,
        fh: number,
        mode: number,
        offset: number,
        len: number,
        cb: StatusCallback,
      ): void;
      /**
       * lseek(2) with SEEK_DATA (3) or SEEK_HOLE (4) through a handle (twinfs patch, level 17;
       * libfuse3 only): the offset asked from, answered with the offset found. ENOSYS makes the
       * kernel answer both itself (the whole file is data) from then on.
       */
      lseek?(
        path: string | null,
        fh: number,
        offset: number,
        whence: number,
        cb: (err: Result, offset?: number) => void,
      ): void;
      /**
       * atime / mtime: ns since the epoch (bigint, exact), or null = leave that time unchanged
       * (UTIME_OMIT). UTIME_NOW arrives already resolved to the current realtime clock (both
       * times from a single clock reading). Examples: `touch -m -d @1e9 f` -> (path, null,
       * 1000000000000000000n); `touch -a f` -> (path, <now>, null); `touch f` -> (path, now, now).
       */
      utimens?(path: string, atime: bigint | null, mtime: bigint | null, cb: StatusCallback): void;
      /** target is truncated to the kernel's buffer (PATH_MAX). */
      readlink?(path: string, cb: (err: Result, target?: string) => void): void;
      /** uid/gid are uint32; 4294967295 ((uid_t)-1) means "leave unchanged". */
      chown?(path: string, uid: number, gid: number, cb: StatusCallback): void;
      /** mode carries the permission bits (and possibly S_IF* type bits). */
      chmod?(path: string, mode: number, cb: StatusCallback): void;
      /** mode includes the S_IF* file type; dev is the device number for S_IFCHR/S_IFBLK. */
      mknod?(path: string, mode: number, dev: number, cb: StatusCallback): void;
      /**
       * value is a view of libfuse memory, invalid after cb: copy it if you keep it.
       * position is always 0 on Linux; flags: XATTR_CREATE (1) / XATTR_REPLACE (2).
       */
      setxattr?(
        path: string,
        name: string,
        value: Buffer,
        position: number,
        flags: number,
        cb: StatusCallback,
      ): void;
      /**
       * Answer the whole value; fuse-native handles size probes (size 0) and returns ERANGE if
       * it does not fit the caller's buffer. A missing value (null/undefined) answers ENODATA.
       * position is always 0 on Linux.
       */
      getxattr?(
        path: string,
        name: string,
        position: number,
        cb: (err: Result, value?: Buffer | string | null) => void,
      ): void;
      /** Answer all names; fuse-native handles size probes and ERANGE. */
      /** A name that is not UTF-8 may be given as its bytes (src/posix/byte-names.ts). */
      listxattr?(path: string, cb: (err: Result, names?: Array<string | Buffer>) => void): void;
      removexattr?(path: string, name: string, cb: StatusCallback): void;
      /** flags: the open(2) flags (O_ACCMODE, O_APPEND, O_TRUNC, ...; O_CREAT/O_EXCL are handled by the kernel). */
      open?(path: string, flags: number, cb: HandleCallback): void;
      /** flags: the open(2) flags (O_DIRECTORY, ...). */
      opendir?(path: string, flags: number, cb: HandleCallback): void;
      /**
       * Fill buf (a view of libfuse memory, exactly len bytes, invalid after cb) and answer the
       * number of bytes read (0 = EOF) or a negative errno: cb(n), not cb(0, n).
       */
      read?(path: string, fh: number, buf: Buffer, len: number, position: number, cb: BytesCallback): void;
      /**
       * buf is a view of libfuse memory, invalid after cb: copy data you keep. Answer the number
       * of bytes written or a negative errno: cb(len), not cb(0, len).
       */
      write?(path: string, fh: number, buf: Buffer, len: number, position: number, cb: BytesCallback): void;
      /**
       * Last close of an open file. After unlink of an open file, path is the libfuse hidden name
       * (.fuse_hiddenXXXX) or, with hard_remove, may not be usable: key state by fh.
       */
      release?(path: string, fh: number, cb: StatusCallback): void;
      releasedir?(path: string, fh: number, cb: StatusCallback): void;
      /**
       * Create and open. mode includes S_IFREG. flags (patch level 10): the open flags
       * (fi->flags), after the callback so that (path, mode, cb) handlers keep working.
       */
      create?(path: string, mode: number, cb: HandleCallback, flags?: number): void;
      unlink?(path: string, cb: StatusCallback): void;
      /**
       * followsHide (patch level 10), after the callback: 1 when libfuse hid dest (an open
       * file) just before, in this same request; 0 when not; 2 when the build cannot tell.
       * flags (patch level 15): 0, or RENAME_NOREPLACE (1) on libfuse3 (RENAME_EXCHANGE and
       * RENAME_WHITEOUT are refused with EINVAL before this; libfuse2 passes no flags).
       */
      rename?(src: string, dest: string, cb: StatusCallback, followsHide?: number, flags?: number): void;
      /** Hard link: src is the existing path, dest the new one. */
      link?(src: string, dest: string, cb: StatusCallback): void;
      /** target: the link's content (any string); path: the new symlink inside the FS. */
      symlink?(target: string, path: string, cb: StatusCallback): void;
      /** mode: permission bits only (no S_IFDIR). */
      mkdir?(path: string, mode: number, cb: StatusCallback): void;
      rmdir?(path: string, cb: StatusCallback): void;
    }
  }

  class Fuse {
    /**
     * Nothing happens until mount(). Throws TypeError for a bad `timeout`; bad `extraOptions`
     * reach mount()'s callback as an Error.
     * An instance mounts once: after unmount() it cannot be mounted again.
     */
    constructor(mnt: string, ops: Fuse.Operations, opts?: Fuse.Options);

    /** Absolute mountpoint. */
    readonly mnt: string;
    readonly ops: Fuse.Operations;
    readonly opts: Fuse.Options;
    /**
     * Caller of the op being dispatched; set synchronously immediately before each handler call
     * (null before the first op). Only valid synchronously at handler entry: ops interleave.
     */
    readonly context: Fuse.Context | null;
    /** Nanoresource state. */
    readonly opened: boolean;
    readonly closed: boolean;

    /**
     * Mounts (fuse_mount in the calling thread, then the FUSE loop in a native thread). cb fires
     * when libfuse's init arrives, or with an Error ('fuse failed', 'Mountpoint does not exist',
     * 'Mountpoint in use', ...). Never access the mount synchronously from this process.
     */
    mount(cb: (err?: Error | null) => void): void;
    /**
     * `fusermount -uz` (lazy) then releases the native side. Does not wait for in-flight
     * handlers: they may still run afterwards. err.unmountFailure is set if fusermount failed.
     */
    unmount(cb: (err?: (Error & { unmountFailure?: boolean }) | null) => void): void;
    /**
     * Where the unmount is (twinfs patch): '' before it starts, then "fusermount -uz running (pid
     * N)", "… exited (CODE) after N ms, its output not closed yet", "fusermount -uz done after N
     * ms; native unmount done". nanoresource's state beside it: a close queued behind an open.
     */
    readonly closeState?: string;
    readonly opened?: boolean;
    readonly closing?: boolean;
    readonly closed?: boolean;
    /** Fuse[code.toUpperCase()] or -1 (EPERM) for unknown codes, e.g. fuse.errno('ENOENT') === -2. */
    errno(code: string): number;
    /** 2 or 3: which libfuse this instance uses. */
    readonly libfuse: 2 | 3;
    /**
     * libfuse3 only: queues `fuse_invalidate_path(path)` (the kernel drops the cached attributes
     * and pages of the inode it has under that name) for a native helper thread. Never blocks,
     * and nobody waits for it: it goes to the background lane, whose thread may be held up by a
     * locked page without delaying what invalidatePaths queues (patch level 8).
     * False when nothing was queued (libfuse2, not mounted).
     */
    invalidate(path: string): boolean;
    /**
     * libfuse3 only (patch level 15): the handle fh is open on libfuse's node nodeId, which is
     * about to lose its path (a hidden name twinfs drops itself). GETATTR without a handle of
     * that node (fstat) is then answered by the handle, and `#FH` invalidations reach it. A
     * handle from CREATE is otherwise learnt only from a later request that carries it. False
     * when not learnt (libfuse2, not mounted, the handle's release for that node came already).
     */
    learnPathlessHandle(nodeId: number, fh: number): boolean;
    /**
     * The same for several paths on the waited lane (its own helper thread); resolves once the
     * kernel has processed all of them.
     */
    invalidatePaths(paths: readonly string[]): Promise<void>;
    /** Invalidations queued, processed, and sent for a name the kernel had; per lane too. */
    invalidateStats(): {
      queued: number;
      done: number;
      sent: number;
      lanes?: Record<'waited' | 'background', Fuse.InvalidationLaneStats>;
    };
    /**
     * libfuse3 (patch level 6): answer getattr (so lookups) and getxattr in libfuse's worker
     * threads from `root` + path, with setCachedAttributes applied. False: this build cannot.
     */
    nativeAttributes(root: string): boolean;
    /**
     * The inode's data held in JS and not yet under root (end < 0: none any more). onlyMore:
     * nothing reached root since the last call for it (a WRITE). Returns whether the kernel may
     * hold attributes of the inode taken since its last WRITE (true when unknown).
     */
    setCachedAttributes(
      ino: number,
      end: number,
      bytes: number,
      lastWriteMs: number,
      onlyMore: boolean,
    ): boolean;
    /** Whether a flush (close(2)) may be answered natively: the flush handler would do nothing; noflush (level 30): files created or opened natively with one name skip their FLUSH. */
    setNativeFlush(native: boolean, noflush?: boolean): void;
    /** getattrs answered natively / passed on to JS, inodes with cached attributes, getxattrs, flushes and readlinks (level 26) answered natively, creates and opens answered with FOPEN_NOFLUSH (level 30). */
    nativeAttributeStats(): import('../fusefs/native-stats.js').NativeAttributeStats;
    /**
     * libfuse3, patch level 7 (native-unlink.h): whether UNLINK may be done in libfuse's worker
     * thread (needs nativeAttributes). false: once it returns, every native unlink is queued.
     * cached: also of files JS holds cached data of (dropped when their change reaches JS).
     */
    nativeUnlink(enabled: boolean, cached?: boolean): boolean;
    /**
     * libfuse3, native-create.h (patch level 8, added): whether CREATE may be done in libfuse's
     * worker thread (also needs nativeUnlink enabled), its handle from 0x40000000 up. false: once
     * it returns, every native create is queued. Absent on older builds. writes (patch level 9):
     * the WRITEs of such a file too, until JS takes its create (pwrite(2) on the create's
     * descriptor); carry: each queued with a copy of its bytes.
     */
    nativeCreate?(enabled: boolean, writes?: boolean, carry?: boolean): boolean;
    /**
     * libfuse3, native-setattr.h (patch level 20): whether chmod and utimens by path may be done
     * in libfuse's worker thread (also needs nativeUnlink enabled): a regular file with one name
     * or a directory; chmod by root or the owner; utimens of a file JS holds no data of. false:
     * once it returns, every native one is queued. Absent on older builds.
     */
    nativeSetattr?(enabled: boolean): boolean;
    /**
     * libfuse3, native-rename.h (patch level 21): whether RENAME may be done in libfuse's worker
     * thread (also needs nativeUnlink enabled): a non-directory with one name that JS holds no
     * data of, onto nothing or onto such a file, no flags, not the second half of a rename onto
     * an open file. false: once it returns, every native one is queued. Absent on older builds.
     */
    nativeRename?(enabled: boolean): boolean;
    /**
     * libfuse3, native-entries.h (patch level 22): whether MKDIR, SYMLINK and RMDIR may be done
     * in libfuse's worker thread (also needs nativeUnlink enabled): no owner change needed (the
     * caller is the server's user and group, or the server is not root); rmdir of an empty
     * directory. false: once it returns, every native one is queued. Absent on older builds.
     */
    nativeEntries?(enabled: boolean): boolean;
    /**
     * OPENs answered in libfuse's threads (patch level 26, native-open.h): without O_TRUNC,
     * O_CREAT or O_DIRECT, of a regular file, read-only (level 26) or for writing without
     * O_APPEND (level 27); their READs are answered there too while JS holds no data of the file
     * the primary lacks, and their RELEASE; the handle reaches JS in takeNativeChanges as
     * ['O', ino, fd (a duplicate, or -1), fh, writable, write, closed] before any op that may
     * name it. writes (level 29; needs nativeCreate's writes): the WRITEs of such a handle too,
     * until JS takes its open (closed 1: it was released natively after them, fd -1); taken
     * (level 31) after the take too, while the file has one name and JS holds no data of it, and
     * their ftruncates and fallocates (modes 0 and KEEP_SIZE). false: later opens go to JS;
     * writers false: opens for writing do. Absent on older builds.
     */
    nativeOpen?(enabled: boolean, writers?: boolean, writes?: boolean, taken?: boolean): boolean;
    /**
     * Adds bytes to the space native writes may take on the primary (reserved for them by the
     * caller); negative: no bound. None until the first call (patch level 9).
     */
    nativeWriteBudget?(bytes: number): boolean;
    /**
     * The unlinks, creates and writes done natively, in order, as [path, ino, ...] (a create has
     * [ino, fd, fh, mode, uid, gid] in place of ino; a write '' as its path and [fh, offset,
     * data (a copy) or its length]; a chmod ['m', mode], a utimens ['t', atime, mtime] in ns,
     * null where not set; a rename ['r', to, ino, replaced ino or 0]; a mkdir ['d', mode, uid, gid], a symlink ['s',
     * target, uid, gid, atime, mtime], an rmdir ['x']), or null; begin: a JS change starts.
     * holdMs (level 29; never with begin): the take stops at the first open JS has not taken that
     * is still open and was queued less than holdMs ago, leaving it and what follows queued.
     */
    takeNativeChanges(
      begin: boolean,
      holdMs?: number,
    ): Array<
      | string
      | number
      | number[]
      | [number, number, Buffer | number]
      | ['m', number]
      | ['o', number, number]
      | ['t', bigint | null, bigint | null]
      | ['r', string, number, number]
      | ['d', number, number, number]
      | ['s', string, number, number, bigint, bigint]
      | ['x']
    > | null;
    /** Whether anything is queued (level 29: a take with a hold may leave entries). */
    nativeChangesQueued?(): boolean;
    /** The JS change begun by takeNativeChanges(true) ended. */
    endNativeChange(): void;
    /**
     * Patch level 20: on, JS takes the queue on a timer and native changes no longer wake it
     * (onNativeChanges); off only when the queue is empty: false (still on) when something is
     * queued. true on builds without it.
     */
    pollNativeChanges?(on: boolean): boolean;
    /**
     * Counts of the changes done natively and of the tries passed to JS (every field present;
     * src/fusefs/native-stats.ts says what each is).
     */
    nativeUnlinkStats(): Omit<import('../fusefs/native-stats.js').NativeChangeStats, 'enabled'>;
    /** Called on the JS thread when native unlinks are queued and no op took them. */
    onNativeChanges: (() => void) | null;

    /** `fusermount -uz <mnt>` (lazy unmount) of any FUSE mount. */
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    /**
     * fuse-shared-library's bundled-libfuse setup check (has `configure` run as root?). Not
     * needed with the system libfuse2 this build links.
     */
    static isConfigured(cb: (err: Error | null, configured?: boolean) => void): void;
    /** Installs the bundled fusermount/init scripts (needs root). Not needed with system libfuse2. */
    static configure(cb?: (err: Error | null) => void): void;
    static unconfigure(cb?: (err: Error | null) => void): void;
    static beforeMount(cb?: (err: Error | null) => void): void;
    static beforeUnmount(cb?: (err: Error | null) => void): void;

    /** Whether the libfuse3 build (build/Release/fuse3.node) is there. */
    static hasLibfuse3(): boolean;
    /** twinfs patch level (5); undefined if an unpatched fuse-native is installed. */
    static readonly patchLevel: number | undefined;
    /**
     * twinfs patch: utimensat(2) on a local path with whole ns (bigints since the epoch); null
     * leaves a time unchanged (UTIME_OMIT). Synchronous. Returns 0 or a negative errno.
     */
    static setTimes(path: string, atimeNs: bigint | null, mtimeNs: bigint | null, nofollow: boolean): number;
    /**
     * twinfs patch: paths for which getxattr("security.capability") answered ENODATA are
     * answered in the native layer from then on; this forgets them all (call it before and after
     * anything that may give a path another file or other xattrs).
     */
    static forgetNoCapabilities(): void;
    /** How many paths the native layer remembers as having no security.capability. */
    static noCapabilityCount(): number;

    // errno constants (Linux values, negative)
    static readonly EPERM: -1;
    static readonly ENOENT: -2;
    static readonly ESRCH: -3;
    static readonly EINTR: -4;
    static readonly EIO: -5;
    static readonly ENXIO: -6;
    static readonly E2BIG: -7;
    static readonly ENOEXEC: -8;
    static readonly EBADF: -9;
    static readonly ECHILD: -10;
    static readonly EAGAIN: -11;
    static readonly ENOMEM: -12;
    static readonly EACCES: -13;
    static readonly EFAULT: -14;
    static readonly ENOTBLK: -15;
    static readonly EBUSY: -16;
    static readonly EEXIST: -17;
    static readonly EXDEV: -18;
    static readonly ENODEV: -19;
    static readonly ENOTDIR: -20;
    static readonly EISDIR: -21;
    static readonly EINVAL: -22;
    static readonly ENFILE: -23;
    static readonly EMFILE: -24;
    static readonly ENOTTY: -25;
    static readonly ETXTBSY: -26;
    static readonly EFBIG: -27;
    static readonly ENOSPC: -28;
    static readonly ESPIPE: -29;
    static readonly EROFS: -30;
    static readonly EMLINK: -31;
    static readonly EPIPE: -32;
    static readonly EDOM: -33;
    static readonly ERANGE: -34;
    static readonly EDEADLK: -35;
    static readonly ENAMETOOLONG: -36;
    static readonly ENOLCK: -37;
    static readonly ENOSYS: -38;
    static readonly ENOTEMPTY: -39;
    static readonly ELOOP: -40;
    static readonly EWOULDBLOCK: -11;
    static readonly ENOMSG: -42;
    static readonly EIDRM: -43;
    static readonly ECHRNG: -44;
    static readonly EL2NSYNC: -45;
    static readonly EL3HLT: -46;
    static readonly EL3RST: -47;
    static readonly ELNRNG: -48;
    static readonly EUNATCH: -49;
    static readonly ENOCSI: -50;
    static readonly EL2HLT: -51;
    static readonly EBADE: -52;
    static readonly EBADR: -53;
    static readonly EXFULL: -54;
    static readonly ENOANO: -55;
    static readonly EBADRQC: -56;
    static readonly EBADSLT: -57;
    static readonly EDEADLOCK: -35;
    static readonly EBFONT: -59;
    static readonly ENOSTR: -60;
    static readonly ENODATA: -61;
    static readonly ETIME: -62;
    static readonly ENOSR: -63;
    static readonly ENONET: -64;
    static readonly ENOPKG: -65;
    static readonly EREMOTE: -66;
    static readonly ENOLINK: -67;
    static readonly EADV: -68;
    static readonly ESRMNT: -69;
    static readonly ECOMM: -70;
    static readonly EPROTO: -71;
    static readonly EMULTIHOP: -72;
    static readonly EDOTDOT: -73;
    static readonly EBADMSG: -74;
    static readonly EOVERFLOW: -75;
    static readonly ENOTUNIQ: -76;
    static readonly EBADFD: -77;
    static readonly EREMCHG: -78;
    static readonly ELIBACC: -79;
    static readonly ELIBBAD: -80;
    static readonly ELIBSCN: -81;
    static readonly ELIBMAX: -82;
    static readonly ELIBEXEC: -83;
    static readonly EILSEQ: -84;
    static readonly ERESTART: -85;
    static readonly ESTRPIPE: -86;
    static readonly EUSERS: -87;
    static readonly ENOTSOCK: -88;
    static readonly EDESTADDRREQ: -89;
    static readonly EMSGSIZE: -90;
    static readonly EPROTOTYPE: -91;
    static readonly ENOPROTOOPT: -92;
    static readonly EPROTONOSUPPORT: -93;
    static readonly ESOCKTNOSUPPORT: -94;
    static readonly EOPNOTSUPP: -95;
    static readonly EPFNOSUPPORT: -96;
    static readonly EAFNOSUPPORT: -97;
    static readonly EADDRINUSE: -98;
    static readonly EADDRNOTAVAIL: -99;
    static readonly ENETDOWN: -100;
    static readonly ENETUNREACH: -101;
    static readonly ENETRESET: -102;
    static readonly ECONNABORTED: -103;
    static readonly ECONNRESET: -104;
    static readonly ENOBUFS: -105;
    static readonly EISCONN: -106;
    static readonly ENOTCONN: -107;
    static readonly ESHUTDOWN: -108;
    static readonly ETOOMANYREFS: -109;
    static readonly ETIMEDOUT: -110;
    static readonly ECONNREFUSED: -111;
    static readonly EHOSTDOWN: -112;
    static readonly EHOSTUNREACH: -113;
    static readonly EALREADY: -114;
    static readonly EINPROGRESS: -115;
    static readonly ESTALE: -116;
    static readonly EUCLEAN: -117;
    static readonly ENOTNAM: -118;
    static readonly ENAVAIL: -119;
    static readonly EISNAM: -120;
    static readonly EREMOTEIO: -121;
    static readonly EDQUOT: -122;
    static readonly ENOMEDIUM: -123;
    static readonly EMEDIUMTYPE: -124;
  }

  // CommonJS module.exports = Fuse; in ESM: `import Fuse from 'fuse-native'` (or createRequire).
  export default Fuse;
}
