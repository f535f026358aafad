// Preloaded with `node --import` (NODE_OPTIONS) to record every ES module a process resolves:
// each resolved URL and its importer's are appended to the file TWINFS_RECORD_MODULES names (one a line), from the
// loader's hooks thread, synchronously, so nothing is lost when the process exits at once.
// Worker threads the process starts record theirs too. Used by test/cli/cold-start.test.ts.
import { register } from 'node:module';

const file = process.env.TWINFS_RECORD_MODULES;
if (file) register('./record-modules-hooks.mjs', import.meta.url, { data: { file } });
