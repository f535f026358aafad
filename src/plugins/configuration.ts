import { TwinError } from '../common/errors.js';
import type { PluginManifest } from './manifest.js';

type Prop = {
  type?: string | string[];
  default?: unknown;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  description?: string;
};

/**
 * Validates a plugin's configuration against contributes.configuration (the JSON-schema subset
 * plugins use: type, enum, minimum, maximum, default) and fills defaults. Unknown keys and
 * wrong types are named errors.
 */
export function validateConfiguration(
  m: PluginManifest,
  values: Record<string, unknown>,
): Record<string, unknown> {
  const props = (m.contributes.configuration?.properties ?? {}) as Record<string, Prop>;
  const out: Record<string, unknown> = {};
  for (const [k, p] of Object.entries(props)) if (p.default !== undefined) out[k] = p.default;
  for (const [k, v] of Object.entries(values)) {
    const p = props[k];
    if (!p)
      throw new TwinError('ETWIN_PLUGIN_CONFIG', `${m.name}: unknown setting "${k}"`, {
        plugin: m.name,
        key: k,
      });
    const types = p.type === undefined ? [] : Array.isArray(p.type) ? p.type : [p.type];
    const actual =
      v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v;
    if (types.length && !types.some((t) => t === actual || (t === 'number' && actual === 'integer')))
      throw new TwinError(
        'ETWIN_PLUGIN_CONFIG',
        `${m.name}: setting "${k}" must be ${types.join(' or ')}, not ${actual}`,
        { plugin: m.name, key: k },
      );
    if (p.enum && !p.enum.includes(v))
      throw new TwinError(
        'ETWIN_PLUGIN_CONFIG',
        `${m.name}: setting "${k}" must be one of ${p.enum.join(', ')}`,
        { plugin: m.name, key: k },
      );
    if (
      typeof v === 'number' &&
      ((p.minimum !== undefined && v < p.minimum) || (p.maximum !== undefined && v > p.maximum))
    )
      throw new TwinError('ETWIN_PLUGIN_CONFIG', `${m.name}: setting "${k}" is out of range`, {
        plugin: m.name,
        key: k,
      });
    out[k] = v;
  }
  return out;
}
