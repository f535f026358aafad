#!/usr/bin/env node
// Bundles the CLI (dist/cli/main.js and every module it imports, dynamically too) into
// dist/cli-bundle/: the entry main.cjs plus one chunk per dynamic import, so that a command loads
// a few files instead of ~300. CommonJS (.cjs: the package is "type": "module"), so that
// dist/cli/twinfs.cjs can compile it through vm.Script with a V8 code cache (Node 20 caches no ES
// module; docs/architecture.md "The command's start"). Node 20 resolves an ES module with a stat and a URL conversion
// each, reads and compiles it separately: a cold `twinfs backup` spent most of its start there
// (docs/benchmarks.md "The cold CLI: one bundle"). dist/cli/twinfs.cjs loads the bundle when it
// is at least as new as dist/cli/main.js.
//
// Not bundled (left to Node's resolution, loaded where the code imports them):
//   native addons and WebAssembly, found by path from their own package: fuse-native,
//     @mongodb-js/zstd, @dstanesc/wasm-chunking-fastcdc-node (all CommonJS: the bundle requires
//     them);
//   pino and pino-pretty (transports in worker threads, found by path);
//   what only the server or a plugin loads: prom-client, ajv, tar-stream, uplot, @aws-sdk/*;
//   semver, which the plugin manifest check requires only for a version or range it does not
//   answer itself (src/plugins/manifest.ts).
// yargs and yargs-parser are bundled, but find files of their own from import.meta.url
// (yargs its locales and, two levels above its node_modules, the package.json whose version
// --version prints; yargs-parser a require for config files): in their modules
// import.meta.url is the URL of the module's own file, relative to the bundle, as it was
// before bundling, and yargs's one import.meta.resolve (a config's `extends`) a
// require.resolve from that file. In the rest of the bundle rolldown writes import.meta.url
// as the URL of __filename.
// The bundle lives two levels below the package root like every dist/X/ module, so paths built
// from import.meta.url ('../..' to the root, native/posix/build, plugins/) stay right; the
// repository's worker is dist/repository/blob-worker.js, unbundled, found from either place.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { rolldown } from 'rolldown';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'dist', 'cli-bundle');
const EXTERNAL = [
  'fuse-native',
  '@mongodb-js/zstd',
  '@dstanesc/wasm-chunking-fastcdc-node',
  'pino',
  'pino-pretty',
  'prom-client',
  'ajv',
  'tar-stream',
  'uplot',
  '@aws-sdk',
  'semver',
];
const OWN_URL = /[\\/]node_modules[\\/](yargs|yargs-parser)[\\/]/;

/** import.meta.url in OWN_URL's modules: their file's URL, relative to the bundle's file. */
const ownUrl = {
  name: 'own-import-meta-url',
  transform(code, id) {
    if (!OWN_URL.test(id) || !code.includes('import.meta.')) return null;
    const rel = path.relative(OUT, id).split(path.sep).join('/');
    const own = `new URL(${JSON.stringify(rel)}, import.meta.url).href`;
    return code
      .replaceAll('import.meta.url', own)
      .replaceAll(
        'import.meta.resolve(',
        `((s) => require('node:url').pathToFileURL(require('node:module').createRequire(${own}).resolve(s)).href)(`,
      );
  },
};

/**
 * string-width (yargs's help layout) builds an Intl.Segmenter when it is loaded: the first one
 * loads ICU's break data, 10–35 ms of every start, for help text that a command renders only
 * when asked. In the bundle it is built on the first segment() call instead.
 */
const lazySegmenter = {
  name: 'lazy-segmenter',
  transform(code, id) {
    if (!/[\\/]node_modules[\\/](.+[\\/])?string-width[\\/]/.test(id)) return null;
    const eager = 'const segmenter = new Intl.Segmenter();';
    if (!code.includes(eager)) return null;
    return code.replace(
      eager,
      'let built; const segmenter = { segment: (s) => (built ??= new Intl.Segmenter()).segment(s) };',
    );
  },
};

/**
 * string-width's `/^\p{RGI_Emoji}$/v` (a property of strings: V8 builds the set of every emoji
 * sequence from ICU when the literal is evaluated) cost ~195 million instructions of every
 * start, a seventh of a no-change backup's, for the width of an emoji in help text. In the
 * bundle it is built on its first test() instead (test() is its only use).
 */
