#!/usr/bin/env node
import './env.js';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { operatorCommands, unknownCommand, unknownOptions } from '../commands/index.js';
import { ErrorCodes, formatError, TwinError } from '../common/errors.js';
import { ProtocolErrors } from '../control/protocol.js';
import {
  argsFromYargs,
  commandBuilder,
  registerOperatorCommands,
  runOnce,
  serverArgs,
} from './operator-commands.js';
import { registerPeerCommands } from './peer-commands.js';
import { registerPluginCommands } from './plugin-commands.js';

const verifyCommand = operatorCommands.find((c) => c.name === 'verify')!;

async function main(argv: string[]): Promise<number> {
  let status = 0;
  const parser = yargs(argv)
    .scriptName('twinfs')
    .strict()
    .demandCommand(1, 'name a command (twinfs --help lists them)')
    .command(
      'serve',
      'mount the primary directory with a write-back cache and serve it (foreground)',
      (y) =>
        y
          .option('primary', { type: 'string', describe: 'primary backing directory' })
          .option('mount', { type: 'string', describe: 'mount point (an empty directory)' })
          .option('mirror', { type: 'string', describe: 'mirror directory (second storage device)' })
          .option('config', { type: 'string', describe: 'JSON config file with the same settings' })
          .option('cache-mb', {
            type: 'number',
            describe: 'dirty-data limit of the write-back cache, MiB (default 64)',
          })
          .option('writeback-ms', {
            type: 'number',
            describe: 'write back dirty data older than this, ms (default 3000)',
          })
          .option('write-through', {
            type: 'boolean',
            describe: 'no write-back cache: writes reach the primary before they return',
          })
          .option('flush-on-close', { type: 'boolean', describe: 'write a file back when it is closed' })
          .option('force', { type: 'boolean', describe: 'mount over a non-empty directory' })
          .option('fuse', {
            type: 'number',
            describe:
              'libfuse to serve with: 3 (default: kernel caching, kept exact) or 2 (no kernel caching; also TWINFS_FUSE=2|3)',
          })
          .option('state-dir', {
            type: 'string',
            describe: 'where the volume id is kept (default /var/lib/twinfs)',
          })
          .option('adopt-mirror', {
            type: 'boolean',
            describe: 'take over a mirror that belongs to another primary',
          })
          .option('control', {
            type: 'string',
            describe: 'serve the control channel on HOST:PORT (websocket, 127.0.0.1 by default)',
          })
          .option('token-file', {
            type: 'string',
            describe: 'control token file, created 0600 if missing (default STATE_DIR/control.token)',
          })
          .option('max-stall-ms', {
            type: 'number',
            describe: 'longest a backup prepare may hold writes (default 1000)',
          })
          .option('kernel-sync-timeout-ms', {
            type: 'number',
            describe:
              'longest a prepare waits for the kernel to write back dirty mmap pages of the mount (default 30000)',
          })
          .option('tls-cert', { type: 'string', describe: 'serve wss:// with this certificate (PEM)' })
          .option('tls-key', { type: 'string', describe: 'private key (PEM) for --tls-cert' })
          .option('read-token-file', {
            type: 'string',
            describe: 'a second token, read-only (status, verify), created 0600 if missing',
          })
          .option('insecure-bind', {
            type: 'boolean',
            describe:
              'allow a non-loopback --control address without TLS (the token crosses the network in clear)',
          })
          .option('control-max-connections', {
            type: 'number',
            describe: 'most control connections at once (default 256, at most 1/8 of the open-file limit)',
          })
          .option('http', {
            type: 'string',
            describe:
              'serve the status page and /metrics on HOST:PORT (127.0.0.1 by default; starts the control channel if --control is not given; docs/observability.md)',
          })
          .option('log-level', {
            type: 'string',
            describe:
              'server log level: trace, debug, info, warn, error, fatal, silent (default info; warn with --repl)',
          })
          .option('json', { type: 'boolean', describe: 'print events as JSON lines' })
          .option('repl', {
            type: 'boolean',
            describe:
              'run the interactive shell in this terminal (starts the control channel on 127.0.0.1 if --control is not given)',
          })
          .option('smb', {
            type: 'string',
            describe:
              'serve the mount over SMB with Samba on [HOST:]PORT (127.0.0.1 by default; docs/smb.md)',
          })
          .option('smb-user', {
            type: 'string',
            array: true,
            describe: 'an SMB account NAME:PASSWORD (repeatable; the config file keeps passwords off ps)',
          })
          .option('plugin-dir', {
            type: 'string',
            array: true,
            describe:
              'a folder of plugins, or one plugin folder (repeatable); with --control, plugins hear freeze, split, thaw and resync events',
          })
          .example(
            'twinfs serve --primary /srv/primary --mount /mnt/twin --mirror /srv/mirror --control 127.0.0.1:7420',
            '',
          )
          .example('twinfs serve --config examples/twinfs.json --repl', '')
          .example(
            'twinfs serve --config /etc/twinfs.json --http 127.0.0.1:7421 --read-token-file /var/lib/twinfs/read.token',
            'status page and Prometheus metrics, for the read-only token',
          ),
      async (a) => {
        // Loaded when served: the FUSE layer, the mirror and the server's observers are no part
        // of the other commands' start-up (a backup's start counts against its time).
        const { serve } = await import('./serve.js');
        status = await serve({
          primary: a.primary,
          mount: a.mount,
          mirror: a.mirror,
          config: a.config,
          cacheMb: a['cache-mb'],
          writebackMs: a['writeback-ms'],
          writeThrough: a['write-through'],
          flushOnClose: a['flush-on-close'],
          force: a.force,
          fuse: a.fuse,
          stateDir: a['state-dir'],
          adoptMirror: a['adopt-mirror'],
          control: a.control,
          tokenFile: a['token-file'],
          maxStallMs: a['max-stall-ms'],
          kernelSyncTimeoutMs: a['kernel-sync-timeout-ms'],
          tlsCert: a['tls-cert'],
          tlsKey: a['tls-key'],
          readTokenFile: a['read-token-file'],
          insecureBind: a['insecure-bind'],
          controlMaxConnections: a['control-max-connections'],
          http: a.http,
          logLevel: a['log-level'],
          json: a.json,
          repl: a.repl,
          smbListen: a.smb,
          smbUsers: a['smb-user'],
          pluginDirs: a['plugin-dir'],
        });
      },
    )
    .command(
      'unmount <dir>',
      'unmount a twinfs (or any FUSE) mount, stale ones included',
      (y) =>
        y
          .positional('dir', { type: 'string', demandOption: true, describe: 'the mount point' })
          .example(
            'twinfs unmount /srv/twinfs',
            'after `twinfs serve` was killed: "Transport endpoint is not connected"',
          ),
      async (a) => {
        const { forceUnmount } = await import('../fusefs/unmount.js');
        const r = await forceUnmount(a.dir);
        process.stdout.write(`twinfs: unmounted ${a.dir} (${r.method})\n`);
      },
    )
    .command(
      'verify',
      'compare primary and mirror: of a running server (--server), or offline (--primary DIR --mirror DIR); exit 0 only if they match',
      commandBuilder(verifyCommand, (y) =>
        y
          .option('primary', { type: 'string', describe: 'offline: the primary directory' })
          .option('mirror', {
            type: 'string',
            describe: 'offline: the mirror root (holding device.json and data/)',
          })
          .usage('twinfs verify [--no-content] [--primary DIR --mirror DIR]')
          .example('twinfs verify --primary /srv/primary --mirror /srv/mirror', 'offline, the server stopped')
          .example(
            'twinfs verify --config /etc/twinfs.json --no-content --json',
            'metadata only, JSON report',
          ),
      ),
      async (a) => {
        const args = argsFromYargs(verifyCommand, a, [], ['primary', 'mirror']);
        if (a.primary || a.mirror) {
          if (!a.primary || !a.mirror)
            throw new TwinError('ETWIN_USAGE', 'offline verify needs both --primary and --mirror');
          const { verifyOffline } = await import('./verify.js');
          status = await verifyOffline({
            primary: String(a.primary),
            mirror: String(a.mirror),
            content: args.options.content !== false,
            json: Boolean(a.json),
          });
          return;
        }
        // Differences: printed (with --json the report, then the error line), exit 1.
        status = await runOnce(verifyCommand, serverArgs(a), args);
      },
    )
    .command(
      'demo',
      'on temporary directories: serve, write a tree while a separate peer backs it up, restore, verify, report the write stall',
      (y) =>
        y
          .option('keep', { type: 'boolean', describe: 'keep the temporary directories' })
          .example('twinfs demo', 'about ten seconds; needs FUSE'),
      async (a) => {
        const { demo } = await import('./demo.js');
        status = await demo({ keep: a.keep });
      },
    );
  registerOperatorCommands(parser, (code) => {
    status = code;
  });
  registerPluginCommands(parser, (code) => {
    status = code;
  });
  registerPeerCommands(parser, (code) => {
    status = code;
  });
  parser
    .fail((msg, err) => {
      // yargs' own validation errors (YError) are usage mistakes; anything else is a real failure.
      if (err && err.name !== 'YError') throw err;
      const m = usageMessage(msg ?? err?.message ?? 'bad usage', argv, commands);
      throw typeof m === 'string' ? new TwinError('ETWIN_USAGE', m) : m;
    })
    .help()
    .version()
    .wrap(Math.min(110, parser.terminalWidth()));
  skipHelpCache(parser);
  // Read before parsing: inside a command, yargs holds only that command's subcommands.
  const commands = knownCommands(parser);
  await parser.parseAsync();
  return status;
}

