import { describe, expect, it } from 'vitest';
import { KernelNames, writeBackKeepsLinkAttrsFromEnv } from '../../src/fusefs/kernel-names.js';

// KernelNames.pageWrittenBack: a page write-back is answered at once (it may be a laundering for
// an invalidation being sent), and the close or fsync after it waits (pageWriteBacksSettled)
// for the other names' invalidation; while any is out, flushes must reach JavaScript.
describe('KernelNames.pageWrittenBack', () => {
  it('holds the file from the queueing of the other names until the kernel processed them', async () => {
    const pending: Array<{ paths: string[]; resolve: () => void }> = [];
    // Each flip with what the flush decision reads at that moment (pageWriteBacksPending).
    const flips: boolean[] = [];
    const names: KernelNames = new KernelNames(
      (paths) => new Promise<void>((resolve) => pending.push({ paths, resolve })),
      undefined,
      (p) => {
        expect(names.pageWriteBacksPending).toBe(p);
        flips.push(p);
      },
    );
    names.add('/a', 7);
    names.add('/a.lnk', 7);
    names.add('/b', 8);
    names.add('/b.lnk', 8);
    expect(names.pageWriteBacksSettled(7)).toBeUndefined();
    names.pageWrittenBack(7, '/a');
    names.pageWrittenBack(7, '/a');
    names.pageWrittenBack(8, '/b.lnk');
    // Only the other names, each write-back its own batch; one flip for all of them.
    expect(pending.map((x) => x.paths)).toEqual([['/a.lnk'], ['/a.lnk'], ['/b']]);
    expect(flips).toEqual([true]);
    expect(names.pageWriteBacksPending).toBe(true);
    let settled = false;
    void names.pageWriteBacksSettled(7)!.then(() => (settled = true));
    pending[0]!.resolve();
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false); // the second write-back's invalidation is still out
    pending[1]!.resolve();
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(true);
    expect(names.pageWriteBacksSettled(7)).toBeUndefined();
    expect(flips).toEqual([true]); // file 8's is still out
    pending[2]!.resolve();
    await new Promise((r) => setImmediate(r));
    expect(flips).toEqual([true, false]);
    expect(names.pageWriteBacksPending).toBe(false);
  });

  it('a file with no other name known queues nothing and holds nothing', () => {
    const flips: boolean[] = [];
    const names = new KernelNames(
      () => Promise.resolve(),
      undefined,
      (p) => flips.push(p),
    );
    names.add('/x', 9);
    names.add('/y', 10);
    names.pageWrittenBack(9, '/x');
    expect(names.pageWriteBacksSettled(9)).toBeUndefined();
    expect(flips).toEqual([]);
  });
});

// Which lane each invalidation takes: what an op waits for goes to `invalidate` (the waited
// lane), what nobody waits for to `invalidateBehind` (a helper thread of its own), so a notify
// held up by a locked page on the latter never delays the former (cause 2 of the two-name fsx
// finding). On the old code all of them went to `invalidate`.
describe('KernelNames lanes', () => {
  it('write-backs, names whose WRITEs are answered and listings go behind; changes an op waits for do not', () => {
    const waited: string[][] = [];
    const behind: string[][] = [];
    const names = new KernelNames(
      (paths) => {
        waited.push(paths);
        return Promise.resolve();
      },
      undefined,
      undefined,
      (paths) => behind.push(paths),
    );
    names.add('/a', 7);
    names.add('/b', 7);
    // A WRITE through /a: the other name, waited for.
    names.writeStarted('/a');
    void names.changed([7], '/a');
    // twinfs's write-back while that WRITE is in flight: /b now, /a once its WRITE is answered.
    names.changedBehind(7, '/a');
    expect(behind).toEqual([['/b']]);
    names.writeDone('/a');
    names.listingChangedBehind('/');
    expect(waited).toEqual([['/b']]);
    expect(behind).toEqual([['/b'], ['/a'], ['/']]);
  });
});

// The read side of the two-name fsx finding: a write-back's invalidation of a name crossing that
// name's GETATTR makes the kernel drop the reply (attr_version), and a read through a name whose
// size another name moved goes on with the old size (bench/two-name-read.mjs). Off by default:
// TWINFS_WRITEBACK_KEEPS_LINK_ATTRS=1 leaves the names of a file with several names alone at
// its write-back; a file with one name is invalidated as before.
describe('KernelNames write-backs of files with several names (TWINFS_WRITEBACK_KEEPS_LINK_ATTRS)', () => {
  const make = (keep: boolean) => {
    const behind: string[][] = [];
    const names = new KernelNames(
      () => Promise.resolve(),
      undefined,
      undefined,
      (paths) => behind.push(paths),
    );
    names.keepLinkAttrs = keep;
    names.add('/a', 7);
    names.add('/b', 7);
    return { names, behind };
  };
  it('on: a write-back of a file with several names invalidates none of them; one name still is', () => {
    const { names, behind } = make(true);
    names.changedBehind(7, '/a');
    names.changedBehind(9, '/single');
    expect(behind).toEqual([['/single']]);
    expect(names.getStats().writeBacksOfLinksKept).toBe(1);
  });
  it('off (the default): every name is invalidated', () => {
    expect(writeBackKeepsLinkAttrsFromEnv({})).toBe(false);
    expect(writeBackKeepsLinkAttrsFromEnv({ TWINFS_WRITEBACK_KEEPS_LINK_ATTRS: '1' })).toBe(true);
    const { names, behind } = make(false);
    names.changedBehind(7, '/a');
    expect(behind.map((p) => [...p].sort())).toEqual([['/a', '/b']]);
    expect(names.getStats().writeBacksOfLinksKept).toBe(0);
  });
});
