import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { ROOT } from '../helpers/server.js';

/**
 * What scripts/bundle-cli.mjs changes in the CLI's bundle beyond bundling (docs/architecture.md
 * "The command's start"): string-width's emoji regular expression built on first use, not at
 * every start, and every file written in ASCII; the CLI reads and prints as it does unbundled.
 */
const BUNDLE = path.join(ROOT, 'dist/cli-bundle');

/** The bundle file holding yargs's platform shim (its chunk name carries a hash). */
async function shimChunk(): Promise<string> {
  for (const f of await fsp.readdir(BUNDLE))
    if (
      f.endsWith('.cjs') &&
      (await fsp.readFile(path.join(BUNDLE, f), 'utf8')).includes('// node_modules/string-width/')
    )
      return path.join(BUNDLE, f);
  throw new Error('no bundle file holds string-width');
}

describe('the CLI bundle', () => {
  it("builds string-width's emoji expression on first use, and still measures emoji as two columns", async () => {
    const file = await shimChunk();
    const src = await fsp.readFile(file, 'utf8');
    // The expression V8 builds from ICU when the literal is evaluated (~195 M instructions).
    expect(src).not.toMatch(/=\s*\/\^\\p\{RGI_Emoji\}\$\/v/);
    const { esm_default: shim } = createRequire(import.meta.url)(file) as {
      esm_default: { stringWidth: (s: string) => number };
    };
    expect(shim.stringWidth('abc')).toBe(3);
    expect(shim.stringWidth('\u{1F44D}')).toBe(2);
    expect(shim.stringWidth('a\u{1F468}\u200D\u{1F469}\u200D\u{1F467}b')).toBe(4);
    expect(shim.stringWidth('\u00e9t\u00e9')).toBe(3);
  });

  it('is ASCII, and prints what the separate modules print', async () => {
    for (const f of await fsp.readdir(BUNDLE)) {
      if (!f.endsWith('.cjs')) continue;
      const bytes = await fsp.readFile(path.join(BUNDLE, f));
      expect(
        bytes.findIndex((b) => b > 0x7f),
        f,
      ).toBe(-1);
    }
    // A message with a character outside ASCII, bundled and from dist/cli/main.js.
    const args = ['forget', '--target', 'dir:/nonexistent', '--keep-last', '0'];
    const bundled = await runCli(args);
    const separate = await runCli(args, { env: { ...process.env, TWINFS_NO_BUNDLE: '1' } });
    expect(bundled.stderr).toContain('--keep-last must be a whole number \u2265 1');
    expect(bundled.stderr).toBe(separate.stderr);
    expect(bundled.code).toBe(separate.code);
  });

  it("is CommonJS's function wrapper called at once, file by file, and runs so under Node's own loader", async () => {
    // dist/cli/twinfs.cjs compiles the text up to `.call` as the module's function, a slice of
    // the string Node read, instead of Module.wrap's concatenation, which V8 copies to compile.
    const open = '(function (exports, require, module, __filename, __dirname) {\n';
    const end = '\n})\n.call(this, exports, require, module, __filename, __dirname);\n';
    const files = (await fsp.readdir(BUNDLE)).filter((f) => f.endsWith('.cjs'));
    expect(files).toContain('main.cjs');
    for (const f of files) {
      const code = await fsp.readFile(path.join(BUNDLE, f), 'utf8');
      expect(code.startsWith(open) && code.endsWith(end), f).toBe(true);
    }
    // Without the code cache the bundle is Node's to compile (its own wrapper around the file's).
    const r = await runCli(['--version'], { env: { ...process.env, TWINFS_CACHE_DIR: 'off' } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('holds no doc comments, only legal ones (scripts/bundle-cli.mjs)', async () => {
    for (const f of await fsp.readdir(BUNDLE)) {
      if (!f.endsWith('.cjs')) continue;
      const code = await fsp.readFile(path.join(BUNDLE, f), 'utf8');
      // A doc comment opens a line (a string holding "/**", picomatch's, does not).
      const doc = [...code.matchAll(/^[ \t]*\/\*\*[\s\S]*?\*\//gm)]
        .map((m) => m[0])
        .filter((c) => !c.includes('@license'));
      expect(doc.slice(0, 3), f).toEqual([]);
    }
    // Stack traces still name the sources through the maps.
    expect(await fsp.readdir(BUNDLE)).toContain('main.cjs.map');
  });
});
