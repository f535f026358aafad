// The bundle's import() of a file it carries a copy of (docs/architecture.md "The command's start:
// one bundle"). scripts/bundle-cli.mjs bundles the built-in plugins it lists (the `dir` target's)
// into CommonJS chunks of dist/cli-bundle/ and writes dist/cli-bundle/bundled-imports.json: for
// each plugin's main file (its path below the package root) the chunk and the SHA-256 of every
// source file the chunk was built from. Node 20 loads an ES module through its ES module loader
// (~20 of its own modules compiled at the first import, the module graph resolved and read with
// a stat and a URL conversion per file) and reads every named export of each built-in module
// the plugin imports (the getters of node:fs and node:crypto load node's file streams and Web
// Crypto): ~10 ms of a no-change backup's start, whose only ES modules were the `dir` plugin's
// two files. An import() of such a main file requires its chunk instead, from the code cache
// like every bundle file, when every source file on disk is byte for byte the one bundled (a
// plugin edited, replaced or partly missing is imported from disk as before); its exports are
// the module's (activate, deactivate).
import type * as FsT from 'node:fs';
import type * as PathT from 'node:path';

/** dist/cli-bundle/bundled-imports.json, as scripts/bundle-cli.mjs writes it. */
interface BundledImports {
  version: 1;
  /** By main file (a path below the package root, `/`-separated). */
  imports: Record<string, { chunk: string; sources: Record<string, string> }>;
}

/**
 * The import function of the bundle: `fallback(url)` (a real import()) for every URL but a
 * bundled main file whose sources are unchanged, whose chunk is required instead. Each main file
 * is checked once per process (what import() would do: a module is evaluated once).
 */
export function bundledImporter(
  root: string,
  bundleDir: string,
  fallback: (url: string) => Promise<unknown>,
): (url: string) => Promise<unknown> {
  const fs = require('node:fs') as typeof FsT;
  const path = require('node:path') as typeof PathT;
  let table: BundledImports['imports'] | undefined;
  const chunks = new Map<string, string | undefined>();
  /** The chunk that stands for this URL's file, or undefined. */
  const chunkFor = (url: string): string | undefined => {
    if (!url.startsWith('file:')) return undefined;
    let file: string;
    try {
      file = (require('node:url') as typeof import('node:url')).fileURLToPath(url);
    } catch {
      return undefined;
    }
    const rel = path.relative(root, file).split(path.sep).join('/');
    if (chunks.has(rel)) return chunks.get(rel);
    table ??= readTable(fs, path.join(bundleDir, 'bundled-imports.json'));
    const entry = Object.hasOwn(table, rel) ? table[rel] : undefined;
    const chunk = entry && unchanged(fs, root, entry.sources) ? path.join(bundleDir, entry.chunk) : undefined;
    chunks.set(rel, chunk);
    return chunk;
  };
  return (url) => {
    const chunk = chunkFor(url);
    if (!chunk) return fallback(url);
    // A throw of the module's body rejects, as an import() does.
    return new Promise((resolve) => resolve(require(chunk)));
  };
}

/** The table, or none when the bundle has no readable one (an older build). */
function readTable(fs: typeof FsT, file: string): BundledImports['imports'] {
  try {
    const t = JSON.parse(fs.readFileSync(file, 'utf8')) as BundledImports;
    return t?.version === 1 && t.imports && typeof t.imports === 'object' ? t.imports : {};
  } catch {
    return {};
  }
}

/** Whether every source file (path below root: SHA-256, hex) is on disk with that content. */
function unchanged(fs: typeof FsT, root: string, sources: Record<string, string>): boolean {
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const names = Object.keys(sources);
  if (names.length === 0) return false;
  for (const name of names) {
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(`${root}/${name}`);
    } catch {
      return false;
    }
    if (createHash('sha256').update(bytes).digest('hex') !== sources[name]) return false;
  }
  return true;
}
