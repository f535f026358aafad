// The entry of the CLI's start-up snapshot (docs/architecture.md "The start-up snapshot"), run by
// the build, never by a command: `node --snapshot-blob dist/cli-bundle/twinfs.blob
// --build-snapshot dist/cli/snapshot.cjs` (scripts/build-snapshot.mjs). It evaluates the bundle's
// entry and the chunks a backup loads (their module bodies: zod's schemas, yargs, ws, nedb, the
// command table), and V8 writes the heap into the blob. The installed command's launcher starts
// node from the blob when it matches (scripts/cli-launcher.sh); node then runs the function set
// below instead of reading, compiling and evaluating those files: it runs dist/cli/twinfs.cjs as
// the main module, as a start without the blob does, and that entry starts the command from the
// snapshot's modules when they are still those of the bundle on disk (`usable`), else loads the
// bundle as without a snapshot.
//
// What the snapshot builder allows, and how this loader keeps to it (Node 20):
// - Node's CommonJS loader must not have loaded a user module when the snapshot is written: the
//   bundle's files are compiled here (vm.Script, one module object each) and their require()
//   answered by this loader: the bundle's own chunks from here, built-in modules by the
//   builder's require, and at run time (after `start`) everything by Node's own require of the
//   file.
// - Some built-in modules hold native state V8 cannot write (http's parser, net's handles):
//   LAZY ones are a stand-in that loads the module on its first use, at run time; a stand-in
//   used while the snapshot is built fails the build (the launcher then starts without a blob).
// - node:module's createRequire, called by chunks when they are evaluated, gives a require that
//   binds to Node's loader on its first call (at run time).
// - Native addons (zstd, the posix addon, fs-xattr) and packages left out of the bundle are
//   never loaded here: the chunks load them in functions, at run time; a chunk that needed one
//   while evaluated fails the build the same way.
// Nothing of the process's state at build time may leak into a command: the chunks' module
// bodies read no environment, argument, time or random state (test/cli/snapshot.test.ts runs
// commands with and without the snapshot and compares).
// No import or export: the builder runs this file as a script (it gives it no `exports`); the
// block keeps its names out of the other scripts' scope.
{
  type LoadedModule = { exports: unknown; id: string; filename: string; loaded: boolean };
  type Req = ((id: string) => unknown) & { resolve: (id: string, o?: unknown) => string };
  type NodeModule = typeof import('node:module') & {
    new (id: string, parent?: unknown): NodeJS.Module;
    _cache: Record<string, NodeJS.Module>;
    _nodeModulePaths(dir: string): string[];
    wrap(code: string): string;
  };

  const fs = require('node:fs') as typeof import('node:fs');
  const path = require('node:path') as typeof import('node:path');
  const vm = require('node:vm') as typeof import('node:vm');
  const Module = require('node:module') as NodeModule;
  const v8 = require('node:v8') as typeof import('node:v8');

  const BUNDLE_DIR = path.join(__dirname, '..', 'cli-bundle');
  /**
   * The chunks evaluated besides main.cjs and its static imports: those a `twinfs backup` loads
   * (rolldown names a chunk after its first module, then a hash). A chunk not listed is loaded
   * at run time from its file, with the code cache (TWINFS_DEBUG_SNAPSHOT=1 names every one).
   */
  const PRELOAD = [
    'targets-',
    'backup-run-',
    'lifecycle-',
    'repository-',
    'async-',
    'native-',
    'peer-config-',
    'plugins-',
    'manifest-',
  ];
  /** Built-in modules V8 cannot write into a snapshot once loaded (native handles, parsers). */
  const LAZY = new Set([
    'http',
    'https',
    'http2',
    'tls',
    'net',
    'zlib',
    'dgram',
    'dns',
    'child_process',
    'worker_threads',
    'inspector',
  ]);

  const modules = new Map<string, LoadedModule>();
  let running = false;

  /** Node's require for a module's file (run time only). */
  const realRequires = new Map<string, NodeJS.Require>();
  function realRequire(filename: string): NodeJS.Require {
    if (!running) throw new Error(`snapshot: Node's require used while the snapshot is built (${filename})`);
    let r = realRequires.get(filename);
    if (!r) realRequires.set(filename, (r = Module.createRequire(filename)));
    return r;
  }

  /**
   * The names each LAZY module has in this very node (scripts/build-snapshot.mjs asks a process of
   * the same binary): a name it does not have is answered `undefined` while the snapshot is built,
   * as it would be at run time (ws looks for http's websocketMask, which Node 20 has not).
   */
  const lazyKeys = JSON.parse(process.env.TWINFS_SNAPSHOT_LAZY_KEYS ?? '{}') as Record<string, string[]>;

  /** A built-in module loaded on its first use, at run time. */
  function lazyModule(id: string, from: string): object {
    let real: object | undefined;
    const name = id.startsWith('node:') ? id.slice(5) : id;
    const get = (): object => {
      if (!running) throw new Error(`snapshot: ${id} used while the snapshot is built (${from})`);
      real ??= realRequire(from)(id) as object;
      return real;
    };
    const absent = (k: string | symbol) =>
      !running && typeof k === 'string' && lazyKeys[name] && !lazyKeys[name].includes(k);
    return new Proxy(
      {},
      {
        get: (_t, k) => (absent(k) ? undefined : Reflect.get(get(), k)),
        has: (_t, k) => Reflect.has(get(), k),
        ownKeys: () => Reflect.ownKeys(get()),
        getOwnPropertyDescriptor: (_t, k) => {
          const d = Reflect.getOwnPropertyDescriptor(get(), k);
          return d && { ...d, configurable: true };
        },
      },
    );
  }

  /** node:module for the bundle: createRequire binds to Node's loader on the first call. */
  const moduleForBundle: object = (() => {
    const m: Record<string, unknown> = {};
    for (const k of Object.getOwnPropertyNames(Module)) {
      if (k === 'length' || k === 'name' || k === 'prototype' || k === 'createRequire') continue;
      Object.defineProperty(m, k, {
        get: () => (Module as unknown as Record<string, unknown>)[k],
        enumerable: true,
      });
    }
    Object.defineProperty(m, 'createRequire', {
      enumerable: true,
      value: (from: string | URL) => {
        const filename =
          typeof from === 'string' && !from.startsWith('file:')
            ? from
            : require('node:url').fileURLToPath(from);
        const r = ((id: string) => realRequire(filename)(id)) as Req;
        r.resolve = (id, o) => realRequire(filename).resolve(id, o as { paths?: string[] });
        return r;
      },
    });
    return m;
  })();

  /** The require() of a bundle file. */
  function requireFor(filename: string): Req {
    const r = ((id: string) => {
      if (id.startsWith('./') && id.endsWith('.cjs')) return load(path.join(BUNDLE_DIR, id.slice(2)));
      if (running) return realRequire(filename)(id);
      const name = id.startsWith('node:') ? id.slice(5) : id;
      if (name === 'module') return moduleForBundle;
      if (LAZY.has(name)) return lazyModule(id, filename);
      // The builder's require answers built-in modules only: anything else fails the build.
      return require(name);
    }) as Req;
    r.resolve = (id, o) => realRequire(filename).resolve(id, o as { paths?: string[] });
    return r;
  }

  /** Evaluates a bundle file (once), as Node's CommonJS loader would. */
  function load(filename: string): unknown {
    const known = modules.get(filename);
    if (known) return known.exports;
    const m: LoadedModule = { exports: {}, id: filename, filename, loaded: false };
    modules.set(filename, m);
    const content = fs.readFileSync(filename, 'utf8');
    // The shebang line of the entry is a comment inside the function wrapper (columns kept).
    const source = content.startsWith('#!') ? `//${content.slice(2)}` : content;
    const fn = vm.runInThisContext(Module.wrap(source), { filename });
    fn.call(m.exports, m.exports, requireFor(filename), m, filename, BUNDLE_DIR);
    m.loaded = true;
    return m.exports;
  }

  /** What the command's entry asks of the snapshot (dist/cli/twinfs.cjs). */
  type Snapshot = {
    /** Set by main.cjs while it is evaluated: runs the command. */
    start?: () => void;
    bundleDir: string;
    /** Every evaluated file: name, size, mtime (ms) when the snapshot was built. */
    files: Array<[string, number, number]>;
    /** Why the snapshot's modules are not those of the bundle at bundleDir now, or undefined. */
    stale(bundleDir: string): string | undefined;
    /** Starts the command from the snapshot's modules (after stale() said nothing). */
    run(): void;
  };

  const snapshot: Snapshot = {
    bundleDir: BUNDLE_DIR,
    files: [],
    stale(bundleDir) {
      if (bundleDir !== BUNDLE_DIR) return `built for ${BUNDLE_DIR}`;
      if (!this.start) return 'no entry';
      for (const [name, size, mtimeMs] of this.files) {
        let st: import('node:fs').Stats;
        try {
          st = fs.statSync(path.join(BUNDLE_DIR, name));
        } catch {
          return `${name} is gone`;
        }
        if (st.size !== size || st.mtimeMs !== mtimeMs) return `${name} changed`;
      }
      return undefined;
    },
    run() {
      running = true;
      // Chunks loaded from their files from now on (by Node's loader) find these in its cache,
      // as they would have found them loaded: one instance of every module.
      for (const [filename, m] of modules) {
        const mod = new Module(filename, null);
        mod.filename = filename;
        mod.paths = Module._nodeModulePaths(BUNDLE_DIR);
        mod.exports = m.exports as NodeJS.Module['exports'];
        mod.loaded = true;
        Module._cache[filename] = mod;
      }
      this.start!();
    },
  };

  (globalThis as Record<symbol, unknown>)[Symbol.for('twinfs.snapshot')] = snapshot;
  load(path.join(BUNDLE_DIR, 'main.cjs'));
  for (const name of fs.readdirSync(BUNDLE_DIR).sort())
    if (name.endsWith('.cjs') && PRELOAD.some((p) => name.startsWith(p))) load(path.join(BUNDLE_DIR, name));
  for (const filename of modules.keys()) {
    const st = fs.statSync(filename);
    snapshot.files.push([path.basename(filename), st.size, st.mtimeMs]);
  }

  // At run time: dist/cli/twinfs.cjs (process.argv[1], as the launcher passes it) as the main
  // module, through Node's loader, as a start without the blob runs it.
  v8.startupSnapshot.setDeserializeMainFunction(() => {
    // Node makes the script's path absolute when it starts without a snapshot, not from one.
    if (process.argv[1] !== undefined) process.argv[1] = path.resolve(process.argv[1]);
    (Module as unknown as { runMain(): void }).runMain();
  });
}
