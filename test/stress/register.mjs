// `node --import ./test/stress/register.mjs file.ts`: run the harness's TypeScript with plain
// node (see ts-hooks.mjs).
import { register } from 'node:module';

register('./ts-hooks.mjs', import.meta.url);
