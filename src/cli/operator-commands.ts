import type { Argv } from 'yargs';
import { TwinError } from '../common/errors.js';
import { type CommandContext, controlCommands, type OperatorCommand } from '../repl/commands.js';
import { localLister, runRepl } from '../repl/repl-session.js';
import { parseArgs } from '../repl/words.js';
import { connect, resolveConnection } from './connect.js';

/** Options every command that talks to a server takes. */
export function withServer<T>(y: Argv<T>) {
  return y
    .option('server', {
      type: 'string',
      describe: 'control channel URL (or $TWINFS_SERVER)',
      group: 'Connection:',
    })
    .option('token-file', {
      type: 'string',
      describe: 'control token file (or $TWINFS_TOKEN)',
      group: 'Connection:',
    })
    .option('json', { type: 'boolean', describe: 'print the result as one JSON object' });
}

/** Runs one operator command against a server, printing human lines or (with --json) the JSON result. */
export async function runOnce(
  cmd: OperatorCommand,
  a: { server?: string; tokenFile?: string; json?: boolean },
  words: string[],
): Promise<number> {
  const client = await connect({ server: a.server, tokenFile: a.tokenFile });
  const ctx: CommandContext = {
    client: async () => client,
    print: (l) => {
      if (!a.json) process.stdout.write(l + '\n');
    },
    json: Boolean(a.json),
    signal: new AbortController().signal,
  };
  try {
    const result = await cmd.run(ctx, parseArgs(words, cmd.flags));
    if (a.json) process.stdout.write(JSON.stringify(result) + '\n');
    return 0;
  } finally {
    await client.close();
  }
}

/**
 * Registers the operator commands: every REPL command as a subcommand (twinfs freeze, twinfs
 * status, ...), plus `twinfs repl` and `twinfs mirror repair`.
 */
export function registerOperatorCommands(
  y: Argv,
  setStatus: (code: number) => void,
  extra: () => OperatorCommand[] = () => [],
): Argv {
  const all = () => [...controlCommands, ...extra()];
  for (const cmd of controlCommands) {
    if (cmd.name === 'verify' || cmd.name === 'repair') continue; // below, with their offline forms
    y.command(
      `${cmd.name} [args..]`,
      cmd.summary,
      (b) => {
        let bb = withServer(b).positional('args', { type: 'string', array: true, describe: cmd.usage });
        for (const o of cmd.options ?? [])
          bb = bb.option(o.slice(2), { type: (cmd.flags ?? []).includes(o.slice(2)) ? 'boolean' : 'string' });
        for (const e of cmd.examples ?? []) bb = bb.example(`twinfs ${e}`, '');
        return bb;
      },
      async (a: any) => {
        const words = [...((a.args as string[]) ?? [])];
        for (const o of cmd.options ?? []) {
          const k = o.slice(2);
          if (a[k] !== undefined && a[k] !== false) words.push(o, ...(a[k] === true ? [] : [String(a[k])]));
        }
        setStatus(await runOnce(cmd, { server: a.server, tokenFile: a['token-file'], json: a.json }, words));
      },
    );
  }
  y.command(
    'mirror <action>',
    'mirror maintenance: repair (resync broken pairs fully)',
    (b) => withServer(b).positional('action', { choices: ['repair'] as const, demandOption: true }),
    async (a: any) => {
      const cmd = controlCommands.find((c) => c.name === 'repair')!;
      setStatus(await runOnce(cmd, { server: a.server, tokenFile: a['token-file'], json: a.json }, []));
    },
  );
  y.command(
    'repl',
    'interactive shell over a running server (freeze, thaw, backup, status, ...)',
    (b) =>
      withServer(b)
        .option('history', { type: 'string', describe: 'history file (default ~/.twinfs_history)' })
        .example('twinfs repl --server ws://127.0.0.1:7420 --token-file /var/lib/twinfs/control.token', ''),
    async (a: any) => {
      const { url, token } = await resolveConnection({ server: a.server, tokenFile: a['token-file'] });
      const probe = await connect({ server: url, tokenFile: a['token-file'] }).catch(() => null);
      let listDir: ReturnType<typeof localLister> | undefined;
      if (probe) {
        const s = (await probe.request('status').catch(() => null)) as any;
        if (s?.fs?.primary) listDir = localLister(s.fs.primary);
        await probe.close();
      }
      setStatus(await runRepl({ url, token, commands: all(), historyFile: a.history, listDir }));
    },
  );
  return y;
}

export function assertNoExtra(words: string[]): void {
  if (words.length) throw new TwinError('ETWIN_USAGE', `unexpected arguments: ${words.join(' ')}`);
}
