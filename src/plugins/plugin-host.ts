import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { BackupTargetProvider } from '../backup-peer/target.js';
import { targetError, volumePathParts } from '../backup-peer/target.js';
import { TwinError } from '../common/errors.js';
import type { Disposable } from '../common/lifecycle.js';
import { validateConfiguration } from './configuration.js';
import { guardProvider } from './guard.js';
import { API_VERSION, type PluginManifest, readManifest } from './manifest.js';
import { StateStore } from './state-store.js';

export type PluginState = 'inactive' | 'activating' | 'active' | 'failed' | 'disabled';

/** Events the host delivers to plugins (payloads are plain JSON-able objects). */
export const PLUGIN_EVENTS = [
  'onWillFreeze',
  'onDidFreeze',
  'onDidThaw',
  'onDidSplit',
  'onDidResync',
  'onWillBackup',
  'onDidCompleteBackup',
  'onDidFail',
] as const;
export type PluginEventName = (typeof PLUGIN_EVENTS)[number];

export interface PluginInfo {
  name: string;
  version: string;
  description?: string;
  dir: string;
  source: 'builtin' | 'user' | 'cli';
  state: PluginState;
  error?: string;
  /** Runtime failures (throwing listeners, failing targets) recorded against the plugin. */
  problems: string[];
  activationEvents: string[];
  targets: string[];
  commands: string[];
}

interface PluginRecord {
  manifest: PluginManifest;
  dir: string;
  source: PluginInfo['source'];
  state: PluginState;
  error?: string;
  problems: string[];
  activation?: Promise<void>;
  module?: { activate?: (ctx: unknown) => unknown; deactivate?: () => unknown };
  subscriptions: Disposable[];
  exports?: unknown;
}

type Listener = { plugin: string; fn: (e: any) => unknown };

export interface PluginHostOptions {
  /** Folders of plugins (or a plugin folder itself), in priority order; a later duplicate name is refused. */
  dirs: Array<{ dir: string; source: PluginInfo['source'] }>;
  /** Root of per-plugin storage and the host's own state (enabled/disabled). */
  storageRoot: string;
  /** Configuration values per plugin name (validated against contributes.configuration). */
  configuration?: Record<string, Record<string, unknown>>;
  /** A plugin's activate() must settle within this, ms (default 10000). */
  activationTimeoutMs?: number;
  /** A target operation must settle within this, ms (default 300000); putFile: this long without progress. */
  targetOpTimeoutMs?: number;
  /** An event listener's returned promise is waited for at most this, ms (default 10000). */
  listenerTimeoutMs?: number;
  log?: (msg: string) => void;
}

/**
 * The plugin host (VS Code's extension host, in one process): discovers plugin folders, checks
 * manifests and engines, activates plugins lazily on their activation events (dependencies
 * first, with a timeout), gives each a context, and isolates them — an activation failure, a
 * throwing listener or a failing target is recorded against the plugin with a clear message and
 * never takes the host down.
 */
export class PluginHost {
  private readonly plugins = new Map<string, PluginRecord>();
  private readonly targets = new Map<string, { plugin: string; provider: BackupTargetProvider }>();
  private readonly commands = new Map<string, { plugin: string; handler: (...args: unknown[]) => unknown }>();
  private readonly listeners = new Map<PluginEventName, Listener[]>();
  private readonly hostState: StateStore;
  private readonly log: (msg: string) => void;
  private discovered = false;

  constructor(private readonly opts: PluginHostOptions) {
    this.hostState = new StateStore(path.join(opts.storageRoot, 'host-state.json'));
    this.log = opts.log ?? ((m) => process.stderr.write(`twinfs plugins: ${m}\n`));
  }

