import { closest, distance } from 'fastest-levenshtein';
import { Parser } from 'yargs/helpers';
import { TwinError } from '../common/errors.js';
import type { ProgressReport } from '../common/progress.js';
import type { ControlClient } from '../control/client.js';
import type { RecentSnapshots } from '../repl/status-text.js';

/**
 * The operator command set: each command (status, freeze, backup, ...) is defined once as an
 * OperatorCommand — name, arguments, options with their types and defaults, help, handler,
 * human output (ctx.print), result (the --json line) and exit status — and both front ends serve
 * the same definitions: yargs (src/commands/yargs.ts) and the REPL (src/repl). Words are parsed
 * by yargs' own parser in both, so types, defaults and unknown-option errors cannot differ.
 */

/** What an argument completes to in the REPL. 'local' is a path on this host (--to, --catalog). */
export type CompletionKind = 'paths' | 'snapshots' | 'targets' | 'commands' | 'local';

export interface OptionSpec {
  type: 'string' | 'number' | 'boolean';
  describe: string;
  default?: string | number | boolean;
  /** Repeatable (--path A --path B): the value is an array. */
  array?: boolean;
  choices?: readonly string[];
  /** Other names (without dashes). */
  alias?: string | string[];
  /** What the value completes to in the REPL. A 'paths' value is a volume path (normalised). */
  completes?: CompletionKind;
}

export interface ArgsSpec {
  /** Name in the usage and in --help ('paths', 'snapshot', ...). */
  name: string;
  describe: string;
  /** What positional arguments complete to, by position; the last kind repeats. */
  completes?: CompletionKind | CompletionKind[];
  /**
   * Which positional arguments are volume paths (normalised to /a/b): 'all', or those from this
   * index on (restore SNAPSHOT PATH... → 1).
   */
  volumePathsFrom?: number | 'all';
}

/** Defaults a front end takes from the operator config (`--config`, docs/cli.md). */
export interface OperatorDefaults {
  catalog?: string;
  target?: string;
}

/** What a command needs from the front end (REPL or CLI). */
export interface CommandContext {
  /** The connected control client (the REPL reconnects behind it; the CLI connects on first use). */
  client(): Promise<ControlClient>;
  /** The control channel's URL, when the front end knows it (recorded in snapshots). */
  serverUrl?: string;
  /** Prints one line of human output (suppressed with --json). */
  print(line: string): void;
  /** A warning: stderr on the command line, above the prompt in the REPL (and a JSON line with --json). */
  warn(w: { code?: string; message: string; [k: string]: unknown }): void;
  /** Reports progress of long work: the progress bar on a TTY, JSON lines with --json, else nothing. */
  progress(p: ProgressReport): void;
  json: boolean;
  signal: AbortSignal;
  defaults: OperatorDefaults;
  /** Plugin folders given to the front end (--plugin-dir). */
  pluginDirs?: string[];
  /**
   * The newest snapshots of a device in the local catalog (`catalog`, else the configured or
   * default one), newest first; null when there is no catalog here.
   */
  recentSnapshots?(deviceId: string | null, limit: number, catalog?: string): Promise<RecentSnapshots | null>;
}

export type OptionValue = string | number | boolean | string[] | undefined;

export interface ParsedArgs {
  positional: string[];
  /** By option name (as declared), typed and defaulted by its OptionSpec. */
  options: Record<string, OptionValue>;
  /** The words as given (for commands that parse their own, such as plugin commands). */
  raw: string[];
}

export interface OperatorCommand {
  name: string;
  summary: string;
  /** `freeze PATH... | --subtree DIR [--timeout SECONDS]` (without `twinfs`). */
  usage: string;
  /** In the REPL's words (`freeze /db --timeout 20`) with what each shows; the CLI prefixes `twinfs`. */
  examples?: Array<[string, string]>;
  args?: ArgsSpec;
  options?: Record<string, OptionSpec>;
  /** The plugin that contributes the command; it parses its own words (ParsedArgs.raw). */
  plugin?: string;
  /** Honours ctx.signal and cleans up before it settles (Ctrl-C waits for it). */
  cancellable?: boolean;
  /**
   * What the command made belongs to the connection (freeze, split): the command line holds it
   * until it ends; the REPL's connection holds it anyway.
   */
  holds?: 'freeze' | 'split';
  /** Exit status for a result that printed fine but is not a full success (default 0). */
  exitCode?(result: unknown): number;
  run(ctx: CommandContext, args: ParsedArgs): Promise<unknown>;
}

/**
 * The result a failed command still reports (a check's problems, a restore's failures): a
 * TwinError's data.result. With --json it is printed before the error line.
 */
export function resultOfFailure(err: unknown): unknown {
  const data = (err as { data?: { result?: unknown } } | undefined)?.data;
  return data && typeof data === 'object' ? data.result : undefined;
}

/** The closest of `known` to `word`, if it is close enough to be a likely typo. */
export function didYouMean(word: string, known: Iterable<string>): string | undefined {
  const list = [...known];
  if (list.length === 0 || word === '') return undefined;
  const best = closest(word, list);
  const d = distance(word, best);
  return d <= Math.max(1, Math.min(3, Math.floor(best.length / 3))) || best.startsWith(word)
    ? best
    : undefined;
}

/** The error for an unknown command, the same on the command line and in the REPL. */
export function unknownCommand(name: string, known: Iterable<string>): TwinError {
  const guess = didYouMean(name, known);
  return new TwinError(
    'ETWIN_USAGE',
    `unknown command "${name}"${guess ? `; did you mean "${guess}"?` : ''} (--help lists the commands)`,
  );
}

