import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  fileEntry,
  fileMeta,
  manifest,
  pseudoRandom,
  readAll,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { describeTargetConformance, type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';

const PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

describeTargetConformance('dir', async () => {
  const plugin = await loadTargetPlugin(PLUGIN);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-dir-'));
  const target = await plugin.open(`dir:${dir}/backups`);
  return {
    target,
    reopen: () => plugin.open(`dir:${dir}/backups`),
    async cleanup() {
      await plugin.dispose();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
});

describe('dir target specifics', () => {
  let plugin: LoadedPlugin;
  let dir: string;
  beforeAll(async () => {
    plugin = await loadTargetPlugin(PLUGIN);
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-dir-'));
  });
  afterAll(async () => {
    await plugin?.dispose();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('keeps a plain tree per snapshot and hard-links unchanged files to the previous one', async () => {
    const t = await plugin.open(`dir:${dir}`);
    const a = pseudoRandom(50_000, 1);
    const w1 = await t.beginSnapshot(snapMeta('one'));
    const put = await w1.putFile('/d/a.bin', streamOf(a), fileMeta(a.length));
    await w1.commit(manifest(snapMeta('one'), [fileEntry('/d/a.bin', a)]));
    const w2 = await t.beginSnapshot(snapMeta('two', Date.now(), 'one'));
    await w2.reuseFile('/d/a.bin', 'one', { ...fileEntry('/d/a.bin', a), stored: put.stamp });
    await w2.commit(manifest(snapMeta('two', Date.now(), 'one'), [fileEntry('/d/a.bin', a)]));
    const [s1, s2] = await Promise.all([
      fsp.stat(path.join(dir, 'one/d/a.bin')),
      fsp.stat(path.join(dir, 'two/d/a.bin')),
    ]);
    expect(s2.ino).toBe(s1.ino);
    expect(s2.nlink).toBe(2);
    expect(await fsp.readFile(path.join(dir, 'two/d/a.bin'))).toEqual(a);
    expect((await fsp.readdir(path.join(dir, '.manifests'))).sort()).toEqual(['one.jsonl', 'two.jsonl']);
    expect(t.capabilities.dedup).toBe(true);
    expect(await readAll(await t.openFile('two', '/d/a.bin', { start: 10, end: 19 }))).toEqual(
      a.subarray(10, 20),
    );
  });
});
