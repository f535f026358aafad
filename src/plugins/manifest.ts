import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
// The three functions, not the package's index (48 modules, loaded by every command's start).
import satisfies from 'semver/functions/satisfies.js';
import valid from 'semver/functions/valid.js';
import validRange from 'semver/ranges/valid.js';
import { z } from 'zod';
import { TwinError } from '../common/errors.js';

/** The twinfs plugin API version plugins declare compatibility with in engines.twinfs. */
export const API_VERSION = '1.2.0';

const activationEvent = z
  .string()
  .regex(
    /^(onStartup|\*|onTarget:[\w.-]+|onCommand:[\w.:-]+|onEvent:[\w.-]+)$/,
    'activation events are onStartup, onTarget:ID, onCommand:ID or onEvent:NAME',
  );

export const manifestSchema = z.object({
  name: z.string().regex(/^(@[a-z0-9-]+\/)?[a-z0-9][a-z0-9._-]*$/, 'name must be a lowercase package name'),
  version: z.string().refine((v) => valid(v) !== null, 'version must be semver'),
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
  if (validRange(range) === null)
    throw new TwinError('ETWIN_PLUGIN_ENGINE', `${m.name}: engines.twinfs "${range}" is not a semver range`, {
      plugin: m.name,
    });
  if (!satisfies(API_VERSION, range))
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
