import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PluginHost, type PluginInfo } from './plugin-host.js';

export { PLUGIN_EVENTS, PluginHost, type PluginEventName, type PluginInfo } from './plugin-host.js';
export { API_VERSION } from './manifest.js';

/** The built-in plugins shipped in the package's plugins/ folder. */
export const BUILTIN_PLUGIN_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../plugins');

export function defaultPluginStateRoot(): string {
  if ((process.getuid?.() ?? 1) === 0) return '/var/lib/twinfs/plugins';
  return path.join(process.env.XDG_STATE_HOME ?? path.join(os.homedir(), '.local/state'), 'twinfs/plugins');
}

/** The user plugin folder: $TWINFS_PLUGIN_PATH, else ~/.config/twinfs/plugins. */
export function defaultUserPluginDir(): string {
  return (
    process.env.TWINFS_PLUGIN_PATH ??
    path.join(process.env.XDG_CONFIG_HOME ?? path.join(os.homedir(), '.config'), 'twinfs/plugins')
  );
}

export interface CreateHostOptions {
  /** Extra plugin folders (--plugin-dir), highest priority after the built-ins. */
  pluginDirs?: string[];
  storageRoot?: string;
  configuration?: Record<string, Record<string, unknown>>;
  activationTimeoutMs?: number;
  log?: (msg: string) => void;
}

/** A host over the built-in, user and --plugin-dir folders, discovered and ready. */
export async function createPluginHost(o: CreateHostOptions = {}): Promise<PluginHost> {
  const dirs: Array<{ dir: string; source: PluginInfo['source'] }> = [
    { dir: BUILTIN_PLUGIN_DIR, source: 'builtin' },
    ...(o.pluginDirs ?? []).map((dir) => ({ dir: path.resolve(dir), source: 'cli' as const })),
    { dir: defaultUserPluginDir(), source: 'user' },
  ];
  const host = new PluginHost({
    dirs,
    storageRoot: o.storageRoot ?? defaultPluginStateRoot(),
    configuration: o.configuration,
    activationTimeoutMs: o.activationTimeoutMs,
    log: o.log,
  });
  await host.discover();
  return host;
}
