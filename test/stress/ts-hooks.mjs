// Module hooks that let plain `node` run the stress harness's TypeScript (the writer child
// processes and bench/stress.mjs run outside vitest; Node 20 cannot strip types). A `.js`
// specifier that does not exist next to its importer resolves to the `.ts` file beside it
// (the repository's NodeNext convention), and `.ts` files are transpiled with the project's
// own `typescript` (types erased, nothing checked: `npm run typecheck` and vitest do that).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
let ts;

export async function resolve(specifier, context, next) {
  if (specifier.endsWith('.js') && context.parentURL?.endsWith('.ts')) {
    const url = new URL(specifier, context.parentURL);
    if (url.protocol === 'file:' && !existsSync(fileURLToPath(url))) {
      const tsUrl = url.href.replace(/\.js$/, '.ts');
      if (existsSync(fileURLToPath(tsUrl))) return { url: tsUrl, shortCircuit: true };
    }
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.endsWith('.ts')) return next(url, context);
  ts ??= require('typescript');
  const source = readFileSync(fileURLToPath(url), 'utf8');
  const out = ts.transpileModule(source, {
    fileName: fileURLToPath(url),
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      sourceMap: false,
      inlineSourceMap: true,
      verbatimModuleSyntax: false,
    },
  });
  return { format: 'module', source: out.outputText, shortCircuit: true };
}
