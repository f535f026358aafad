import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { CompletionKind, OperatorCommand } from '../commands/index.js';
import { splitWords } from './words.js';

export interface DirEntry {
  name: string;
  dir: boolean;
}

/** Where completions come from; each source is optional (nothing is offered without it). */
export interface CompletionSources {
  commands: ReadonlyMap<string, OperatorCommand>;
  /** Words the REPL itself understands (help, exit). */
  builtins: readonly string[];
  /** Lists a directory of the volume ('/' is its root). */
  listVolumeDir?(dir: string): Promise<DirEntry[]>;
  /** Lists a directory of this host (for --to, --catalog, dir: targets). */
  listLocalDir?(dir: string): Promise<DirEntry[]>;
  /** Snapshot ids in the catalog (--catalog from the line, if given). */
  snapshotIds?(catalog: string | undefined): Promise<string[]>;
  /** Backup target types (dir, tar, s3, plugin ones). */
  targetIds?(): Promise<string[]> | string[];
}

/**
 * Tab completion for the REPL's plain-word lines: command names, options, option values and
 * positional arguments by the kind each command declares. Returns node:readline's
 * [completions, word being completed]; every completion starts with that word.
 */
export async function complete(line: string, src: CompletionSources): Promise<[string[], string]> {
  let words: string[];
  try {
    words = splitWords(line);
  } catch {
    return [[], ''];
  }
  const endsWithSpace = /\s$/.test(line) || line === '';
  const cur = endsWithSpace ? '' : (words[words.length - 1] ?? '');
  const before = endsWithSpace ? words : words.slice(0, -1);
  const match = (list: Iterable<string>, suffix = ' ') =>
    [...new Set(list)]
      .filter((n) => n.startsWith(cur))
      .sort()
      .map((n) => n + suffix);
  if (before.length === 0) return [match([...src.commands.keys(), ...src.builtins]), cur];
  const name = before[0]!;
  if (name === 'help') return [before.length === 1 ? match(src.commands.keys()) : [], cur];
  const cmd = src.commands.get(name);
  if (!cmd) return [[], cur];
  const specs = cmd.options ?? {};
  const flags = new Set(
    Object.entries(specs)
      .filter(([, o]) => o.type === 'boolean')
      .map(([k]) => `--${k}`),
  );
  const prev = before[before.length - 1]!;
  if (before.length > 1 && prev.startsWith('--') && !prev.includes('=') && !flags.has(prev)) {
    const kind = specs[prev.slice(2)]?.completes;
    return [kind ? await completeKind(kind, cur, before, src) : [], cur];
  }
  if (cur.startsWith('-')) {
    const used = new Set(before.filter((w) => w.startsWith('--')));
    return [
      match(
        Object.keys(specs)
          .map((k) => `--${k}`)
          .filter((o) => !used.has(o) || specs[o.slice(2)]?.array),
      ),
      cur,
    ];
  }
  // The index of the positional argument being completed: words that are not options or their values.
  let index = 0;
  for (let i = 1; i < before.length; i++) {
    const w = before[i]!;
    if (w.startsWith('--')) {
      if (!w.includes('=') && !flags.has(w)) i++;
    } else index++;
  }
  const completes = cmd.args?.completes;
  const kinds = completes === undefined ? [] : Array.isArray(completes) ? completes : [completes];
  const kind = kinds[Math.min(index, kinds.length - 1)];
  return [kind ? await completeKind(kind, cur, before, src) : [], cur];
}

async function completeKind(
  kind: CompletionKind,
  cur: string,
  before: string[],
  src: CompletionSources,
): Promise<string[]> {
  switch (kind) {
    case 'commands':
      return [...src.commands.keys()].filter((n) => n.startsWith(cur)).sort();
    case 'paths':
      return src.listVolumeDir ? completePath(cur, src.listVolumeDir) : [];
    case 'local':
      return completePath(cur, src.listLocalDir ?? localDirLister);
    case 'snapshots': {
      if (!src.snapshotIds) return [];
      const i = before.indexOf('--catalog');
      const ids = await src.snapshotIds(i > 0 ? before[i + 1] : undefined).catch(() => [] as string[]);
      return ['latest', ...ids].filter((id) => id.startsWith(cur)).map((id) => id + ' ');
    }
    case 'targets': {
      const colon = cur.indexOf(':');
      if (colon < 0) {
        const ids = new Set(['dir', ...((await src.targetIds?.()) ?? [])]);
        return [...ids]
          .sort()
          .map((id) => id + ':')
          .filter((s) => s.startsWith(cur));
      }
      // dir:LOCATION is a path on this host; other types' locations are their own business.
      if (cur.slice(0, colon) !== 'dir') return [];
      const spec = cur.slice(0, colon + 1);
      const inner = await completePath(cur.slice(colon + 1), src.listLocalDir ?? localDirLister);
      return inner.map((p) => spec + p);
    }
  }
}

/** Completes a path word: entries of its directory part that start with its last component. */
async function completePath(cur: string, list: (dir: string) => Promise<DirEntry[]>): Promise<string[]> {
  const slash = cur.lastIndexOf('/');
  const dirPart = slash >= 0 ? cur.slice(0, slash + 1) : '';
  const base = cur.slice(slash + 1);
  const entries = await list(dirPart === '' ? (cur.startsWith('/') ? '/' : '.') : dirPart).catch(
    () => [] as DirEntry[],
  );
  return entries
    .filter((e) => e.name.startsWith(base) && (base.startsWith('.') || !e.name.startsWith('.')))
    .map((e) => dirPart + e.name + (e.dir ? '/' : ' '))
    .sort();
}

/** Lists a directory; a relative one is taken relative to root (default: the working directory). */
export function directoryLister(root?: string): (dir: string) => Promise<DirEntry[]> {
  return async (dir) => {
    const where = root ? path.join(root, path.posix.normalize('/' + dir)) : path.resolve(dir);
    const entries = await fsp.readdir(where, { withFileTypes: true });
    return entries.map((e) => ({ name: e.name, dir: e.isDirectory() }));
  };
}

const localDirLister = directoryLister();
