// Preloaded with `node --import` (NODE_OPTIONS) to record every module a process resolves: each
// resolved URL and its importer's are appended to the file TWINFS_RECORD_MODULES names (one a
// line; from the CommonJS resolver also the built-in modules and the requests that failed),
// synchronously, so nothing is lost when the process exits at once. ES modules from the
// loader's hooks thread (worker threads the process starts record theirs too); CommonJS files
// (the CLI's bundle, dist/cli-bundle/*.cjs, and what they require) from Node's CommonJS resolver
// in the thread that preloads this file. Used by test/cli/cold-start.test.ts.
import { appendFileSync } from 'node:fs';
import Module, { register } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

const file = process.env.TWINFS_RECORD_MODULES;
if (file) {
  register('./record-modules-hooks.mjs', import.meta.url, { data: { file } });
  const resolveFilename = Module._resolveFilename;
  // Files as their URL; built-in modules as `builtin:NAME`; a request that resolves to nothing
  // (an optional dependency tried and missing) as `missing:REQUEST`.
  Module._resolveFilename = function (request, parent, ...rest) {
    const from = parent?.filename ? pathToFileURL(parent.filename).href : '';
    let r;
    try {
      r = resolveFilename.call(this, request, parent, ...rest);
    } catch (err) {
      appendFileSync(file, `missing:${request} ${from}\n`);
      throw err;
    }
    const what = path.isAbsolute(r) ? pathToFileURL(r).href : `builtin:${r.replace(/^node:/, '')}`;
    appendFileSync(file, `${what} ${from}\n`);
    return r;
  };
}
