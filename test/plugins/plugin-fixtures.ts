import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PluginHost, type PluginHostOptions } from '../../src/plugins/plugin-host.js';

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
