import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfig } from '../common/config-schema.js';
import { TwinError } from '../common/errors.js';
import { z } from '../common/zod.js';
import {
  CONFIG_SECTIONS,
  type OPERATOR_KEY_NAMES,
  PEER_KEY_NAMES,
  readJsonConfig,
  SERVE_KEYS,
  type ServeConfig,
  validateConfig,
} from './config.js';

/**
 * Defaults of the operator commands (`twinfs repl`, `status`, `freeze`, `backup`, `restore`,
 * ...), from a JSON file named by `--config` or `$TWINFS_CONFIG`, so nobody retypes a server URL
 * and a token path. The command line wins over the environment, which wins over the file.
 * Documented in docs/cli.md.
 *
 * The file is either flat (operator and/or serve settings side by side) or in sections:
 * `{ "serve": {...}, "operator": {...}, "plugins": {...} }`, the same file `twinfs serve
 * --config` reads. Without an explicit `server` or `tokenFile`, they are derived from the serve
 * settings (`control`, `tokenFile`, `stateDir`), so on the server's host one file serves both.
 */
export interface OperatorConfig {
  /** Control channel URL, ws://HOST:PORT or wss://HOST:PORT. */
  server?: string;
  /** File holding the control token (the token itself belongs in $TWINFS_TOKEN, never here). */
  tokenFile?: string;
  /** CA certificate (PEM) to trust for wss://. */
  caFile?: string;
  /** Backup catalog directory. */
  catalog?: string;
  /** Default backup target spec (dir:/backups, s3:bucket/prefix, ...). */
  target?: string;
  /** REPL history file. */
  history?: string;
}

type Kind = 'url' | 'path' | 'target';
// Typed against config.ts's list of names, which `twinfs serve` skips in a flat file.
const OPERATOR_KEYS: Record<keyof OperatorConfig & (typeof OPERATOR_KEY_NAMES)[number], Kind> = {
  server: 'url',
  tokenFile: 'path',
  caFile: 'path',
  catalog: 'path',
  target: 'target',
  history: 'path',
};
const SECTIONS = CONFIG_SECTIONS;
/** Keys of a flat serve config (src/cli/config.ts); kept here so a flat file can mix both kinds. */
const SERVE_KEYS_SET = new Set<string>(SERVE_KEYS);

/** Keys of a peer daemon config (`twinfs peer --config`) that operator commands leave alone. */
const PEER_ONLY_KEYS = new Set<string>(PEER_KEY_NAMES);

const nonEmpty = () =>
  z.string({ error: 'must be a non-empty string' }).min(1, { error: 'must be a non-empty string' });
/** The operator settings (zod): URLs, paths and target specs as strings of their form. */
const operatorSchema = z.strictObject({
  server: nonEmpty()
    .refine((v) => /^wss?:\/\/[^/]/.test(v), {
      error: (i) => `must be a ws:// or wss:// URL, not "${i.input}"`,
    })
    .optional(),
  tokenFile: nonEmpty().optional(),
  caFile: nonEmpty().optional(),
  catalog: nonEmpty().optional(),
  target: nonEmpty()
    .refine((v) => /^[a-z][a-z0-9_-]*:/i.test(v), { error: (i) => `must be TYPE:LOCATION, not "${i.input}"` })
    .optional(),
  history: nonEmpty().optional(),
});

const bad = (file: string, key: string, why: string) =>
  new TwinError('ETWIN_CONFIG', `config ${file}: "${key}" ${why}`, { file, key });

/** Reads and validates an operator config file; relative paths in it are relative to the file. */
export async function loadOperatorConfig(file: string): Promise<OperatorConfig> {
  const raw = await readJsonConfig(file);
  return parseOperatorConfig(raw, file);
}

