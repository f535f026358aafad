import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { z } from '../common/zod.js';
import { describeIssues, type SelectorMsg } from '../control/protocol.js';

/**
 * The peer daemon's JSON config (`twinfs peer --config F`). Relative paths in it are relative
 * to the file. Example:
 *
 *   { "server": "ws://127.0.0.1:7070", "tokenFile": "token", "target": "dir:/backups",
 *     "intervalSec": 3600, "subtree": "/home", "mirrorMap": { "twin-…": "/mnt/mirror" },
 *     "keepLast": 24, "keepDaily": 14 }
 */
export const peerConfigSchema = z
  .object({
    server: z.string().regex(/^wss?:\/\//, 'must be a ws:// or wss:// URL'),
    tokenFile: z.string().min(1),
    target: z.string().min(3),
    catalog: z.string().optional(),
    intervalSec: z.number().positive(),
    paths: z.array(z.string().min(1)).min(1).optional(),
    subtree: z.string().min(1).optional(),
    mirrorMap: z.record(z.string(), z.string()).optional(),
    leaseSec: z.number().min(1).optional(),
    keepLast: z.number().int().min(1).optional(),
    keepDaily: z.number().int().min(1).optional(),
    /** CA certificate (PEM file) for wss:// with a private CA. */
    caFile: z.string().optional(),
    /** How long onWillFreeze plugin hooks may take, seconds (default 10; not part of the write stall). */
    freezeHookTimeoutSec: z.number().positive().optional(),
    /** A failed onWillFreeze hook: go on crash-consistent (default) or fail the run. */
    onHookFailure: z.enum(['crash-consistent', 'fail']).optional(),
  })
  .strict()
  .refine((c) => !(c.paths && c.subtree), { message: 'name paths or subtree, not both' });

export type PeerConfig = z.infer<typeof peerConfigSchema>;

export async function loadPeerConfig(file: string): Promise<PeerConfig> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new TwinError('ETWIN_CONFIG', `cannot read peer config ${file}: ${e.code ?? e.message}`, { file });
  }
  const parsed = peerConfigSchema.safeParse(raw);
  if (!parsed.success)
    throw new TwinError('ETWIN_CONFIG', `peer config ${file}: ${describeIssues(parsed.error)}`, { file });
  const c = parsed.data;
  const dir = path.dirname(path.resolve(file));
  const rel = (p: string) => path.resolve(dir, p);
  return {
    ...c,
    tokenFile: rel(c.tokenFile),
    catalog: c.catalog === undefined ? undefined : rel(c.catalog),
    caFile: c.caFile === undefined ? undefined : rel(c.caFile),
    target: c.target.startsWith('dir:') ? `dir:${rel(c.target.slice(4))}` : c.target,
    mirrorMap: c.mirrorMap && Object.fromEntries(Object.entries(c.mirrorMap).map(([k, v]) => [k, rel(v)])),
  };
}

/** The protocol selector for paths / a subtree / (neither) the volume. */
export function selectorFor(o: { paths?: string[]; subtree?: string }): SelectorMsg {
  if (o.paths && o.paths.length > 0 && o.subtree)
    throw new TwinError('ETWIN_USAGE', 'name --path or --subtree, not both');
  if (o.paths && o.paths.length > 0) return { paths: o.paths.map(normalize) };
  if (o.subtree) return { subtree: normalize(o.subtree) };
  return { volume: true };
}

function normalize(p: string): string {
  const parts = p.split('/').filter((x) => x && x !== '.');
  if (parts.includes('..'))
    throw new TwinError('ETWIN_PATH_ESCAPE', `path ${JSON.stringify(p)} escapes the volume root`, {
      path: p,
    });
  return '/' + parts.join('/');
}

/** Reads a token file (the first line, trimmed); refused if group or others can read it. */
export { readToken } from '../control/token.js';
