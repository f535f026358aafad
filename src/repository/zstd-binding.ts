import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

/** zstd as the repository uses it (@mongodb-js/zstd's two calls). */
export interface Zstd {
  compress(data: Buffer, level?: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}

/** How loadZstd found the addon: its platform package directly, or @mongodb-js/zstd's own loader. */
export type ZstdVia = 'platform' | 'package';

interface NativeZstd {
  compress(data: Buffer, level?: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}

/** What loadZstd looks at; the defaults are the process's. */
export interface ZstdLoadOptions {
  /** Requires from beside @mongodb-js/zstd (its platform packages are its optional dependencies). */
  require?: (id: string) => unknown;
  platform?: NodeJS.Platform;
  arch?: string;
  /** Whether the C library is musl (default: its dynamic loader is there). */
  musl?: boolean;
}

/**
 * Loads zstd's addon. @mongodb-js/zstd's own loader decides between the glibc and the musl
 * build with `process.report.getReport()`, a full diagnostic report (every loaded library,
 * the network interfaces through a netlink socket, the resource limits): 5–8 ms of every
 * command that touches a repository, a fifth of what a no-change `twinfs backup` spends
 * outside node's own start (docs/architecture.md "The command's start"). On Linux and macOS
 * the addon is loaded here from its platform package (`@mongodb-js/zstd-linux-x64-gnu`, …,
 * the package's optional dependencies), musl told by its dynamic loader's file; anywhere else,
 * or when that fails (not installed, not loadable), @mongodb-js/zstd's loader runs as before.
 * Errors are wrapped as that package's index wraps them (an addon's Error has no stack).
 */
export function loadZstd(o: ZstdLoadOptions = {}): { zstd: Zstd; via: ZstdVia } {
  const req = o.require ?? defaultRequire();
  let native: NativeZstd | undefined;
  let via: ZstdVia = 'platform';
  const name = platformPackage(o.platform ?? process.platform, o.arch ?? process.arch, o.musl);
  if (name)
    try {
      native = req(name) as NativeZstd;
      if (typeof native?.compress !== 'function' || typeof native.decompress !== 'function')
        native = undefined;
    } catch {
      native = undefined;
    }
  if (!native) {
    native = req('@mongodb-js/zstd') as NativeZstd;
    via = 'package';
  }
  const n = native;
  return {
    via,
    zstd: {
      async compress(data, level) {
        try {
          return await n.compress(data, level);
        } catch (e) {
          throw new Error(`zstd: ${(e as Error).message}`);
        }
      },
      async decompress(data) {
        try {
          return await n.decompress(data);
        } catch (e) {
          throw new Error(`zstd: ${(e as Error).message}`);
        }
      },
    },
  };
}

/** The platform package @mongodb-js/zstd would load here, or undefined where it is left to it. */
function platformPackage(
  platform: NodeJS.Platform,
  arch: string,
  musl: boolean | undefined,
): string | undefined {
  if (platform === 'darwin' && (arch === 'x64' || arch === 'arm64')) return `@mongodb-js/zstd-darwin-${arch}`;
  if (platform !== 'linux' || (arch !== 'x64' && arch !== 'arm64')) return undefined;
  const isMusl = musl ?? existsSync(`/lib/ld-musl-${arch === 'x64' ? 'x86_64' : 'aarch64'}.so.1`);
  return `@mongodb-js/zstd-linux-${arch}-${isMusl ? 'musl' : 'gnu'}`;
}

/**
 * A require from here (npm hoists the optional packages beside @mongodb-js/zstd), then from
 * @mongodb-js/zstd's own folder (where a layout that does not hoist puts them).
 */
function defaultRequire(): (id: string) => unknown {
  const own = createRequire(import.meta.url);
  return (id) => {
    if (id === '@mongodb-js/zstd') return own(id);
    try {
      return own(id);
    } catch {
      return createRequire(own.resolve('@mongodb-js/zstd'))(id);
    }
  };
}
