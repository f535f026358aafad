import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { PathPatterns } from '../../src/common/path-patterns.js';
import { setPasswordFile } from '../../src/repository/index.js';
import type { LoadedPlugin } from '../conformance/index.js';
import { type CliRun, runCli } from '../helpers/cli.js';
import {
  FakeControl,
  type Mirror,
  makeMirror,
  snapshotTree,
  tempDir,
  volumeBackupRun,
} from './peer-fixture.js';

export interface RepositoryUnderTest {
  /** The target spec of a fresh, empty location (a directory, a bucket prefix). */
  spec: string;
  /** The plugin that opens it, in this process (the backups run here). */
  plugin: LoadedPlugin;
  /** The environment the CLI needs to reach it (AWS_* for s3). */
  env?: NodeJS.ProcessEnv;
  /** What `twinfs init` needs for an encrypted repository here (none where that is the default). */
  initArgs: string[];
  /** Bytes of the repository's data objects (data/), read straight from the store. */
  dataBytes(): Promise<number>;
}

/**
 * The repository stands on its own (docs/repository.md): an encrypted repository made by
 * `twinfs init`, two backups into it (the second with --exclude patterns), then every command
 * (snapshots, ls, find, diff, restore with --include/--exclude/--overwrite, check, forget,
 * prune, catalog rebuild) run by the real CLI, a process of its own, from --target alone: the
 * local catalog is deleted before each one, so none of them can lean on it.
 */
/** The files (not directories) below DIR, relative and sorted. */
async function filesBelow(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((d) => !d.isDirectory())
    .map((d) => path.relative(dir, path.join(d.parentPath, d.name)))
    .sort();
}

