import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import type { BackupTarget } from '../../src/backup-peer/target.js';
import { PluginHost, type PluginHostOptions } from '../../src/plugins/plugin-host.js';
import type { RepositoryTarget } from '../../src/repository/repository-target.js';
import { type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';

/** What fixture plugins write to: they run in this process, so a global is the simplest channel. */
export interface Trace {
  events: string[];
}

declare global {
  var __twinfsPluginTrace: Trace | undefined;
}

export function trace(): Trace {
  globalThis.__twinfsPluginTrace ??= { events: [] };
  return globalThis.__twinfsPluginTrace;
}

export interface PluginSpec {
  name: string;
  /** Merged over a valid manifest (engines ^1.0.0, main index.js). */
  manifest?: Record<string, unknown>;
  /** The body of index.js (an ES module). */
  code: string;
}

/** A temporary plugin folder tree and hosts over it, all removed by cleanup(). */
export class PluginSandbox {
  private constructor(readonly root: string) {}
  private readonly hosts: PluginHost[] = [];

  static async create(): Promise<PluginSandbox> {
    return new PluginSandbox(await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-plugins-')));
  }

  get storageRoot(): string {
    return path.join(this.root, 'state');
  }

  /** Writes a plugin into `dir` (relative to the sandbox, default 'plugins'); returns its folder. */
  async write(spec: PluginSpec, dir = 'plugins'): Promise<string> {
    const folder = path.join(this.root, dir, spec.name);
    await fsp.mkdir(folder, { recursive: true });
    const manifest = {
      name: spec.name,
      version: '1.0.0',
      main: 'index.js',
      type: 'module',
      engines: { twinfs: '^1.0.0' },
      activationEvents: ['onStartup'],
      ...spec.manifest,
    };
    await fsp.writeFile(path.join(folder, 'package.json'), JSON.stringify(manifest, null, 2));
    await fsp.writeFile(path.join(folder, 'index.js'), spec.code);
    return folder;
  }

  /** A discovered host over the sandbox's plugin folders. */
  async host(o: Omit<Partial<PluginHostOptions>, 'dirs'> & { dirs?: string[] } = {}): Promise<PluginHost> {
    const host = new PluginHost({
      storageRoot: this.storageRoot,
      activationTimeoutMs: 2000,
      targetOpTimeoutMs: 2000,
      log: () => undefined,
      ...o,
      dirs: (o.dirs ?? ['plugins']).map((d) => ({ dir: path.join(this.root, d), source: 'cli' as const })),
    });
    await host.discover();
    this.hosts.push(host);
    return host;
  }

  async cleanup(): Promise<void> {
    for (const h of this.hosts) await h.dispose().catch(() => undefined);
    await fsp.rm(this.root, { recursive: true, force: true });
  }
}

/** Source of a plugin that records its lifecycle in the trace under `tag`. */
export function tracingPlugin(tag: string, body = ''): string {
  return `
const t = (globalThis.__twinfsPluginTrace ??= { events: [] });
export function activate(context) {
  t.events.push('activate:${tag}');
  context.subscriptions.push({ dispose: () => t.events.push('dispose1:${tag}') });
  context.subscriptions.push({ dispose: () => t.events.push('dispose2:${tag}') });
  ${body}
}
export function deactivate() {
  t.events.push('deactivate:${tag}');
}
`;
}

/** A minimal in-memory target provider source (enough for isolation tests), optionally misbehaving. */
export function memoryTargetPlugin(
  id: string,
  putFile = 'async () => ({ hash: "", bytes: 0 })',
  onActivate = '',
): string {
  return `
export function activate(context) {
  ${onActivate}
  const api = context.twinfs;
  context.subscriptions.push(api.registerBackupTarget('${id}', {
    async open(location) {
      return {
        id: '${id}', spec: '${id}:' + location,
        capabilities: { rangedReads: false, dedup: false, atomicRename: true, maxConcurrency: 1 },
        async beginSnapshot(meta) {
          return {
            snapshotId: meta.snapshotId,
            putFile: ${putFile},
            async reuseFile() { throw api.errors.notFound('nothing to reuse'); },
            async putDir() {}, async putSymlink() {}, async commit() {}, async abort() {},
          };
        },
        async listSnapshots() { return []; },
        async readManifest(id) { throw api.errors.notFound('no snapshot ' + id); },
        async openFile(id) { throw api.errors.notFound('no snapshot ' + id); },
        async stat(id) { throw api.errors.notFound('no snapshot ' + id); },
        async deleteSnapshot() {},
        async close() {},
      };
    },
  }));
}
`;
}

const DIR_PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

/**
 * The shared setup of the dir plugin's repository tests: the plugin loaded once in a real host
 * for the describe block, and per test a scratch folder (`tmp()`), targets opened through the
 * plugin's provider (`open()`) and any extra clean-up (`defer()`), all undone after each test:
 * targets closed, deferred steps run in order, the folder removed, TWINFS_PASSWORD cleared.
 * Call it inside a describe block (it registers the hooks there).
 */
export function dirRepositoryFixture(prefix = 'twinfs-dir-') {
  let plugin: LoadedPlugin | undefined;
  let dir: string | undefined;
  const opened: BackupTarget[] = [];
  const deferred: (() => unknown)[] = [];
  beforeAll(async () => {
    plugin = await loadTargetPlugin(DIR_PLUGIN);
  });
  afterAll(async () => {
    await plugin?.dispose();
  });
  afterEach(async () => {
    delete process.env.TWINFS_PASSWORD;
    for (const t of opened.splice(0)) await t.close().catch(() => undefined);
    for (const step of deferred.splice(0)) await step();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
    dir = undefined;
  });
  return {
    /** A new scratch folder for this test (removed after it). */
    async tmp(): Promise<string> {
      dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
      return dir;
    },
    /** Opens `dir:LOCATION` through the plugin's provider; `create` as `twinfs backup` passes it. */
    async open(spec: string, create = true): Promise<RepositoryTarget> {
      if (!plugin) throw new Error('dirRepositoryFixture: the plugin is not loaded yet');
      const provider = await plugin.host.getTargetProvider('dir');
      const t = (await provider.open(spec.slice(4), { create })) as RepositoryTarget;
      opened.push(t);
      return t;
    },
    /** A clean-up step for this test, run after its targets are closed. */
    defer(step: () => unknown): void {
      deferred.push(step);
    },
  };
}
