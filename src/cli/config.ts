import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  configBoolean,
  configPositive,
  configString,
  objectOf,
  parseConfig,
} from '../common/config-schema.js';
import { TwinError } from '../common/errors.js';
import { z } from '../common/zod.js';
import { type SmbSettings, validateSmbSettings } from '../smb/settings.js';

/** Settings of `twinfs serve`, from the config file and then the command line. */
export interface ServeConfig {
  primary?: string;
  mount?: string;
  mirror?: string;
  cacheMb?: number;
  writebackMs?: number;
  writeThrough?: boolean;
  flushOnClose?: boolean;
  force?: boolean;
  /** Where twinfs keeps the primary's volume id (default /var/lib/twinfs as root). */
  stateDir?: string;
  /** Take over a mirror that belongs to another primary. */
  adoptMirror?: boolean;
  /** HOST:PORT of the control channel (websocket). */
  control?: string;
  /** Control token file (created 0600 if missing). Default STATE_DIR/control.token. */
  tokenFile?: string;
  /** Longest a prepare may hold writes, ms (default 1000). */
  maxStallMs?: number;
  /** Longest the kernel write-back of dirty mmap pages before a prepare may take, ms (default 30000). */
  kernelSyncTimeoutMs?: number;
  tlsCert?: string;
  tlsKey?: string;
  /** A second token file whose token may only look (status, verify); created 0600 if missing. */
  readTokenFile?: string;
  /** Allow a non-loopback --control address without TLS (the token then crosses the network in clear). */
  insecureBind?: boolean;
  /** Most control connections at once (default 256; never more than 1/8 of the descriptor limit). */
  controlMaxConnections?: number;
  /** Serve the mount over SMB with a supervised smbd (docs/smb.md). */
  smb?: SmbSettings;
  /** HOST:PORT of the status page and /metrics (docs/observability.md); loopback by default. */
  http?: string;
  /** The server log's level: trace, debug, info (default), warn, error, fatal, silent. */
  logLevel?: string;
  /** Which libfuse serves the mount: 3 (default: kernel caching, exact invalidation) or 2. */
  fuse?: number;
}

const path_ = configString();
/** The serve settings (flat file, or its "serve" section); `smb` is checked by validateSmbSettings. */
const serveSchema = objectOf({
  primary: path_.optional(),
  mount: path_.optional(),
  mirror: path_.optional(),
  cacheMb: configPositive.optional(),
  writebackMs: configPositive.optional(),
  writeThrough: configBoolean.optional(),
  flushOnClose: configBoolean.optional(),
  force: configBoolean.optional(),
  stateDir: path_.optional(),
  adoptMirror: configBoolean.optional(),
  control: configString().optional(),
  tokenFile: path_.optional(),
  maxStallMs: configPositive.optional(),
  kernelSyncTimeoutMs: configPositive.optional(),
  tlsCert: path_.optional(),
  tlsKey: path_.optional(),
  readTokenFile: path_.optional(),
  insecureBind: configBoolean.optional(),
  controlMaxConnections: configPositive.optional(),
  smb: z.unknown().optional(),
  http: configString().optional(),
  logLevel: configString().optional(),
  fuse: z
    .custom<number>((v) => typeof v === 'number', { error: 'must be a number', abort: true })
    .refine((v) => v === 2 || v === 3, { error: 'must be 2 or 3' })
    .optional(),
});
const SCHEMA = serveSchema.shape;
/** Settings that are not file paths (the others are taken relative to the config file). */
const NOT_PATHS = new Set(['control', 'smb', 'http', 'logLevel']);

/** The keys of a serve config (flat, or its "serve" section). */
export const SERVE_KEYS: readonly (keyof ServeConfig)[] = Object.keys(SCHEMA) as (keyof ServeConfig)[];

/**
 * Keys of the shared config file that belong to the operator commands (src/cli/operator-config.ts)
 * and to the peer daemon: `twinfs serve` leaves them alone in a flat file (docs/cli.md), as the
 * operator commands leave the serve keys alone. tokenFile is both an operator and a serve key.
 */
export const OPERATOR_KEY_NAMES = ['server', 'tokenFile', 'caFile', 'catalog', 'target', 'history'] as const;
export const PEER_KEY_NAMES = [
  'intervalSec',
  'paths',
  'subtree',
  'mirrorMap',
  'leaseSec',
  'keepLast',
  'keepDaily',
] as const;
/** Top-level keys of a config in sections. */
export const CONFIG_SECTIONS = ['serve', 'operator', 'plugins'] as const;

/** Reads a config file as JSON; errors are ETWIN_CONFIG naming the file. */
export async function readJsonConfig(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new TwinError(
      'ETWIN_CONFIG',
      `cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code}`,
      { file },
    );
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new TwinError('ETWIN_CONFIG', `config file ${file} is not valid JSON: ${(err as Error).message}`, {
      file,
    });
  }
}

/** Reads and validates a JSON config file. Relative paths in it are relative to the file. */
export async function loadConfig(file: string): Promise<ServeConfig> {
  const raw = await readJsonConfig(file);
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return validateConfig(raw, file);
  const obj = raw as Record<string, unknown>;
  if (Object.keys(obj).some((k) => (CONFIG_SECTIONS as readonly string[]).includes(k)))
    return validateConfig(obj.serve ?? {}, file);
  // Flat: the operator's and the peer's keys sit beside the serve keys; a key nobody knows is
  // still refused by name.
  const others = new Set<string>([...OPERATOR_KEY_NAMES, ...PEER_KEY_NAMES]);
  const serveOnly = Object.fromEntries(Object.entries(obj).filter(([k]) => k in SCHEMA || !others.has(k)));
  return validateConfig(serveOnly, file);
}

export function validateConfig(raw: unknown, file = '<config>'): ServeConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw))
    throw new TwinError('ETWIN_CONFIG', `config ${file} must hold a JSON object`, { file });
  const parsed = parseConfig(serveSchema, raw, `config ${file}`, { file });
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(parsed)) {
    if (v === undefined) continue;
    if (k === 'smb') out[k] = validateSmbSettings(v, file);
    else
      out[k] =
        typeof v === 'string' && file !== '<config>' && !NOT_PATHS.has(k)
          ? path.resolve(path.dirname(file), v)
          : v;
  }
  return out as ServeConfig;
}

/**
 * Validates settings given as command-line options: the same rules as a config file, reported
 * as usage errors that name the option (`--cache-mb must be a positive number`).
 */
export function validateCliSettings(cli: Record<string, unknown>): ServeConfig {
  try {
    return validateConfig(cli);
  } catch (err) {
    const key = err instanceof TwinError && err.code === 'ETWIN_CONFIG' ? err.data.key : undefined;
    if (typeof key !== 'string') throw err;
    const option = '--' + key.replace(/[A-Z]/g, (c: string) => '-' + c.toLowerCase());
    const message = (err as TwinError).message;
    const reason = message.replace(/^config <config>: ("[^"]+" |)/, '');
    throw new TwinError('ETWIN_USAGE', `${option} ${reason}`, { option });
  }
}
