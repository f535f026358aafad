import { TwinError } from '../common/errors.js';
import type { SelectorMsg } from '../control/protocol.js';

/**
 * What a backup run tells plugins, and asks of them: events, and onWillFreeze, whose listeners
 * may quiesce applications (checkpoint a database, pause a job) before writes are held — what
 * VSS writers do for a Windows backup.
 */

/** Plugin events a backup run delivers (payloads are plain JSON-able objects). */
export type BackupEventName =
  | 'onWillBackup'
  | 'onDidFreeze'
  | 'onDidSplit'
  | 'onDidThaw'
  | 'onDidResync'
  | 'onDidCompleteBackup'
  | 'onDidFail';

/**
 * What a run needs of the plugin host (src/plugins PluginHost fits): events, and onWillFreeze,
 * whose listeners may quiesce applications before writes are held. Both isolate the listeners:
 * they never throw, and wait for a listener no longer than their timeout.
 */
export interface BackupHooks {
  willFreeze(
    payload: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<Array<{ plugin: string; message: string }>>;
  emit(name: BackupEventName, payload: Record<string, unknown>): Promise<void>;
}

/**
 * What a failed onWillFreeze hook means: `crash-consistent` (default) goes on with a warning —
 * the copy is still what applications had written at one instant — `fail` ends the run before
 * anything is held or split.
 */
export type HookFailurePolicy = 'crash-consistent' | 'fail';

export interface FreezeHookResult {
  /** How long the hooks took, ms. */
  ms: number;
  /** Hooks that failed or timed out (the run goes on crash-consistent). */
  failures: Array<{ plugin: string; message: string }>;
}

const DEFAULT_FREEZE_HOOK_TIMEOUT_MS = 10_000;

/**
 * Runs the onWillFreeze hooks before prepare holds any write, bounded by a timeout of their own
 * (default 10 s) — time the write stall never includes. A failed or late hook leaves a
 * crash-consistent copy: reported in the result, or with the `fail` policy an
 * ETWIN_PLUGIN_FAILED naming the plugins, before anything is held or split.
 */
export async function runFreezeHooks(
  hooks: BackupHooks,
  selector: PluginSelector,
  o: { timeoutMs?: number; policy?: HookFailurePolicy } = {},
): Promise<FreezeHookResult> {
  // process.hrtime, not the performance global: its first use loads node's perf_hooks (nine
  // modules, ~50 page faults), the only use of it in a CLI backup.
  const t0 = process.hrtime.bigint();
  const failures = await hooks.willFreeze({ selector }, o.timeoutMs ?? DEFAULT_FREEZE_HOOK_TIMEOUT_MS);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (failures.length > 0 && o.policy === 'fail') {
    const list = failures.map((f) => `${f.plugin}: ${f.message}`).join('; ');
    throw new TwinError(
      'ETWIN_PLUGIN_FAILED',
      `application-consistent backup impossible: ${list} (--on-hook-failure fail)`,
      { failures },
    );
  }
  return { ms, failures };
}

/** A selection as the plugin API names it (`Selector` in api/twinfs.d.ts). */
export interface PluginSelector {
  paths?: string[];
  subtrees?: string[];
  volume?: boolean;
}

/** The protocol's selector in the plugin API's shape: { paths } | { subtrees: [one] } | { volume }. */
export function pluginSelector(sel: SelectorMsg): PluginSelector {
  if (sel.volume || sel.subtree === '/') return { volume: true };
  if (sel.subtree !== undefined) return { subtrees: [sel.subtree] };
  return { paths: sel.paths ?? [] };
}