/** Validates a parsed config (see loadOperatorConfig); errors name the bad key. */
export function parseOperatorConfig(raw: unknown, file: string): OperatorConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw))
    throw new TwinError('ETWIN_CONFIG', `config ${file} must hold a JSON object`, { file });
  const obj = raw as Record<string, unknown>;
  let operator: Record<string, unknown> = {};
  let serve: Record<string, unknown> | undefined;
  if (Object.keys(obj).some((k) => (SECTIONS as readonly string[]).includes(k))) {
    for (const k of Object.keys(obj))
      if (!(SECTIONS as readonly string[]).includes(k))
        throw bad(file, k, `is not a section (expected ${SECTIONS.join(', ')})`);
    for (const s of ['serve', 'operator'] as const)
      if (obj[s] !== undefined && (!obj[s] || typeof obj[s] !== 'object' || Array.isArray(obj[s])))
        throw bad(file, s, 'must be an object');
    operator = (obj.operator as Record<string, unknown> | undefined) ?? {};
    serve = obj.serve as Record<string, unknown> | undefined;
    for (const k of Object.keys(operator))
      if (!(k in OPERATOR_KEYS))
        throw bad(
          file,
          `operator.${k}`,
          `is not a setting (known: ${Object.keys(OPERATOR_KEYS).join(', ')})`,
        );
  } else {
    // Flat: each key is an operator or a serve setting (tokenFile is both); a peer daemon's
    // config works too (server, tokenFile, target, catalog, caFile are operator settings).
    serve = {};
    for (const [k, v] of Object.entries(obj)) {
      if (k in OPERATOR_KEYS) operator[k] = v;
      if (SERVE_KEYS_SET.has(k)) serve[k] = v;
      if (!(k in OPERATOR_KEYS) && !SERVE_KEYS_SET.has(k) && !PEER_ONLY_KEYS.has(k))
        throw bad(
          file,
          k,
          `is not a setting (operator settings: ${Object.keys(OPERATOR_KEYS).join(', ')}; serve and peer settings: see docs/cli.md)`,
        );
    }
  }
  const out: OperatorConfig = {};
  const dir = path.dirname(path.resolve(file));
  const checked = parseConfig(operatorSchema, operator, `config ${file}`, { file });
  for (const [k, v] of Object.entries(checked) as Array<[keyof OperatorConfig, string | undefined]>) {
    if (v === undefined) continue;
    const kind = OPERATOR_KEYS[k];
    out[k] =
      kind === 'path'
        ? path.resolve(dir, v.startsWith('~/') ? path.join(os.homedir(), v.slice(2)) : v)
        : kind === 'target' && v.startsWith('dir:') && v.length > 4
          ? `dir:${path.resolve(dir, v.slice(4))}`
          : v;
  }
  if (serve) {
    // validateConfig names a bad key of the serve settings the same way `twinfs serve` does.
    const s: ServeConfig = validateConfig(serve, file);
    out.server ??= serverFromControl(s);
    out.tokenFile ??= s.tokenFile ?? (s.stateDir ? path.join(s.stateDir, 'control.token') : undefined);
  }
  return out;
}

/** `control: "127.0.0.1:7420"` → ws://127.0.0.1:7420 (a wildcard host is reached through loopback). */
function serverFromControl(s: ServeConfig): string | undefined {
  if (!s.control) return undefined;
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s.control) ?? /^()()(\d+)$/.exec(s.control);
  if (!m || Number(m[3]) === 0) return undefined;
  let host = m[1] || m[2] || '127.0.0.1';
  if (host === '0.0.0.0') host = '127.0.0.1';
  if (host === '::') host = '::1';
  if (host.includes(':')) host = `[${host}]`;
  return `${s.tlsCert ? 'wss' : 'ws'}://${host}:${m[3]}`;
}

/** The config named by --config, else $TWINFS_CONFIG, else none. */
export async function operatorConfigFrom(configFile: string | undefined): Promise<OperatorConfig> {
  const file = configFile ?? process.env.TWINFS_CONFIG;
  return file ? loadOperatorConfig(file) : {};
}
