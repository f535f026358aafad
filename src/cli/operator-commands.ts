import type { Argv } from 'yargs';
import {
  type CommandContext,
  finishArgs,
  type OperatorCommand,
  operatorCommands,
  type ParsedArgs,
  resultOfFailure,
} from '../commands/index.js';
import { TwinError } from '../common/errors.js';
import { ControlClient } from '../control/client.js';
import { resolveConnection } from './connect.js';
import { operatorConfigFrom } from './operator-config.js';
import { formatBytes, Output } from './output.js';

/** Options every operator command takes on the command line (the REPL has them from its start). */
export const FRONT_OPTIONS = [
  'server',
  'token-file',
  'ca-file',
  'config',
  'json',
  'plugin-dir',
  'help',
  'version',
];

/** Options every command that talks to a server takes. */
export function withServer<T>(y: Argv<T>) {
  return y
    .option('server', {
      type: 'string',
      describe: 'control channel URL, ws://HOST:PORT (or $TWINFS_SERVER, or the config)',
      group: 'Connection:',
    })
    .option('token-file', {
      type: 'string',
      describe: 'control token file (or $TWINFS_TOKEN, or the config)',
      group: 'Connection:',
    })
    .option('ca-file', {
      type: 'string',
      describe: 'CA certificate (PEM) to trust for wss://',
      group: 'Connection:',
    })
    .option('config', {
      type: 'string',
      describe: 'operator config file: server, tokenFile, catalog, target (or $TWINFS_CONFIG)',
      group: 'Connection:',
    })
    .option('json', { type: 'boolean', describe: 'print JSON lines; the last one is the result' });
}

export interface ServerArgs {
  server?: string;
  tokenFile?: string;
  caFile?: string;
  config?: string;
  json?: boolean;
  pluginDirs?: string[];
}

export const serverArgs = (a: Record<string, unknown>): ServerArgs => ({
  server: a.server as string | undefined,
  tokenFile: a['token-file'] as string | undefined,
  caFile: a['ca-file'] as string | undefined,
  config: a.config as string | undefined,
  json: a.json as boolean | undefined,
  pluginDirs: a['plugin-dir'] as string[] | undefined,
});

/**
 * Runs one operator command on the command line: human lines on stdout, or (with --json) JSON
 * lines, the last being the result; warnings and the progress bar on stderr. The server is
 * connected on first use (snapshots, restore need none). `freeze` and `split` hold what they made
 * until it ends (see hold). Resolves with the exit status.
 */
export async function runOnce(cmd: OperatorCommand, a: ServerArgs, args: ParsedArgs): Promise<number> {
  const config = await operatorConfigFrom(a.config);
  let connecting: Promise<ControlClient> | undefined;
  const client = () =>
    (connecting ??= resolveConnection({ ...a, config }).then((conn) => {
      ctx.serverUrl = conn.url;
      return ControlClient.connect(conn.url, { token: conn.token, ca: conn.ca, client: 'twinfs-cli' });
    }));
  const out = new Output(Boolean(a.json));
  const ac = new AbortController();
  const onSignal = (s: string) => ac.abort(new TwinError('ETWIN_ABORTED', `${cmd.name} cancelled (${s})`));
  // A cancellable command cleans up (a backup releases its split) before the process ends.
  if (cmd.cancellable) process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  const ctx: CommandContext = {
    client,
    print: (l) => {
      if (!a.json) out.line(l);
    },
    warn: (w) => {
      if (a.json) out.event({ event: 'warning', ...w }, w.message);
      out.warn(w.message);
    },
    progress: (p) => out.progress(p),
    json: Boolean(a.json),
    signal: ac.signal,
    defaults: { catalog: config.catalog, target: config.target },
    pluginDirs: a.pluginDirs,
    // The REPL's modules (and the catalog's) load only when a command asks for recent snapshots.
    recentSnapshots: async (deviceId, limit, dir) =>
      (await import('./operator-repl.js'))
        .catalogSources(config.catalog)
        .recentSnapshots(deviceId, limit, dir),
  };
  try {
    const result = await cmd.run(ctx, args);
    out.stopBar();
    if (cmd.holds) return await hold(cmd.holds, await client(), result as Record<string, unknown>, out);
    if (a.json) out.line(JSON.stringify(result ?? null));
    return cmd.exitCode?.(result) ?? 0;
  } catch (err) {
    // The coded line on stderr is main's; with --json the error is the last JSON line too.
    if (a.json) {
      const partial = resultOfFailure(err);
      if (partial !== undefined) out.line(JSON.stringify(partial));
      const code = (err as { code?: unknown })?.code;
      out.line(
        JSON.stringify({
          event: 'error',
          code: typeof code === 'string' ? code : 'ETWIN_INTERNAL',
          message: (err as Error)?.message ?? String(err),
        }),
      );
    }
    throw err;
  } finally {
    out.stopBar();
    if (cmd.cancellable) process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
    await connecting?.then((c) => c.close()).catch(() => undefined);
  }
}