export function describeRepositoryWithoutCatalog(
  name: string,
  open: () => Promise<RepositoryUnderTest>,
): void {
  describe(`a repository without its catalog (twinfs CLI, ${name})`, () => {
    let base: string;
    let cleanup: () => Promise<void>;
    let mirror: Mirror;
    let repo: RepositoryUnderTest;
    let pass: string;
    let catalogDir: string;
    const ids: string[] = [];
    /** A command with the passphrase file and a catalog directory that does not exist. */
    const cli = async (...args: string[]): Promise<CliRun> => {
      await fsp.rm(catalogDir, { recursive: true, force: true });
      return runCli(
        [
          ...args,
          '--json',
          '--password-file',
          pass,
          ...(['init', 'prune'].includes(args[0]!) ? [] : ['--catalog', catalogDir]),
        ],
        { timeoutMs: 120_000, env: { ...process.env, ...repo.env } },
      );
    };
    const t = () => ['--target', repo.spec];

    beforeAll(async () => {
      ({ dir: base, cleanup } = await tempDir('twinfs-repo-cli-'));
      repo = await open();
      mirror = await makeMirror(base, {
        docs: { 'a.txt': 'alpha\n', 'b.bin': Buffer.alloc(300_000, 3), deep: { 'c.txt': 'charlie\n' } },
        'top.txt': { content: 'top', mode: 0o640, mtime: 1_600_000_000_000 },
        link: { symlink: 'docs/a.txt' },
        cache: { 'x.tmp': 'scratch', 'y.dat': 'cached' },
        'notes.tmp': 'scratch too',
      });
      pass = path.join(base, 'pass');
      await fsp.writeFile(pass, 'correct horse battery staple\n', { mode: 0o600 });
      catalogDir = path.join(base, 'catalog');
      const init = await cli('init', ...t(), ...repo.initArgs);
      expect(init.code, init.stderr).toBe(0);
      expect(init.last).toMatchObject({ encrypted: true });
      // Backups in this process, through the same plugin, with the passphrase from the same file.
      setPasswordFile(pass);
      const registry = new TargetRegistry([], (type) => repo.plugin.host.getTargetProvider(type));
      const target = await registry.open(repo.spec);
      const excludeFile = path.join(base, 'excludes');
      await fsp.writeFile(excludeFile, '# scratch files\n*.tmp\n\n');
      const backup = (exclude?: PathPatterns) =>
        volumeBackupRun(target, catalogDir, new FakeControl(mirror), { tags: ['nightly'], exclude }).run();
      ids.push((await backup()).snapshot.id);
      await fsp.writeFile(path.join(mirror.data, 'docs/a.txt'), 'alpha, second version\n');
      await fsp.writeFile(path.join(mirror.data, 'docs/b.bin'), Buffer.alloc(300_000, 4));
      ids.push(
        (await backup(await PathPatterns.load({ patterns: ['/cache'], files: [excludeFile] }))).snapshot.id,
      );
      await target.close();
      setPasswordFile(undefined);
    }, 180_000);
    afterAll(async () => {
      await repo?.plugin.dispose();
      await cleanup?.();
    });

    it('snapshots, ls, find and diff from the target alone; excluded paths are not in the snapshot', async () => {
      const list = await cli('snapshots', ...t());
      expect(list.code, list.stderr).toBe(0);
      const shown = list.lines[0] as Array<{ id: string; state: string; deviceId: string; tags?: string[] }>;
      expect(shown.map((s) => s.id)).toEqual(ids);
      expect(shown.every((s) => s.state === 'complete' && s.deviceId === mirror.deviceId)).toBe(true);
      expect(shown[0]!.tags).toEqual(['nightly']);

      const ls = await cli('ls', 'latest', '/', ...t());
      expect(ls.code, ls.stderr).toBe(0);
      // --exclude /cache and the exclude file's *.tmp: /cache (and below) and /notes.tmp left out.
      expect((ls.lines[0] as Array<{ path: string }>).map((e) => e.path)).toEqual([
        '/',
        '/docs',
        '/docs/a.txt',
        '/docs/b.bin',
        '/docs/deep',
        '/docs/deep/c.txt',
        '/link',
        '/top.txt',
      ]);

      const find = await cli('find', '*.tmp', 'c.txt', ...t());
      expect(find.code, find.stderr).toBe(0);
      expect(
        find.last.found.map((f: { snapshotId: string; entries: Array<{ path: string }> }) => [
          f.snapshotId,
          f.entries.map((e) => e.path),
        ]),
      ).toEqual([
        [ids[0], ['/cache/x.tmp', '/docs/deep/c.txt', '/notes.tmp']],
        [ids[1], ['/docs/deep/c.txt']],
      ]);
      // -i matches ignoring case; --oldest/--newest bound the entries' mtimes (all made now);
      // --tag looks only in snapshots with one of the tags.
      const paths = (r: CliRun) =>
        r.last.found.map((f: { entries: Array<{ path: string }> }) => f.entries.map((e) => e.path));
      const ci = await cli('find', '-i', '*.TMP', 'C.txt', '--snapshot', ids[0]!, ...t());
      expect(ci.code, ci.stderr).toBe(0);
      expect(paths(ci)).toEqual([['/cache/x.tmp', '/docs/deep/c.txt', '/notes.tmp']]);
      const caseKept = await cli('find', '*.TMP', '--snapshot', ids[0]!, ...t());
      expect(caseKept.last.found).toEqual([]);
      const since = await cli('find', 'c.txt', '--oldest', '2000-01-01', '--newest', '2999-12-31', ...t());
      expect(paths(since)).toEqual([['/docs/deep/c.txt'], ['/docs/deep/c.txt']]);
      const before = await cli('find', 'c.txt', '--newest', '2000-01-01 00:00', ...t());
      expect(before.last.found).toEqual([]);
      const after = await cli('find', 'c.txt', '--oldest', '2999-01-01T00:00:00Z', ...t());
      expect(after.last.found).toEqual([]);
      const otherTag = await cli('find', 'c.txt', '--tag', 'weekly', ...t());
      expect(otherTag.last).toMatchObject({ snapshots: 0, found: [] });
      const badTime = await cli('find', 'c.txt', '--oldest', 'yesterday', ...t());
      expect([badTime.code, /ETWIN_[A-Z_]+/.exec(badTime.stderr)?.[0]]).toEqual([2, 'ETWIN_USAGE']);
      const one = await cli('find', '/docs/a.txt', '--snapshot', ids[0]!.slice(0, 20), ...t());
      expect(one.last).toMatchObject({ snapshots: 1, found: [{ snapshotId: ids[0] }] });
      const code = (r: { stderr: string }) => /ETWIN_[A-Z_]+/.exec(r.stderr)?.[0];
      const bad = await cli('find', 'docs/[ab', ...t());
      expect([bad.code, code(bad)]).toEqual([1, 'ETWIN_BAD_PATTERN']);
      const unknown = await cli('find', '*', '--snapshot', 'no-such-snapshot', ...t());
      expect([unknown.code, code(unknown)]).toEqual([1, 'ETWIN_UNKNOWN_SNAPSHOT']);

      const diff = await cli('diff', ids[0]!, ids[1]!, ...t());
      expect(diff.code, diff.stderr).toBe(0);
      expect(diff.last.changes.filter((c: { change: string }) => c.change !== 'U')).toEqual([
        { change: '-', path: '/cache' },
        { change: '-', path: '/cache/x.tmp' },
        { change: '-', path: '/cache/y.dat' },
        { change: 'M', path: '/docs/a.txt' },
        { change: 'M', path: '/docs/b.bin' },
        { change: '-', path: '/notes.tmp' },
      ]);
    }, 600_000);

    it('restores (with --include, --exclude and --overwrite) from the target alone', async () => {
      const to = path.join(base, 'restored');
      const r = await cli('restore', 'latest', ...t(), '--to', to);
      expect(r.code, r.stderr).toBe(0);
      const expected = await snapshotTree(mirror.data);
      for (const k of Object.keys(expected))
        if (k.startsWith('cache') || k.endsWith('.tmp')) delete expected[k as keyof typeof expected];
      expect(await snapshotTree(to)).toEqual(expected);
      // The old a.txt, from the first snapshot, by unique prefix.
      const old = path.join(base, 'restored-old');
      const r1 = await cli('restore', ids[0]!.slice(0, 20), '/docs/a.txt', ...t(), '--to', old);
      expect(r1.code, r1.stderr).toBe(0);
      expect(await fsp.readFile(path.join(old, 'docs/a.txt'), 'utf8')).toBe('alpha\n');

      // --include/--exclude: only .txt files, none below /docs/deep; then the same with the
      // case-insensitive forms (--iinclude, --iexclude) and patterns in the other case.
      for (const [dir, include, exclude, txt, deep] of [
        ['restored-some', '--include', '--exclude', '*.txt', '/docs/deep'],
        ['restored-some-i', '--iinclude', '--iexclude', '*.TXT', '/DOCS/DEEP'],
      ] as const) {
        const some = path.join(base, dir);
        const r2 = await cli('restore', ids[0]!, ...t(), '--to', some, include, txt, exclude, deep);
        expect(r2.code, r2.stderr).toBe(0);
        expect(await filesBelow(some)).toEqual(['docs/a.txt', 'top.txt']);
      }

      // --overwrite: never keeps what is there, if-newer keeps what is newer, always replaces.
      const a = path.join(old, 'docs/a.txt');
      const again = (...policy: string[]) =>
        cli('restore', 'latest', '/docs/a.txt', ...t(), '--to', old, ...policy);
      await fsp.writeFile(a, 'edited locally\n');
      const never = await again('--overwrite', 'never');
      expect(never.code, never.stderr).toBe(0);
      expect(never.last).toMatchObject({ kept: 1, entries: 0 });
      expect(await fsp.readFile(a, 'utf8')).toBe('edited locally\n');
      await fsp.utimes(a, new Date('2000-01-01'), new Date('2000-01-01'));
      expect((await again('--overwrite', 'if-newer')).last).toMatchObject({ kept: 0, entries: 1 });
      expect(await fsp.readFile(a, 'utf8')).toBe('alpha, second version\n');
      await fsp.writeFile(a, 'edited again\n');
      expect((await again('--overwrite', 'if-newer')).last).toMatchObject({ kept: 1, entries: 0 });
      expect(await fsp.readFile(a, 'utf8')).toBe('edited again\n');
      expect((await again()).last).toMatchObject({ kept: 0, entries: 1 });
      expect(await fsp.readFile(a, 'utf8')).toBe('alpha, second version\n');
    }, 600_000);

    it('checks a snapshot and the whole repository, and rebuilds the catalog, from the target alone', async () => {
      const c = await cli('check', 'latest', ...t());
      expect(c.code, c.stderr).toBe(0);
      expect(c.last).toMatchObject({ ok: true, problems: [] });
      const whole = await cli('check', ...t(), '--read-data');
      expect(whole.code, whole.stderr).toBe(0);
      expect(whole.last).toMatchObject({ ok: true, snapshots: 2 });
      expect(whole.last.packsRead).toBe(whole.last.packs);

      const rebuilt = await cli('catalog', 'rebuild', ...t());
      expect(rebuilt.code, rebuilt.stderr).toBe(0);
      expect(rebuilt.last).toMatchObject({ snapshots: 2, added: 2, removed: 0 });
      // A rebuilt catalog serves commands without --target (entries read from the target).
      const viaCatalog = await runCli(
        ['restore', ids[1]!, '/docs/deep', '--to', path.join(base, 'via-catalog'), '--catalog', catalogDir],
        { env: { ...process.env, ...repo.env, TWINFS_PASSWORD_FILE: pass }, timeoutMs: 120_000 },
      );
      expect(viaCatalog.code, viaCatalog.stderr).toBe(0);
      expect(await fsp.readFile(path.join(base, 'via-catalog/docs/deep/c.txt'), 'utf8')).toBe('charlie\n');
    }, 600_000);

    it('forget and prune work from the target alone; prune says what it frees and frees it', async () => {
      const f = await cli('forget', ...t(), '--keep-last', '1');
      expect(f.code, f.stderr).toBe(0);
      expect(f.last).toMatchObject({ removed: [ids[0]], kept: [ids[1]] });
      const dry = await cli('prune', ...t(), '--dry-run');
      expect(dry.code, dry.stderr).toBe(0);
      // The first snapshot alone used the old a.txt and b.bin, the excluded files and its manifest.
      expect(dry.last.bytesFreed).toBeGreaterThan(0);
      const before = await repo.dataBytes();
      const p = await cli('prune', ...t());
      expect(p.code, p.stderr).toBe(0);
      expect(before - (await repo.dataBytes())).toBe(p.last.bytesFreed);
      expect(p.last.bytesFreed).toBeGreaterThan(0);
      const c = await cli('check', ...t(), '--read-data');
      expect(c.last).toMatchObject({ ok: true, snapshots: 1 });
      const to = path.join(base, 'after-prune');
      const r = await cli('restore', 'latest', ...t(), '--to', to);
      expect(r.code, r.stderr).toBe(0);
      expect(await fsp.readFile(path.join(to, 'docs/b.bin'))).toEqual(Buffer.alloc(300_000, 4));
    }, 600_000);

    it('a wrong or a missing passphrase is ETWIN_REPO_PASSWORD', async () => {
      const code = (r: { stderr: string }) => /ETWIN_[A-Z_]+/.exec(r.stderr)?.[0];
      const wrong = path.join(base, 'wrong-pass');
      await fsp.writeFile(wrong, 'not it');
      const w = await runCli(['snapshots', ...t(), '--password-file', wrong, '--catalog', catalogDir], {
        env: { ...process.env, ...repo.env },
      });
      expect([w.code, code(w)]).toEqual([1, 'ETWIN_REPO_PASSWORD']);
      const none = await runCli(['snapshots', ...t(), '--catalog', catalogDir], {
        env: { ...process.env, ...repo.env, TWINFS_PASSWORD: '', TWINFS_PASSWORD_FILE: '' },
      });
      expect([none.code, code(none)]).toEqual([1, 'ETWIN_REPO_PASSWORD']);
    }, 120_000);
  });
}
