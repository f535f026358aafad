#!/usr/bin/env node
// Builds packages/conformance (the `@twinfs/conformance` package: the backup-target conformance
// suite, the plugin harness and the plugin API types) from test/conformance and the parts of
// src/ the harness runs. Run by the package's `prepack`, so `npm pack` in packages/conformance
// makes a tarball a third party can install.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

const pkg = path.resolve(import.meta.dirname, '../packages/conformance');
const root = path.resolve(pkg, '../..');
const dist = path.join(pkg, 'dist');
await fsp.rm(dist, { recursive: true, force: true });
execFileSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', pkg], {
  stdio: 'inherit',
});
// The plugin API's types ship with the package; declarations import them by a relative path.
await fsp.mkdir(path.join(dist, 'api'), { recursive: true });
await fsp.copyFile(path.join(root, 'api/twinfs.d.ts'), path.join(dist, 'api/twinfs.d.ts'));
async function* files(dir) {
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else yield p;
  }
}
for await (const f of files(dist)) {
  if (!f.endsWith('.d.ts') || f.endsWith(path.join('api', 'twinfs.d.ts'))) continue;
  const text = await fsp.readFile(f, 'utf8');
  let rel = path.relative(path.dirname(f), path.join(dist, 'api/twinfs.js'));
  if (!rel.startsWith('.')) rel = `./${rel}`;
  await fsp.writeFile(f, text.replaceAll("from 'twinfs'", `from '${rel}'`));
}
