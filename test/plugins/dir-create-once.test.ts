import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ObjectStore } from '../../api/twinfs.js';
import { Repository } from '../../src/repository/repository.js';
import type { RepositoryTarget } from '../../src/repository/repository-target.js';
import {
  fileEntry,
  fileMeta,
  manifest,
  pseudoRandom,
  readAll,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { dirRepositoryFixture } from './plugin-fixtures.js';

/** The repository's real store under a target (the dir plugin's, through the plugin guard). */
function storeOf(t: RepositoryTarget): ObjectStore {
  return (t as unknown as { store: ObjectStore }).store;
}

/**
 * Creating a repository's config exclusively (ObjectStore.putNew; docs/repository.md, "Creating
 * a repository"): dir: with link(2), so that of several creators exactly one config lands.
 */
describe('dir: creates an object once (putNew)', () => {
  const fx = dirRepositoryFixture('twinfs-create-once-');

  it('of eight putNew of one name at once exactly one stores, and the object is its bytes; no temporary file is left', async () => {
    const dir = await fx.tmp();
    const t = await fx.open(`dir:${dir}/r`);
    const store = storeOf(t);
    const bodies = Array.from({ length: 8 }, (_, i) => Buffer.from(`config of creator ${i}\n`));
    const stored = await Promise.all(bodies.map((b) => store.putNew!('config', b)));
    expect(stored.filter(Boolean)).toHaveLength(1);
    const winner = bodies[stored.indexOf(true)]!;
    expect((await store.get('config')).equals(winner)).toBe(true);
    // A later one finds it there too, and put (which replaces) is not what putNew does.
    expect(await store.putNew!('config', Buffer.from('late'))).toBe(false);
    expect((await store.get('config')).equals(winner)).toBe(true);
    expect(await fsp.readdir(path.join(dir, 'r'))).toEqual(['config']);
  });

  it('two unencrypted first backups at once: the later config is not written, both snapshots land in the one repository', async () => {
    const dir = await fx.tmp();
    const spec = `dir:${dir}/r`;
    // Two targets opened on the empty location, as two processes would: both will create.
    const [t1, t2] = [await fx.open(spec), await fx.open(spec)];
    const d1 = pseudoRandom(300_000, 5);
    const d2 = pseudoRandom(300_000, 6);
    const [w1, w2] = await Promise.all([
      t1.beginSnapshot(snapMeta('one')),
      t2.beginSnapshot(snapMeta('two')),
    ]);
    await Promise.all([
      w1.putFile('/f', streamOf(d1), fileMeta(d1.length)),
      w2.putFile('/f', streamOf(d2), fileMeta(d2.length)),
    ]);
    await Promise.all([
      w1.commit(manifest(snapMeta('one'), [fileEntry('/f', d1)])),
      w2.commit(manifest(snapMeta('two'), [fileEntry('/f', d2)])),
    ]);
    // One of them created the repository, the other adopted it: both hold its id now.
    expect([t1.repo.adopted, t2.repo.adopted].sort()).toEqual([false, true]);
    expect(t1.repo.config.id).toBe(t2.repo.config.id);
    const config = JSON.parse(await fsp.readFile(path.join(dir, 'r/config'), 'utf8'));
    expect(config.id).toBe(t1.repo.config.id);
    const again = await fx.open(spec, false);
    expect((await again.listSnapshots()).map((s) => s.snapshotId).sort()).toEqual(['one', 'two']);
    expect((await readAll(await again.openFile('one', '/f'))).equals(d1)).toBe(true);
    expect((await readAll(await again.openFile('two', '/f'))).equals(d2)).toBe(true);
  });

  it('a location holding only a key file is a creation in progress: a first backup waits for its config and opens that repository', async () => {
    const dir = await fx.tmp();
    process.env.TWINFS_PASSWORD = 'in progress';
    // The other creator's objects, made by twinfs init elsewhere and put here in its order: the
    // key file, then (after the first backup has looked) the config.
    const made = await fx.open(`dir:${dir}/made`, true);
    await Repository.init(storeOf(made), { encrypt: true });
    const keyName = (await fsp.readdir(path.join(dir, 'made/keys')))[0]!;
    const t = await fx.open(`dir:${dir}/r`);
    const store = storeOf(t);
    await store.put(`keys/${keyName}`, await fsp.readFile(path.join(dir, 'made/keys', keyName)));
    const opening = Repository.open(store, { create: 'if-empty' });
    await new Promise((r) => setTimeout(r, 400));
    await store.put('config', await fsp.readFile(path.join(dir, 'made/config')));
    // Before: ETWIN_REPO_FOREIGN (a location with files and no config).
    const repo = await opening;
    expect(repo.adopted).toBe(false);
    expect(repo.beingWritten).toBe(false);
    expect(repo.config.id).toBe(JSON.parse(await fsp.readFile(path.join(dir, 'made/config'), 'utf8')).id);
    expect((await fsp.readdir(path.join(dir, 'r/keys'))).length).toBe(1);
  });

  /**
   * A store that answers a PUT before its bytes are readable whole (s3rver's putObject ends its
   * write stream and answers without waiting for it): the first read-back after the config's
   * put gives a cut-short prefix. The cut is injected over the real dir store (the race cannot
   * be provoked on demand); everything else is the store's own.
   */
  function cutReads(store: ObjectStore, times: number): ObjectStore {
    let left = times;
    let configPut = false;
    const wrapped = Object.create(store) as ObjectStore & { putNew: NonNullable<ObjectStore['putNew']> };
    wrapped.putNew = async (name: string, data: Buffer) => {
      if (name === 'config') configPut = true;
      return store.putNew!(name, data);
    };
    wrapped.get = async (name: string, range?: { start: number; end: number }) => {
      const b = await store.get(name, range);
      if (name === 'config' && configPut && !range && left > 0) {
        left--;
        return b.subarray(0, Math.floor(b.length / 3));
      }
      return b;
    };
    return wrapped;
  }

  it("a config read back cut short right after its put is read again, not taken for another creator's", async () => {
    const dir = await fx.tmp();
    const t = await fx.open(`dir:${dir}/r`);
    const repo = await Repository.begin(cutReads(storeOf(t), 2));
    // Before: the cut bytes were "theirs", and parseConfig failed the snapshot with
    // ETWIN_REPO_FOREIGN "config is not a twinfs repository config".
    await repo.written;
    expect(repo.adopted).toBe(false);
    expect(JSON.parse(await fsp.readFile(path.join(dir, 'r/config'), 'utf8')).id).toBe(repo.config.id);
  });

  it('a config that stays cut short is ETWIN_TARGET_FAILED, not a foreign repository', async () => {
    const dir = await fx.tmp();
    const t = await fx.open(`dir:${dir}/r`);
    const repo = await Repository.begin(cutReads(storeOf(t), 1000));
    await expect(repo.written).rejects.toMatchObject({ code: 'ETWIN_TARGET_FAILED' });
  });
});
