// The loader hooks of record-modules.mjs: every resolved URL and the URL of the module importing
// it (empty for an entry), one pair a line, appended to data.file.
import { appendFileSync } from 'node:fs';

let file = '';

export function initialize(data) {
  file = data.file;
}

export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  if (file) appendFileSync(file, `${r.url} ${context.parentURL ?? ''}\n`);
  return r;
}