/**
 * Freezes and splits belong to the connection that made them and end with it, so `twinfs
 * freeze` and `twinfs split` hold theirs until it is over: a freeze until thawed (`twinfs thaw`,
 * the REPL), its timeout, or Ctrl-C/SIGTERM (which thaw); a split, its lease renewed, until
 * released (`twinfs resync ID`) or Ctrl-C/SIGTERM (which release it and wait for the resync).
 * With --json the first line is what was made ({event:"frozen"|"split", ...}), the last how
 * it ended ({event:"thawed"|"resynced", ...}).
 */
async function hold(
  kind: 'freeze' | 'split',
  client: ControlClient,
  made: Record<string, unknown>,
  out: Output,
): Promise<number> {
  const id = String(kind === 'freeze' ? made.freezeId : made.backupId);
  let renew: NodeJS.Timeout | undefined;
  type End = { event: string; data: Record<string, unknown>; error?: unknown };
  let finish!: (end: End) => void;
  const ended = new Promise<End>((resolve) => {
    finish = resolve;
  });
  client.onEvent((e) => {
    const d = (e.data ?? {}) as Record<string, unknown>;
    if (kind === 'freeze' && e.event === 'thawed' && d.freezeId === id) finish({ event: 'thawed', data: d });
    if (kind === 'split' && e.event === 'resynced' && d.backupId === id)
      finish({ event: 'resynced', data: d });
    if (kind === 'split' && e.event === 'lease-expired' && d.backupId === id)
      finish({ event: 'lease-expired', data: d });
  });
  client.onClose(() => finish({ event: 'closed', data: {} }));
  if (kind === 'split') {
    const leaseMs = Number(made.leaseMs) || 60_000;
    renew = setInterval(() => void client.renew(id).catch(() => undefined), Math.max(500, leaseMs / 3));
  }
  // The event normally comes first; the reply settles it if the event never comes (a failed resync).
  const onSignal = () => {
    const req = kind === 'freeze' ? client.call('thaw', { freezeId: id }) : client.release(id);
    req.then(
      (r) => finish({ event: kind === 'freeze' ? 'thawed' : 'resynced', data: r as Record<string, unknown> }),
      (error) => finish({ event: 'error', data: {}, error }),
    );
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  // Said only once Ctrl-C is handled: a signal sent on seeing this line must thaw, not kill.
  if (out.json) out.line(JSON.stringify({ event: kind === 'freeze' ? 'frozen' : 'split', ...made }));
  else
    out.line(
      kind === 'freeze'
        ? `holding the freeze: \`twinfs thaw ${id}\` or Ctrl-C ends it`
        : `holding the split (lease renewed): \`twinfs resync ${id}\` or Ctrl-C releases it`,
    );
  try {
    const end = await ended;
    if (end.event === 'error') throw end.error;
    if (end.event === 'closed')
      throw new TwinError(
        'ETWIN_CONTROL_CLOSED',
        `the connection to the server closed; the ${kind} ${id} ended with it`,
      );
    if (end.event === 'lease-expired')
      throw new TwinError('ETWIN_SPLIT_LOST', `the lease of ${id} expired; the server released it`);
    const d = end.data;
    out.result(
      { event: end.event, ...d },
      end.event === 'thawed'
        ? `thawed ${id} after ${(Number(d.heldMs) / 1000).toFixed(1)} s (${d.reason ?? 'thaw'})`
        : `resynced ${id}: ${formatBytes(Number(d.bytesCopied ?? 0))} copied, ${d.entries} entries`,
    );
    return 0;
  } finally {
    clearInterval(renew);
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}

/** The yargs form of a command's positional arguments: `freeze [paths..]`. */
const positionalOf = (cmd: OperatorCommand) => (cmd.args ? ` [${cmd.args.name}..]` : '');

/**
 * Adds one operator command to yargs: its options with the same types, defaults and help as in
 * the REPL, the connection options, its examples. yargs' own strictness is off for it: unknown
 * options are reported by finishArgs, as in the REPL.
 */
export function commandBuilder(cmd: OperatorCommand, extra?: (y: Argv) => Argv) {
  return (b: Argv) => {
    let y = withServer(b).strict(false) as Argv;
    y = y.option('plugin-dir', {
      type: 'string',
      array: true,
      describe: 'a folder of plugins, or one plugin folder (repeatable); targets and hooks come from plugins',
    });
    if (cmd.args)
      y = y.positional(cmd.args.name, { type: 'string', array: true, describe: cmd.args.describe }) as Argv;
    for (const [k, o] of Object.entries(cmd.options ?? {}))
      y = y.option(k, {
        type: o.type,
        describe: o.describe,
        requiresArg: o.type !== 'boolean',
        // Only what is set: yargs fills an explicit `default: undefined` in (as [undefined] for arrays).
        ...(o.default !== undefined && { default: o.default }),
        ...(o.array && { array: true }),
        ...(o.alias && { alias: o.alias }),
        ...(o.choices && { choices: [...o.choices] }),
      });
    y = y.usage(`twinfs ${cmd.usage}\n\n${cmd.summary}`);
    for (const [e, d] of cmd.examples ?? []) y = y.example(`twinfs ${e}`, d);
    return extra ? extra(y) : y;
  };
}

/** The command's parsed arguments from what yargs made of the command line. */
export function argsFromYargs(
  cmd: OperatorCommand,
  a: Record<string, unknown>,
  skip: string[] = [],
  known: string[] = [],
): ParsedArgs {
  const positional = cmd.args ? ((a[cmd.args.name] as unknown[] | undefined) ?? []).map(String) : [];
  const rest = (a._ as unknown[]).slice(1).map(String);
  if (rest.length)
    throw new TwinError(
      'ETWIN_USAGE',
      `${cmd.name} takes no argument ${rest.map((r) => `"${r}"`).join(', ')}`,
    );
  const parsed = { ...a };
  if (cmd.args) delete parsed[cmd.args.name];
  return finishArgs(cmd, parsed, positional, [], [...FRONT_OPTIONS, ...skip, ...known]);
}

/**
 * Registers the operator commands (every entry of operatorCommands as a subcommand: twinfs
 * freeze, twinfs backup, ...), plus `twinfs repl` and `twinfs mirror repair`. `verify` is in
 * main.ts (it has an offline form too).
 */
export function registerOperatorCommands(y: Argv, setStatus: (code: number) => void): Argv {
  for (const cmd of operatorCommands) {
    if (cmd.name === 'verify') continue;
    // `status --watch` is the command line's alone: it keeps running on the server's events.
    const watch =
      cmd.name === 'status'
        ? (y2: Argv) =>
            y2
              .option('watch', {
                type: 'boolean',
                describe:
                  "keep the status current from the server's events (redrawn on a terminal; one line per event otherwise)",
              })
              .example(
                'twinfs status --watch',
                'redrawn as the server reports events (one line per event when piped)',
              )
        : undefined;
    y.command(`${cmd.name}${positionalOf(cmd)}`, cmd.summary, commandBuilder(cmd, watch), async (a) => {
      if (watch && a.watch) {
        const { watchStatus } = await import('./status-watch.js');
        return setStatus(await watchStatus(serverArgs(a)));
      }
      const args = argsFromYargs(cmd, a, watch ? ['watch'] : []);
      setStatus(await runOnce(cmd, serverArgs(a), args));
    });
  }
  const repair = operatorCommands.find((c) => c.name === 'repair')!;
  y.command(
    'mirror <action>',
    'mirror maintenance: repair (the same as `twinfs repair`)',
    commandBuilder(repair, (b) =>
      b
        .positional('action', { choices: ['repair'] as const, demandOption: true })
        .usage('twinfs mirror repair')
        .example(
          'twinfs mirror repair --server ws://127.0.0.1:7420 --token-file F',
          'after the mirror disk is back',
        ),
    ),
    async (a: Record<string, unknown>) => {
      const args = argsFromYargs(repair, a, ['action']);
      setStatus(await runOnce(repair, serverArgs(a), args));
    },
  );
  y.command(
    'repl',
    'interactive shell over a running server (freeze, thaw, backup, status, ...); reads commands from stdin when piped',
    (b) =>
      withServer(b)
        .option('history', {
          type: 'string',
          describe: 'history file (default $TWINFS_HISTORY or ~/.twinfs_history)',
        })
        .option('catalog', {
          type: 'string',
          describe: 'catalog for snapshots, restore, check and completion',
        })
        .option('plugin-dir', { type: 'string', array: true, describe: 'extra plugin folders' })
        .example('twinfs repl --server ws://127.0.0.1:7420 --token-file /var/lib/twinfs/control.token', '')
        .example('twinfs repl --config /etc/twinfs.json', 'server, token, catalog and target from the config')
        .example(
          "printf 'freeze /db\\nbackup /db --target dir:/b\\n' | twinfs repl",
          'scripted: exit status of the last failure',
        )
        .example('echo status | twinfs repl --json', 'one JSON line per command'),
    async (a: Record<string, unknown>) => {
      const conn = await resolveConnection({ ...serverArgs(a) });
      const catalog = (a.catalog as string | undefined) ?? conn.config.catalog;
      const { startOperatorRepl } = await import('./operator-repl.js');
      setStatus(
        await startOperatorRepl({
          url: conn.url,
          token: conn.token,
          ca: conn.ca,
          defaults: { catalog, target: conn.config.target },
          historyFile: (a.history as string | undefined) ?? conn.config.history,
          pluginDirs: a['plugin-dir'] as string[] | undefined,
          json: a.json as boolean | undefined,
        }),
      );
    },
  );
  return y;
}
