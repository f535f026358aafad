#!/usr/bin/env node
// Writes docs/errors.md from the error catalogue (src/common/errors.ts via dist) and the
// protocol's error codes. `node scripts/gen-errors-doc.mjs --check` exits 1 when the file is stale.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { ErrorCodes } = await import(join(root, 'dist/common/errors.js'));
const { ProtocolErrors } = await import(join(root, 'dist/control/protocol.js'));
const row = ([code, text]) => `| \`${code}\` | ${text} |`;
const doc = `# twinfs error codes

Generated from \`src/common/errors.ts\` and \`src/control/protocol.ts\` by
\`node scripts/gen-errors-doc.mjs\`; a test fails when this file is stale.

Every error a user, a script or a peer sees carries one of these stable codes: the CLI prints
\`twinfs: error CODE: message\` and exits non-zero (2 for usage errors), the REPL prints one
line \`error CODE: message\`, the control channel sends \`{type: "error", error: {code, message,
data}}\`. Filesystem operations through the mount report plain errno values (ENOENT, EEXIST,
ENOSPC, ...), mapped at one boundary (\`src/fusefs/fuse-adapter.ts\`).

## twinfs

| code | meaning |
|---|---|
${Object.entries(ErrorCodes).map(row).join('\n')}

## control protocol

| code | meaning |
|---|---|
${Object.entries(ProtocolErrors).map(row).join('\n')}
`;
const file = join(root, 'docs/errors.md');
if (process.argv.includes('--check')) {
  let cur = '';
  try {
    cur = readFileSync(file, 'utf8');
  } catch {}
  if (cur !== doc) {
    console.error('docs/errors.md is stale: run node scripts/gen-errors-doc.mjs');
    process.exit(1);
  }
} else writeFileSync(file, doc);
