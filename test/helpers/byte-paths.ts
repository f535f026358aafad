import { installBytePaths } from '../../src/posix/byte-paths.js';

/**
 * The test process reads primaries, mirrors and restored trees by name as the server and the peer
 * do: names are bytes (src/posix/byte-paths.ts), so a name that is not UTF-8 is compared as itself.
 */
installBytePaths();
