import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupRun } from '../../src/backup-peer/backup-run.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { setPasswordFile } from '../../src/repository/index.js';
import { type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';
import { runCli } from '../helpers/cli.js';
import { FakeControl, type Mirror, makeMirror, snapshotTree, tempDir } from './peer-fixture.js';

const DIR_PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

/**
 * The repository stands on its own (docs/repository.md): an encrypted dir: repository made by
 * `twinfs init`, two backups into it, then the local catalog deleted. Every command works from
 * --target alone (the real CLI, a process of its own), and the catalog is re-created from it.
 */
describe('a repository without its catalog (twinfs CLI)', () => {
  let base: string;
  let cleanup: () => Promise<void>;
  let mirror: Mirror;
  let plugin: LoadedPlugin;
  let repo: string;
  let pass: string;
  let catalogDir: string;
  const ids: string[] = [];
  /** A command with the passphrase file, and the catalog where the command has one. */
  const cli = (...args: string[]) =>
    runCli(
      [
        ...args,
        '--json',
        '--password-file',
        pass,
        ...(['init', 'prune'].includes(args[0]!) ? [] : ['--catalog', catalogDir]),
      ],
      { timeoutMs: 120_000 },
    );

  beforeAll(async () => {
    ({ dir: base, cleanup } = await tempDir('twinfs-repo-cli-'));
    plugin = await loadTargetPlugin(DIR_PLUGIN);
    mirror = await makeMirror(base, {
      docs: { 'a.txt': 'alpha\n', 'b.bin': Buffer.alloc(300_000, 3), deep: { 'c.txt': 'charlie\n' } },
      'top.txt': { content: 'top', mode: 0o640, mtime: 1_600_000_000_000 },
      link: { symlink: 'docs/a.txt' },
    });
    repo = path.join(base, 'repo');
    pass = path.join(base, 'pass');
    await fsp.writeFile(pass, 'correct horse battery staple\n', { mode: 0o600 });
    catalogDir = path.join(base, 'catalog');
    const init = await cli('init', '--target', `dir:${repo}`, '--encrypt');
    expect(init.code, init.stderr).toBe(0);
    expect(init.last).toMatchObject({ encrypted: true });
    // Backups in this process, through the same plugin, with the passphrase from the same file.
    setPasswordFile(pass);
    const registry = new TargetRegistry([], (type) => plugin.host.getTargetProvider(type));
    const target = await registry.open(`dir:${repo}`);
    const backup = () =>
      new BackupRun({
        server: 'ws://fake',
        token: 't',
        target,
        catalogDir,
        selector: { volume: true },
        tags: ['nightly'],
        connect: async () => new FakeControl(mirror),
      }).run();
    ids.push((await backup()).snapshot.id);
    await fsp.writeFile(path.join(mirror.data, 'docs/a.txt'), 'alpha, second version\n');
    await fsp.writeFile(path.join(mirror.data, 'docs/b.bin'), Buffer.alloc(300_000, 4));
    ids.push((await backup()).snapshot.id);
    await target.close();
    setPasswordFile(undefined);
    await fsp.rm(catalogDir, { recursive: true });
  }, 180_000);
  afterAll(async () => {
    await plugin?.dispose();
    await cleanup?.();
  });

  it('lists, restores and checks from the target alone, and rebuilds the catalog', async () => {
    const list = await cli('snapshots', '--target', `dir:${repo}`);
    expect(list.code, list.stderr).toBe(0);
    const shown = list.lines[0] as Array<{ id: string; state: string; deviceId: string; tags?: string[] }>;
    expect(shown.map((s) => s.id)).toEqual(ids);
    expect(shown.every((s) => s.state === 'complete' && s.deviceId === mirror.deviceId)).toBe(true);
    expect(shown[0]!.tags).toEqual(['nightly']);

    const to = path.join(base, 'restored');
    const r = await cli('restore', 'latest', '--target', `dir:${repo}`, '--to', to);
    expect(r.code, r.stderr).toBe(0);
    expect(await snapshotTree(to)).toEqual(await snapshotTree(mirror.data));
    const old = path.join(base, 'restored-old');
    const r1 = await cli(
      'restore',
      ids[0]!.slice(0, 20),
      '/docs/a.txt',
      '--target',
      `dir:${repo}`,
      '--to',
      old,
    );
    expect(r1.code, r1.stderr).toBe(0);
    expect(await fsp.readFile(path.join(old, 'docs/a.txt'), 'utf8')).toBe('alpha\n');

    const ls = await cli('ls', 'latest', '/docs', '--target', `dir:${repo}`);
    expect(ls.code, ls.stderr).toBe(0);
    expect((ls.lines[0] as Array<{ path: string }>).map((e) => e.path)).toEqual([
      '/docs',
      '/docs/a.txt',
      '/docs/b.bin',
      '/docs/deep',
      '/docs/deep/c.txt',
    ]);
    const diff = await cli('diff', ids[0]!, ids[1]!, '--target', `dir:${repo}`);
    expect(diff.code, diff.stderr).toBe(0);
    // The two changed files (and their directory's mtime).
    expect(diff.last.changes.filter((c: { change: string }) => c.change === 'M')).toEqual([
      { change: 'M', path: '/docs/a.txt' },
      { change: 'M', path: '/docs/b.bin' },
    ]);

    const c = await cli('check', 'latest', '--target', `dir:${repo}`);
    expect(c.code, c.stderr).toBe(0);
    expect(c.last).toMatchObject({ ok: true, problems: [] });
    const whole = await cli('check', '--target', `dir:${repo}`, '--read-data');
    expect(whole.code, whole.stderr).toBe(0);
    expect(whole.last).toMatchObject({ ok: true, snapshots: 2 });
    expect(whole.last.packsRead).toBe(whole.last.packs);

    await fsp.rm(catalogDir, { recursive: true });
    const rebuilt = await cli('catalog', 'rebuild', '--target', `dir:${repo}`);
    expect(rebuilt.code, rebuilt.stderr).toBe(0);
    expect(rebuilt.last).toMatchObject({ snapshots: 2, added: 2, removed: 0 });
    // The rebuilt catalog serves commands without --target (entries read from the target).
    const viaCatalog = await cli('restore', ids[1]!, '/docs/deep', '--to', path.join(base, 'via-catalog'));
    expect(viaCatalog.code, viaCatalog.stderr).toBe(0);
    expect(await fsp.readFile(path.join(base, 'via-catalog/docs/deep/c.txt'), 'utf8')).toBe('charlie\n');
  }, 300_000);

  it('forget and prune work from the target alone; prune says what it frees and frees it', async () => {
    await fsp.rm(catalogDir, { recursive: true, force: true });
    const f = await cli('forget', '--target', `dir:${repo}`, '--keep-last', '1');
    expect(f.code, f.stderr).toBe(0);
    expect(f.last).toMatchObject({ removed: [ids[0]], kept: [ids[1]] });
    const dry = await cli('prune', '--target', `dir:${repo}`, '--dry-run');
    expect(dry.code, dry.stderr).toBe(0);
    // The first snapshot alone used the old a.txt and b.bin and its manifest.
    expect(dry.last.bytesFreed).toBeGreaterThan(0);
    const before = await dirBytes(path.join(repo, 'data'));
    const p = await cli('prune', '--target', `dir:${repo}`);
    expect(p.code, p.stderr).toBe(0);
    expect(before - (await dirBytes(path.join(repo, 'data')))).toBe(p.last.bytesFreed);
    expect(p.last.bytesFreed).toBeGreaterThan(0);
    const c = await cli('check', '--target', `dir:${repo}`, '--read-data');
    expect(c.last).toMatchObject({ ok: true, snapshots: 1 });
    const to = path.join(base, 'after-prune');
    const r = await cli('restore', 'latest', '--target', `dir:${repo}`, '--to', to);
    expect(r.code, r.stderr).toBe(0);
    expect(await snapshotTree(to)).toEqual(await snapshotTree(mirror.data));
  }, 300_000);

  it('refuses what is not a repository it can read, with codes, and creates nothing', async () => {
    const code = (r: { stderr: string }) => /ETWIN_[A-Z_]+/.exec(r.stderr)?.[0];
    const missing = path.join(base, 'no-such-repo');
    const m = await cli('snapshots', '--target', `dir:${missing}`);
    expect([m.code, code(m)]).toEqual([1, 'ETWIN_REPO_NOT_INITIALISED']);
    await expect(fsp.stat(missing)).rejects.toMatchObject({ code: 'ENOENT' });
    const rel = await cli('snapshots', '--target', 'dir:relative/backups');
    expect([rel.code, code(rel)]).toEqual([1, 'ETWIN_TARGET_SPEC']);
    const again = await cli('init', '--target', `dir:${repo}`);
    expect([again.code, code(again)]).toEqual([1, 'ETWIN_REPO_EXISTS']);
    const wrong = path.join(base, 'wrong-pass');
    await fsp.writeFile(wrong, 'not it');
    const w = await runCli([
      'snapshots',
      '--target',
      `dir:${repo}`,
      '--password-file',
      wrong,
      '--catalog',
      catalogDir,
    ]);
    expect([w.code, code(w)]).toEqual([1, 'ETWIN_REPO_PASSWORD']);
    const none = await runCli(['snapshots', '--target', `dir:${repo}`, '--catalog', catalogDir], {
      env: { ...process.env, TWINFS_PASSWORD: '', TWINFS_PASSWORD_FILE: '' },
    });
    expect([none.code, code(none)]).toEqual([1, 'ETWIN_REPO_PASSWORD']);
    const foreign = path.join(base, 'foreign');
    await fsp.mkdir(foreign);
    await fsp.writeFile(path.join(foreign, 'photo.jpg'), 'not a repository');
    const fi = await cli('init', '--target', `dir:${foreign}`);
    expect([fi.code, code(fi)]).toEqual([1, 'ETWIN_REPO_FOREIGN']);
    expect(await fsp.readdir(foreign)).toEqual(['photo.jpg']);
  }, 300_000);
});

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for (const d of await fsp.readdir(dir, { withFileTypes: true, recursive: true }))
    if (d.isFile()) n += (await fsp.stat(path.join(d.parentPath, d.name))).size;
  return n;
}
