import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shOk } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';
import { jsonLines, q, twinfs, writeSlowPlugin } from '../repl/fixtures.js';

/** `twinfs plugins install`: a plugin as people get it, a folder or an `npm pack` tarball. */
describe('twinfs plugins install', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let tarball: string;
  let env: Record<string, string | undefined>;

  beforeAll(async () => {
    t = await tempDirs('src', 'packed', 'installed', 'pstate');
    await writeSlowPlugin(t.dirs.src!);
    const folder = path.join(t.dirs.src!, 'twinfs-test-slow');
    const r = await shOk(`cd ${q(folder)} && npm pack --silent --pack-destination ${q(t.dirs.packed!)}`, {
      timeoutMs: 60_000,
    });
    tarball = path.join(t.dirs.packed!, r.trim().split('\n').at(-1)!);
    env = {
      TWINFS_PLUGIN_PATH: t.dirs.installed!,
      TWINFS_PLUGIN_STATE: t.dirs.pstate!,
      TWINFS_CONFIG: undefined,
    };
  }, 90_000);

  afterAll(async () => {
    await t?.cleanup();
  });

  it('installs a packed plugin into the user plugin folder; the host loads it and runs its command', async () => {
    const r = await twinfs(['plugins', 'install', tarball, '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(jsonLines(r.stdout).at(-1)).toMatchObject({
      name: 'twinfs-test-slow',
      version: '1.0.0',
      dir: path.join(t.dirs.installed!, 'twinfs-test-slow'),
      replaced: false,
    });
    const list = await twinfs(['plugins', 'list', '--json'], { env });
    expect(jsonLines(list.stdout).at(-1)).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'twinfs-test-slow', targets: ['slow'] })]),
    );
    const run = await twinfs(['plugins', 'run', 'slow.hello', 'world'], { env });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/world/);
  }, 90_000);

  it('refuses a second install of the same name unless --force; a folder installs too', async () => {
    const again = await twinfs(['plugins', 'install', tarball], { env });
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(
      /^twinfs: error ETWIN_PLUGIN_DUPLICATE: plugin twinfs-test-slow is already installed/,
    );
    const forced = await twinfs(
      ['plugins', 'install', path.join(t.dirs.src!, 'twinfs-test-slow'), '--force'],
      { env },
    );
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).toMatch(/^installed twinfs-test-slow@1\.0\.0 at .* \(replaced the old one\)$/m);
  }, 90_000);

  it('a folder without a plugin manifest, or no such path: coded errors', async () => {
    const empty = path.join(t.dirs.src!, 'empty');
    await fsp.mkdir(empty);
    const r = await twinfs(['plugins', 'install', empty], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_PLUGIN_MANIFEST: /);
    const n = await twinfs(['plugins', 'install', path.join(t.dirs.src!, 'nope.tgz')], { env });
    expect(n.code).toBe(1);
    expect(n.stderr).toMatch(/^twinfs: error ETWIN_PLUGIN_NOT_FOUND: /);
  }, 90_000);
});