  async discover(): Promise<void> {
    if (this.discovered) return;
    this.discovered = true;
    await this.hostState.load();
    const disabled = new Set(this.hostState.get<string[]>('disabled', []) ?? []);
    for (const { dir, source } of this.opts.dirs) {
      // A folder that is itself a plugin (a manifest at its root) is loaded alone, the way VS Code's
      // --extensionDevelopmentPath loads the extension under development.
      const single = await fsp.stat(path.join(dir, 'package.json')).catch(() => undefined);
      const names = single ? [''] : await fsp.readdir(dir).catch(() => [] as string[]);
      // The folders' manifests are read at once (a command's start waited for each in turn,
      // each read a disk access when the cache is cold) and taken in order of name.
      const read = await Promise.all(
        names.sort().map(async (n) => {
          const pdir = n ? path.join(dir, n) : dir;
          if (!(await fsp.stat(path.join(pdir, 'package.json')).catch(() => undefined))) return undefined;
          return readManifest(pdir).then(
            (manifest) => ({ n, pdir, manifest }),
            (err: Error) => ({ n, pdir, err }),
          );
        }),
      );
      for (const r of read) {
        if (!r) continue;
        const { n, pdir } = r;
        if ('err' in r) {
          const name = `${source}:${n || path.basename(dir)}`;
          this.plugins.set(name, failedRecord(name, pdir, source, r.err.message));
          this.log(r.err.message);
          continue;
        }
        const manifest: PluginManifest = r.manifest;
        if (this.plugins.has(manifest.name)) {
          const msg = `${manifest.name} at ${pdir} ignored: a plugin with that name is already loaded from ${this.plugins.get(manifest.name)!.dir}`;
          this.log(msg);
          this.plugins.set(`${manifest.name}@${pdir}`, {
            ...failedRecord(manifest.name, pdir, source, msg),
            manifest,
          });
          continue;
        }
        const declaredTargets = manifest.contributes.backupTargets.map((t) => t.id);
        const clash = [...this.plugins.values()].find(
          (p) =>
            p.state !== 'failed' &&
            p.manifest.contributes.backupTargets.some((t) => declaredTargets.includes(t.id)),
        );
        if (clash) {
          const msg = `${manifest.name}: backup target id already contributed by ${clash.manifest.name}`;
          this.log(msg);
          this.plugins.set(manifest.name, { ...failedRecord(manifest.name, pdir, source, msg), manifest });
          continue;
        }
        this.plugins.set(manifest.name, {
          manifest,
          dir: pdir,
          source,
          state: disabled.has(manifest.name) ? 'disabled' : 'inactive',
          problems: [],
          subscriptions: [],
        });
      }
    }
  }

  list(): PluginInfo[] {
    return [...this.plugins.values()].map((p) => ({
      name: p.manifest.name,
      version: p.manifest.version,
      description: p.manifest.description,
      dir: p.dir,
      source: p.source,
      state: p.state,
      error: p.error,
      problems: [...p.problems],
      activationEvents: p.manifest.activationEvents,
      targets: p.manifest.contributes.backupTargets.map((t) => t.id),
      commands: p.manifest.contributes.commands.map((c) => c.command),
    }));
  }

  info(name: string): PluginInfo {
    const p = this.list().find((x) => x.name === name);
    if (!p) throw new TwinError('ETWIN_PLUGIN_NOT_FOUND', `no plugin named ${name}`, { plugin: name });
    return p;
  }

  async setEnabled(name: string, enabled: boolean): Promise<void> {
    const rec = this.plugins.get(name);
    if (!rec) throw new TwinError('ETWIN_PLUGIN_NOT_FOUND', `no plugin named ${name}`, { plugin: name });
    const disabled = new Set(this.hostState.get<string[]>('disabled', []) ?? []);
    if (enabled) disabled.delete(name);
    else disabled.add(name);
    await this.hostState.update('disabled', [...disabled]);
    if (!enabled) {
      await this.deactivate(rec);
      rec.state = 'disabled';
    } else if (rec.state === 'disabled') rec.state = 'inactive';
  }

  /** Activates every plugin listening for the event (`onStartup`, `onTarget:dir`, ...). Failures are recorded, not thrown. */
  async activateByEvent(event: string): Promise<void> {
    await this.discover();
    const todo = [...this.plugins.values()].filter(
      (p) => p.state === 'inactive' && activatesOn(p.manifest, event),
    );
    await Promise.all(todo.map((p) => this.activate(p).catch(() => undefined)));
  }