const lazyEmojiRegex = {
  name: 'lazy-emoji-regex',
  transform(code, id) {
    if (!/[\\/]node_modules[\\/](.+[\\/])?string-width[\\/]/.test(id)) return null;
    const eager = 'const rgiEmojiRegex = /^\\p{RGI_Emoji}$/v;';
    if (!code.includes(eager)) return null;
    // A function: the replacement holds `$'`, which a replacement string would expand.
    return code.replace(
      eager,
      () =>
        "let rgiBuilt; const rgiEmojiRegex = { test: (s) => (rgiBuilt ??= new RegExp('^\\\\p{RGI_Emoji}$', 'v')).test(s) };",
    );
  },
};

/**
 * ws's client loads node's https and tls modules when it is loaded (2–25 ms of a start), for
 * wss:// only. In the bundle they are required on the first wss:// connection instead.
 */
const lazyTls = {
  name: 'lazy-tls',
  transform(code, id) {
    if (!/[\\/]node_modules[\\/]ws[\\/]lib[\\/]websocket\.js$/.test(id)) return null;
    const https = "const https = require('https');";
    const tls = "const tls = require('tls');";
    if (!code.includes(https) || !code.includes(tls)) return null;
    return code
      .replace(https, "const https = { get request() { return require('https').request; } };")
      .replace(tls, "const tls = { connect: (options) => require('tls').connect(options) };");
  },
};

/**
 * ws tries `require('bufferutil')` (an optional addon for masking large frames) when it is
 * loaded, on a Node without http.websocketMask (Node 20): twinfs does not depend on it, so the
 * require fails after a search of every node_modules folder up to the root and the global ones,
 * 2–6 ms of every start that connects (a failed resolution and its error). In the bundle ws
 * masks in JavaScript, as it does whenever bufferutil is missing; the control channel's
 * messages are small.
 */
const noBufferUtil = {
  name: 'no-bufferutil',
  transform(code, id) {
    if (!/[\\/]node_modules[\\/]ws[\\/]lib[\\/]buffer-util\.js$/.test(id)) return null;
    const probe = '} /* istanbul ignore else  */ else if (!process.env.WS_NO_BUFFER_UTIL) {';
    if (!code.includes(probe)) return null;
    return code.replace(probe, '} /* istanbul ignore else  */ else if (false) {');
  },
};

/**
 * yargs's platform shim imports node's assert for two checks it makes on every parse
 * (strictEqual, notStrictEqual): loading assert (and its error classes and colours) cost ~3 ms
 * of every start. In the bundle the checks compare with Object.is, as assert does, and call
 * assert, loaded then, only to throw its AssertionError when one fails.
 */
const lazyAssert = {
  name: 'lazy-assert',
  transform(code, id) {
    if (!/[\\/]node_modules[\\/]yargs[\\/]lib[\\/]platform-shims[\\/]esm\.mjs$/.test(id)) return null;
    const eager = "import { notStrictEqual, strictEqual } from 'assert'";
    if (!code.includes(eager)) return null;
    return code.replace(
      eager,
      "const notStrictEqual = (a, b, m) => { if (Object.is(a, b)) require('assert').notStrictEqual(a, b, m); }; const strictEqual = (a, b, m) => { if (!Object.is(a, b)) require('assert').strictEqual(a, b, m); }",
    );
  },
};

/**
 * The import() of a specifier known only when it runs (a plugin's main file) stays an import()
 * in the bundle. Node 20's V8 drops a script's dynamic-import callback when it deserializes the
 * script from a code cache ("A dynamic import callback was not specified"), so in the bundle it
 * calls the import function dist/cli/twinfs.cjs (compiled by Node, never from the cache) puts
 * on globalThis, and a plain import() where nothing did.
 */
