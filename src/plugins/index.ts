import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TwinError } from '../common/errors.js';
import { PluginHost, type PluginInfo } from './plugin-host.js';

export { API_VERSION } from './manifest.js';
export { PLUGIN_EVENTS, type PluginEventName, PluginHost, type PluginInfo } from './plugin-host.js';
export { forwardServiceEvents, type PluginEventSink, type ServiceEvents } from './service-events.js';

/** The built-in plugins shipped in the package's plugins/ folder. */
export const BUILTIN_PLUGIN_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../plugins');

/** Plugin storage and the host's enabled/disabled list: $TWINFS_PLUGIN_STATE, else a per-user or system folder. */
export function defaultPluginStateRoot(): string {
  if (process.env.TWINFS_PLUGIN_STATE) return path.resolve(process.env.TWINFS_PLUGIN_STATE);
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

/**
 * Plugin settings from a JSON file (`$TWINFS_PLUGIN_CONFIG`): `{ "PLUGIN-NAME": { KEY: VALUE } }`,
 * or the `plugins` section of such a file. Each plugin's part is validated when it activates.
 */
export async function readPluginSettings(
  file: string | undefined,
): Promise<Record<string, Record<string, unknown>> | undefined> {
  if (!file) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new TwinError('ETWIN_PLUGIN_CONFIG', `plugin settings ${file}: ${(err as Error).message}`, {
      file,
    });
  }
  const section =
    raw && typeof raw === 'object' && 'plugins' in raw ? (raw as { plugins: unknown }).plugins : raw;
  if (!section || typeof section !== 'object' || Array.isArray(section))
    throw new TwinError('ETWIN_PLUGIN_CONFIG', `plugin settings ${file} must map plugin names to objects`, {
      file,
    });
  return section as Record<string, Record<string, unknown>>;
}

export interface CreateHostOptions {
  /** Extra plugin folders (--plugin-dir), highest priority after the built-ins. */
  pluginDirs?: string[];
  storageRoot?: string;
  /** Settings per plugin name (default: the file named by $TWINFS_PLUGIN_CONFIG, if any). */
  configuration?: Record<string, Record<string, unknown>>;
  activationTimeoutMs?: number;
  /** A target call's timeout (of inactivity, for putFile), ms (default 300000). */
  targetOpTimeoutMs?: number;
  /** How long an event listener's promise is waited for, ms (default 10000). */
  listenerTimeoutMs?: number;
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
    configuration: o.configuration ?? (await readPluginSettings(process.env.TWINFS_PLUGIN_CONFIG)),
    activationTimeoutMs: o.activationTimeoutMs,
    targetOpTimeoutMs: o.targetOpTimeoutMs,
    listenerTimeoutMs: o.listenerTimeoutMs,
    log: o.log,
  });
  await host.discover();
  return host;
}
