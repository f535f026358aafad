#!/usr/bin/env node
import './env.js';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { TwinError } from '../common/errors.js';
import { demo } from './demo.js';
import { registerPeerCommands } from './peer-commands.js';
import { formatError, serve } from './serve.js';

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
          .option('tls-cert', { type: 'string', describe: 'serve wss:// with this certificate (PEM)' })
          .option('tls-key', { type: 'string', describe: 'private key (PEM) for --tls-cert' })
          .option('json', { type: 'boolean', describe: 'print events as JSON lines' }),
      async (a) => {
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
          stateDir: a['state-dir'],
          adoptMirror: a['adopt-mirror'],
          control: a.control,
          tokenFile: a['token-file'],
          maxStallMs: a['max-stall-ms'],
          tlsCert: a['tls-cert'],
          tlsKey: a['tls-key'],
          json: a.json,
        });
      },
    )
    .command(
      'unmount <dir>',
      'unmount a twinfs (or any FUSE) mount, stale ones included',
      (y) => y.positional('dir', { type: 'string', demandOption: true }),
      async (a) => {
        const { forceUnmount } = await import('../fusefs/unmount.js');
        const r = await forceUnmount(a.dir);
        process.stdout.write(`twinfs: unmounted ${a.dir} (${r.method})\n`);
      },
    )
    .command(
      'verify',
      'compare primary and mirror (offline: --primary DIR --mirror DIR); exit 0 only if they match',
      (y) =>
        y
          .option('primary', { type: 'string', demandOption: true })
          .option('mirror', {
            type: 'string',
            demandOption: true,
            describe: 'the mirror root (holding device.json and data/)',
          })
          .option('no-content', { type: 'boolean', describe: 'skip content hashes' })
          .option('json', { type: 'boolean' }),
      async (a) => {
        const { verifyOffline } = await import('./verify.js');
        status = await verifyOffline({
          primary: a.primary,
          mirror: a.mirror,
          content: !a['no-content'],
          json: a.json,
        });
      },
    )
    .command(
      'demo',
      'mount on temporary directories, write and read files, show the primary holds them, unmount',
      (y) => y.option('keep', { type: 'boolean', describe: 'keep the temporary directories' }),
      async (a) => {
        status = await demo({ keep: a.keep });
      },
    );
  registerPeerCommands(parser, (code) => {
    status = code;
  });
  parser
    .fail((msg, err) => {
      if (err) throw err;
      throw new TwinError('ETWIN_USAGE', msg);
    })
    .help()
    .version();
  await parser.parseAsync();
  return status;
}

main(hideBin(process.argv)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`twinfs: error ${formatError(err)}\n`);
    if (!(err instanceof TwinError) || err.code === 'ETWIN_INTERNAL')
      process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
    process.exit(err instanceof TwinError && err.code === 'ETWIN_USAGE' ? 2 : 1);
  },
);