  /** Ids of every backup target a plugin contributes (whether activated or not). */
  targetIds(): string[] {
    return [...this.plugins.values()]
      .filter((p) => p.state !== 'failed' && p.state !== 'disabled')
      .flatMap((p) => p.manifest.contributes.backupTargets.map((t) => t.id));
  }

  /** The provider of a target type, activating its plugin (onTarget:ID) first. */
  async getTargetProvider(id: string): Promise<BackupTargetProvider> {
    await this.activateByEvent(`onTarget:${id}`);
    const t = this.targets.get(id);
    if (t) return t.provider;
    const owner = [...this.plugins.values()].find((p) =>
      p.manifest.contributes.backupTargets.some((x) => x.id === id),
    );
    if (owner?.state === 'failed')
      throw new TwinError(
        'ETWIN_PLUGIN_FAILED',
        `target "${id}" is unavailable: plugin ${owner.manifest.name} failed: ${owner.error}`,
        {
          plugin: owner.manifest.name,
        },
      );
    if (owner?.state === 'disabled')
      throw new TwinError(
        'ETWIN_PLUGIN_DISABLED',
        `target "${id}" comes from plugin ${owner.manifest.name}, which is disabled`,
        {
          plugin: owner.manifest.name,
        },
      );
    throw new TwinError(
      'ETWIN_TARGET_SPEC',
      `unknown target type "${id}" (known: ${this.targetIds().join(', ') || 'none'})`,
      { type: id },
    );
  }

  /** Contributed commands: id, title and plugin. */
  commandList(): Array<{ command: string; title: string; plugin: string }> {
    return [...this.plugins.values()]
      .filter((p) => p.state !== 'failed' && p.state !== 'disabled')
      .flatMap((p) =>
        p.manifest.contributes.commands.map((c) => ({
          command: c.command,
          title: c.title,
          plugin: p.manifest.name,
        })),
      );
  }

  /** Runs a plugin command (activating onCommand:ID). Errors come back as ETWIN_PLUGIN_COMMAND naming the plugin. */
  async executeCommand(id: string, ...args: unknown[]): Promise<unknown> {
    await this.activateByEvent(`onCommand:${id}`);
    const c = this.commands.get(id);
    if (!c) throw new TwinError('ETWIN_PLUGIN_NOT_FOUND', `no command "${id}"`, { command: id });
    try {
      return await c.handler(...args);
    } catch (err) {
      this.problem(c.plugin, `command ${id} failed: ${(err as Error)?.message ?? err}`);
      throw new TwinError(
        'ETWIN_PLUGIN_COMMAND',
        `command ${id} (plugin ${c.plugin}) failed: ${(err as Error)?.message ?? err}`,
        {
          plugin: c.plugin,
          command: id,
        },
      );
    }
  }

  /** Delivers an event; a throwing listener is recorded against its plugin and the others still run. */
  async emit(
    name: Exclude<PluginEventName, 'onWillFreeze'>,
    payload: Record<string, unknown>,
  ): Promise<void> {
    await this.activateByEvent(`onEvent:${name}`);
    const timeoutMs = this.opts.listenerTimeoutMs ?? 10_000;
    const timeout = new Error('timeout');
    for (const l of [...(this.listeners.get(name) ?? [])]) {
      let t: NodeJS.Timeout | undefined;
      try {
        // A listener that returns a promise is waited for, but never longer than timeoutMs.
        await Promise.race([
          Promise.resolve().then(() => l.fn(payload)),
          new Promise((_, rej) => {
            t = setTimeout(() => rej(timeout), timeoutMs);
          }),
        ]);
      } catch (err) {
        this.problem(
          l.plugin,
          err === timeout
            ? `${name} listener did not finish within ${timeoutMs} ms`
            : `${name} listener threw: ${(err as Error)?.message ?? err}`,
        );
      } finally {
        clearTimeout(t);
      }
    }
  }

