import { existsSync } from 'node:fs';
import * as path from 'node:path';
import {
  type CommandContext,
  type OperatorCommand,
  type OperatorDefaults,
  operatorCommands,
} from '../commands/index.js';
import type { TwinError } from '../common/errors.js';
import { ControlClient } from '../control/client.js';
import { directoryLister } from '../repl/completion.js';
import { type PluginCommandHost, pluginOperatorCommands } from '../repl/plugin-commands.js';
import { runRepl } from '../repl/repl-session.js';
import type { SnapshotSummary } from '../repl/status-text.js';

/** Every REPL command: the control channel's, the peer's, `plugins` and plugin-contributed ones. */
export function operatorCommandList(host?: PluginCommandHost): OperatorCommand[] {
  const base = [...operatorCommands];
  if (!host) return base;
  const reserved = new Set([...base.map((c) => c.name), 'help', 'exit', 'quit', 'plugins']);
  return [...base, ...pluginOperatorCommands(host, reserved)];
}

/**
 * What the front ends read from the local backup catalog: the newest snapshots of a device (for
 * `status`) and snapshot ids (for completion). The catalog is `catalog` if given, else the
 * default one, and only if it exists: status never creates a catalog. A catalog held by a
 * running backup is reported as busy rather than waited for.
 */
export function catalogSources(catalog: string | undefined) {
  const open = async <T>(
    dir: string | undefined,
    fn: (c: import('../backup-peer/index.js').Catalog) => Promise<T>,
  ) => {
    const { Catalog, defaultCatalogDir } = await import('../backup-peer/index.js');
    const where = path.resolve(dir ?? catalog ?? defaultCatalogDir());
    if (!existsSync(path.join(where, 'snapshots.db'))) return { where, value: null };
    return { where, value: await Catalog.with(where, fn, { lockTimeoutMs: 300 }) };
  };
  const recentSnapshots: NonNullable<CommandContext['recentSnapshots']> = async (deviceId, limit, dir) => {
    try {
      const r = await open(dir, (c) => c.list(deviceId ? { deviceId } : {}));
      if (r.value === null)
        return dir || catalog ? { catalog: r.where, snapshots: [], note: 'no catalog there' } : null;
      const snapshots: SnapshotSummary[] = r.value
        .slice(-limit)
        .reverse()
        .map((s) => ({
          id: s.id,
          time: s.time,
          state: s.state,
          files: s.totals.files,
          bytes: s.totals.bytes,
          target: s.target,
          paths: s.paths,
        }));
      return { catalog: r.where, snapshots };
    } catch (err) {
      const code = (err as TwinError).code;
      return {
        catalog: path.resolve(dir ?? catalog ?? '.'),
        snapshots: [],
        note:
          code === 'ETWIN_CATALOG_LOCKED'
            ? 'busy (a backup holds it)'
            : `unreadable (${code ?? (err as Error).message})`,
      };
    }
  };
  const snapshotIds = async (dir: string | undefined): Promise<string[]> =>
    (await open(dir, async (c) => (await c.list()).map((s) => s.id)).catch(() => ({ value: null }))).value ??
    [];
  return { recentSnapshots, snapshotIds };
}

export interface OperatorReplOptions {
  url: string;
  token: string;
  ca?: Buffer;
  defaults: OperatorDefaults;
  historyFile?: string;
  pluginDirs?: string[];
  json?: boolean;
  /** The primary directory, when the caller knows it (serve --repl): path completion reads it. */
  primary?: string;
}

/**
 * `twinfs repl` and `serve --repl`: the REPL with every operator command, completion of volume
 * paths (from the primary directory when it is on this host), snapshot ids (from the catalog)
 * and target ids (from the plugin host), and the plugins' commands.
 */
export async function startOperatorRepl(o: OperatorReplOptions): Promise<number> {
  const { createPluginHost } = await import('../plugins/index.js');
  const host = await createPluginHost({ pluginDirs: o.pluginDirs, log: () => undefined }).catch(
    () => undefined,
  );
  try {
    let primary = o.primary;
    if (!primary) {
      // Path completion reads the primary directory if this host sees it. (Not the mount: in
      // `serve --repl` the REPL shares its process with the FUSE server.)
      const probe = await ControlClient.connect(o.url, {
        token: o.token,
        ca: o.ca,
        client: 'twinfs-repl-probe',
      }).catch(() => null);
      if (probe) {
        const s = (await probe.request('status').catch(() => null)) as { fs?: { primary?: string } } | null;
        if (s?.fs?.primary && existsSync(s.fs.primary)) primary = s.fs.primary;
        await probe.close();
      }
    }
    const catalog = catalogSources(o.defaults.catalog);
    return await runRepl({
      url: o.url,
      token: o.token,
      ca: o.ca,
      commands: operatorCommandList(host),
      historyFile: o.historyFile,
      defaults: o.defaults,
      pluginDirs: o.pluginDirs,
      json: o.json,
      recentSnapshots: catalog.recentSnapshots,
      completion: {
        listVolumeDir: primary ? directoryLister(primary) : undefined,
        snapshotIds: (dir) => catalog.snapshotIds(dir ?? o.defaults.catalog),
        targetIds: () => host?.targetIds() ?? [],
      },
    });
  } finally {
    await host?.dispose().catch(() => undefined);
  }
}
