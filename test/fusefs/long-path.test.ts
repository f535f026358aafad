import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sh } from '../helpers/proc.js';
import { type MirroredVolume, mirroredVolume } from '../helpers/server.js';

const FIXTURE = path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures/long-path.mjs');

interface LongPathRun {
  len: number;
  results: Array<{ op: string; ok: boolean; code?: string }>;
  sha?: string;
}

/** Runs fixtures/long-path.mjs in a child process (with base as its working directory). */
async function longPath(base: string, len: number, mode = ''): Promise<LongPathRun> {
  const r = await sh(`node '${FIXTURE}' '${base}' ${len} ${mode}`, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`long-path.mjs failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as LongPathRun;
}

/**
 * Issue 11, row 15: a path of PATH_MAX - 1 bytes relative to a directory inside the mount works
 * as on ext4, although the primary's (and the mirror's) prefix makes the backing path longer
 * than PATH_MAX; PATH_MAX bytes fail with ENAMETOOLONG as on ext4 (the kernel's own limit).
 */
describe('long paths through the mount, like a local filesystem', () => {
  let v: MirroredVolume;
  beforeAll(async () => {
    v = await mirroredVolume({ extraDirs: ['plain'] });
    await v.start();
  });
  afterAll(async () => {
    await v?.close();
  });

  it('PATH_MAX - 1 bytes relative to a directory in the mount: every operation, mirrored', async () => {
    await sh(`mkdir '${v.dirs.mnt}/top' '${v.dirs.plain}/top'`);
    const plain = await longPath(`${v.dirs.plain}/top`, 4095);
    const mounted = await longPath(`${v.dirs.mnt}/top`, 4095);
    expect(mounted.len).toBe(4095);
    // What a local directory allows (all of it), the mount allows, with the same bytes.
    expect(plain.results.filter((r) => !r.ok)).toEqual([]);
    expect(mounted.results).toEqual(plain.results);
    expect(mounted.sha).toBe(plain.sha);
    // The backing paths are past PATH_MAX: the primary and the mirror hold the entries.
    expect(Buffer.byteLength(v.dirs.primary!) + 5 + mounted.len).toBeGreaterThan(4096);
    const onPrimary = await longPath(`${v.dirs.primary}/top`, 4095, 'read');
    expect(onPrimary.results.filter((r) => !r.ok)).toEqual([]);
    expect(onPrimary.sha).toBe(plain.sha);
    expect(await v.stopServer()).toBe(0);
    const onMirror = await longPath(`${v.dirs.mirror}/data/top`, 4095, 'read');
    expect(onMirror.results.filter((r) => !r.ok)).toEqual([]);
    expect(onMirror.sha).toBe(plain.sha);
    // verify reaches the entries past PATH_MAX too: /top, its 15 directories, the renamed file
    // and the symlink (it used to skip the last two as unreadable and call the pair clean).
    const { code, report } = await v.verify();
    expect(report).toMatchObject({ ok: true, checked: 18 });
    expect(code).toBe(0);
  });

  it('PATH_MAX bytes: ENAMETOOLONG through the mount, as on a local directory', async () => {
    await v.start();
    await sh(`mkdir '${v.dirs.mnt}/top2' '${v.dirs.plain}/top2'`);
    const plain = await longPath(`${v.dirs.plain}/top2`, 4096);
    const mounted = await longPath(`${v.dirs.mnt}/top2`, 4096);
    expect(plain.results[0]).toEqual({ op: 'create+write+fsync', ok: false, code: 'ENAMETOOLONG' });
    expect(mounted.results).toEqual(plain.results);
  });
});
