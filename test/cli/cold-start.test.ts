import { execFileSync } from 'node:child_process';
import { promises as fsp, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { type MirroredVolume, mirroredVolume, ROOT } from '../helpers/server.js';
import { pairedVolume, waitForEvent } from '../mirror-driver/mirror-helpers.js';

/**
 * What a command loads (docs/architecture.md "The command's start"): the installed entry
 * (dist/cli/twinfs.cjs) runs the CLI's bundle, dist/cli-bundle/ (a few files, not the ~100 of
 * dist/ and their ~200 dependencies resolved one by one), and a `dir:` backup loads the `dir`
 * target's plugin only, never the S3 one or the AWS SDK, its second run from the code cache the
 * first wrote as well. Observed from outside: the command runs with a preloaded recorder
 * (test/helpers/record-modules.mjs) that writes down every module resolved.
 */
const RECORDER = path.join(ROOT, 'test/helpers/record-modules.mjs');

/** Runs the command with the recorder; resolves its run and the distinct module URLs it loaded. */
async function recorded(args: string[], dir: string, name: string) {
  const file = path.join(dir, `${name}.modules`);
  const r = await runCli(args, {
    env: {
      ...process.env,
      TWINFS_RECORD_MODULES: file,
      // The bundle's code cache (src/cli/twinfs.cts) of this test alone: the first run of a
      // command writes it, the next compiles from it (and must still load its plugin).
      TWINFS_CACHE_DIR: path.join(dir, 'cache'),
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${RECORDER}`.trim(),
    },
    timeoutMs: 60_000,
  });
  const pairs = (await fsp.readFile(file, 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ') as [string, string]);
  // What the repository's worker threads load: their entry (dist/repository/blob-worker.js, not
  // bundled) and every module imported from there on.
  const worker = new Set([`file://${ROOT}/dist/repository/blob-worker.js`]);
  for (let grown = true; grown; ) {
    grown = false;
    for (const [u, parent] of pairs)
      if (worker.has(parent) && !worker.has(u)) {
        worker.add(u);
        grown = true;
      }
  }
  const urls = [...new Set(pairs.map(([u]) => u))];
  return { r, urls, mainThread: urls.filter((u) => !worker.has(u)) };
}

/** The loaded modules of twinfs itself (dist/), as paths below dist/. */
const ownModules = (urls: string[]) =>
  urls.filter((u) => u.startsWith(`file://${ROOT}/dist/`)).map((u) => u.slice(`file://${ROOT}/dist/`.length));

/**
 * What the bundle no longer loads at a command's start (scripts/bundle-cli.mjs): ws's optional
 * bufferutil searched for and missing, node:assert for yargs's two checks. (A `node:` request,
 * node:readline's of the progress line before, never reaches the resolver: not seen here.)
 */
const startExtras = (urls: string[]) =>
  urls.filter((u) => u === 'missing:bufferutil' || u === 'builtin:assert');

describe('the command loads its bundle, and only what the command needs', () => {
  let v: MirroredVolume;
  let tokenFile: string;
  let url: string;
  beforeAll(async () => {
    v = await mirroredVolume({ extraDirs: ['work'], args: ['--control', '127.0.0.1:0'] });
    const srv = await v.start();
    url = (srv.events.find((e) => e.event === 'mounted') as any).control.url;
    tokenFile = path.join(v.dirs.state!, 'control.token');
    await waitForEvent(srv, pairedVolume, 30_000);
    await fsp.mkdir(path.join(v.dirs.mnt!, 'd'));
    await fsp.writeFile(path.join(v.dirs.mnt!, 'd/a.txt'), 'alpha\n');
    await fsp.writeFile(path.join(v.dirs.mnt!, 'b.bin'), Buffer.alloc(100_000, 7));
  }, 60_000);
  afterAll(async () => {
    await v?.close();
  });

  it('--version runs from dist/cli-bundle, none of the separate modules of dist/', async () => {
    const { r, urls } = await recorded(['--version'], v.dirs.work!, 'version');
    expect(r.code, r.stderr).toBe(0);
    const own = ownModules(urls);
    expect(own).toContain('cli-bundle/main.cjs');
    expect(own.filter((m) => m !== 'cli/twinfs.cjs' && !m.startsWith('cli-bundle/'))).toEqual([]);
    expect(startExtras(urls)).toEqual([]);
  });

  it("a dir: backup, first and unchanged, loads the dir plugin and never the S3 plugin, the AWS SDK, semver or zstd's loader (the unchanged one no zstd at all)", async () => {
    const backup = (name: string) =>
      recorded(
        [
          'backup',
          '--server',
          url,
          '--token-file',
          tokenFile,
          '--target',
          `dir:${path.join(v.dirs.work!, 'target')}`,
          '--catalog',
          path.join(v.dirs.work!, 'catalog'),
          '--json',
        ],
        v.dirs.work!,
        name,
      );
    for (const [name, copied] of [
      ['first', 100_006],
      ['unchanged', 0],
    ] as const) {
      const { r, urls, mainThread } = await backup(name);
      expect(r.code, r.stderr).toBe(0);
      expect(r.last.totals).toMatchObject({ files: 2, copiedBytes: copied });
      // The dir plugin from the bundle's chunk of it (src/cli/bundled-import.cts), its files on
      // disk being the ones bundled: not resolved as ES modules.
      expect(ownModules(mainThread)).toContain('cli-bundle/plugin-dir.cjs');
      expect(urls.filter((u) => u.startsWith(`file://${ROOT}/plugins/dir/`))).toEqual([]);
      expect(urls.filter((u) => u.includes('/plugins/s3/') || u.includes('@aws-sdk'))).toEqual([]);
      // zstd's addon straight from its platform package (src/repository/zstd-binding.ts), not
      // through @mongodb-js/zstd's loader and its diagnostic report, and only by the first
      // backup (it compresses b.bin): the unchanged one writes and reads small objects only,
      // raw zstd frames (src/repository/pack.ts sealObject); the built-in plugins' manifests
      // checked without semver (src/plugins/manifest.ts).
      expect(urls.some((u) => /\/@mongodb-js\/zstd-[^/]+\/[^/]+\.node$/.test(u))).toBe(name === 'first');
      expect(
        urls.filter((u) => u.includes('/@mongodb-js/zstd/') || u.includes('/node_modules/semver/')),
      ).toEqual([]);
      // Besides the bundle: its import() of the plugin (src/cli/bundled-import.cts).
      expect(
        ownModules(mainThread).filter(
          (m) => m !== 'cli/twinfs.cjs' && m !== 'cli/bundled-import.cjs' && !m.startsWith('cli-bundle/'),
        ),
      ).toEqual([]);
      expect(startExtras(mainThread)).toEqual([]);
    }
  }, 120_000);

  it("an unchanged dir: backup never loads node's ES module loader, nor perf_hooks", async () => {
    // Node's own list of the built-in modules it loaded, written at exit by a CommonJS preload
    // (the recorder above is an ES module, which would load the ES module loader itself).
    const list = path.join(v.dirs.work!, 'loaded.txt');
    const preload = path.join(v.dirs.work!, 'loaded.cjs');
    writeFileSync(
      preload,
      `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(list)}, process.moduleLoadList.join('\\n')));`,
    );
    const r = await runCli(
      [
        'backup',
        '--server',
        url,
        '--token-file',
        tokenFile,
        '--target',
        `dir:${path.join(v.dirs.work!, 'target')}`,
        '--catalog',
        path.join(v.dirs.work!, 'catalog'),
        '--json',
      ],
      {
        env: {
          ...process.env,
          TWINFS_CACHE_DIR: path.join(v.dirs.work!, 'cache'),
          NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${preload}`.trim(),
        },
        timeoutMs: 60_000,
      },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.last.totals).toMatchObject({ files: 2, copiedBytes: 0 });
    const loaded = (await fsp.readFile(list, 'utf8')).split('\n');
    // The dir plugin imported from disk loads these (its import(), the ES module namespaces of
    // node:fs and node:crypto); the freeze hooks' timing with the performance global, perf_hooks.
    expect(
      loaded.filter((m) =>
        [
          'NativeModule internal/modules/esm/translators',
          'NativeModule internal/modules/esm/module_job',
          'NativeModule internal/crypto/webcrypto',
          'NativeModule perf_hooks',
        ].includes(m),
      ),
    ).toEqual([]);
  }, 120_000);

  it('the repository requires node:worker_threads only when its first thread starts', () => {
    // Built-in modules required by the bundle never reach the recorder: node's own list of
    // the built-in modules it loaded, from a process that loads the repository and then
    // starts one thread of its pool.
    const script = `
      const { repoWorkers } = await import(${JSON.stringify(`${ROOT}/dist/repository/worker-pool.js`)});
      await import(${JSON.stringify(`${ROOT}/dist/repository/index.js`)});
      const loaded = () => process.moduleLoadList.includes('NativeModule worker_threads');
      const before = loaded();
      const pool = repoWorkers();
      const answer = await pool.run({ op: 'none' }).then(String, (e) => e.message);
      const after = loaded();
      await pool.close();
      console.log(JSON.stringify({ before, answer, after }));`;
    const file = path.join(v.dirs.work!, 'threads.mjs');
    writeFileSync(file, script);
    const out = execFileSync(process.execPath, [file], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(JSON.parse(out)).toEqual({
      before: false,
      answer: 'unknown repository worker request none',
      after: true,
    });
  });
});
