import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { loadZstd } from '../../src/repository/zstd-binding.js';

/**
 * The repository's zstd (src/repository/zstd-binding.ts): its addon loaded from the platform
 * package, without @mongodb-js/zstd's `process.report.getReport()`, and that package's own
 * loader wherever the platform package cannot be loaded.
 */
const text = Buffer.from('twinfs '.repeat(2000));

/** Runs fn with process.report.getReport throwing: a loader that calls it fails. */
function withoutReport<T>(fn: () => T): T {
  const report = process.report as { getReport: (...a: unknown[]) => unknown };
  const getReport = report.getReport;
  report.getReport = () => {
    throw new Error('process.report.getReport() called');
  };
  try {
    return fn();
  } finally {
    report.getReport = getReport;
  }
}

describe('zstd for the repository', () => {
  it('loads the platform addon without a diagnostic report, and round-trips', async () => {
    // A require of our own, so the modules load now, inside withoutReport (not from the cache).
    const req = createRequire(import.meta.url);
    const fresh = (id: string) => {
      const own = req.resolve('@mongodb-js/zstd');
      const resolved = id === '@mongodb-js/zstd' ? own : createRequire(own).resolve(id);
      delete req.cache[resolved];
      return req(resolved);
    };
    const { zstd, via } = withoutReport(() => loadZstd({ require: fresh }));
    expect(via).toBe('platform');
    const z = await zstd.compress(text, 3);
    expect(z.length).toBeLessThan(text.length / 10);
    expect((await zstd.decompress(z)).equals(text)).toBe(true);
  });

  it("falls back to @mongodb-js/zstd's own loader when the platform package does not load", async () => {
    const req = createRequire(import.meta.url);
    const asked: string[] = [];
    const { zstd, via } = loadZstd({
      require: (id) => {
        asked.push(id);
        if (id !== '@mongodb-js/zstd')
          throw Object.assign(new Error(`Cannot find module '${id}'`), { code: 'MODULE_NOT_FOUND' });
        return req(id);
      },
      platform: 'linux',
      arch: 'x64',
      musl: true,
    });
    expect(asked).toEqual(['@mongodb-js/zstd-linux-x64-musl', '@mongodb-js/zstd']);
    expect(via).toBe('package');
    expect((await zstd.decompress(await zstd.compress(text, 3))).equals(text)).toBe(true);
  });

  it('leaves other platforms to the package, and names addon errors', async () => {
    const asked: string[] = [];
    const req = createRequire(import.meta.url);
    const { zstd, via } = loadZstd({
      require: (id) => {
        asked.push(id);
        return req(id);
      },
      platform: 'win32',
      arch: 'x64',
    });
    expect(asked).toEqual(['@mongodb-js/zstd']);
    expect(via).toBe('package');
    await expect(zstd.decompress(Buffer.from('not zstd at all'))).rejects.toThrow(/^zstd: /);
  });
});
