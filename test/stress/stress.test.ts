import { describe, expect, it } from 'vitest';
import { problems, runStress } from './harness.js';

/**
 * The stress harness's CI seeds (bench/stress.mjs runs the long version): a real server, three
 * writer processes with models, prepares and full backups in a loop; then primary = models,
 * mirror = primary (`twinfs verify`, hard-link structure included), every split copy and
 * snapshot = the volume at its split instant, no split copy changed while held, no broken pair.
 * A failing seed replays with `node bench/stress.mjs --seed N --seconds 8 --minutes 0 --writers 3 --keep`.
 */
const SEEDS = [3, 4];
const SECONDS = 8;
/**
 * mmap writes without msync (dirty pages the kernel writes back on its own): a snapshot must
 * hold them once prepare flushes the kernel's pages (issue 10, item 2). Off until that lands;
 * TWINFS_STRESS_LAZY_MMAP=1 turns it on.
 */
const LAZY_MMAP = process.env.TWINFS_STRESS_LAZY_MMAP === '1';

describe('stress: writers, prepares and backups against a real twinfs serve', () => {
  for (const seed of SEEDS)
    it(`seed ${seed}: mirror = primary = model, every snapshot = its split instant`, async () => {
      const r = await runStress({
        seed,
        durationMs: SECONDS * 1000,
        writers: 3,
        mmap: true,
        lazyMmap: LAZY_MMAP,
      });
      expect(problems(r)).toEqual([]);
      // The run did what it is there for (and the checks had something to check). Loose bounds:
      // on a loaded machine 8 s of writing is a few dozen operations.
      expect(r.ops).toBeGreaterThan(20);
      expect(r.prepares.ok).toBeGreaterThan(2);
      expect(r.backups.ok).toBeGreaterThan(0);
      expect(r.snapshots.checked).toBeGreaterThan(50);
      expect(r.verify.checked).toBeGreaterThan(10);
    }, 100_000);
});