/**
 * yargs renders a command's whole help text right after it starts the command's handler, in
 * case the handler shows it later; twinfs never does (a usage error is one line, see fail).
 * That rendering (cliui, string widths of every option) blocked a backup's start for 0.2–0.5 s
 * on a loaded machine: skipped. `--help` still renders it when asked.
 */
function skipHelpCache(parser: ReturnType<typeof yargs>): void {
  try {
    const usage = (parser as any).getInternalMethods().getUsageInstance();
    if (typeof usage?.cacheHelpMessage === 'function') usage.cacheHelpMessage = () => undefined;
  } catch {
    // Another yargs: its help is rendered as before.
  }
}

/** The names of the registered commands (yargs keeps them internally). */
function knownCommands(parser: ReturnType<typeof yargs>): string[] {
  try {
    return (parser as any).getInternalMethods().getCommandInstance().getCommands() as string[];
  } catch {
    return [];
  }
}

/**
 * yargs' message as one line that names what was wrong and where help is; unknown commands and
 * options in the same words (and with the same suggestions) as the REPL's.
 */
function usageMessage(msg: string, argv: string[], commands: string[]): string | TwinError {
  const first = argv.find((w) => !w.startsWith('-'));
  const help = first && commands.includes(first) ? `twinfs ${first} --help` : 'twinfs --help';
  const unknown = /^Unknown arguments?: (.+)$/.exec(msg.trim());
  if (unknown) {
    const names = unknown[1]!.split(', ');
    if (first && names.includes(first) && !commands.includes(first)) return unknownCommand(first, commands);
    const options = names.filter((n) => argv.includes(`--${n}`) || argv.some((w) => w.startsWith(`--${n}=`)));
    if (first && options.length) return unknownOptions(first, options, []);
  }
  if (/^Unknown command/.test(msg.trim()) && first) return unknownCommand(first, commands);
  return `${msg
    .trim()
    .replace(/:\s*\n\s*/g, ': ')
    .replace(/\s*\n\s*/g, '; ')} (${help})`;
}

/**
 * The catalogued code an error carries: a TwinError's, or one the server sent back (a
 * RemoteError with an ETWIN_* or EPROTO_* code). Those are known failures: one line, no stack.
 */
function knownCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && (code in ErrorCodes || code in ProtocolErrors) ? code : undefined;
}

main(hideBin(process.argv)).then(
  (code) => process.exit(code),
  (err) => {
    const code = knownCode(err);
    process.stderr.write(`twinfs: error ${code ? `${code}: ${(err as Error).message}` : formatError(err)}\n`);
    // A stack helps only for a failure of this process; a server's ETWIN_INTERNAL is in its log.
    if (!code || (code === 'ETWIN_INTERNAL' && err instanceof TwinError))
      process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
    process.exit(code === 'ETWIN_USAGE' ? 2 : 1);
  },
);
