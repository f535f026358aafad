import { promises as fsp } from 'node:fs';
import picomatch from 'picomatch';
import { TwinError } from './errors.js';

/**
 * Path patterns as restic documents them for --exclude, --exclude-file, restore's --include and
 * --exclude, and find (the --iexclude/--iinclude forms and find --ignore-case match ignoring case):
 * - glob syntax (`*` and `?` within a name, `[...]` classes, `**` for any number of
 *   directories), matched against the volume path (`/a/b/c`);
 * - a pattern that starts with `/` is anchored at the volume root; any other matches at any
 *   depth (`*.log` matches `/x/y/z.log`, `cache/tmp` matches `/home/u/cache/tmp`);
 * - a pattern that matches a directory matches everything below it;
 * - `!` before a pattern negates it: the last pattern that matches a path decides (so
 *   `/data` then `!/data/keep` leaves /data/keep in).
 * Matching is picomatch's (a maintained matcher), with brackets checked strictly so that a
 * typo such as `[abc` is an error (ETWIN_BAD_PATTERN), not a pattern that silently never matches.
 */
export class PathPatterns {
  private constructor(
    private readonly rules: Array<{ negate: boolean; test: (p: string) => boolean; source: string }>,
  ) {}

  /** Compiles patterns; a malformed one is ETWIN_BAD_PATTERN naming it (and `from`, its file). */
  static compile(
    patterns: readonly string[],
    opts: { from?: string; ignoreCase?: boolean } = {},
  ): PathPatterns {
    return new PathPatterns(patterns.map((p) => compileOne(p, opts)));
  }

  /**
   * The patterns of the command line then those of pattern files (readPatternFile), in that
   * order; a malformed one is ETWIN_BAD_PATTERN naming it and its file.
   */
  static async load(o: {
    patterns?: readonly string[];
    files?: readonly string[];
    /** Patterns matched ignoring case (restic's --iexclude, --iinclude), after the others. */
    ipatterns?: readonly string[];
    /** Pattern files whose patterns match ignoring case (--iexclude-file, --iinclude-file). */
    ifiles?: readonly string[];
  }): Promise<PathPatterns> {
    const rules = (o.patterns ?? []).map((p) => compileOne(p, {}));
    for (const f of o.files ?? [])
      for (const p of await readPatternFile(f)) rules.push(compileOne(p, { from: f }));
    for (const p of o.ipatterns ?? []) rules.push(compileOne(p, { ignoreCase: true }));
    for (const f of o.ifiles ?? [])
      for (const p of await readPatternFile(f)) rules.push(compileOne(p, { from: f, ignoreCase: true }));
    return new PathPatterns(rules);
  }

  /** The patterns as given, in order (recorded with a snapshot). */
  get patterns(): string[] {
    return this.rules.map((r) => r.source);
  }

  /** Whether the volume path (or a directory above it) is matched, the last matching pattern deciding. */
  matches(volumePath: string): boolean {
    if (this.rules.length === 0) return false;
    const chain = ancestry(volumePath);
    let hit = false;
    for (const r of this.rules) if (chain.some((p) => r.test(p))) hit = !r.negate;
    return hit;
  }

  /** Whether the path itself (not a directory above it) is matched: what find reports. */
  matchesExactly(volumePath: string): boolean {
    let hit = false;
    for (const r of this.rules) if (r.test(volumePath)) hit = !r.negate;
    return hit;
  }
}

function compileOne(raw: string, opts: { from?: string; ignoreCase?: boolean }) {
  const where = opts.from ? ` (in ${opts.from})` : '';
  const negate = raw.startsWith('!');
  let glob = (negate ? raw.slice(1) : raw).trim();
  if (glob.length > 1) glob = glob.replace(/\/+$/, '');
  if (!glob)
    throw new TwinError('ETWIN_BAD_PATTERN', `empty pattern ${JSON.stringify(raw)}${where}`, {
      pattern: raw,
    });
  if (!glob.startsWith('/')) glob = `**/${glob}`;
  try {
    const re = picomatch.makeRe(glob, { dot: true, strictBrackets: true, nocase: opts.ignoreCase });
    return { negate, test: (p: string) => re.test(p), source: raw };
  } catch (err) {
    throw new TwinError(
      'ETWIN_BAD_PATTERN',
      `bad pattern ${JSON.stringify(raw)}${where}: ${(err as Error).message}`,
      { pattern: raw },
    );
  }
}

/** '/a/b/c' → ['/a/b/c', '/a/b', '/a']. */
function ancestry(p: string): string[] {
  const out = [p];
  for (let i = p.lastIndexOf('/'); i > 0; i = p.lastIndexOf('/', i - 1)) out.push(p.slice(0, i));
  return out;
}

/**
 * The patterns of an --exclude-file, as restic reads one: a pattern per line, surrounding
 * blanks trimmed, empty lines and lines starting with `#` skipped, and `$VAR` / `${VAR}`
 * expanded from the environment.
 */
export async function readPatternFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<string[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new TwinError('ETWIN_USAGE', `cannot read the pattern file ${file}: ${(err as Error).message}`, {
      file,
    });
  }
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string, b: string) => env[a ?? b] ?? ''));
}
