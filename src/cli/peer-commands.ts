import type { Argv } from 'yargs';
import type { PeerEvent } from '../backup-peer/peer-daemon.js';
import { withTargets } from '../commands/peer.js';
import type { TwinError } from '../common/errors.js';
import { formatBytes as bytes, Output } from './output.js';

/**
 * `twinfs peer`: the backup peer as a daemon. (The peer's operator commands, backup, snapshots,
 * restore, check and forget, are in src/commands/peer.ts, served by the command line and the REPL.)
 */
export function registerPeerCommands(y: Argv, setStatus: (code: number) => void): Argv {
  const json = { type: 'boolean', describe: 'JSON lines on stdout; the last one is the result' } as const;
  const pluginDir = {
    type: 'string',
    array: true,
    describe: 'a folder of plugins, or one plugin folder (repeatable); targets and hooks come from plugins',
  } as const;
  return y.command(
    'peer',
    'run the backup peer as a daemon: backups on an interval, from a JSON config (SIGTERM stops it)',
    (a) =>
      a
        .option('config', { type: 'string', demandOption: true, describe: 'peer config (JSON)' })
        .option('plugin-dir', pluginDir)
        .option('json', json)
        .example('twinfs peer --config /etc/twinfs-peer.json', 'backups every intervalSec, SIGTERM stops it'),
    async (a) => {
      const out = new Output(!!a.json);
      try {
        await withTargets(async (targets, plugins) => {
          const { PeerDaemon, loadPeerConfig } = await import('../backup-peer/index.js');
          const daemon = new PeerDaemon(await loadPeerConfig(a.config), targets, await plugins());
          const ac = new AbortController();
          const onSignal = () => ac.abort();
          process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
          daemon.onDidReport((e) => out.event({ ...e }, describePeerEvent(e)));
          try {
            await daemon.run(ac.signal);
          } finally {
            process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
          }
        }, a['plugin-dir']);
        setStatus(0);
      } catch (err) {
        out.error(err);
        setStatus((err as TwinError)?.code === 'ETWIN_USAGE' ? 2 : 1);
      }
    },
  );
}

function describePeerEvent(e: PeerEvent): string {
  switch (e.event) {
    case 'started':
      return `peer started: ${e.server} → ${e.target} every ${e.intervalSec} s`;
    case 'backup-started':
      return `backup ${e.run} started`;
    case 'backup-complete':
      return `backup ${e.run}: snapshot ${e.snapshotId} complete, ${e.files} files, ${bytes(e.bytes)} (${bytes(e.copiedBytes)} copied) in ${(e.ms / 1000).toFixed(1)} s`;
    case 'backup-warning':
      return `backup ${e.run}: warning: ${e.message}`;
    case 'backup-failed':
      return `backup ${e.run} failed: ${e.code}: ${e.message}`;
    case 'forget':
      return `forgot ${e.removed.length} snapshot(s)${e.orphaned.length ? ` (${e.orphaned.length} left data behind)` : ''}`;
    case 'stopped':
      return 'peer stopped';
  }
}
