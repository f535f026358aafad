import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import * as nodeRepl from 'node:repl';
import type { Readable, Writable } from 'node:stream';
import { formatError } from '../cli/serve.js';
import type { CommandContext, OperatorCommand } from './commands.js';
import { ReconnectingClient } from './reconnecting-client.js';
import { parseArgs, splitWords } from './words.js';

export interface ReplOptions {
  url: string;
  token: string;
  commands: OperatorCommand[];
  input?: Readable & { isTTY?: boolean };
  output?: Writable & { isTTY?: boolean };
  /** History file (default $TWINFS_HISTORY or ~/.twinfs_history). */
  historyFile?: string;
  /** Lists volume entries for path completion (default: from the primary directory if it is local). */
  listDir?: (volumeDir: string) => Promise<Array<{ name: string; dir: boolean }>>;
}

const BUILTINS = ['help', 'exit'];

/**
 * The twinfs REPL: plain-word commands over the control channel, tab completion, persistent
 * history, live server events printed above the prompt, Ctrl-C cancels the running command.
 * With a non-TTY input it runs the piped commands in order and resolves with the exit status
 * of the last failure (0 if none).
 */
export async function runRepl(opts: ReplOptions): Promise<number> {
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stdout;
  const interactive = Boolean(input.isTTY);
  const client = new ReconnectingClient(opts.url, opts.token);
  const byName = new Map(opts.commands.map((c) => [c.name, c]));
  let lastFailure = 0;
  let current: AbortController | null = null;
  let server: nodeRepl.REPLServer | null = null;

  const write = (line: string) => output.write(line + '\n');
  const printAbove = (line: string) => {
    if (!server || !interactive) return write(line);
    readline.clearLine(output, 0);
    readline.cursorTo(output, 0);
    output.write(line + '\n');
    server.displayPrompt(true);
  };

  client.onEvent((e) => printAbove(`[${e.event}] ${summarizeEvent(e.event, e.data)}`));
  client.onDidChangeConnection((c) =>
    printAbove(
      c.connected
        ? '[connection] reconnected to the server'
        : `[connection] lost${c.error ? `: ${c.error}` : '; reconnecting...'}`,
    ),
  );

  try {
    const c = await client.get();
    if (interactive)
      write(
        `connected to ${opts.url} (${c.hello.server}${c.hello.deviceId ? `, mirror ${c.hello.deviceId}` : ''}); type help`,
      );
  } catch (err) {
    write(`error ${formatError(err)}`);
    await client.dispose();
    return 1;
  }

  const runLine = async (line: string): Promise<boolean> => {
    let words: string[];
    try {
      words = splitWords(line.trim());
    } catch (err) {
      write(`error ETWIN_USAGE: ${(err as Error).message}`);
      lastFailure = 2;
      return true;
    }
    if (words.length === 0) return true;
    const [name, ...rest] = words as [string, ...string[]];
    if (name === 'exit' || name === 'quit') return false;
    if (name === 'help') {
      write(helpText(opts.commands, rest[0]));
      return true;
    }
    const cmd = byName.get(name);
    if (!cmd) {
      const guess = suggest(name, [...byName.keys(), ...BUILTINS]);
      write(
        `error ETWIN_USAGE: unknown command "${name}"${guess ? `; did you mean "${guess}"?` : ''} (help lists them)`,
      );
      lastFailure = 2;
      return true;
    }
    current = new AbortController();
    const ctx: CommandContext = {
      client: () => client.get(),
      print: write,
      json: false,
      signal: current.signal,
    };
    try {
      await cmd.run(ctx, parseArgs(rest, cmd.flags));
    } catch (err) {
      write(`error ${formatError(err)}`);
      lastFailure = 1;
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
    await client.dispose();
    return lastFailure;
  }

  return new Promise<number>((resolve) => {
    const r = nodeRepl.start({
      prompt: 'twinfs> ',
      input,
      output,
      terminal: true,
      ignoreUndefined: true,
      completer: (line: string, cb: (err: Error | null, result: [string[], string]) => void) => {
        complete(line, opts, byName)
          .then((res) => cb(null, res))
          .catch(() => cb(null, [[], line]));
      },
      eval: (cmd, _context, _file, cb) => {
        runLine(cmd).then((goOn) => {
          if (!goOn) r.close();
          cb(null, undefined);
        });
      },
    });
    server = r;
    // Ctrl-C while a command runs cancels it (a backup releases its split); at the prompt it
    // clears the line as usual.
    r.on('SIGINT', () => {
      if (current) {
        current.abort(new Error('cancelled'));
        printAbove('cancelling...');
      }
    });
    const historyFile =
      opts.historyFile ?? process.env.TWINFS_HISTORY ?? path.join(os.homedir(), '.twinfs_history');
    r.setupHistory(historyFile, () => undefined);
    r.on('exit', () => {
      void client.dispose().then(() => resolve(lastFailure));
    });
  });
}

async function complete(
  line: string,
  opts: ReplOptions,
  byName: Map<string, OperatorCommand>,
): Promise<[string[], string]> {
  const endsWithSpace = /\s$/.test(line);
  let words: string[];
  try {
    words = splitWords(line);
  } catch {
    return [[], line];
  }
  const last = endsWithSpace ? '' : (words[words.length - 1] ?? '');
  if (words.length === 0 || (words.length === 1 && !endsWithSpace)) {
    const names = [...byName.keys(), ...BUILTINS].sort();
    return [names.filter((n) => n.startsWith(last)).map((n) => n + ' '), last];
  }
  const cmd = byName.get(words[0]!);
  if (!cmd) return [[], last];
  if (last.startsWith('--')) return [(cmd.options ?? []).filter((o) => o.startsWith(last)), last];
  if (cmd.completes === 'paths' && opts.listDir) {
    const dir = last.includes('/') ? last.slice(0, last.lastIndexOf('/') + 1) : '/';
    const base = last.includes('/') ? last.slice(last.lastIndexOf('/') + 1) : last.replace(/^\/?/, '');
    const entries = await opts.listDir(dir === '' ? '/' : dir);
    const prefix = last.includes('/') ? dir : '/';
    return [
      entries.filter((e) => e.name.startsWith(base)).map((e) => prefix + e.name + (e.dir ? '/' : ' ')),
      last,
    ];
  }
  if (cmd.completes === 'commands') return [[...byName.keys()].filter((n) => n.startsWith(last)), last];
  return [[], last];
}

/** Path completion from a local directory holding the volume (the primary or a mount). */
export function localLister(root: string): (dir: string) => Promise<Array<{ name: string; dir: boolean }>> {
  return async (dir) => {
    const safe = path.posix.normalize('/' + dir).replace(/^(\.\.\/?)+/, '');
    const entries = await fsp.readdir(path.join(root, safe), { withFileTypes: true }).catch(() => []);
    return entries.map((e) => ({ name: e.name, dir: e.isDirectory() }));
  };
}

export function helpText(commands: OperatorCommand[], name?: string): string {
  if (name) {
    const c = commands.find((x) => x.name === name);
    if (!c) return `no command "${name}"`;
    return [`${c.usage}`, `  ${c.summary}`, ...(c.examples ?? []).map((e) => `  e.g. ${e}`)].join('\n');
  }
  const w = Math.max(...commands.map((c) => c.name.length), 6);
  return [
    ...commands.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    `  ${'help'.padEnd(w)}  help [COMMAND]`,
    `  ${'exit'.padEnd(w)}  leave (Ctrl-D too)`,
  ].join('\n');
}

function summarizeEvent(event: string, data: unknown): string {
  const d = (data ?? {}) as Record<string, any>;
  switch (event) {
    case 'frozen':
      return `${JSON.stringify(d.selector)} frozen (${d.freezeId})`;
    case 'thawed':
      return `${d.freezeId} thawed after ${((d.heldMs ?? 0) / 1000).toFixed(1)} s (${d.reason})`;
    case 'split':
      return `${JSON.stringify(d.selector)} split for ${d.backupId}, writes held ${Number(d.stallMs ?? 0).toFixed(1)} ms`;
    case 'resynced':
      return `${d.backupId} resynced: ${d.bytesCopied} bytes copied`;
    case 'broken':
      return `mirror pair ${d.path} BROKEN: ${d.error}`;
    default:
      return JSON.stringify(d);
  }
}

/** The closest known word within edit distance 2, for "did you mean". */
export function suggest(word: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const d = editDistance(word, k);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)] as number[]);
  for (let j = 1; j <= b.length; j++) dp[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      dp[i]![j] = Math.min(
        dp[i - 1]![j]! + 1,
        dp[i]![j - 1]! + 1,
        dp[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
  return dp[a.length]![b.length]!;
}
