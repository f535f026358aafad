import { controlCommands } from './control.js';
import { peerCommands } from './peer.js';
import { repositoryCommands } from './repository.js';
import type { OperatorCommand } from './spec.js';

export { controlCommands, selectorOf, selectorText } from './control.js';
export { peerCommands } from './peer.js';
export { repositoryCommands } from './repository.js';
export * from './spec.js';

/**
 * Every operator command, in the order help lists them. Both front ends serve this list: the
 * command line (src/commands/yargs.ts) and the REPL (src/repl). A new command is one entry here.
 */
export const operatorCommands: readonly OperatorCommand[] = [
  ...controlCommands,
  ...peerCommands,
  ...repositoryCommands,
];
