import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/backup-peer/catalog.js';
import type { BackupTarget, SnapshotManifest, SnapshotWriter } from '../../src/backup-peer/target.js';
import { TwinError } from '../../src/common/errors.js';
import type { SelectorMsg } from '../../src/control/protocol.js';
import { waitFor } from '../helpers/mounts.js';
import { dirPluginTargets, FakeControl, type Mirror, makeMirror, volumeBackupRun } from './peer-fixture.js';

/**
 * The commit phase of a run: the catalog's entries are written while the target commits, and
 * the snapshot is complete in the catalog only once the commit resolved (a failed commit leaves
 * no entries behind). The real directory target, its writer's commit held by the test.
 */
describe('backup commit: the catalog beside the target', () => {
  const targets = dirPluginTargets();
  let mirror: Mirror;
  let target: BackupTarget;
  let catalogDir: string;
  /** The target's directory (its repository: locks/ holds the lock objects). */
  let root: string;

  beforeEach(async () => {
    const opened = await targets.open();
    root = opened.root;
    target = opened.t;
    mirror = await makeMirror(path.dirname(root), {
      'a.txt': 'alpha\n',
      'b.bin': Buffer.alloc(300_000, 3),
      d: { 'c.txt': 'charlie\n' },
    });
    catalogDir = path.join(path.dirname(opened.root), 'catalog');
  });

  /**
   * The target, its writers' commit held until `release` (then done, or failed with `fail`).
   * Every other call goes to the real writer.
   */
  function heldCommit(fail?: Error) {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let committing = false;
    const wrapWriter = (w: SnapshotWriter): SnapshotWriter =>
      withMethod(w, 'commit', async (m: SnapshotManifest) => {
        committing = true;
        await released;
        if (fail) throw fail;
        return w.commit(m);
      });
    const held = withMethod(
      target,
      'beginSnapshot',
      async (...args: Parameters<BackupTarget['beginSnapshot']>) =>
        wrapWriter(await target.beginSnapshot(...args)),
    );
    return { target: held, release, committing: () => committing };
  }

  /**
   * A backup whose commit is held (failing with `fail` once released), started and waited for
   * until the commit began and the catalog has the snapshot's entries.
   */
  async function startHeld(fail?: Error) {
    const held = heldCommit(fail);
    const run = volumeBackupRun(held.target, catalogDir, new FakeControl(mirror));
    let id = '';
    run.onDidProgress((p) => (id ||= p.snapshotId ?? ''));
    const done = run.run();
    done.catch(() => undefined);
    expect(await waitFor(held.committing, 30_000)).toBe(true);
    expect(await waitFor(async () => (await runState(id)).hasEntries, 30_000)).toBe(true);
    return { id, done, release: held.release };
  }

  const runState = (id: string) =>
    Catalog.with(catalogDir, async (c) => ({
      state: (await c.get(id))?.state,
      hasEntries: await c.hasEntries(id),
    }));

  it("writes the catalog's entries while the target commits; complete only after the commit", async () => {
    // The commit is held: the entries are written meanwhile, the snapshot still running.
    const { id, done, release } = await startHeld();
    expect(await runState(id)).toEqual({ state: 'running', hasEntries: true });
    release();
    const r = await done;
    expect(r.snapshot).toMatchObject({ id, state: 'complete' });
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.entries(id)).map((e) => e.path)).toEqual(['/', '/a.txt', '/b.bin', '/d', '/d/c.txt']);
    });
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).toEqual([id]);
  });

  it('a commit that fails after the entries were written leaves a failed snapshot without entries', async () => {
    const { id, done, release } = await startHeld(
      new TwinError('ETWIN_TARGET_FAILED', 'the store went away at commit'),
    );
    release();
    await expect(done).rejects.toMatchObject({ code: 'ETWIN_TARGET_FAILED' });
    expect(await runState(id)).toEqual({ state: 'failed', hasEntries: false });
    expect(await target.listSnapshots()).toEqual([]);
  });

  it('an unchanged incremental built by reference writes its entries while the target commits', async () => {
    const first = await volumeBackupRun(target, catalogDir, new FakeControl(mirror)).run();
    // Nothing changed: the next run is built on the first by reference, its commit held.
    const { id, done, release } = await startHeld();
    expect(await runState(id)).toEqual({ state: 'running', hasEntries: true });
    release();
    const r = await done;
    expect(r.changes).toMatchObject({ byReference: true, looked: 0 });
    expect(r.snapshot).toMatchObject({ id, state: 'complete', parentId: first.snapshot.id });
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.entries(id)).map((e) => e.path)).toEqual(['/', '/a.txt', '/b.bin', '/d', '/d/c.txt']);
    });
  });

  it("the commit starts once the split is confirmed, not after the server's answer to the release", async () => {
    /** The server's answer to release held until `answer` (the release itself is asked at once). */
    class SlowRelease extends FakeControl {
      answer!: () => void;
      private readonly answered = new Promise<void>((r) => (this.answer = r));
      override async release(backupId: string): Promise<unknown> {
        const reply = super.release(backupId);
        await this.answered;
        return reply;
      }
    }
    const control = new SlowRelease(mirror);
    const held = heldCommit();
    const resynced: unknown[] = [];
    const run = volumeBackupRun(held.target, catalogDir, control, {
      hooks: {
        willFreeze: async () => [],
        emit: async (name, payload) => {
          if (name === 'onDidResync') resynced.push(payload);
        },
      },
    });
    const done = run.run();
    done.catch(() => undefined);
    expect(await waitFor(held.committing, 10_000)).toBe(true);
    expect(control.count('release')).toBe(1);
    control.answer();
    held.release();
    const r = await done;
    expect(r.snapshot.state).toBe('complete');
    // The resync is still told to plugins, once its answer came.
    expect(resynced).toEqual([expect.objectContaining({ backupId: r.backupId })]);
  });

  describe("the target's lock", () => {
    /** A control whose prepare waits until `go` (or fails then, with `fail`). */
    class HeldPrepare extends FakeControl {
      waiting = false;
      go!: (fail?: Error) => void;
      private readonly gone = new Promise<Error | undefined>((r) => (this.go = r));
      override async prepare(selector: SelectorMsg, o: Parameters<FakeControl['prepare']>[1]) {
        this.waiting = true;
        const fail = await this.gone;
        if (fail) throw fail;
        return super.prepare(selector, o);
      }
    }
    const locks = async () =>
      (await fsp.readdir(path.join(root, 'locks')).catch(() => [])).filter((n) => !n.includes('.tmp-'));

    it('is taken while the server prepares, and released by the commit', async () => {
      await volumeBackupRun(target, catalogDir, new FakeControl(mirror)).run();
      expect(await locks()).toEqual([]);
      const control = new HeldPrepare(mirror);
      const done = volumeBackupRun(target, catalogDir, control).run();
      done.catch(() => undefined);
      expect(await waitFor(() => control.waiting, 10_000)).toBe(true);
      expect(await waitFor(async () => (await locks()).length === 1, 10_000)).toBe(true);
      control.go();
      expect((await done).snapshot.state).toBe('complete');
      expect(await locks()).toEqual([]);
    });

    it('taken for a run that fails before its snapshot begins, is released', async () => {
      await volumeBackupRun(target, catalogDir, new FakeControl(mirror)).run();
      const control = new HeldPrepare(mirror);
      const done = volumeBackupRun(target, catalogDir, control).run();
      done.catch(() => undefined);
      expect(await waitFor(async () => control.waiting && (await locks()).length === 1, 10_000)).toBe(true);
      control.go(new TwinError('ETWIN_STALL_EXCEEDED', 'the writes could not be held in time'));
      await expect(done).rejects.toMatchObject({ code: 'ETWIN_STALL_EXCEEDED' });
      expect(await locks()).toEqual([]);
    });
  });
});

/** obj with its method `key` replaced by fn; every other member as obj has it (methods bound to obj). */
function withMethod<T extends object>(obj: T, key: keyof T, fn: unknown): T {
  return new Proxy(obj, {
    get(t, k) {
      if (k === key) return fn;
      const v = Reflect.get(t, k, t);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}
