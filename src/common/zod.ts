// zod as twinfs builds its schemas: without zod's JIT. By default zod compiles, with `new Function`,
// a parser of its own for every object schema on its first parse (and first tries whether eval is
// allowed); the compiled code is not in the CLI bundle's code cache (docs/architecture.md "The
// bundle's code cache"), so every command compiled its parsers again for a handful of messages:
// ~7% of a no-change backup's instructions went to zod, its JIT among them. twinfs parses few
// messages a second (control requests and replies, config files, plugin manifests), where the
// interpreted parser costs nothing noticeable. Every schema module imports z from here, so the
// setting is made before any schema is built (zod reads it when an object schema is built).
import { z } from 'zod';

z.config({ jitless: true });

export { z };
