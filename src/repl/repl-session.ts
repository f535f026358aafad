import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as nodeRepl from 'node:repl';
import type { Readable, Writable } from 'node:stream';
import { Output } from '../cli/output.js';
import {
  type CommandContext,
  didYouMean,
  type OperatorCommand,
  type OperatorDefaults,
  parseCommandWords,
  resultOfFailure,
  unknownCommand,
} from '../commands/index.js';
import { TwinError } from '../common/errors.js';
import { ProgressLine } from '../common/progress-line.js';
import { type CompletionSources, complete } from './completion.js';
import { describeEvent, isNoteworthy } from './events.js';
import { ReconnectingClient } from './reconnecting-client.js';
import { splitWords } from './words.js';

export interface ReplOptions {
  url: string;
  token: string;
  /** CA (PEM) to trust for wss://. */
  ca?: string | Buffer;
  commands: OperatorCommand[];
  input?: Readable & { isTTY?: boolean };
  output?: Writable & { isTTY?: boolean; columns?: number };
  /** Where piped mode reports errors (default process.stderr). */
  errorOutput?: Writable;
  /** History file (default $TWINFS_HISTORY or ~/.twinfs_history). */
  historyFile?: string;
  /** Completion of volume paths, snapshot ids and target ids. */
  completion?: Omit<CompletionSources, 'commands' | 'builtins'>;
  defaults?: OperatorDefaults;
  /** Plugin folders (--plugin-dir) for the commands that use plugins (backup targets, hooks). */
  pluginDirs?: string[];
  recentSnapshots?: CommandContext['recentSnapshots'];
  /** Piped mode: print each command's result as one JSON line instead of text. */
  json?: boolean;
}

const BUILTINS = ['help', 'exit'];

/**
 * The twinfs REPL: plain-word commands over the control channel, tab completion, persistent
 * history, live server events printed above the prompt (the line being typed is kept), a
 * progress line for long commands, Ctrl-C cancels the running command. Errors are one line
 * with their code. With a non-TTY input it runs the piped commands in order and resolves with
 * the exit status of the last failure (0 if none; 2 for a usage mistake).
 */
