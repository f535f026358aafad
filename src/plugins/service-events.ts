import type { Event } from '../common/event.js';
import type { Disposable } from '../common/lifecycle.js';
import type { PluginEventName } from './plugin-host.js';

/** What the forwarding needs of the plugin host (PluginHost fits). */
export interface PluginEventSink {
  emit(name: Exclude<PluginEventName, 'onWillFreeze'>, payload: Record<string, unknown>): Promise<void>;
}

/** The first server's backup-service events (BackupService.onEvent): frozen, thawed, split, resynced... */
export type ServiceEvents = Event<{ event: string; data: Record<string, unknown> }>;

/**
 * Hands the first server's freeze/split/resync events to its plugins: an operator freeze and
 * thaw become onDidFreeze and onDidThaw; a backup's prepare — reported by the service once its
 * writes flow again — becomes onDidFreeze, onDidSplit and onDidThaw, in that order; the resync
 * after a release becomes onDidResync.
 *
 * The service fires these in its write path, so delivery is only started, on a later turn of the
 * event loop, and never waited for: a slow or throwing listener cannot delay a write (the host
 * isolates listeners and bounds each one's promise).
 */
export function forwardServiceEvents(
  events: ServiceEvents,
  host: PluginEventSink,
  o: { deviceId?: string } = {},
): Disposable {
  // 'thawed' names the freeze only: its selection is remembered from 'frozen'.
  const frozen = new Map<unknown, unknown>();
  let disposed = false;
  const deliver = (name: Exclude<PluginEventName, 'onWillFreeze'>, payload: Record<string, unknown>) =>
    setImmediate(() => {
      if (!disposed) void host.emit(name, payload).catch(() => undefined);
    });
  const sub = events(({ event, data }) => {
    switch (event) {
      case 'frozen':
        frozen.set(data.freezeId, data.selector);
        deliver('onDidFreeze', { selector: data.selector, freezeId: data.freezeId });
        break;
      case 'thawed':
        deliver('onDidThaw', {
          selector: frozen.get(data.freezeId),
          freezeId: data.freezeId,
          reason: data.reason,
        });
        frozen.delete(data.freezeId);
        break;
      case 'split': {
        const { backupId, selector, stallMs } = data;
        deliver('onDidFreeze', { selector, backupId });
        deliver('onDidSplit', { selector, backupId, deviceId: o.deviceId });
        deliver('onDidThaw', { selector, backupId, stallMs });
        break;
      }
      case 'resynced':
        deliver('onDidResync', { backupId: data.backupId, bytesCopied: data.bytesCopied });
        break;
    }
  });
  return {
    dispose: () => {
      disposed = true;
      sub.dispose();
    },
  };
}
