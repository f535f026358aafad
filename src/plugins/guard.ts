import { PassThrough, pipeline } from 'node:stream';
import type { ObjectStore } from '../../api/twinfs.js';
import type { BackupTarget, BackupTargetProvider, EntryMeta, SnapshotWriter } from '../backup-peer/target.js';
import { TwinError } from '../common/errors.js';
import { openRepositoryTarget } from '../repository/index.js';

export interface GuardOptions {
  timeoutMs: number;
  onProblem: (message: string) => void;
}

/**
 * Wraps a plugin's target provider so that a target that throws or hangs fails the operation
 * with an error naming the plugin (and is recorded against it) instead of hanging the peer or
 * escaping as an unknown exception. Target-contract errors (ETWIN_TARGET_*) keep their codes.
 */
export function guardProvider(
  provider: BackupTargetProvider,
  plugin: string,
  o: GuardOptions,
): BackupTargetProvider {
  if (provider.openStore) {
    const openStore = async (location: string, so: { create: boolean }) =>
      guardStore(
        await call(plugin, `${provider.id}.openStore`, o, () => provider.openStore!(location, so)),
        plugin,
        o,
      );
    return {
      id: provider.id,
      openStore,
      // The repository is the host's (src/repository); only the store's calls are the plugin's.
      open: async (location, opts) => {
        const create = opts?.create ?? true;
        return openRepositoryTarget(provider.id, await openStore(location, { create }), { create });
      },
    };
  }
  if (typeof provider.open !== 'function')
    throw new TwinError(
      'ETWIN_PLUGIN_MANIFEST',
      `plugin ${plugin}: target "${provider.id}" has neither open nor openStore`,
      {
        plugin,
      },
    );
  return {
    id: provider.id,
    open: async (location) =>
      guardTarget(await call(plugin, `${provider.id}.open`, o, () => provider.open(location)), plugin, o),
  };
}

function guardStore(s: ObjectStore, plugin: string, o: GuardOptions): ObjectStore {
  const id = s.spec.slice(0, Math.max(0, s.spec.indexOf(':')));
  const g = <T>(name: string, fn: () => Promise<T>) => call(plugin, `${id}.${name}`, o, fn);
  return {
    get spec() {
      return s.spec;
    },
    get initOnFirstUse() {
      return s.initOnFirstUse;
    },
    get defaultEncrypted() {
      return s.defaultEncrypted;
    },
    put: (name, data) => g('put', () => s.put(name, data)),
    putNew: s.putNew
      ? (name, data) => g('putNew', () => (s.putNew as NonNullable<typeof s.putNew>)(name, data))
      : undefined,
    get: (name, range) => g('get', () => s.get(name, range)),
    stat: (name) => g('stat', () => s.stat(name)),
    list: (prefix) => g('list', () => s.list(prefix)),
    listNames: s.listNames
      ? (prefix) => g('listNames', () => (s.listNames as NonNullable<typeof s.listNames>)(prefix))
      : undefined,
    delete: (name) => g('delete', () => s.delete(name)),
    incompleteWrites: s.incompleteWrites
      ? (w) => g('incompleteWrites', () => (s.incompleteWrites as NonNullable<typeof s.incompleteWrites>)(w))
      : undefined,
    close: () => g('close', () => s.close()),
  };
}

function guardTarget(t: BackupTarget, plugin: string, o: GuardOptions): BackupTarget {
  const g = <T>(name: string, fn: () => Promise<T>) => call(plugin, `${t.id}.${name}`, o, fn);
  return {
    get id() {
      return t.id;
    },
    get spec() {
      return t.spec;
    },
    get capabilities() {
      return t.capabilities;
    },
    beginSnapshot: async (meta) =>
      guardWriter(await g('beginSnapshot', () => t.beginSnapshot(meta)), plugin, o, t.id),
    listSnapshots: () => g('listSnapshots', () => t.listSnapshots()),
    readManifest: (id) => g('readManifest', () => t.readManifest(id)),
    openFile: (id, p, r) => g('openFile', () => t.openFile(id, p, r)),
    stat: (id, p) => g('stat', () => t.stat(id, p)),
    deleteSnapshot: (id) => g('deleteSnapshot', () => t.deleteSnapshot(id)),
    close: () => g('close', () => t.close()),
  };
}

function guardWriter(w: SnapshotWriter, plugin: string, o: GuardOptions, tid: string): SnapshotWriter {
  const g = <T>(name: string, fn: () => Promise<T>) => call(plugin, `${tid}.${name}`, o, fn);
  return {
    get snapshotId() {
      return w.snapshotId;
    },
    // A put may stream for hours: its timeout measures silence (no chunk consumed), not length.
    putFile: (p, data, meta, opts) => {
      let touch = () => {};
      const tap = new PassThrough({
        highWaterMark: 64 * 1024,
        transform(chunk, _enc, cb) {
          touch();
          cb(null, chunk);
        },
      });
      pipeline(data, tap, () => undefined);
      return call(
        plugin,
        `${tid}.putFile`,
        o,
        () => w.putFile(p, tap, meta, opts),
        (t) => (touch = t),
      );
    },
    ...(w.putSmallFile
      ? {
          putSmallFile: (p: string, data: Buffer, meta: EntryMeta, opts?: { signal?: AbortSignal }) =>
            g('putSmallFile', () => w.putSmallFile!(p, data, meta, opts)),
        }
      : {}),
    reuseFile: (p, from, e) => g('reuseFile', () => w.reuseFile(p, from, e)),
    ...(w.carryFrom ? { carryFrom: (from: string) => g('carryFrom', () => w.carryFrom!(from)) } : {}),
    putDir: (p, meta) => g('putDir', () => w.putDir(p, meta)),
    putSymlink: (p, target, meta) => g('putSymlink', () => w.putSymlink(p, target, meta)),
    commit: (m) => g('commit', () => w.commit(m)),
    abort: () => g('abort', () => w.abort()),
  };
}

/**
 * Runs one plugin operation under the timeout. With `progress`, the operation gets a function that
 * restarts the timer (the timeout then bounds inactivity).
 */
async function call<T>(
  plugin: string,
  op: string,
  o: GuardOptions,
  fn: () => Promise<T>,
  progress?: (touch: () => void) => void,
): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(fn),
      new Promise<never>((_, rej) => {
        const arm = () => {
          clearTimeout(t);
          t = setTimeout(
            () =>
              rej(
                new TwinError(
                  'ETWIN_PLUGIN_TIMEOUT',
                  progress
                    ? `${op} (plugin ${plugin}) made no progress for ${o.timeoutMs} ms`
                    : `${op} (plugin ${plugin}) did not finish within ${o.timeoutMs} ms`,
                  { plugin, op },
                ),
              ),
            o.timeoutMs,
          );
        };
        arm();
        progress?.(arm);
      }),
    ]);
  } catch (err) {
    if (err instanceof TwinError) {
      if (err.code === 'ETWIN_PLUGIN_TIMEOUT') o.onProblem(err.message);
      else if (!err.code.startsWith('ETWIN_TARGET_') && !err.code.startsWith('ETWIN_PATH'))
        o.onProblem(`${op}: ${err.message}`);
      if (err.data && typeof err.data === 'object' && !('plugin' in err.data))
        (err.data as Record<string, unknown>).plugin = plugin;
      throw err;
    }
    const message = `${op} (plugin ${plugin}) failed: ${(err as Error)?.message ?? String(err)}`;
    o.onProblem(message);
    throw new TwinError('ETWIN_PLUGIN_FAILED', message, { plugin, op }, { cause: err });
  } finally {
    clearTimeout(t);
  }
}