export async function runRepl(opts: ReplOptions): Promise<number> {
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stdout;
  const errorOutput = opts.errorOutput ?? process.stderr;
  const interactive = Boolean(input.isTTY);
  const client = new ReconnectingClient(opts.url, opts.token, { ca: opts.ca });
  const byName = new Map(opts.commands.map((c) => [c.name, c]));
  const status = new ProgressLine(output, ' (Ctrl-C cancels)');
  let lastFailure = 0;
  let current: AbortController | null = null;
  let server: nodeRepl.REPLServer | null = null;

  const write = (line: string) => output.write(line + '\n');
  /** Prints a line without breaking the prompt or the line being typed. */
  const printAbove = (line: string) => {
    if (!interactive) return write(line);
    if (current || !server) return status.print(line);
    readline.clearLine(output, 0);
    readline.cursorTo(output, 0);
    output.write(line + '\n');
    server.displayPrompt(true);
  };
  const fail = (err: unknown) => {
    const code = errorCode(err);
    if (opts.json && !interactive) {
      const partial = resultOfFailure(err);
      if (partial !== undefined) write(JSON.stringify(partial));
      write(JSON.stringify({ event: 'error', code, message: errorMessage(err) }));
    }
    // Piped, errors are the command line's: `twinfs: error CODE: message` on stderr.
    if (interactive) output.write(`error ${code}: ${errorMessage(err)}\n`);
    else errorOutput.write(`twinfs: error ${code}: ${errorMessage(err)}\n`);
    lastFailure = code === 'ETWIN_USAGE' ? 2 : 1;
  };

  if (interactive) {
    client.onEvent((e) => {
      if (isNoteworthy(e.event, e.data)) printAbove(`[${e.event}] ${describeEvent(e.event, e.data)}`);
    });
    client.onDidChangeConnection((c) =>
      printAbove(
        c.connected
          ? '[connection] reconnected to the server'
          : `[connection] lost${c.error ? `: ${c.error}` : '; reconnecting...'}`,
      ),
    );
  }

  try {
    const c = await client.get();
    if (interactive)
      write(
        `connected to ${opts.url} (${c.hello.server}${c.hello.deviceId ? `, mirror ${c.hello.deviceId}` : ''}); type help, Tab completes`,
      );
  } catch (err) {
    fail(err);
    await client.dispose();
    return 1;
  }

  const runLine = async (line: string): Promise<boolean> => {
    let words: string[];
    try {
      words = splitWords(line.trim());
    } catch (err) {
      fail(new TwinError('ETWIN_USAGE', (err as Error).message));
      return true;
    }
    if (words.length === 0 || words[0]!.startsWith('#')) return true;
    const [name, ...rest] = words as [string, ...string[]];
    if (name === 'exit' || name === 'quit') return false;
    if (name === 'help' || name === '--help') {
      write(helpText(opts.commands, rest[0]));
      return true;
    }
    const cmd = byName.get(name);
    if (!cmd) {
      fail(unknownCommand(name, [...byName.keys(), ...BUILTINS]));
      return true;
    }
    if (!cmd.plugin && rest.includes('--help')) {
      write(helpText(opts.commands, name));
      return true;
    }
    const ac = new AbortController();
    current = ac;
    const jsonOut = new Output(true, output, errorOutput);
    const ctx: CommandContext = {
      client: () => client.get(),
      print: (l) => {
        if (!(opts.json && !interactive)) printAbove(l);
      },
      warn: (w) => {
        if (opts.json && !interactive) write(JSON.stringify({ event: 'warning', ...w }));
        if (interactive) printAbove(`warning: ${w.message}`);
        else errorOutput.write(`twinfs: warning: ${w.message}\n`);
      },
      progress: (p) => {
        if (interactive) status.progress(p);
        // Piped with --json: the command line's progress lines.
        else if (opts.json) jsonOut.progress(p);
      },
      json: Boolean(opts.json && !interactive),
      signal: ac.signal,
      defaults: opts.defaults ?? {},
      pluginDirs: opts.pluginDirs,
      serverUrl: opts.url,
      recentSnapshots: opts.recentSnapshots,
    };
    try {
      const args = parseCommandWords(cmd, rest);
      const run = cmd.run(ctx, args);
      // A command that cannot be cancelled goes on at the server; the prompt comes back at once.
      const result = await (cmd.cancellable
        ? run
        : Promise.race([
            run,
            new Promise((_, reject) =>
              ac.signal.addEventListener('abort', () =>
                reject(new TwinError('ETWIN_ABORTED', `stopped waiting for ${name}; the server finishes it`)),
              ),
            ),
          ]));
      status.clear();
      if (opts.json && !interactive) write(JSON.stringify(result ?? null));
      const code = cmd.exitCode?.(result) ?? 0;
      if (code) lastFailure = code;
    } catch (err) {
      status.clear();
      fail(err);
    } finally {
      current = null;
    }
    return true;
  };

  if (!interactive) {
    const rl = readline.createInterface({ input, terminal: false });
    for await (const line of rl) {
      if (!(await runLine(line))) break;
    }
    rl.close();
    await client.dispose();
    return lastFailure;
  }

  let queue = Promise.resolve();
  let generation = 0;
  const r = nodeRepl.start({
    prompt: 'twinfs> ',
    input,
    output,
    terminal: true,
    preview: false,
    ignoreUndefined: true,
    completer: (line: string, cb: (err: Error | null, result: [string[], string]) => void) => {
      complete(line, { ...opts.completion, commands: byName, builtins: BUILTINS })
        .then((res) => cb(null, res))
        .catch(() => cb(null, [[], line]));
    },
    // node:repl evaluates a line as soon as it is entered, even while the previous one still
    // runs: lines typed ahead are queued here and run in order (Ctrl-C drops them).
    eval: (cmd, _context, _file, cb) => {
      const gen = generation;
      queue = queue.then(async () => {
        if (gen !== generation) return cb(null, undefined);
        if (await runLine(cmd)) cb(null, undefined);
        else r.close();
      });
    },
  });
  server = r;
  // The REPL's dot-commands (.load, .editor, ...) are JavaScript things; twinfs has none.
  for (const k of Object.keys(r.commands)) delete (r.commands as Record<string, unknown>)[k];
  // Ctrl-C: cancels the running command (a backup releases its split first); else drops the
  // line being typed; twice on an empty line leaves.
  let sawSigint = false;
  r.removeAllListeners('SIGINT');
  r.on('SIGINT', () => {
    if (current) {
      generation++;
      current.abort(new TwinError('ETWIN_ABORTED', 'cancelled (Ctrl-C)'));
      printAbove('cancelling...');
      return;
    }
    const empty = r.line.length === 0;
    // readline's own (the REPL's handler uses it too): cursor to the end, a new line, an empty
    // buffer; what was typed stays visible above, as in a shell.
    (r as unknown as { clearLine(): void }).clearLine();
    if (empty && sawSigint) {
      r.close();
      return;
    }
    if (empty) output.write('(Ctrl-C again, Ctrl-D or exit to leave)\n');
    sawSigint = empty;
    r.displayPrompt();
  });
  r.on('line', () => {
    sawSigint = false;
  });
  const historyFile =
    opts.historyFile ?? process.env.TWINFS_HISTORY ?? path.join(os.homedir(), '.twinfs_history');
  await new Promise<void>((resolve) =>
    r.setupHistory(historyFile, (err) => {
      if (err) printAbove(`[history] not kept: ${err.message}`);
      resolve();
    }),
  );
  return new Promise<number>((resolve) => {
    r.on('exit', () => {
      status.clear();
      void client.dispose().then(() => resolve(lastFailure));
    });
  });
}

