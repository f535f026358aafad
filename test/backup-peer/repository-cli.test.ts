import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTargetPlugin } from '../conformance/index.js';
import { runCli } from '../helpers/cli.js';
import { tempDir } from './peer-fixture.js';
import { describeRepositoryWithoutCatalog } from './repository-suite.js';

const DIR_PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

describeRepositoryWithoutCatalog('dir:', async () => {
  const { dir, cleanup } = await tempDir('twinfs-repo-dir-');
  const plugin = await loadTargetPlugin(DIR_PLUGIN);
  const dispose = plugin.dispose.bind(plugin);
  plugin.dispose = async () => {
    await dispose();
    await cleanup();
  };
  return {
    spec: `dir:${dir}/repo`,
    plugin,
    initArgs: ['--encrypt'],
    dataBytes: () => dirBytes(path.join(dir, 'repo/data')),
  };
});

describe('what is not a repository it can read (twinfs CLI, dir:)', () => {
  let base: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir: base, cleanup } = await tempDir('twinfs-repo-refuse-'));
  });
  afterAll(async () => {
    await cleanup?.();
  });

  it('is refused with codes, and nothing is created', async () => {
    const cli = (...args: string[]) =>
      runCli([...args, '--catalog', path.join(base, 'catalog')], {
        timeoutMs: 60_000,
        env: { ...process.env, TWINFS_PASSWORD: '', TWINFS_PASSWORD_FILE: '' },
      });
    const code = (r: { stderr: string }) => /ETWIN_[A-Z_]+/.exec(r.stderr)?.[0];
    const missing = path.join(base, 'no-such-repo');
    const m = await cli('snapshots', '--target', `dir:${missing}`);
    expect([m.code, code(m)]).toEqual([1, 'ETWIN_REPO_NOT_INITIALISED']);
    await expect(fsp.stat(missing)).rejects.toMatchObject({ code: 'ENOENT' });
    const rel = await cli('snapshots', '--target', 'dir:relative/backups');
    expect([rel.code, code(rel)]).toEqual([1, 'ETWIN_TARGET_SPEC']);
    const repo = path.join(base, 'repo');
    const init = await runCli(['init', '--target', `dir:${repo}`]);
    expect(init.code, init.stderr).toBe(0);
    const again = await runCli(['init', '--target', `dir:${repo}`]);
    expect([again.code, code(again)]).toEqual([1, 'ETWIN_REPO_EXISTS']);
    const foreign = path.join(base, 'foreign');
    await fsp.mkdir(foreign);
    await fsp.writeFile(path.join(foreign, 'photo.jpg'), 'not a repository');
    const fi = await runCli(['init', '--target', `dir:${foreign}`]);
    expect([fi.code, code(fi)]).toEqual([1, 'ETWIN_REPO_FOREIGN']);
    const fs = await cli('snapshots', '--target', `dir:${foreign}`);
    expect([fs.code, code(fs)]).toEqual([1, 'ETWIN_REPO_FOREIGN']);
    expect(await fsp.readdir(foreign)).toEqual(['photo.jpg']);
  }, 120_000);
});

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for (const d of await fsp.readdir(dir, { withFileTypes: true, recursive: true }))
    if (d.isFile()) n += (await fsp.stat(path.join(d.parentPath, d.name))).size;
  return n;
}
