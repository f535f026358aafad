import { describe, expect, it } from 'vitest';
import { KernelNames, type LinkAttrsMode, linkAttrsModeFromEnv } from '../../src/fusefs/kernel-names.js';

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
// size another name moved goes on with the old size (bench/two-name-read.mjs). By default
// (`record`) a write-back of a file with several names invalidates none of them: getattr keeps
// answering the ctime, mtime and st_blocks recorded when it started, until the next change.
describe('KernelNames write-backs of files with several names (TWINFS_WRITEBACK_LINK_ATTRS)', () => {
  const shown = { ctime: 5_000n, mtime: 5_000n, blocks: 16 };
  const make = (mode: LinkAttrsMode) => {
    const behind: string[][] = [];
    const waited: string[][] = [];
    const names = new KernelNames(
      (paths) => {
        waited.push(paths);
        return Promise.resolve();
      },
      undefined,
      undefined,
      (paths) => behind.push(paths),
    );
    names.linkAttrs = mode;
    names.add('/a', 7);
    names.add('/b', 7);
    return { names, behind, waited };
  };
  it('record (the default): the attributes shown before the write-back are answered after it, nothing is invalidated', () => {
    expect(linkAttrsModeFromEnv({})).toBe('record');
    const { names, behind } = make('record');
    names.writeBackStarting(7, () => shown);
    // While it runs the primary's ctime moves: the record holds.
    expect(names.recordedAttrs(7, 6_000n)).toEqual(shown);
    names.changedBehind(7, '/a', true, () => 9_000n);
    expect(names.recordedAttrs(7, 9_000n)).toEqual(shown);
    // A single-name file is invalidated as before.
    names.writeBackStarting(9, () => shown);
    names.changedBehind(9, '/single', true, () => 9_000n);
    expect(behind).toEqual([['/single']]);
    expect(names.recordedAttrs(9, 9_000n)).toBeUndefined();
    expect(names.getStats()).toMatchObject({ writeBacksRecorded: 1, recordedAttrs: 1 });
  });
  it('record: a write cached while the write-back runs keeps the record; a write after it, or any other change, drops it', async () => {
    const { names, waited } = make('record');
    names.writeBackStarting(7, () => shown);
    await names.changed([7], '/a', true);
    names.changedBehind(7, '/a', true, () => 9_000n);
    expect(names.recordedAttrs(7, 9_000n)).toEqual(shown);
    await names.changed([7], '/a', true);
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', true, () => 9_000n);
    await names.changed([7]);
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
    names.writeBackStarting(7, () => shown);
    await names.changed([7]);
    expect(names.recordedAttrs(7, 6_000n)).toBeUndefined();
    expect(waited).toEqual([['/b'], ['/b'], ['/a', '/b'], ['/a', '/b']]);
  });
  it('record: a ctime on the primary other than the write-back left drops it; so does a direct write', () => {
    const { names } = make('record');
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', true, () => 9_000n);
    expect(names.recordedAttrs(7, 9_001n)).toBeUndefined();
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', true, () => 9_000n);
    names.forgetRecorded(7);
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
  });
  it("record: nothing recorded when no one took attributes since the last WRITE, or when the primary cannot be stat'ed", () => {
    const { names, behind } = make('record');
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', false, () => 9_000n);
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
    expect(behind).toEqual([]);
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', true, () => undefined);
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
    expect(behind.map((p) => [...p].sort())).toEqual([['/a', '/b']]);
  });
  it('record: a failed write-back drops the record and invalidates every name', () => {
    const { names, behind } = make('record');
    names.writeBackStarting(7, () => shown);
    names.writeBackFailed(7, '/a');
    expect(names.recordedAttrs(7, 6_000n)).toBeUndefined();
    expect(behind.map((p) => [...p].sort())).toEqual([['/a', '/b']]);
  });
  it('record: the last name gone drops the record', () => {
    const { names } = make('record');
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', true, () => 9_000n);
    names.remove('/a');
    expect(names.recordedAttrs(7, 9_000n)).toEqual(shown);
    names.remove('/b');
    expect(names.recordedAttrs(7, 9_000n)).toBeUndefined();
  });
  it('keep (diagnostic): nothing invalidated, nothing recorded; one name still is', () => {
    expect(linkAttrsModeFromEnv({ TWINFS_WRITEBACK_LINK_ATTRS: 'keep' })).toBe('keep');
    const { names, behind } = make('keep');
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a');
    names.changedBehind(9, '/single');
    expect(behind).toEqual([['/single']]);
    expect(names.getStats().writeBacksOfLinksKept).toBe(1);
  });
  it('invalidate (the old behaviour): every name is invalidated', () => {
    expect(linkAttrsModeFromEnv({ TWINFS_WRITEBACK_LINK_ATTRS: 'invalidate' })).toBe('invalidate');
    const { names, behind } = make('invalidate');
    names.writeBackStarting(7, () => shown);
    names.changedBehind(7, '/a', true, () => 9_000n);
    expect(behind.map((p) => [...p].sort())).toEqual([['/a', '/b']]);
    expect(names.getStats().writeBacksOfLinksKept).toBe(0);
  });
});

// Handles whose node lost its name (handle-nodes.ts): their node is one more name of the file,
// sent to the lane by its handles, left out of a change made through it, and tracked while a
// WRITE through it is in flight.
describe('KernelNames: nodes without a path', () => {
  it('invalidates them by their handles after a change through another name, never the one written through', async () => {
    const sent: string[][] = [];
    const behind: string[][] = [];
    const names = new KernelNames(
      async (paths) => {
        sent.push(paths);
      },
      undefined,
      undefined,
      (paths) => behind.push(paths),
    );
    names.handles.opened(3, '/d0/.fuse_hidden1', 9);
    names.handles.opened(4, '/d0/.fuse_hidden1', 9);
    names.handles.opened(5, '/d1/.fuse_hidden2', 9);
    names.handles.opened(6, '/other', 10);
    expect(names.isEmpty).toBe(true);
    // The directory went: the first two handles' node has no path; the others keep theirs.
    names.handles.renamed('/d0', '/e0');
    names.handles.removed('/e0/.fuse_hidden1');
    expect(names.isEmpty).toBe(false);
    const key = names.nameOf(undefined, 3)!;
    expect(key).toMatch(/^#/);
    expect(names.nameOf(undefined, 4)).toBe(key);
    expect(names.nameOf(undefined, 5)).toBeUndefined();
    expect(names.nameOf('/d1/.fuse_hidden2', 5)).toBe('/d1/.fuse_hidden2');
    await names.changed([9], '/d1/.fuse_hidden2');
    expect(sent).toEqual([['#3,4']]);
    // Through the node itself: nothing else is known of the file, nothing is sent.
    expect(names.changed([9], key)).toBeUndefined();
    // Another file: untouched.
    expect(names.changed([10], '/x')).toBeUndefined();
    // A WRITE through the node in flight: its invalidation waits for the answer, behind.
    names.writeStarted(key);
    expect(names.changed([9], '/d1/.fuse_hidden2')).toBeUndefined();
    names.writeDone(key);
    expect(behind).toEqual([['#3,4']]);
    // One handle closed, then the other: nothing left to invalidate.
    names.handles.closed(3);
    await names.changed([9], '/d1/.fuse_hidden2');
    expect(sent.at(-1)).toEqual(['#4']);
    names.handles.closed(4);
    expect(names.changed([9], '/d1/.fuse_hidden2')).toBeUndefined();
    expect(names.isEmpty).toBe(true);
  });
});