  /**
   * onWillFreeze: listeners may waitUntil(promise) to quiesce an application before writes are
   * inhibited. Waits for all of them, at most timeoutMs. Returns the failures (plugin + message);
   * the caller decides whether the backup goes on crash-consistent or fails.
   */
  async willFreeze(
    payload: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<Array<{ plugin: string; message: string }>> {
    await this.activateByEvent('onEvent:onWillFreeze');
    const waits: Array<{ plugin: string; p: Promise<unknown> }> = [];
    for (const l of this.listeners.get('onWillFreeze') ?? []) {
      try {
        l.fn({
          ...payload,
          waitUntil: (p: Promise<unknown>) => waits.push({ plugin: l.plugin, p: Promise.resolve(p) }),
        });
      } catch (err) {
        waits.push({ plugin: l.plugin, p: Promise.reject(err) });
      }
    }
    const failures: Array<{ plugin: string; message: string }> = [];
    await Promise.all(
      waits.map(async (w) => {
        let t: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            w.p,
            new Promise(
              (_, rej) =>
                (t = setTimeout(() => rej(new Error(`did not finish within ${timeoutMs} ms`)), timeoutMs)),
            ),
          ]);
        } catch (err) {
          const message = `onWillFreeze: ${(err as Error)?.message ?? err}`;
          this.problem(w.plugin, message);
          failures.push({ plugin: w.plugin, message });
        } finally {
          clearTimeout(t);
        }
      }),
    );
    return failures;
  }

  async dispose(): Promise<void> {
    const errors: unknown[] = [];
    for (const rec of [...this.plugins.values()].reverse()) {
      try {
        await this.deactivate(rec);
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length) throw new AggregateError(errors, `${errors.length} plugin(s) failed to deactivate`);
  }

  // ---- activation -----------------------------------------------------------------------------

  private activate(rec: PluginRecord, chain: string[] = []): Promise<void> {
    if (rec.state === 'active') return Promise.resolve();
    if (rec.state === 'failed')
      return Promise.reject(
        new TwinError('ETWIN_PLUGIN_FAILED', rec.error ?? 'failed', { plugin: rec.manifest.name }),
      );
    if (rec.state === 'disabled')
      return Promise.reject(
        new TwinError('ETWIN_PLUGIN_DISABLED', `${rec.manifest.name} is disabled`, {
          plugin: rec.manifest.name,
        }),
      );
    // A plugin met again on its own dependency chain is a cycle: waiting for its pending
    // activation would wait forever.
    if (chain.includes(rec.manifest.name))
      return Promise.reject(
        new TwinError(
          'ETWIN_PLUGIN_DEPENDENCY',
          `dependency cycle: ${[...chain, rec.manifest.name].join(' -> ')}`,
          { plugin: rec.manifest.name },
        ),
      );
    rec.activation ??= this.doActivate(rec, chain).catch((err) => {
      rec.state = 'failed';
      rec.error = (err as Error)?.message ?? String(err);
      this.log(`${rec.manifest.name} failed to activate: ${rec.error}`);
      throw err;
    });
    return rec.activation;
  }

  private async doActivate(rec: PluginRecord, chain: string[]): Promise<void> {
    const name = rec.manifest.name;
    for (const dep of Object.keys(rec.manifest.pluginDependencies ?? {})) {
      const d = this.plugins.get(dep);
      if (!d)
        throw new TwinError('ETWIN_PLUGIN_DEPENDENCY', `${name} depends on ${dep}, which is not installed`, {
          plugin: name,
          dependency: dep,
        });
      try {
        await this.activate(d, [...chain, name]);
      } catch (err) {
        throw new TwinError(
          'ETWIN_PLUGIN_DEPENDENCY',
          `${name} depends on ${dep}, which failed: ${(err as Error).message}`,
          {
            plugin: name,
            dependency: dep,
          },
        );
      }
    }
    rec.state = 'activating';
    const config = validateConfiguration(rec.manifest, this.opts.configuration?.[name] ?? {});
    const storagePath = path.join(this.opts.storageRoot, 'storage', name.replace(/[/@]/g, '_'));
    await fsp.mkdir(storagePath, { recursive: true });
    const state = new StateStore(path.join(storagePath, 'state.json'));
    await state.load();
    const mainFile = path.resolve(rec.dir, rec.manifest.main);
    if (!mainFile.startsWith(path.resolve(rec.dir) + path.sep))
      throw new TwinError('ETWIN_PLUGIN_MANIFEST', `${name}: main must stay inside the plugin folder`, {
        plugin: name,
      });
    const timeoutMs = this.opts.activationTimeoutMs ?? 10_000;
    const context = this.makeContext(rec, storagePath, state, config);
    const work = (async () => {
      rec.module = await import(pathToFileURL(mainFile).href);
      if (typeof rec.module?.activate !== 'function')
        throw new TwinError('ETWIN_PLUGIN_MANIFEST', `${name}: ${rec.manifest.main} exports no activate()`);
      rec.exports = await rec.module.activate(context);
    })();
    let t: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        work,
        new Promise((_, rej) => {
          t = setTimeout(
            () =>
              rej(
                new TwinError(
                  'ETWIN_PLUGIN_TIMEOUT',
                  `${name}: activate() did not finish within ${timeoutMs} ms`,
                  { plugin: name },
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
    } catch (err) {
      work.catch(() => undefined);
      await this.disposeSubscriptions(rec);
      throw err;
    } finally {
      clearTimeout(t);
    }
    rec.state = 'active';
  }

  private makeContext(
    rec: PluginRecord,
    storagePath: string,
    state: StateStore,
    config: Record<string, unknown>,
  ) {
    const name = rec.manifest.name;
    const host = this;
    const track = (d: Disposable) => {
      rec.subscriptions.push(d);
      return d;
    };
    const event = (ev: PluginEventName) => (fn: (e: any) => unknown) => {
      const l: Listener = { plugin: name, fn };
      const arr = host.listeners.get(ev) ?? [];
      arr.push(l);
      host.listeners.set(ev, arr);
      return track({
        dispose: () =>
          void host.listeners.set(
            ev,
            (host.listeners.get(ev) ?? []).filter((x) => x !== l),
          ),
      });
    };
    const api = {
      version: API_VERSION,
      registerBackupTarget(id: string, provider: Omit<BackupTargetProvider, 'id'> & { id?: string }) {
        if (!rec.manifest.contributes.backupTargets.some((t) => t.id === id))
          throw new TwinError(
            'ETWIN_PLUGIN_MANIFEST',
            `${name} registers target "${id}" without declaring it in contributes.backupTargets`,
            { plugin: name },
          );
        if (host.targets.has(id))
          throw new TwinError(
            'ETWIN_PLUGIN_DUPLICATE',
            `target "${id}" is already registered by ${host.targets.get(id)!.plugin}`,
            { plugin: name },
          );
        const guarded = guardProvider({ ...provider, id } as BackupTargetProvider, name, {
          timeoutMs: host.opts.targetOpTimeoutMs ?? 300_000,
          onProblem: (m) => host.problem(name, m),
        });
        host.targets.set(id, { plugin: name, provider: guarded });
        return track({
          dispose: () => void (host.targets.get(id)?.plugin === name && host.targets.delete(id)),
        });
      },
      registerCommand(id: string, handler: (...args: unknown[]) => unknown) {
        if (!rec.manifest.contributes.commands.some((c) => c.command === id))
          throw new TwinError(
            'ETWIN_PLUGIN_MANIFEST',
            `${name} registers command "${id}" without declaring it in contributes.commands`,
            { plugin: name },
          );
        if (host.commands.has(id))
          throw new TwinError('ETWIN_PLUGIN_DUPLICATE', `command "${id}" is already registered`, {
            plugin: name,
          });
        host.commands.set(id, { plugin: name, handler });
        return track({
          dispose: () => void (host.commands.get(id)?.plugin === name && host.commands.delete(id)),
        });
      },
      executeCommand: (id: string, ...args: unknown[]) => host.executeCommand(id, ...args),
      onWillFreeze: event('onWillFreeze'),
      onDidFreeze: event('onDidFreeze'),
      onDidThaw: event('onDidThaw'),
      onDidSplit: event('onDidSplit'),
      onDidResync: event('onDidResync'),
      onWillBackup: event('onWillBackup'),
      onDidCompleteBackup: event('onDidCompleteBackup'),
      onDidFail: event('onDidFail'),
      errors: {
        notFound: (m: string) => new TwinError('ETWIN_TARGET_NOT_FOUND', m, { plugin: name }),
        transient: (m: string) => new TwinError('ETWIN_TARGET_TRANSIENT', m, { plugin: name }),
        failed: (m: string) => new TwinError('ETWIN_TARGET_FAILED', m, { plugin: name }),
        pathEscape: (m: string) => new TwinError('ETWIN_PATH_ESCAPE', m, { plugin: name }),
        badLocation: (m: string) => new TwinError('ETWIN_TARGET_SPEC', m, { plugin: name }),
        fromFs: (err: unknown, what: string) => targetError(err, what, { plugin: name }),
      },
      volumePathParts,
    };
    const logger = {
      info: (m: string) => host.log(`[${name}] ${m}`),
      warn: (m: string) => host.log(`[${name}] warning: ${m}`),
      error: (m: string) => host.log(`[${name}] error: ${m}`),
    };
    return {
      name,
      extensionPath: rec.dir,
      storagePath,
      subscriptions: rec.subscriptions,
      logger,
      state: {
        get: <T>(k: string, d?: T) => state.get<T>(k, d),
        update: (k: string, v: unknown) => state.update(k, v),
        keys: () => state.keys(),
      },
      configuration: { get: <T>(k: string, d?: T) => (k in config ? (config[k] as T) : d) },
      twinfs: api,
    };
  }

  private async deactivate(rec: PluginRecord): Promise<void> {
    if (rec.state !== 'active' && rec.state !== 'activating') return;
    let failure: unknown;
    try {
      await rec.module?.deactivate?.();
    } catch (err) {
      failure = err;
      this.problem(rec.manifest.name, `deactivate() threw: ${(err as Error)?.message ?? err}`);
    }
    await this.disposeSubscriptions(rec);
    rec.state = 'inactive';
    rec.activation = undefined;
    if (failure) throw failure;
  }

  private async disposeSubscriptions(rec: PluginRecord): Promise<void> {
    for (const d of rec.subscriptions.splice(0).reverse()) {
      try {
        await d.dispose();
      } catch (err) {
        this.problem(rec.manifest.name, `disposing a subscription threw: ${(err as Error)?.message ?? err}`);
      }
    }
  }

  /** @internal Records a runtime failure against a plugin. */
  problem(plugin: string, message: string): void {
    const rec = this.plugins.get(plugin);
    rec?.problems.push(message);
    if (rec && rec.problems.length > 50) rec.problems.shift();
    this.log(`${plugin}: ${message}`);
  }
}

/**
 * Whether a plugin activates on an event: listed in activationEvents (or '*'), or implied by
 * what it contributes — a contributed command implies onCommand:ID and a contributed target
 * onTarget:ID, as contributed commands do in VS Code since 1.74.
 */
function activatesOn(m: PluginManifest, event: string): boolean {
  if (m.activationEvents.includes(event) || m.activationEvents.includes('*')) return true;
  const [kind, id] = [event.slice(0, event.indexOf(':')), event.slice(event.indexOf(':') + 1)];
  if (kind === 'onCommand') return m.contributes.commands.some((c) => c.command === id);
  if (kind === 'onTarget') return m.contributes.backupTargets.some((t) => t.id === id);
  return false;
}

function failedRecord(name: string, dir: string, source: PluginInfo['source'], error: string): PluginRecord {
  return {
    manifest: {
      name,
      version: '0.0.0',
      main: '',
      engines: { twinfs: '' },
      activationEvents: [],
      contributes: { backupTargets: [], commands: [] },
    },
    dir,
    source,
    state: 'failed',
    error,
    problems: [],
    subscriptions: [],
  };
}
