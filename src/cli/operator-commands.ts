import type { Argv } from 'yargs';
import { TwinError } from '../common/errors.js';
import { ControlClient } from '../control/client.js';
import { type CommandContext, controlCommands, type OperatorCommand } from '../repl/commands.js';
import { parseArgs } from '../repl/words.js';
import { type ConnectArgs, resolveConnection } from './connect.js';
import { catalogSources, startOperatorRepl } from './operator-repl.js';
import { formatBytes, Output } from './output.js';

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

interface ServerArgs {
  server?: string;
  tokenFile?: string;
  caFile?: string;
  config?: string;
  json?: boolean;
}

const serverArgs = (a: Record<string, unknown>): ServerArgs => ({
  server: a.server as string | undefined,
  tokenFile: a['token-file'] as string | undefined,
  caFile: a['ca-file'] as string | undefined,
  config: a.config as string | undefined,
  json: a.json as boolean | undefined,
});

/**
 * Runs one operator command against a server, printing human lines or (with --json) JSON lines,
 * the last being the result. `freeze` and `split` hold what they made until it ends (see hold).
 */
export async function runOnce(cmd: OperatorCommand, a: ServerArgs, words: string[]): Promise<number> {
  const conn = await resolveConnection({ ...a, client: 'twinfs-cli' } satisfies ConnectArgs);
  // Connected on first use, so a usage mistake is reported before the server is even tried.
  let connecting: Promise<ControlClient> | undefined;
  const client = () =>
    (connecting ??= ControlClient.connect(conn.url, {
      token: conn.token,
      ca: conn.ca,
      client: 'twinfs-cli',
    }));
  const out = new Output(Boolean(a.json));
  const snapshots = catalogSources(conn.config.catalog);
  const ctx: CommandContext = {
    client,
    print: (l) => {
      if (!a.json) out.line(l);
    },
    progress: (p) => out.progress(p),
    json: Boolean(a.json),
    // Ctrl-C ends the process (freeze and split trap it to let go of what they hold).
    signal: new AbortController().signal,
    defaults: { catalog: conn.config.catalog, target: conn.config.target },
    recentSnapshots: snapshots.recentSnapshots,
  };
  try {
    const result = (await cmd.run(ctx, parseArgs(words, cmd.flags))) as Record<string, unknown>;
    out.stopBar();
    if (cmd.name === 'freeze' || cmd.name === 'split')
      return await hold(cmd.name, await client(), result, out);
    if (a.json) out.line(JSON.stringify(result ?? null));
    return 0;
  } finally {
    out.stopBar();
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
  if (out.json) out.line(JSON.stringify({ event: kind === 'freeze' ? 'frozen' : 'split', ...made }));
  else
    out.line(
      kind === 'freeze'
        ? `holding the freeze: \`twinfs thaw ${id}\` or Ctrl-C ends it`
        : `holding the split (lease renewed): \`twinfs resync ${id}\` or Ctrl-C releases it`,
    );
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
    const req = kind === 'freeze' ? client.request('thaw', { freezeId: id }) : client.release(id);
    req.then(
      (r) => finish({ event: kind === 'freeze' ? 'thawed' : 'resynced', data: r as Record<string, unknown> }),
      (error) => finish({ event: 'error', data: {}, error }),
    );
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
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

/** Turns parsed yargs options back into the REPL words a command parses. */
function wordsOf(cmd: OperatorCommand, a: Record<string, unknown>): string[] {
  const words = [...((a[argName(cmd)] as string[] | undefined) ?? []).map(String)];
  for (const o of cmd.options ?? []) {
    const k = o.slice(2);
    const v = a[k];
    if (v === undefined || v === false) continue;
    if ((cmd.flags ?? []).includes(k)) words.push(o);
    else words.push(`${o}=${String(v)}`);
  }
  return words;
}

const CLI_EXAMPLES: Record<string, Array<[string, string]>> = {
  status: [
    ['twinfs status --server ws://127.0.0.1:7420 --token-file /var/lib/twinfs/control.token', ''],
    ['twinfs status --config /etc/twinfs.json --json', 'the server status as one JSON object'],
    ['TWINFS_SERVER=ws://127.0.0.1:7420 TWINFS_TOKEN=$(cat token) twinfs status', 'from the environment'],
    ['twinfs status --watch', 'redrawn as the server reports events (one line per event when piped)'],
  ],
  freeze: [
    ['twinfs freeze /db/data.sqlite --timeout 20', 'holds until thawed, 20 s pass, or Ctrl-C'],
    ['twinfs freeze --subtree /db --json', 'first line: frozen; last line: thawed'],
  ],
  thaw: [
    ['twinfs thaw', 'everything frozen'],
    ['twinfs thaw /db/data.sqlite', 'the freezes covering a path'],
  ],
  pairs: [
    ['twinfs pairs', 'the volume: PAIR, SPLIT, COPY or BROKEN'],
    ['twinfs pairs /db/data.sqlite --json', ''],
  ],
  split: [['twinfs split /db --lease 300 --json', 'holds the split until `twinfs resync ID` or Ctrl-C']],
  resync: [['twinfs resync bk-0c3e...', 'release a split held elsewhere']],
  flush: [['twinfs flush', 'all cached data to the primary and the mirror, durably']],
};

/**
 * Registers the operator commands: every REPL command as a subcommand (twinfs freeze, twinfs
 * status, ...), plus `twinfs repl` and `twinfs mirror repair`.
 */
export function registerOperatorCommands(y: Argv, setStatus: (code: number) => void): Argv {
  for (const cmd of controlCommands) {
    if (cmd.name === 'verify' || cmd.name === 'repair') continue; // in main.ts / below, with offline forms
    y.command(
      `${cmd.name}${takesArgs(cmd) ? ` [${argName(cmd)}..]` : ''}`,
      cmd.summary,
      (b) => {
        let bb = withServer(b);
        if (takesArgs(cmd))
          bb = bb.positional(argName(cmd), {
            type: 'string',
            array: true,
            describe:
              argName(cmd) === 'paths' ? 'volume paths (/ is the whole volume)' : 'see the usage above',
          }) as typeof bb;
        for (const o of cmd.options ?? []) {
          const k = o.slice(2);
          const flag = (cmd.flags ?? []).includes(k);
          bb = bb.option(k, {
            type: flag ? 'boolean' : 'string',
            describe: OPTION_TEXT[k] ?? '',
            requiresArg: !flag,
          }) as typeof bb;
        }
        if (cmd.name === 'status')
          bb = bb.option('watch', {
            type: 'boolean',
            describe:
              "keep the status current from the server's events (redrawn on a terminal; one line per event otherwise)",
          }) as typeof bb;
        bb = bb.usage(`twinfs ${cmd.usage}\n\n${cmd.summary}`) as typeof bb;
        for (const [e, d] of CLI_EXAMPLES[cmd.name] ?? []) bb = bb.example(e, d) as typeof bb;
        return bb;
      },
      async (a: Record<string, unknown>) => {
        if (cmd.name === 'status' && a.watch) {
          const { watchStatus } = await import('./status-watch.js');
          return setStatus(await watchStatus(serverArgs(a)));
        }
        setStatus(await runOnce(cmd, serverArgs(a), wordsOf(cmd, a)));
      },
    );
  }
  y.command(
    'mirror <action>',
    'mirror maintenance: repair (resync broken pairs fully)',
    (b) =>
      withServer(b)
        .positional('action', { choices: ['repair'] as const, demandOption: true })
        .example(
          'twinfs mirror repair --server ws://127.0.0.1:7420 --token-file F',
          'after the mirror disk is back',
        ),
    async (a: Record<string, unknown>) => {
      const cmd = controlCommands.find((c) => c.name === 'repair')!;
      setStatus(await runOnce(cmd, serverArgs(a), []));
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

/** Whether the usage names positional arguments (`resync BACKUP_ID`), options aside. */
const takesArgs = (cmd: OperatorCommand) => /\s[A-Z[]/.test(cmd.usage.replace(/\[--[^\]]*\]/g, ''));

/** What the positional arguments are called in --help. */
const argName = (cmd: OperatorCommand) => (cmd.completes === 'paths' ? 'paths' : 'args');

const OPTION_TEXT: Record<string, string> = {
  timeout: 'thaw by itself after this many seconds (server default 30)',
  subtree: 'a volume directory, with everything below it (instead of paths)',
  lease: 'seconds the split is held without renewal (renewed while this command runs)',
  catalog:
    'catalog directory for "last backups" (default: the config\'s, else the default catalog if it exists)',
};