function errorCode(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' && code ? code : 'ETWIN_INTERNAL';
}

/** The message on one line (a stack trace is never shown). */
function errorMessage(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length)
    return err.errors.map((e) => `${errorCode(e)}: ${errorMessage(e)}`).join('; ');
  const m = (err as Error)?.message ?? String(err);
  return m.replace(/\s*\n\s*/g, ' ');
}

export function helpText(commands: readonly OperatorCommand[], name?: string): string {
  if (name) {
    const c = commands.find((x) => x.name === name);
    if (!c) {
      const guess = didYouMean(
        name,
        commands.map((x) => x.name),
      );
      return `no command "${name}"${guess ? `; did you mean "${guess}"?` : ''}`;
    }
    const opts = Object.entries(c.options ?? {}).map(
      ([k, o]) =>
        `  --${k}${o.type === 'boolean' ? '' : ` ${o.type === 'number' ? 'N' : 'VALUE'}`}  ${o.describe}${o.default !== undefined && o.default !== true ? ` (default ${o.default})` : ''}`,
    );
    return [
      `${c.usage}`,
      `  ${c.summary}`,
      ...(opts.length ? ['options:', ...opts] : []),
      ...(c.examples ?? []).map(([e, d]) => `  e.g. ${e}${d ? `   # ${d}` : ''}`),
    ].join('\n');
  }
  const w = Math.max(...commands.map((c) => c.name.length), 6);
  return [
    ...commands.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    `  ${'help'.padEnd(w)}  help [COMMAND] (or COMMAND --help)`,
    `  ${'exit'.padEnd(w)}  leave (Ctrl-D too)`,
    'Paths are relative to the volume root. Tab completes commands, options, paths, snapshots, targets.',
  ].join('\n');
}