/** The error for unknown options of a command, the same on the command line and in the REPL. */
export function unknownOptions(command: string, given: string[], known: Iterable<string>): TwinError {
  const names = [...known];
  const parts = given.map((g) => {
    const dashes = g.length === 1 ? '-' : '--';
    const guess = didYouMean(g, names);
    return `${dashes}${g}${guess ? ` (did you mean --${guess}?)` : ''}`;
  });
  return new TwinError(
    'ETWIN_USAGE',
    `unknown option${given.length > 1 ? 's' : ''} ${parts.join(', ')} for ${command} (${command} --help lists what it takes)`,
  );
}

/** The option names a command knows, with aliases (without dashes). */
export function optionNames(options: Record<string, OptionSpec> | undefined): string[] {
  const out: string[] = [];
  for (const [k, o] of Object.entries(options ?? {})) {
    out.push(k);
    for (const a of [o.alias ?? []].flat()) out.push(a);
  }
  return out;
}

/** How words are parsed, on the command line (yargs) and in the REPL alike. */
export const PARSER_CONFIGURATION = {
  'camel-case-expansion': false,
  'strip-aliased': true,
  'parse-positional-numbers': false,
} as const;

const camel = (s: string) => s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/**
 * The parser configuration of a command's options: the same for yargs (the command line) and
 * for the REPL's words, so both give the same types and defaults.
 */
export function parserOptions(options: Record<string, OptionSpec> | undefined) {
  const o = {
    string: [] as string[],
    number: [] as string[],
    boolean: [] as string[],
    array: [] as string[],
    alias: {} as Record<string, string[]>,
    default: {} as Record<string, unknown>,
  };
  for (const [k, s] of Object.entries(options ?? {})) {
    o[s.type].push(k);
    if (s.array) o.array.push(k);
    if (s.alias) o.alias[k] = [s.alias].flat();
    if (s.default !== undefined) o.default[k] = s.default;
  }
  return o;
}

/**
 * Checks and normalises what a parser (yargs or yargs-parser) made of a command's words:
 * unknown options (ETWIN_USAGE with a suggestion), numbers that are not numbers, choices, and
 * volume paths (`data/a` → `/data/a`). `extra` are names the front end itself takes (--server).
 */
export function finishArgs(
  cmd: OperatorCommand,
  parsed: Record<string, unknown>,
  positional: string[],
  raw: string[],
  extra: readonly string[] = [],
): ParsedArgs {
  const specs = cmd.options ?? {};
  const known = new Set([...optionNames(specs), ...extra]);
  for (const k of [...known]) known.add(camel(k));
  const unknown = Object.keys(parsed).filter((k) => k !== '_' && k !== '$0' && !known.has(k));
  if (unknown.length) throw unknownOptions(cmd.name, unknown, optionNames(specs));
  const options: Record<string, OptionValue> = {};
  for (const [k, s] of Object.entries(specs)) {
    let v = parsed[k] as OptionValue;
    if (v === undefined) continue;
    if (s.type === 'number') {
      const bad = [v].flat().find((x) => typeof x !== 'number' || !Number.isFinite(x));
      if (bad !== undefined) throw new TwinError('ETWIN_USAGE', `--${k} wants a number`);
    }
    if (s.type === 'string' && !s.array && Array.isArray(v))
      throw new TwinError('ETWIN_USAGE', `--${k} given more than once`);
    if (s.type === 'string' && s.array && !Array.isArray(v)) v = [String(v)];
    if (s.type === 'string' && typeof v === 'boolean')
      throw new TwinError('ETWIN_USAGE', `--${k} needs a value`);
    if (s.type === 'string' && typeof v === 'number') v = String(v);
    if (s.choices)
      for (const x of [v].flat())
        if (!s.choices.includes(String(x)))
          throw new TwinError('ETWIN_USAGE', `--${k} is one of ${s.choices.join(', ')}; got "${String(x)}"`);
    if (s.completes === 'paths')
      v = Array.isArray(v) ? v.map((x) => volumePath(String(x))) : volumePath(String(v));
    options[k] = v;
  }
  const from = cmd.args?.volumePathsFrom;
  const pos = positional.map((p, i) =>
    from === 'all' || (typeof from === 'number' && i >= from) ? volumePath(p) : p,
  );
  return { positional: pos, options, raw };
}

/** Parses a REPL command's words (after its name) as the command line would. */
export function parseCommandWords(cmd: OperatorCommand, words: string[]): ParsedArgs {
  if (cmd.plugin) return { positional: words, options: {}, raw: [...words] };
  const p = parserOptions(cmd.options);
  const parsed = Parser.detailed(words, {
    ...p,
    configuration: PARSER_CONFIGURATION,
  });
  if (parsed.error) throw new TwinError('ETWIN_USAGE', parsed.error.message);
  const { _: rest, ...opts } = parsed.argv;
  return finishArgs(
    cmd,
    opts,
    rest.map((w) => String(w)),
    words,
  );
}

/**
 * A path of the volume in its one form: `/` joined with its components, relative ones taken
 * from the volume root (`data/a`, `./data/a/`, `/data//a` → `/data/a`). `..` is refused.
 */
export function volumePath(p: string): string {
  const parts: string[] = [];
  for (const c of p.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') throw new TwinError('ETWIN_PATH_ESCAPE', `${p}: a volume path may not contain ..`);
    parts.push(c);
  }
  return '/' + parts.join('/');
}

/** A string option's value (undefined when not given). */
export const str = (v: OptionValue): string | undefined => (typeof v === 'string' ? v : undefined);
/** A number option's value (undefined when not given). */
export const num = (v: OptionValue): number | undefined => (typeof v === 'number' ? v : undefined);
/** A repeatable option's values. */
export const list = (v: OptionValue): string[] =>
  Array.isArray(v) ? v : v === undefined || typeof v === 'boolean' ? [] : [String(v)];
