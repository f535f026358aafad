import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BackupTarget } from 'twinfs';
import { PluginHost, type PluginInfo } from '../../src/plugins/plugin-host.js';

export interface LoadedPlugin {
  /** The host running the plugin (for info(), problems, events). */
  readonly host: PluginHost;
  /** Opens `ID:LOCATION` through the host, activating the plugin (onTarget:ID) first. */
  open(spec: string): Promise<BackupTarget>;
  info(): PluginInfo;
  /** Deactivates the plugin and removes the host's temporary storage. */
  dispose(): Promise<void>;
}

export interface LoadPluginOptions {
  /** The plugin's settings (validated against its contributes.configuration). */
  configuration?: Record<string, unknown>;
  activationTimeoutMs?: number;
  targetOpTimeoutMs?: number;
  /** Host log lines (default: dropped). */
  log?: (msg: string) => void;
}

/**
 * Runs one plugin folder in a real plugin host, exactly as `twinfs peer --plugin-dir DIR` would:
 * manifest and engines checked, activation on onTarget:ID, the provider wrapped by the host's
 * guard (timeouts, problems recorded). What a third party needs to feed its target to
 * describeTargetConformance.
 */
export async function loadTargetPlugin(
  pluginDir: string | URL,
  o: LoadPluginOptions = {},
): Promise<LoadedPlugin> {
  const dir = typeof pluginDir === 'string' ? path.resolve(pluginDir) : fileURLToPath(pluginDir);
  // The host takes settings per plugin name: read the name the manifest declares.
  const { name } = JSON.parse(await fsp.readFile(path.join(dir, 'package.json'), 'utf8')) as { name: string };
  const storageRoot = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-plugin-host-'));
  const host = new PluginHost({
    dirs: [{ dir, source: 'cli' }],
    storageRoot,
    configuration: o.configuration ? { [name]: o.configuration } : undefined,
    activationTimeoutMs: o.activationTimeoutMs,
    targetOpTimeoutMs: o.targetOpTimeoutMs,
    log: o.log ?? (() => undefined),
  });
  await host.discover();
  const [info] = host.list();
  if (!info) throw new Error(`${dir} holds no plugin (no package.json)`);
  if (info.state === 'failed') throw new Error(`plugin ${info.name} cannot load: ${info.error}`);
  return {
    host,
    info: () => host.info(info.name),
    async open(spec) {
      const i = spec.indexOf(':');
      if (i <= 0) throw new Error(`target spec "${spec}" is not ID:LOCATION`);
      const provider = await host.getTargetProvider(spec.slice(0, i));
      return provider.open(spec.slice(i + 1));
    },
    async dispose() {
      try {
        await host.dispose();
      } finally {
        await fsp.rm(storageRoot, { recursive: true, force: true });
      }
    },
  };
}
