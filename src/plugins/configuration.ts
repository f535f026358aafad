import { createRequire } from 'node:module';
import type { Ajv, ErrorObject } from 'ajv';
import { TwinError } from '../common/errors.js';
import type { PluginManifest } from './manifest.js';

let compiler: Ajv | undefined;
/** ajv, loaded on first use: most plugins declare no configuration (a backup's start counts). */
function ajv(): Ajv {
  const { Ajv: AjvClass } = createRequire(import.meta.url)('ajv') as typeof import('ajv');
  compiler ??= new AjvClass({ allErrors: false, useDefaults: true, strict: false });
  return compiler;
}

/**
 * Validates a plugin's configuration against its contributes.configuration, a JSON Schema
 * (draft-07, checked by ajv: types, enum, ranges, patterns, nested objects and arrays, ...), and
 * fills the defaults it names. Unknown keys are refused unless the schema allows them. Errors
 * are ETWIN_PLUGIN_CONFIG naming the setting.
 */
export function validateConfiguration(
  m: PluginManifest,
  values: Record<string, unknown>,
): Record<string, unknown> {
  // Nothing declared and nothing given: nothing to check or fill.
  if (!m.contributes.configuration && Object.keys(values).length === 0) return {};
  const declared = m.contributes.configuration ?? { properties: {} };
  const schema = { additionalProperties: false, ...declared, type: 'object' };
  let validate: ReturnType<Ajv['compile']>;
  try {
    validate = ajv().compile(schema);
  } catch (err) {
    throw new TwinError(
      'ETWIN_PLUGIN_CONFIG',
      `${m.name}: contributes.configuration is not a valid JSON Schema: ${(err as Error).message}`,
      { plugin: m.name },
    );
  }
  const out = structuredClone(values);
  if (!validate(out)) {
    const e = validate.errors![0]!;
    const key = keyOf(e);
    throw new TwinError('ETWIN_PLUGIN_CONFIG', `${m.name}: ${describe(e, key)}`, { plugin: m.name, key });
  }
  return out;
}

/** The setting an error is about (`retries`, `s3.bucket`). */
function keyOf(e: ErrorObject): string | undefined {
  const at = e.instancePath.split('/').slice(1).join('.');
  const extra = e.keyword === 'additionalProperties' ? String(e.params.additionalProperty) : undefined;
  return [at, extra].filter(Boolean).join('.') || undefined;
}

function describe(e: ErrorObject, key: string | undefined): string {
  if (e.keyword === 'additionalProperties') return `unknown setting "${key}"`;
  return `setting "${key ?? '(root)'}" ${e.message ?? 'is invalid'}${
    e.keyword === 'enum' ? `: ${(e.params.allowedValues as unknown[]).join(', ')}` : ''
  }`;
}