const hostImport = {
  name: 'host-import',
  transform(code, id) {
    if (/[\\/]node_modules[\\/]/.test(id)) return null;
    const dynamic = /\bimport\((?!\s*['"`])/g;
    if (!dynamic.test(code)) return null;
    return code.replace(dynamic, "(globalThis[Symbol.for('twinfs.import')] ?? ((u) => import(u)))(");
  },
};

const external = (id) => id.startsWith('node:') || EXTERNAL.some((e) => id === e || id.startsWith(`${e}/`));

fs.rmSync(OUT, { recursive: true, force: true });
const PLUGINS = [ownUrl, lazySegmenter, lazyEmojiRegex, lazyTls, noBufferUtil, lazyAssert, hostImport];

/**
 * The built-in plugins the bundle carries (src/cli/bundled-import.cts): each one's main file
 * becomes an entry chunk, plugin-NAME.cjs, and an import() of that file by the plugin host
 * requires the chunk while the plugin's files are the ones bundled, instead of loading them
 * through Node's ES module loader (~10 ms of a `dir:` backup's start). Only plugins that import
 * nothing but node's built-in modules and their own files, and do not use import.meta.
 */
const BUNDLED_PLUGINS = ['dir'];
const pluginMain = (name) => {
  const dir = path.join(ROOT, 'plugins', name);
  return path.join(dir, JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).main);
};

const bundle = await rolldown({
  input: {
    main: path.join(ROOT, 'dist', 'cli', 'main.js'),
    ...Object.fromEntries(BUNDLED_PLUGINS.map((name) => [`plugin-${name}`, pluginMain(name)])),
  },
  platform: 'node',
  cwd: ROOT,
  external,
  plugins: PLUGINS,
  onLog(level, log, handler) {
    // A module both imported and dynamically imported stays in its static chunk: expected.
    if (log.code === 'INEFFECTIVE_DYNAMIC_IMPORT') return;
    // The plugins' changes keep every line (and the columns before them): the map holds.
    if (log.code === 'SOURCEMAP_BROKEN' && PLUGINS.some((p) => p.name === log.plugin)) return;
    handler(level, log);
  },
});
const { output } = await bundle.write({
  dir: OUT,
  format: 'cjs',
  entryFileNames: '[name].cjs',
  chunkFileNames: '[name]-[hash].cjs',
  sourcemap: true,
  // Without the modules' doc comments (legal ones kept): they were a third of a backup's
  // largest chunk, read into a string at every start, copied again by Module.wrap and scanned
  // past by every lazily compiled function. Stack traces point into the bundle either way;
  // the source maps lead back to the sources, comments included.
  comments: { legal: true, annotation: false, jsdoc: false },
});
await bundle.close();

/**
 * dist/cli-bundle/bundled-imports.json: for each bundled plugin's main file (its path below the
 * package root) the chunk to require and the SHA-256 of every source file in it, which
 * src/cli/bundled-import.cts compares with the files on disk before it uses the chunk.
 */
const rel = (file) => path.relative(ROOT, file).split(path.sep).join('/');
const imports = {};
for (const name of BUNDLED_PLUGINS) {
  const chunk = output.find((c) => c.type === 'chunk' && c.isEntry && c.name === `plugin-${name}`);
  if (!chunk) throw new Error(`bundle-cli: no entry chunk for the plugin ${name}`);
  const own = path.join(ROOT, 'plugins', name) + path.sep;
  const sources = {};
  for (const id of chunk.moduleIds) {
    // A plugin's chunk holds its own files only: anything else (shared with the CLI, from
    // node_modules) would be code the check of its files does not cover.
    if (!id.startsWith(own)) throw new Error(`bundle-cli: plugin ${name}'s chunk holds ${id}`);
    sources[rel(id)] = createHash('sha256').update(fs.readFileSync(id)).digest('hex');
  }
  imports[rel(pluginMain(name))] = { chunk: chunk.fileName, sources };
  // The plugin's modules ran in strict mode as ES modules: so does their chunk (the bundle's
  // CommonJS has no "use strict"). On the first line, before generated code: the map's lines hold.
  const file = path.join(OUT, chunk.fileName);
  fs.writeFileSync(file, `"use strict";${fs.readFileSync(file, 'utf8')}`);
}
fs.writeFileSync(
  path.join(OUT, 'bundled-imports.json'),
  `${JSON.stringify({ version: 1, imports }, null, 2)}\n`,
);

/**
 * Every character outside ASCII written as a \uXXXX escape (one per UTF-16 unit: a surrogate
 * pair as two, which strings, templates, regular expressions, `u` ones included, and comments
 * read as before; the bundle has no identifier outside ASCII and no String.raw of one). A file
 * with one non-ASCII character (an arrow in a message, a dash in a comment) is read by Node as
 * UTF-8 into a two-byte string and scanned by V8 as one: reading a no-change backup's chunks
 * took 3 ms of its start that way, 1.5 ms in ASCII. The source maps' columns after an escaped
 * character on its line are off by 5 a character; their lines hold.
 */
for (const name of fs.readdirSync(OUT)) {
  if (!name.endsWith('.cjs')) continue;
  const file = path.join(OUT, name);
  const code = fs.readFileSync(file, 'utf8');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the range is what is matched.
  const ascii = code.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (ascii !== code) fs.writeFileSync(file, ascii);
}

/**
 * Every bundle file written as CommonJS's function wrapper called at once:
 *   (function (exports, require, module, __filename, __dirname) {
 *   ...the chunk...
 *   }).call(this, exports, require, module, __filename, __dirname);
 * Loaded by Node's own CommonJS loader (no code cache, a test's require), that runs the chunk
 * with the arguments Node's wrapper has, `this` the module's exports, as before. dist/cli/twinfs.cjs
 * compiles the file's text up to the call, the function itself, as a slice of the text Node read:
 * the wrapper Module.wrap put around the text (a concatenation V8 copied into a flat string
 * before compiling, the size of the bundle's files a start again: ~225 page faults) is not
 * needed. The wrapper's line replaces the shebang of main.cjs (never run as a program:
 * dist/cli/twinfs.cjs requires it) or comes before the first line, the map moved a line down.
 * src/cli/twinfs.cts (WRAP_OPEN, WRAP_CLOSE, WRAP_CALL) recognises exactly this text.
 */
const WRAP_OPEN = '(function (exports, require, module, __filename, __dirname) {';
const WRAP_END = '\n})\n.call(this, exports, require, module, __filename, __dirname);\n';
for (const name of fs.readdirSync(OUT)) {
  if (!name.endsWith('.cjs')) continue;
  const file = path.join(OUT, name);
  const code = fs.readFileSync(file, 'utf8');
  if (code.startsWith('#!')) {
    fs.writeFileSync(file, `${WRAP_OPEN}${code.slice(code.indexOf('\n'))}${WRAP_END}`);
    continue;
  }
  fs.writeFileSync(file, `${WRAP_OPEN}\n${code}${WRAP_END}`);
  const mapFile = `${file}.map`;
  if (fs.existsSync(mapFile)) {
    const map = JSON.parse(fs.readFileSync(mapFile, 'utf8'));
    map.mappings = `;${map.mappings}`;
    fs.writeFileSync(mapFile, JSON.stringify(map));
  }
}

/**
 * The installed command's launcher: the head of dist/cli/twinfs.cjs (the package's bin) becomes
 * a shell script whose second line, a comment to JavaScript, moves NODE_EXTRA_CA_CERTS aside
 * into TWINFS_NODE_EXTRA_CA_CERTS and runs the file with node, found on the PATH as
 * `#!/usr/bin/env node` found it. Node 20 builds its whole root certificate store and parses
 * the file NODE_EXTRA_CA_CERTS names before any script runs (~30 ms of every start on a machine
 * that names its system bundle there); only TLS needs them, and src/cli/extra-ca-certs.cts
 * gives them back to this process's TLS and the variable to its children (docs/architecture.md
 * "What a command's start no longer pays"). Not moved under a NODE_OPTIONS with
 * --use-openssl-ca (OpenSSL's store, not Node's bundled one, is then the default). Node reads
 * a first line starting with `#!` as a comment: `node dist/cli/twinfs.cjs` runs as before,
 * paying the start. The source map gains the line.
 * The launcher is scripts/cli-launcher.sh; its second line must stay one line (the comment).
 */
const ENTRY = path.join(ROOT, 'dist', 'cli', 'twinfs.cjs');
const SHEBANG = '#!/usr/bin/env node\n';
// Two lines: the shebang and the shell line (scripts/cli-launcher.sh).
const LAUNCHER = fs.readFileSync(path.join(ROOT, 'scripts', 'cli-launcher.sh'), 'utf8');
const entry = fs.readFileSync(ENTRY, 'utf8');
if (entry.startsWith(SHEBANG)) {
  fs.writeFileSync(ENTRY, LAUNCHER + entry.slice(SHEBANG.length));
  const mapFile = `${ENTRY}.map`;
  if (fs.existsSync(mapFile)) {
    const map = JSON.parse(fs.readFileSync(mapFile, 'utf8'));
    map.mappings = `;${map.mappings}`;
    fs.writeFileSync(mapFile, JSON.stringify(map));
  }
}
