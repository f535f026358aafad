import { createRequire } from 'node:module';
import { TwinError } from '../common/errors.js';
import { DisposableStore, toDisposable } from '../common/lifecycle.js';
import { type ChangeSink, nullSink, type WriteGate } from './change-sink.js';
import { createFuseHandlers } from './fuse-adapter.js';
import { isMountPoint, preflight } from './mount-checks.js';
import { DEFAULT_NATIVE_OPTIONS, fuseNativeOptions, type NativeMountOptions } from './native-options.js';
import { addServedMount, removeServedMount } from './served-mounts.js';
import { type CallerContext, VolumeOps } from './volume-ops.js';
import { VolumePaths } from './volume-paths.js';
import { WriteInhibitor } from './write-inhibitor.js';
import { type CacheStats, WritebackCache } from './writeback-cache.js';

const require = createRequire(import.meta.url);

export interface TwinFsOptions {
  primary: string;
  mount: string;
  /** Checked for overlap with primary and mount; the mirror driver itself is the sink's business. */
  mirror?: string;
  /** Mount over a non-empty directory. */
  force?: boolean;
  /** Dirty-data limit of the write-back cache, bytes. Default 64 MiB. */
  cacheBytes?: number;
  /** Age at which dirty data is written back, ms. Default 3000. */
  writebackMs?: number;
  writeThrough?: boolean;
  flushOnClose?: boolean;
  /** Receives every change after it reached the primary (the mirror driver). */
  sink?: ChangeSink;
  /** Decides when changes may proceed (the freeze). Default: a WriteInhibitor. */
  gate?: WriteGate & Partial<WriteInhibitor>;
  native?: Partial<NativeMountOptions>;
  log?: (msg: string) => void;
}

export interface TwinFsStatus {
  primary: string;
  mount: string;
  writeThrough: boolean;
  cache: CacheStats;
  openHandles: number;
  /** Paths whose security.capability lookups the patched fuse-native answers itself. */
  noCapabilityPaths: number;
}

/**
 * The first server's filesystem: a FUSE mount of the primary directory with a write-back cache.
 * `TwinFs.mount()` checks everything first and throws a TwinError (nothing mounted) when a
 * check fails; `unmount()` writes every cached byte back before and after detaching.
 */
export class TwinFs {
  readonly cache: WritebackCache;
  readonly inhibitor: WriteInhibitor | undefined;
  readonly paths: VolumePaths;
  private readonly ops: VolumeOps;
  private readonly store = new DisposableStore();
  private fuse: any;
  private fuseClass: any;
  private unmounting: Promise<void> | null = null;

  private constructor(
    readonly primary: string,
    readonly mountPoint: string,
    private readonly opts: TwinFsOptions,
  ) {
    const sink = opts.sink ?? nullSink;
    const gate = opts.gate ?? new WriteInhibitor();
    this.inhibitor = gate instanceof WriteInhibitor ? gate : undefined;
    this.paths = new VolumePaths(primary);
    this.cache = new WritebackCache({
      sink,
      limitBytes: opts.cacheBytes,
      writebackMs: opts.writebackMs,
      writeThrough: opts.writeThrough,
    });
    this.ops = new VolumeOps({
      paths: this.paths,
      cache: this.cache,
      sink,
      gate,
      flushOnClose: opts.flushOnClose,
      forgetNoCapabilities: () => this.fuseClass?.forgetNoCapabilities?.(),
    });
  }

  static async mount(opts: TwinFsOptions): Promise<TwinFs> {
    const real = await preflight(opts);
    const Fuse = loadFuse();
    const fs = new TwinFs(real.primary, real.mount, opts);
    fs.fuseClass = Fuse;
    await fs.doMount(Fuse);
    return fs;
  }

