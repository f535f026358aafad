import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { syncEntry } from '../../src/mirror-driver/entry-sync.js';
import { tempDirs } from '../helpers/server.js';

/**
 * A whole-file copy to the mirror reads the primary as it is while the copy runs: the primary
 * runs ahead of the mirror's queue, so a truncate can land mid-copy. fs.copyFile (libuv) then
 * looped for ever on a source that had shrunk (copy_file_range returning 0 with bytes left "to
 * send"): a stress run's server hung with one thread at 100%. The copy must end, and hold what
 * it read.
 */
describe('whole-file copy of a primary file that shrinks during the copy', () => {
  let t: Awaited<ReturnType<typeof tempDirs>> | undefined;
  afterEach(async () => {
    await t?.cleanup();
    t = undefined;
  });

  it('ends, and the mirror holds the primary as read: the part kept by the truncate is exact', async () => {
    t = await tempDirs('primary', 'mirror');
    const src = path.join(t.dirs.primary!, 'f');
    const dst = path.join(t.dirs.mirror!, 'f');
    const head = randomBytes(1 << 20);
    const fh = await fsp.open(src, 'w');
    await fh.write(head, 0, head.length, 0);
    // 192 MiB more, written (not sparse), so the copy takes a while.
    const block = randomBytes(8 << 20);
    for (let i = 1; i <= 24; i++)
      await fh.write(block, 0, block.length, head.length + (i - 1) * block.length);
    await fh.close();
    const copy = syncEntry(src, dst);
    // The truncate lands while the copy runs (the copy of 193 MiB takes far longer than this).
    await new Promise((r) => setTimeout(r, 20));
    await fsp.truncate(src, head.length);
    const r = await copy;
    const got = await fsp.readFile(dst);
    expect(got.length).toBeGreaterThanOrEqual(head.length);
    expect(r.bytesCopied).toBe(got.length);
    expect(got.subarray(0, head.length).equals(head)).toBe(true);
  }, 60_000);
});
