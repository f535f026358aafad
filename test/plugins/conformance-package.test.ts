import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sh } from '../helpers/proc.js';
import { ROOT, tempDirs } from '../helpers/server.js';
import { q } from '../repl/fixtures.js';

/**
 * `@twinfs/conformance` as a third party gets it: packed with `npm pack` from
 * packages/conformance, unpacked into a project of its own, and run there by vitest against a
 * plugin folder (the tar target). Nothing is fetched: the project's other dependencies are links
 * to this repository's node_modules.
 */
describe('the conformance package', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let tarball: string;

  beforeAll(async () => {
    t = await tempDirs('packed', 'project');
    const out = execFileSync('npm', ['pack', '--silent', '--pack-destination', t.dirs.packed!], {
      cwd: path.join(ROOT, 'packages/conformance'),
      encoding: 'utf8',
      timeout: 240_000,
    });
    tarball = path.join(t.dirs.packed!, out.trim().split('\n').at(-1)!);
  }, 300_000);

  afterAll(async () => {
    await t?.cleanup();
  });

  it('packs the suite, the harness and the API types, and runs from a project of its own', async () => {
    const list = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).split('\n');
    expect(list).toEqual(
      expect.arrayContaining([
        'package/package.json',
        'package/dist/test/conformance/index.js',
        'package/dist/test/conformance/index.d.ts',
        'package/dist/api/twinfs.d.ts',
      ]),
    );
    const project = t.dirs.project!;
    const nm = path.join(project, 'node_modules');
    await fsp.mkdir(path.join(nm, '@twinfs/conformance'), { recursive: true });
    execFileSync('tar', ['xzf', tarball, '-C', path.join(nm, '@twinfs/conformance'), '--strip-components=1']);
    const manifest = JSON.parse(
      await fsp.readFile(path.join(nm, '@twinfs/conformance/package.json'), 'utf8'),
    );
    for (const dep of [...Object.keys(manifest.dependencies), 'vitest']) {
      await fsp.mkdir(path.dirname(path.join(nm, dep)), { recursive: true }); // @scope/
      await fsp.symlink(path.join(ROOT, 'node_modules', dep), path.join(nm, dep));
    }
    await fsp.writeFile(
      path.join(project, 'package.json'),
      JSON.stringify({ name: 'a-third-party-target', type: 'module', private: true }),
    );
    const plugin = path.join(ROOT, 'plugins/tar');
    await fsp.writeFile(
      path.join(project, 'conformance.test.js'),
      `import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeTargetConformance, loadTargetPlugin } from '@twinfs/conformance';

describeTargetConformance('tar', async () => {
  const plugin = await loadTargetPlugin(${JSON.stringify(plugin)});
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-pack-tar-'));
  const target = await plugin.open('tar:' + dir);
  return {
    target,
    reopen: () => plugin.open('tar:' + dir),
    async cleanup() {
      await target.close();
      await plugin.dispose();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
});
`,
    );
    const r = await sh(
      `cd ${q(project)} && NO_COLOR=1 node node_modules/vitest/vitest.mjs run --reporter=verbose 2>&1`,
      {
        timeoutMs: 240_000,
      },
    );
    expect(r.code, r.stdout).toBe(0);
    const passed = Number(/Tests\s+(\d+) passed/.exec(r.stdout)?.[1]);
    expect(passed, r.stdout).toBeGreaterThan(10);
  }, 300_000);
});
