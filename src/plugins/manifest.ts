import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { z } from '../common/zod.js';

/** The twinfs plugin API version plugins declare compatibility with in engines.twinfs. */
export const API_VERSION = '1.3.0';

/** A version without prerelease or build (semver's numbers: no leading zeros). */
const PLAIN = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$/;

interface Semver {
  valid(v: string): string | null;
  validRange(r: string): string | null;
  satisfies(v: string, r: string): boolean;
}
let semverFns: Semver | undefined;
/**
 * semver's three functions, required on first need: semver builds its ~40 regular expressions
 * when it loads and a Range's on each parse, ~5 ms of every command's start for the manifests
 * of the built-in plugins, whose versions and ranges (`1.0.0`, `^1.1.0`) the checks below
 * answer without it. Not bundled (scripts/bundle-cli.mjs): loaded from node_modules.
 */
function semver(): Semver {
  if (!semverFns) {
    const req = createRequire(import.meta.url);
    semverFns = {
      valid: req('semver/functions/valid.js'),
      validRange: req('semver/ranges/valid.js'),
      satisfies: req('semver/functions/satisfies.js'),
    };
  }
  return semverFns;
}

/** semver's valid(): a plain X.Y.Z without it. */
function validVersion(v: string): boolean {
  return PLAIN.test(v) || semver().valid(v) !== null;
}

/**
 * Whether the API version satisfies the range, undefined for a malformed range. A caret range
 * on a plain version of major 1 or more (`^1.1.0`: >=1.1.0 <2.0.0) is answered here, every
 * other range by semver.
 */
function apiSatisfies(range: string): boolean | undefined {
  const caret = range.startsWith('^') ? PLAIN.exec(range.slice(1)) : null;
  const api = PLAIN.exec(API_VERSION)!;
  if (caret && Number(caret[1]) >= 1) {
    const [want, have] = [caret, api].map((m) => [Number(m[1]), Number(m[2]), Number(m[3])] as const);
    if (want[0] !== have[0]) return false;
    return have[1] > want[1] || (have[1] === want[1] && have[2] >= want[2]);
  }
  const s = semver();
  if (s.validRange(range) === null) return undefined;
  return s.satisfies(API_VERSION, range);
}

const activationEvent = z
  .string()
  .regex(
    /^(onStartup|\*|onTarget:[\w.-]+|onCommand:[\w.:-]+|onEvent:[\w.-]+)$/,
    'activation events are onStartup, onTarget:ID, onCommand:ID or onEvent:NAME',
  );

export const manifestSchema = z.object({
  name: z.string().regex(/^(@[a-z0-9-]+\/)?[a-z0-9][a-z0-9._-]*$/, 'name must be a lowercase package name'),
  version: z.string().refine(validVersion, 'version must be semver'),
  displayName: z.string().optional(),
  description: z.string().optional(),
  main: z.string().min(1),
  engines: z.object({ twinfs: z.string() }).passthrough(),
  activationEvents: z.array(activationEvent).default([]),
  contributes: z
    .object({
      backupTargets: z
        .array(z.object({ id: z.string().regex(/^[a-z][a-z0-9-]*$/), description: z.string().optional() }))
        .default([]),
      commands: z
        .array(
          z.object({
            command: z.string().regex(/^[\w.:-]+$/),
            title: z.string(),
            description: z.string().optional(),
          }),
        )
        .default([]),
      configuration: z
        .object({ type: z.literal('object').optional(), properties: z.record(z.string(), z.any()) })
        .passthrough()
        .optional(),
    })
    .default({ backupTargets: [], commands: [] }),
  /** Other plugins (by name) that must activate first. */
  pluginDependencies: z.record(z.string(), z.string()).optional(),
});
export type PluginManifest = z.infer<typeof manifestSchema>;

/** Reads and checks a plugin folder's package.json. Throws named errors. */
export async function readManifest(dir: string): Promise<PluginManifest> {
  const file = path.join(dir, 'package.json');
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new TwinError('ETWIN_PLUGIN_MANIFEST', `${file}: ${(err as Error).message}`, { dir });
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new TwinError('ETWIN_PLUGIN_MANIFEST', `${file}: ${i.path.join('.') || 'manifest'}: ${i.message}`, {
      dir,
    });
  }
  const m = parsed.data;
  const range = m.engines.twinfs.trim();
  if (range === '*' || range === '' || range === 'x')
    throw new TwinError(
      'ETWIN_PLUGIN_ENGINE',
      `${m.name}: engines.twinfs must be a version range, not "${range}"`,
      { plugin: m.name },
    );
  const ok = apiSatisfies(range);
  if (ok === undefined)
    throw new TwinError('ETWIN_PLUGIN_ENGINE', `${m.name}: engines.twinfs "${range}" is not a semver range`, {
      plugin: m.name,
    });
  if (!ok)
    throw new TwinError(
      'ETWIN_PLUGIN_ENGINE',
      `${m.name} needs twinfs API ${range}; this is ${API_VERSION}`,
      {
        plugin: m.name,
        range,
        api: API_VERSION,
      },
    );
  return m;
}
