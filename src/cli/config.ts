import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
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
  /** Serve the mount over SMB with a supervised smbd (docs/smb.md). */
  smb?: SmbSettings;
}

const SCHEMA: Record<keyof ServeConfig, 'string' | 'number' | 'boolean' | 'object'> = {
  primary: 'string',
  mount: 'string',
  mirror: 'string',
  cacheMb: 'number',
  writebackMs: 'number',
  writeThrough: 'boolean',
  flushOnClose: 'boolean',
  force: 'boolean',
  stateDir: 'string',
  adoptMirror: 'boolean',
  control: 'string',
  tokenFile: 'string',
  maxStallMs: 'number',
  kernelSyncTimeoutMs: 'number',
  tlsCert: 'string',
  tlsKey: 'string',
  smb: 'object',
};

/** The keys of a serve config (flat, or its "serve" section). */
export const SERVE_KEYS: readonly (keyof ServeConfig)[] = Object.keys(SCHEMA) as (keyof ServeConfig)[];

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
  const source = raw && typeof raw === 'object' && 'serve' in raw ? (raw as { serve: unknown }).serve : raw;
  return validateConfig(source, file);
}

export function validateConfig(raw: unknown, file = '<config>'): ServeConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw))
    throw new TwinError('ETWIN_CONFIG', `config ${file} must hold a JSON object`, { file });
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    const type = SCHEMA[k as keyof ServeConfig];
    if (!type)
      throw new TwinError('ETWIN_CONFIG', `config ${file}: unknown setting "${k}"`, { file, key: k });
    if (k === 'smb') {
      out[k] = validateSmbSettings(v, file);
      continue;
    }
    if (typeof v !== type)
      throw new TwinError('ETWIN_CONFIG', `config ${file}: "${k}" must be a ${type}`, { file, key: k });
    if (type === 'number' && (!Number.isFinite(v) || (v as number) <= 0))
      throw new TwinError('ETWIN_CONFIG', `config ${file}: "${k}" must be a positive number`, {
        file,
        key: k,
      });
    out[k] =
      type === 'string' && file !== '<config>' && k !== 'control'
        ? path.resolve(path.dirname(file), v as string)
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
    const reason = message.replace(/^config <config>: "[^"]+" /, '');
    throw new TwinError('ETWIN_USAGE', `${option} ${reason}`, { option });
  }
}