  private async doMount(Fuse: any): Promise<void> {
    // Modes from the kernel already carry the caller's umask; ours must not apply twice.
    process.umask(0);
    const handlers = createFuseHandlers(this.ops, {
      context: () => this.fuse?.context as CallerContext | undefined,
      onUnexpectedError: (op, err) => this.log(`${op} failed unexpectedly: ${(err as Error)?.stack ?? err}`),
    });
    const native = { ...DEFAULT_NATIVE_OPTIONS, nonempty: this.opts.force === true, ...this.opts.native };
    this.fuse = new Fuse(this.mountPoint, handlers, fuseNativeOptions(native));
    await new Promise<void>((resolve, reject) =>
      this.fuse.mount((err: Error | null) =>
        err
          ? reject(
              new TwinError(
                'ETWIN_MOUNT_FAILED',
                `mounting ${this.mountPoint} failed: ${err.message}`,
                { mount: this.mountPoint },
                { cause: err },
              ),
            )
          : resolve(),
      ),
    );
    addServedMount(this.mountPoint);
    this.store.add(toDisposable(() => removeServedMount(this.mountPoint)));
    this.store.add(toDisposable(() => this.cache.dispose()));
  }

  status(): TwinFsStatus {
    return {
      primary: this.primary,
      mount: this.mountPoint,
      writeThrough: this.cache.writeThrough,
      cache: this.cache.getStats(),
      openHandles: this.ops.openHandles,
      noCapabilityPaths: this.fuseClass?.noCapabilityCount?.() ?? 0,
    };
  }

  /** Writes back the cached data of the files whose current volume path matches. */
  async flushWhere(match: (volumePath: string, ino: number) => boolean): Promise<void> {
    const nodes = [...this.cache.allNodes()].filter((n) => n.isDirty && match(n.path, n.ino));
    await Promise.all(nodes.map((n) => this.cache.flush(n)));
  }

  /**
   * Volume paths under which a file is open for writing, with its inode: the only names whose
   * kernel inodes can hold dirty pages of a shared writable mapping (open-names.ts).
   */
  openForWriting(): Array<{ path: string; ino: number }> {
    return this.ops.openNames.list();
  }

  /** Writes back all cached data (and makes it durable with sync). */
  flushAll(opts: { sync?: boolean } = {}): Promise<void> {
    return this.cache.flushAll(opts);
  }

  /**
   * Writes everything back, detaches the mount, then writes back whatever arrived meanwhile and
   * closes every file. A busy mount (open files) is detached lazily: handlers may still run for
   * those files until they are closed, so the cache drains once more after detaching.
   */
  unmount(): Promise<void> {
    this.unmounting ??= this.doUnmount();
    return this.unmounting;
  }

  private async doUnmount(): Promise<void> {
    const errors: unknown[] = [];
    try {
      await this.cache.flushAll();
    } catch (err) {
      errors.push(err);
    }
    try {
      await new Promise<void>((resolve, reject) =>
        this.fuse.unmount((err: Error | null) => (err ? reject(err) : resolve())),
      );
    } catch (err) {
      errors.push(
        new TwinError(
          'ETWIN_UNMOUNT_FAILED',
          `unmounting ${this.mountPoint} failed: ${(err as Error).message}`,
        ),
      );
    }
    try {
      await this.store.dispose();
    } catch (err) {
      errors.push(err);
    }
    if ((await isMountPoint(this.mountPoint)).mounted)
      errors.push(new TwinError('ETWIN_UNMOUNT_FAILED', `${this.mountPoint} is still mounted`));
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, 'unmount finished with errors');
  }

  private log(msg: string): void {
    (this.opts.log ?? ((m: string) => process.stderr.write(`twinfs: ${m}\n`)))(msg);
  }
}

function loadFuse(): any {
  try {
    return require('fuse-native');
  } catch (err) {
    throw new TwinError(
      'ETWIN_FUSE_UNAVAILABLE',
      `FUSE is not available: ${(err as Error).message}. Install Debian's libfuse2 and fuse (scripts/setup.sh does).`,
      {},
      { cause: err },
    );
  }
}
