import type { Argv } from 'yargs';

/**
 * The backup peer's commands (backup, peer, snapshots, restore, check, forget). Registered by
 * main.ts; each sets the exit status through setStatus.
 */
export function registerPeerCommands(y: Argv, _setStatus: (code: number) => void): Argv {
  return y;
}
