import type { Argv } from 'yargs';
import type { OperatorCommand } from '../repl/commands.js';

/** The peer's REPL commands (backup, snapshots, restore, check). */
export function peerOperatorCommands(): OperatorCommand[] {
  return [];
}

/**
 * The backup peer's commands (backup, peer, snapshots, restore, check, forget). Registered by
 * main.ts; each sets the exit status through setStatus.
 */
export function registerPeerCommands(y: Argv, _setStatus: (code: number) => void): Argv {
  return y;
}
