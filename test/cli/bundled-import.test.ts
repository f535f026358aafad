import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, tempDirs } from '../helpers/server.js';

/**
 * The bundle's import() of a built-in plugin it carries (src/cli/bundled-import.cts): the chunk
 * is required while every source file it was built from is on disk unchanged; otherwise the
 * files on disk are imported, as an ES module, as without the bundle. A package laid out as the
 * real one (plugins/NAME below the root, the bundle in dist/cli-bundle/) whose plugin says where
 * it ran from.
 */
type Importer = (url: string) => Promise<{ activate(): string }>;
const { bundledImporter } = createRequire(import.meta.url)(
  path.join(ROOT, 'dist/cli/bundled-import.cjs'),
) as {
  bundledImporter(root: string, bundleDir: string, fallback: (url: string) => Promise<unknown>): Importer;
};

const sha256 = async (file: string) =>
  createHash('sha256')
    .update(await fsp.readFile(file))
    .digest('hex');

describe('a bundled plugin', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let root: string;
  let bundle: string;
  let main: string;
  let helper: string;
  /** The URLs the importer handed to its fallback (a real import()). */
  let imported: string[];
  const importer = () => {
    const calls: string[] = [];
    imported = calls;
    return bundledImporter(root, bundle, (u) => {
      calls.push(u);
      return import(u);
    });
  };

  beforeAll(async () => {
    t = await tempDirs('pkg');
    root = t.dirs.pkg!;
    bundle = path.join(root, 'dist/cli-bundle');
    await fsp.mkdir(path.join(root, 'plugins/p'), { recursive: true });
    await fsp.mkdir(bundle, { recursive: true });
    // The package is an ES module one, as twinfs is: plugins/p/*.js are ES modules.
    await fsp.writeFile(path.join(root, 'package.json'), '{"type":"module"}\n');
    main = path.join(root, 'plugins/p/index.js');
    helper = path.join(root, 'plugins/p/helper.js');
    await fsp.writeFile(
      main,
      "import { where } from './helper.js';\nexport function activate() { return where; }\n",
    );
    await fsp.writeFile(helper, "export const where = 'disk';\n");
    await fsp.writeFile(path.join(bundle, 'plugin-p.cjs'), "exports.activate = () => 'bundle';\n");
    await fsp.writeFile(
      path.join(bundle, 'bundled-imports.json'),
      JSON.stringify({
        version: 1,
        imports: {
          'plugins/p/index.js': {
            chunk: 'plugin-p.cjs',
            sources: {
              'plugins/p/index.js': await sha256(main),
              'plugins/p/helper.js': await sha256(helper),
            },
          },
        },
      }),
    );
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('is required from its chunk while its files are the ones bundled, and imported from disk once one changed', async () => {
    const url = pathToFileURL(main).href;
    const unchanged = importer();
    expect((await unchanged(url)).activate()).toBe('bundle');
    expect(imported).toEqual([]);
    // The same module again, as import() gives it (the file is not read and hashed again).
    await fsp.writeFile(helper, "export const where = 'disk, edited';\n");
    expect((await unchanged(url)).activate()).toBe('bundle');
    // A process that starts now: the edited helper is what runs.
    const edited = importer();
    expect((await edited(url)).activate()).toBe('disk, edited');
    expect(imported).toEqual([url]);
  });

  it('is imported from disk when the bundle names no such file, or has no table', async () => {
    const other = path.join(root, 'plugins/p/other.mjs');
    await fsp.writeFile(other, "export function activate() { return 'other'; }\n");
    const i = importer();
    expect((await i(pathToFileURL(other).href)).activate()).toBe('other');
    expect(imported).toEqual([pathToFileURL(other).href]);
    // No table (a bundle built before it): every import is a real one.
    const bare = path.join(root, 'bare');
    await fsp.mkdir(bare, { recursive: true });
    const calls: string[] = [];
    const noTable = bundledImporter(root, bare, (u) => {
      calls.push(u);
      return import(u);
    });
    expect((await noTable(pathToFileURL(main).href)).activate()).not.toBe('bundle');
    expect(calls).toEqual([pathToFileURL(main).href]);
  });
});
