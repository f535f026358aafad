import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Catalog } from '../../src/backup-peer/catalog.js';
import type { BackupTarget, SnapshotManifest, SnapshotWriter } from '../../src/backup-peer/target.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { TwinError } from '../../src/common/errors.js';
import { type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';
import { waitFor } from '../helpers/mounts.js';
import { FakeControl, type Mirror, makeMirror, tempDir, volumeBackupRun } from './peer-fixture.js';

const DIR_PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

/**
 * The commit phase of a run: the catalog's entries are written while the target commits, and
 * the snapshot is complete in the catalog only once the commit resolved (a failed commit leaves
 * no entries behind). The real directory target, its writer's commit held by the test.
 */
describe('backup commit: the catalog beside the target', () => {
  let base: string;
  let cleanup: () => Promise<void>;
  let mirror: Mirror;
  let plugin: LoadedPlugin;
  let target: BackupTarget;
  let catalogDir: string;
  const registry = new TargetRegistry([], (type) => plugin.host.getTargetProvider(type));

  beforeAll(async () => {
    plugin = await loadTargetPlugin(DIR_PLUGIN);
  });
  afterAll(() => plugin?.dispose());
  beforeEach(async () => {
    ({ dir: base, cleanup } = await tempDir());
    mirror = await makeMirror(base, {
      'a.txt': 'alpha\n',
      'b.bin': Buffer.alloc(300_000, 3),
      d: { 'c.txt': 'charlie\n' },
    });
    target = await registry.open(`dir:${path.join(base, 'backups')}`);
    catalogDir = path.join(base, 'catalog');
  });
  afterEach(() => cleanup());

  /**
   * The target, its writers' commit held until `release` (then done, or failed with `fail`).
   * Every other call goes to the real writer.
   */
  function heldCommit(fail?: Error) {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let committing = false;
    const wrapWriter = (w: SnapshotWriter): SnapshotWriter =>
      new Proxy(w, {
        get(t, k) {
          if (k === 'commit')
            return async (m: SnapshotManifest) => {
              committing = true;
              await released;
              if (fail) throw fail;
              return t.commit(m);
            };
          const v = Reflect.get(t, k, t);
          return typeof v === 'function' ? v.bind(t) : v;
        },
      });
    const held = new Proxy(target, {
      get(t, k) {
        if (k === 'beginSnapshot')
          return async (...args: Parameters<BackupTarget['beginSnapshot']>) =>
            wrapWriter(await t.beginSnapshot(...args));
        const v = Reflect.get(t, k, t);
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
    return { target: held, release, committing: () => committing };
  }

  const runState = (id: string) =>
    Catalog.with(catalogDir, async (c) => ({
      state: (await c.get(id))?.state,
      hasEntries: await c.hasEntries(id),
    }));

  it("writes the catalog's entries while the target commits; complete only after the commit", async () => {
    const held = heldCommit();
    const run = volumeBackupRun(held.target, catalogDir, new FakeControl(mirror));
    let id = '';
    run.onDidProgress((p) => (id ||= p.snapshotId ?? ''));
    const done = run.run();
    done.catch(() => undefined);
    expect(await waitFor(held.committing, 30_000)).toBe(true);
    // The commit is held: the entries are written meanwhile, the snapshot still running.
    expect(await waitFor(async () => (await runState(id)).hasEntries, 30_000)).toBe(true);
    expect(await runState(id)).toEqual({ state: 'running', hasEntries: true });
    held.release();
    const r = await done;
    expect(r.snapshot).toMatchObject({ id, state: 'complete' });
    await Catalog.with(catalogDir, async (c) => {
      expect((await c.entries(id)).map((e) => e.path)).toEqual(['/', '/a.txt', '/b.bin', '/d', '/d/c.txt']);
    });
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).toEqual([id]);
  });

  it('a commit that fails after the entries were written leaves a failed snapshot without entries', async () => {
    const held = heldCommit(new TwinError('ETWIN_TARGET_FAILED', 'the store went away at commit'));
    const run = volumeBackupRun(held.target, catalogDir, new FakeControl(mirror));
    let id = '';
    run.onDidProgress((p) => (id ||= p.snapshotId ?? ''));
    const done = run.run();
    done.catch(() => undefined);
    expect(await waitFor(held.committing, 30_000)).toBe(true);
    expect(await waitFor(async () => (await runState(id)).hasEntries, 30_000)).toBe(true);
    held.release();
    await expect(done).rejects.toMatchObject({ code: 'ETWIN_TARGET_FAILED' });
    expect(await runState(id)).toEqual({ state: 'failed', hasEntries: false });
    expect(await target.listSnapshots()).toEqual([]);
  });
});
