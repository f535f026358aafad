import * as path from 'node:path';
import type { Argv } from 'yargs';
import type { PeerEvent } from '../backup-peer/peer-daemon.js';
import type { TargetRegistry } from '../backup-peer/targets/index.js';
import { TwinError } from '../common/errors.js';
import type { ControlClient } from '../control/client.js';
import type { PluginHost } from '../plugins/index.js';
import type { OperatorCommand } from '../repl/commands.js';
import { resolveConnection } from './connect.js';
import { operatorConfigFrom } from './operator-config.js';
import { formatBytes as bytes, Output } from './output.js';

/**
 * The backup peer's commands: `backup`, `peer`, `snapshots`, `restore`, `check`, `forget` on the
 * command line, and `backup`, `snapshots`, `restore`, `check` in the REPL. Thin: each validates
 * and adapts its arguments, calls src/backup-peer, and prints.
 *
 * Output contract: human text (and a progress bar on a TTY's stderr) by default; with --json,
 * one JSON object per line on stdout, the last line being the result (or {event:"error", code,
 * message}). Errors are one line on stderr with a stable code and a non-zero status (2 for
 * usage mistakes), never a stack trace.
 */
export function registerPeerCommands(y: Argv, setStatus: (code: number) => void): Argv {
  const run =
    (
      a: { json?: boolean; 'plugin-dir'?: string[]; 'password-file'?: string },
      fn: (out: Output, targets: TargetRegistry, plugins: () => Promise<PluginHost>) => Promise<number>,
    ) =>
    async () => {
      const out = new Output(!!a.json);
      try {
        if (a['password-file']) (await import('../repository/index.js')).setPasswordFile(a['password-file']);
        setStatus(await withTargets((targets, plugins) => fn(out, targets, plugins), a['plugin-dir']));
      } catch (err) {
        out.error(err);
        setStatus((err as TwinError)?.code === 'ETWIN_USAGE' ? 2 : 1);
      } finally {
        out.stopBar();
      }
    };
  const catalog = {
    type: 'string',
    describe:
      'catalog directory (default: /var/lib/twinfs/catalog as root, else ~/.local/state/twinfs/catalog)',
  } as const;
  const json = { type: 'boolean', describe: 'JSON lines on stdout; the last one is the result' } as const;
  const config = {
    type: 'string',
    describe: 'operator config file with defaults: server, tokenFile, catalog, target (or $TWINFS_CONFIG)',
  } as const;
  /** --catalog, else the config's catalog (else the built-in default). */
  const catalogOf = async (a: { catalog?: string; config?: string }) =>
    a.catalog ?? (await operatorConfigFrom(a.config)).catalog;
  const snapshot = {
    type: 'string',
    demandOption: true,
    describe: "snapshot id, unique prefix, or 'latest'",
  } as const;
  const targetOnly = {
    type: 'string',
    describe:
      'read the snapshots from this target (TYPE:LOCATION) alone, the source of truth; the catalog is brought in line with it',
  } as const;
  const passwordFile = {
    type: 'string',
    describe:
      'file holding the passphrase of an encrypted repository (or $TWINFS_PASSWORD, $TWINFS_PASSWORD_FILE)',
  } as const;
  const pluginDir = {
    type: 'string',
    array: true,
    describe: 'a folder of plugins, or one plugin folder (repeatable); targets and hooks come from plugins',
  } as const;

  return y
    .command(
      'backup',
      'back up files, a subtree or the whole volume from a twinfs server to a target (one run)',
      (a) =>
        a
          .option('server', { type: 'string', describe: 'control URL, ws://HOST:PORT (or $TWINFS_SERVER)' })
          .option('token-file', {
            type: 'string',
            describe: 'file holding the control token (or $TWINFS_TOKEN)',
          })
          .option('target', {
            type: 'string',
            describe: "TYPE:LOCATION (dir:/backups, tar:..., s3:...); default: the config's target",
          })
          .option('path', { type: 'string', array: true, describe: 'a volume path to back up (repeatable)' })
          .option('subtree', { type: 'string', describe: 'a volume directory, with everything below it' })
          .option('catalog', catalog)
          .option('lease-sec', {
            type: 'number',
            describe: 'split lease, renewed while copying (default 60)',
          })
          .option('mirror-map', {
            type: 'string',
            array: true,
            describe: 'DEVICE_ID=PATH: where this host sees a mirror',
          })
          .option('full', {
            type: 'boolean',
            describe: 'copy every file, share nothing with the previous snapshot',
          })
          .option('tag', {
            type: 'string',
            array: true,
            describe: 'a label for the snapshot (repeatable; forget --keep-tag)',
          })
          .option('password-file', passwordFile)
          .option('check-source', {
            choices: ['metadata', 'data'] as const,
            describe:
              'before releasing the split, compare the committed snapshot with the split copy it was read from: metadata (cheap) or data (every file read back and hashed); a mismatch fails the run',
          })
          .option('ca-file', { type: 'string', describe: 'CA certificate (PEM) for wss://' })
          .option('plugin-dir', pluginDir)
          .option('freeze-hook-timeout-sec', {
            type: 'number',
            describe:
              'how long plugins may take to quiesce applications (onWillFreeze) before writes are held; not part of the write stall (default 10)',
          })
          .option('on-hook-failure', {
            choices: ['crash-consistent', 'fail'] as const,
            describe:
              'when an onWillFreeze hook fails or times out: warn and back up crash-consistent (default), or fail',
          })
          .option('config', config)
          .option('json', json)
          .example(
            'twinfs backup --server ws://127.0.0.1:7420 --token-file /var/lib/twinfs/control.token --target dir:/backups',
            'the whole volume',
          )
          .example(
            'twinfs backup --subtree /db --config /etc/twinfs.json',
            'server, token, target and catalog from the config',
          )
          .example(
            'twinfs backup --path /a.txt --path /b.txt --target dir:/backups --json',
            'JSON progress lines, then the result',
          )
          .example(
            'twinfs backup --subtree /app --plugin-dir ./sqlite-checkpoint --on-hook-failure fail',
            'application-consistent: a plugin checkpoints the database first, or no backup',
          ),
      (a) =>
        run(a, async (out, targets, plugins) => {
          const { BackupRun, selectorFor } = await import('../backup-peer/index.js');
          const conn = await resolveConnection({
            server: a.server,
            tokenFile: a['token-file'],
            caFile: a['ca-file'],
            config: a.config,
          });
          const spec = a.target ?? conn.config.target;
          if (!spec)
            throw new TwinError(
              'ETWIN_USAGE',
              'no target: pass --target TYPE:LOCATION or name "target" in the config',
            );
          const selector = selectorFor({ paths: a.path, subtree: a.subtree });
          const leaseSec = a['lease-sec'];
          if (leaseSec !== undefined && !(leaseSec >= 1))
            throw new TwinError('ETWIN_USAGE', '--lease-sec must be at least 1');
          const hookSec = a['freeze-hook-timeout-sec'];
          if (hookSec !== undefined && !(hookSec > 0))
            throw new TwinError('ETWIN_USAGE', '--freeze-hook-timeout-sec must be more than 0');
          const target = await targets.open(spec);
          const ac = new AbortController();
          const onSignal = (s: string) => ac.abort(new TwinError('ETWIN_ABORTED', `backup cancelled (${s})`));
          process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
          try {
            const r = new BackupRun({
              server: conn.url,
              token: conn.token,
              ca: conn.ca,
              target,
              catalogDir: a.catalog ?? conn.config.catalog,
              selector,
              leaseMs: leaseSec ? Math.round(leaseSec * 1000) : undefined,
              mirrorMap: parseMirrorMap(a['mirror-map']),
              full: a.full,
              tags: a.tag?.map(String),
              checkSource: a['check-source'],
              signal: ac.signal,
              hooks: await plugins(),
              freezeHookTimeoutMs: hookSec === undefined ? undefined : Math.round(hookSec * 1000),
              onHookFailure: a['on-hook-failure'],
            });
            r.onDidProgress((p) => out.progress({ ...p }));
            r.onDidWarn((w) => {
              if (out.json) out.event({ event: 'warning', ...w }, w.message);
              out.warn(w.message);
            });
            const res = await r.run();
            const s = res.snapshot;
            out.result(
              {
                event: 'done',
                snapshotId: s.id,
                backupId: res.backupId,
                stallMs: res.stallMs,
                freezeHookMs: res.freezeHookMs,
                hookFailures: res.hookFailures,
                target: s.target,
                totals: s.totals,
                generation: s.generation,
                refused: res.refused,
                unknownSince: res.unknownSince,
                sourceCheck: res.sourceCheck && {
                  checked: res.sourceCheck.checked,
                  bytes: res.sourceCheck.bytes,
                  ok: res.sourceCheck.ok,
                },
              },
              `snapshot ${s.id} complete: ${describeTotals(s.totals)}${
                res.sourceCheck ? `; matches the split copy (${res.sourceCheck.checked} entries)` : ''
              }`,
            );
            return 0;
          } finally {
            process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
            await target.close();
          }
        })(),
    )
    .command(
      'peer',
      'run the backup peer as a daemon: backups on an interval, from a JSON config (SIGTERM stops it)',
      (a) =>
        a
          .option('config', { type: 'string', demandOption: true, describe: 'peer config (JSON)' })
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example(
            'twinfs peer --config /etc/twinfs-peer.json',
            'backups every intervalSec, SIGTERM stops it',
          ),
      (a) =>
        run(a, async (out, targets, plugins) => {
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
          return 0;
        })(),
    )
    .command(
      'snapshots',
      'list the snapshots in the catalog, or (--target) at a target',
      (a) =>
        a
          .option('target', targetOnly)
          .option('catalog', catalog)
          .option('config', config)
          .option('plugin-dir', pluginDir)
          .option('password-file', passwordFile)
          .option('json', json)
          .example('twinfs snapshots --catalog /var/lib/twinfs/catalog', '')
          .example('twinfs snapshots --target dir:/backups', 'from the repository itself, no catalog needed')
          .example('twinfs snapshots --json', 'one JSON array of snapshot records'),
      (a) =>
        run(a, async (out, targets) => {
          const { Catalog, syncCatalog } = await import('../backup-peer/index.js');
          let list: Array<import('../backup-peer/index.js').SnapshotRecord & { abandoned?: boolean }>;
          if (a.target) {
            const t = await targets.open(a.target, { create: false });
            try {
              list = (await syncCatalog(await catalogOf(a), t)).snapshots;
            } finally {
              await t.close();
            }
          } else
            list = await Catalog.with(await catalogOf(a), async (c) =>
              (await c.list()).map((s) => ({ ...s, abandoned: c.isAbandoned(s) })),
            );
          if (out.json) {
            out.line(JSON.stringify(list));
            return 0;
          }
          for (const s of list) {
            const when = new Date(s.time).toISOString().replace('T', ' ').slice(0, 19);
            const state = (s.abandoned ? 'abandoned' : s.state).padEnd(9);
            const size = `${String(s.totals.files).padStart(7)} files ${bytes(s.totals.bytes).padStart(10)}`;
            out.line(
              `${s.id.padEnd(24)}  ${when}  ${state}  ${size}  ${s.paths.join(',').padEnd(12)}  ${s.target}`,
            );
          }
          out.line(
            `twinfs: ${list.length} snapshot(s), ${list.filter((s) => s.state === 'complete').length} complete`,
          );
          return 0;
        })(),
    )
    .command(
      'restore <snapshot> [paths..]',
      'restore a snapshot (or volume paths of it) into a directory; nothing is written outside it',
      (a) =>
        a
          .positional('snapshot', snapshot)
          .positional('paths', {
            type: 'string',
            array: true,
            describe: 'volume paths (default: everything)',
          })
          .option('to', {
            type: 'string',
            demandOption: true,
            describe: 'destination directory (a twinfs mount works too)',
          })
          .option('target', targetOnly)
          .option('password-file', passwordFile)
          .option('catalog', catalog)
          .option('config', config)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example('twinfs restore latest --to /tmp/restored', 'everything of the newest snapshot')
          .example(
            'twinfs restore 20240101-0000-ab12 /db /etc/app.conf --to /srv/twinfs',
            'two paths, back onto the mount',
          ),
      (a) =>
        run(a, async (out, targets) => {
          const { restore } = await import('../backup-peer/index.js');
          const r = await restore({
            snapshot: a.snapshot,
            paths: a.paths,
            to: a.to,
            target: a.target,
            catalogDir: await catalogOf(a),
            registry: targets,
            onProgress: (p) => out.progress({ phase: 'restore', ...p }),
          });
          out.stopBar();
          for (const f of r.failures) out.warn(`${f.code}: ${f.message}`);
          const fails = r.failures.length ? `; ${r.failures.length} failed` : '';
          out.result(
            { event: 'done', ...r },
            `restored ${r.entries} entries (${bytes(r.bytes)}) of ${r.snapshotId} to ${path.resolve(a.to)}${fails}`,
          );
          if (r.failures.length > 0)
            throw new TwinError('ETWIN_RESTORE_FAILED', `${r.failures.length} entries could not be restored`);
          return 0;
        })(),
    )
    .command(
      'check [snapshot]',
      're-read a snapshot at its target and compare it with the catalog, or (--target without a snapshot) check a whole repository; exit 1 on any difference',
      (a) =>
        a
          .positional('snapshot', { ...snapshot, demandOption: false })
          .option('target', targetOnly)
          .option('password-file', passwordFile)
          .option('read-data-subset', {
            type: 'string',
            describe: 'repository check: read and verify this share of the packs, chosen at random (N%)',
          })
          .option('catalog', catalog)
          .option('config', config)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .option('metadata-only', {
            type: 'boolean',
            describe:
              "cheap: compare each entry's type, size and the target's stamp of the stored copy, read no data",
          })
          .option('read-data', {
            type: 'boolean',
            describe: 'read every file back and compare its sha256 (the default)',
          })
          .conflicts('metadata-only', 'read-data')
          .option('source', {
            type: 'boolean',
            describe:
              "compare with the mirror instead of the catalog: the server splits the selection again and vouches which files did not change since the snapshot's split; those are compared (metadata, and unless --metadata-only their content on both sides)",
          })
          .option('server', { type: 'string', describe: 'control URL for --source (or $TWINFS_SERVER)' })
          .option('token-file', {
            type: 'string',
            describe: 'control token file for --source (or $TWINFS_TOKEN)',
          })
          .option('ca-file', { type: 'string', describe: 'CA certificate (PEM) for wss://' })
          .option('mirror-map', {
            type: 'string',
            array: true,
            describe: 'DEVICE_ID=PATH: where this host sees a mirror (--source)',
          })
          .example('twinfs check latest', 're-read the newest snapshot at its target')
          .example(
            'twinfs check latest --source --server ws://127.0.0.1:7420 --token-file /var/lib/twinfs/control.token',
            'compare the newest snapshot with the mirror, for every file unchanged since',
          )
          .example('twinfs check latest --metadata-only', 'sizes and stamps only: seconds, not hours'),
      (a) =>
        run(a, async (out, targets) => {
          if (a.snapshot === undefined) {
            if (!a.target)
              throw new TwinError(
                'ETWIN_USAGE',
                'check needs a snapshot, or --target TYPE:LOCATION for the whole repository',
              );
            return checkRepositoryCommand(out, targets, a.target, a['read-data'], a['read-data-subset']);
          }
          if (a.source) {
            const { checkSnapshotAgainstSource } = await import('../backup-peer/index.js');
            const conn = await resolveConnection({
              server: a.server,
              tokenFile: a['token-file'],
              caFile: a['ca-file'],
              config: a.config,
            });
            const s = await checkSnapshotAgainstSource({
              snapshot: a.snapshot,
              target: a.target,
              catalogDir: await catalogOf(a),
              registry: targets,
              server: conn.url,
              token: conn.token,
              ca: conn.ca,
              mirrorMap: parseMirrorMap(a['mirror-map']),
              readData: a['metadata-only'] !== true,
            });
            if (!out.json)
              for (const p of s.problems) out.line(`${p.kind.padEnd(10)} ${p.path}  ${p.message}`);
            out.result(
              { event: 'done', ...s },
              s.unknownSince
                ? `snapshot ${s.snapshotId}: nothing compared, the server cannot vouch (unknown since generation ${s.unknownSince.since}: ${s.unknownSince.reason})`
                : `snapshot ${s.snapshotId}: ${s.checked} entries compared with the mirror (${s.skipped} changed since or directories, skipped)${s.ok ? '' : `, ${s.problems.length} problem(s)`}`,
            );
            if (!s.ok)
              throw new TwinError(
                'ETWIN_CHECK_FAILED',
                s.unknownSince
                  ? `snapshot ${s.snapshotId} could not be compared with the mirror`
                  : `snapshot ${s.snapshotId} does not match the mirror`,
              );
            return 0;
          }
          const { checkSnapshot } = await import('../backup-peer/index.js');
          const r = await checkSnapshot({
            snapshot: a.snapshot,
            target: a.target,
            catalogDir: await catalogOf(a),
            registry: targets,
            metadataOnly: a['metadata-only'],
            onProgress: (p) => out.progress({ phase: 'check', ...p }),
          });
          out.stopBar();
          if (!out.json) for (const p of r.problems) out.line(`${p.kind.padEnd(10)} ${p.path}  ${p.message}`);
          out.result(
            { event: 'done', ...r },
            r.ok
              ? `snapshot ${r.snapshotId}: ${r.checked} entries, ${bytes(r.bytes)} verified`
              : `snapshot ${r.snapshotId}: ${r.problems.length} problem(s) in ${r.checked} entries${
                  r.flagged > 0
                    ? `; ${r.flagged} stored file(s) flagged, the next backup stores them again`
                    : ''
                }`,
          );
          if (!r.ok)
            throw new TwinError('ETWIN_CHECK_FAILED', `snapshot ${r.snapshotId} does not match the catalog`);
          return 0;
        })(),
    )
    .command(
      'forget',
      'remove the snapshots a keep policy does not keep (at the target; prune frees their data)',
      (a) =>
        a
          .option('keep-last', {
            type: 'number',
            describe: 'keep the newest N snapshots (per device, target and selection)',
          })
          .option('keep-hourly', {
            type: 'number',
            describe: 'keep the newest snapshot of each of the last N hours',
          })
          .option('keep-daily', {
            type: 'number',
            describe: 'keep the newest snapshot of each of the last N days',
          })
          .option('keep-weekly', {
            type: 'number',
            describe: 'keep the newest snapshot of each of the last N weeks',
          })
          .option('keep-monthly', {
            type: 'number',
            describe: 'keep the newest snapshot of each of the last N months',
          })
          .option('keep-yearly', {
            type: 'number',
            describe: 'keep the newest snapshot of each of the last N years',
          })
          .option('keep-within', {
            type: 'string',
            describe: 'keep every snapshot within this duration of the newest (7d, 2w, 1m, 1y2m, 12h)',
          })
          .option('keep-tag', {
            type: 'string',
            array: true,
            describe: 'keep every snapshot with this tag (repeatable)',
          })
          .option('dry-run', { type: 'boolean', describe: 'show what would be removed' })
          .option('target', targetOnly)
          .option('password-file', passwordFile)
          .option('catalog', catalog)
          .option('config', config)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example('twinfs forget --keep-last 7 --keep-daily 30 --dry-run', '')
          .example('twinfs forget --target dir:/backups --keep-within 30d --keep-monthly 12', ''),
      (a) =>
        run(a, async (out, targets) => {
          const { forget, parseDuration } = await import('../backup-peer/index.js');
          for (const k of [
            'keep-last',
            'keep-hourly',
            'keep-daily',
            'keep-weekly',
            'keep-monthly',
            'keep-yearly',
          ] as const) {
            const v = a[k];
            if (v !== undefined && !(Number.isInteger(v) && v >= 1))
              throw new TwinError('ETWIN_USAGE', `--${k} must be a whole number ≥ 1`);
          }
          const dry = !!a['dry-run'];
          const r = await forget({
            catalogDir: await catalogOf(a),
            policy: {
              keepLast: a['keep-last'],
              keepHourly: a['keep-hourly'],
              keepDaily: a['keep-daily'],
              keepWeekly: a['keep-weekly'],
              keepMonthly: a['keep-monthly'],
              keepYearly: a['keep-yearly'],
              keepWithinMs: a['keep-within'] === undefined ? undefined : parseDuration(a['keep-within']),
              keepTags: a['keep-tag']?.map(String),
            },
            registry: targets,
            dryRun: dry,
            target: a.target,
          });
          if (!out.json)
            for (const s of r.remove) out.line(`${dry ? 'would remove' : 'removed'} ${s.id} (${s.reason})`);
          for (const o of r.orphaned)
            out.warn(`${o.id}: removed from the catalog, but its data at ${o.target} remains: ${o.message}`);
          out.result(
            {
              event: 'done',
              kept: r.keep.map((s) => s.id),
              removed: r.remove.map((s) => s.id),
              orphaned: r.orphaned,
              dryRun: dry,
            },
            `${dry ? 'would keep' : 'kept'} ${r.keep.length}, ${dry ? 'would remove' : 'removed'} ${r.remove.length} snapshot(s)`,
          );
          return r.orphaned.length > 0 ? 1 : 0;
        })(),
    )
    .command(
      'ls <snapshot> [path]',
      "list a snapshot's entries (below a volume path), from the catalog or (--target) the target",
      (a) =>
        a
          .positional('snapshot', snapshot)
          .positional('path', { type: 'string', describe: 'a volume path (default: everything)' })
          .option('target', targetOnly)
          .option('password-file', passwordFile)
          .option('catalog', catalog)
          .option('config', config)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example('twinfs ls latest /etc --target dir:/backups', ''),
      (a) =>
        run(a, async (out, targets) => {
          const { loadSnapshot } = await import('../backup-peer/index.js');
          const { snapshot: s, entries } = await loadSnapshot({
            ref: a.snapshot,
            catalogDir: await catalogOf(a),
            target: a.target,
            registry: targets,
          });
          const top = a.path && a.path !== '/' ? a.path.replace(/\/+$/, '') : '/';
          const shown = entries.filter((e) => top === '/' || e.path === top || e.path.startsWith(`${top}/`));
          if (out.json) out.line(JSON.stringify(shown.map(({ snapshotId: _s, ...e }) => e)));
          else
            for (const e of shown)
              out.line(
                `${e.type.padEnd(7)} ${(e.mode & 0o7777).toString(8).padStart(4, '0')} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${bytes(e.size).padStart(10)}  ${new Date(e.mtime).toISOString().replace('T', ' ').slice(0, 19)}  ${e.path}${e.target ? ` -> ${e.target}` : ''}`,
              );
          if (!out.json) out.line(`twinfs: ${shown.length} entries of ${s.id}`);
          return 0;
        })(),
    )
    .command(
      'diff <from> <to>',
      'what changed between two snapshots: added, removed and changed entries (content, type, metadata)',
      (a) =>
        a
          .positional('from', snapshot)
          .positional('to', snapshot)
          .option('target', targetOnly)
          .option('password-file', passwordFile)
          .option('catalog', catalog)
          .option('config', config)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example('twinfs diff 20261201 latest --target dir:/backups', ''),
      (a) =>
        run(a, async (out, targets) => {
          const { loadSnapshot } = await import('../backup-peer/index.js');
          const load = async (ref: string) =>
            loadSnapshot({ ref, catalogDir: await catalogOf(a), target: a.target, registry: targets });
          const [x, y] = [await load(a.from), await load(a.to)];
          const before = new Map(x.entries.map((e) => [e.path, e]));
          const after = new Map(y.entries.map((e) => [e.path, e]));
          const changes: Array<{ change: '+' | '-' | 'M' | 'T' | 'U'; path: string }> = [];
          for (const [p, e] of after) {
            const b = before.get(p);
            if (!b) changes.push({ change: '+', path: p });
            else if (b.type !== e.type) changes.push({ change: 'T', path: p });
            else if (b.hash !== e.hash || b.size !== e.size || b.target !== e.target)
              changes.push({ change: 'M', path: p });
            else if (b.mode !== e.mode || b.uid !== e.uid || b.gid !== e.gid || b.mtime !== e.mtime)
              changes.push({ change: 'U', path: p });
          }
          for (const p of before.keys()) if (!after.has(p)) changes.push({ change: '-', path: p });
          changes.sort((m, n) => (m.path < n.path ? -1 : m.path > n.path ? 1 : 0));
          if (!out.json) for (const c of changes) out.line(`${c.change}  ${c.path}`);
          const count = (k: string) => changes.filter((c) => c.change === k).length;
          out.result(
            { event: 'done', from: x.snapshot.id, to: y.snapshot.id, changes },
            `${x.snapshot.id} → ${y.snapshot.id}: ${count('+')} added, ${count('-')} removed, ${count('M')} modified, ${count('T')} of another type, ${count('U')} metadata only`,
          );
          return 0;
        })(),
    )
    .command(
      'init',
      'create a backup repository at a target (docs/repository.md)',
      (a) =>
        a
          .option('target', { type: 'string', demandOption: true, describe: 'TYPE:LOCATION (dir:/backups)' })
          .option('encrypt', {
            type: 'boolean',
            describe:
              'encrypt everything stored (AES-256-GCM); the passphrase from --password-file or $TWINFS_PASSWORD(_FILE)',
          })
          .option('password-file', passwordFile)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example('twinfs init --target dir:/backups', 'an unencrypted repository')
          .example('TWINFS_PASSWORD_FILE=/root/.twinfs-pass twinfs init --target dir:/backups --encrypt', ''),
      (a) =>
        run(a, async (out, targets) => {
          const { Repository } = await import('../repository/index.js');
          const store = await openStoreOf(targets, a.target, true);
          try {
            const repo = await Repository.init(store, { encrypt: a.encrypt });
            out.result(
              { event: 'done', target: store.spec, id: repo.config.id, encrypted: !!repo.config.encryption },
              `created ${repo.config.encryption ? 'an encrypted' : 'an unencrypted'} repository ${repo.config.id} at ${store.spec}`,
            );
          } finally {
            await store.close();
          }
          return 0;
        })(),
    )
    .command(
      'prune',
      'remove data no snapshot uses any more from a repository; --dry-run tells what it would free',
      (a) =>
        a
          .option('target', { type: 'string', demandOption: true, describe: 'TYPE:LOCATION (dir:/backups)' })
          .option('dry-run', { type: 'boolean', describe: 'report what would be freed, change nothing' })
          .option('password-file', passwordFile)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example(
            'twinfs forget --target dir:/backups --keep-last 7 && twinfs prune --target dir:/backups',
            '',
          ),
      (a) =>
        run(a, async (out, targets) => {
          const { pruneRepository } = await import('../repository/index.js');
          const t = await repositoryOf(targets, a.target);
          try {
            const r = await pruneRepository(t.repo, { dryRun: a['dry-run'] });
            out.result(
              { event: 'done', ...r },
              `${r.dryRun ? 'would free' : 'freed'} ${bytes(r.bytesFreed)} of ${bytes(r.bytesBefore)}: ${r.packsDeleted} pack(s) deleted, ${r.packsRewritten} rewritten, ${r.packsUnindexed} unindexed removed, ${r.blobsRemoved} blob(s) dropped`,
            );
          } finally {
            await t.close();
          }
          return 0;
        })(),
    )
    .command(
      'catalog <action>',
      'catalog rebuild --target T: re-create the local catalog (a cache) from the snapshots at a target',
      (a) =>
        a
          .positional('action', { choices: ['rebuild'] as const, demandOption: true })
          .option('target', { type: 'string', demandOption: true, describe: 'TYPE:LOCATION (dir:/backups)' })
          .option('catalog', catalog)
          .option('config', config)
          .option('password-file', passwordFile)
          .option('plugin-dir', pluginDir)
          .option('json', json)
          .example('twinfs catalog rebuild --target dir:/backups', ''),
      (a) =>
        run(a, async (out, targets) => {
          const { syncCatalog } = await import('../backup-peer/index.js');
          const t = await targets.open(a.target, { create: false });
          try {
            const r = await syncCatalog(await catalogOf(a), t);
            out.result(
              { event: 'done', snapshots: r.snapshots.length, added: r.added, removed: r.removed },
              `catalog: ${r.snapshots.length} snapshot(s) at ${t.spec}; ${r.added} added, ${r.removed} removed`,
            );
          } finally {
            await t.close();
          }
          return 0;
        })(),
    );
}

/**
 * The peer's REPL commands. A backup from the REPL runs over the REPL's own control connection;
 * like any peer it reads the mirror, never the mount. --target and --catalog default to the
 * operator config's (ctx.defaults). Targets and backup hooks come from the plugins of the
 * built-in and user folders and of `pluginDirs` (the REPL's --plugin-dir).
 */
export function peerOperatorCommands(o: { pluginDirs?: string[] } = {}): OperatorCommand[] {
  const opt = (v: string | boolean | undefined) => (typeof v === 'string' ? v : undefined);
  return [
    {
      name: 'backup',
      summary: 'back up paths, a subtree or the volume from the mirror to a target; records the snapshot',
      usage:
        'backup [PATH...] [--subtree DIR] --target TYPE:LOCATION [--catalog DIR] [--full] [--lease SECONDS]',
      examples: ['backup --subtree /db --target dir:/backups', 'backup / --target dir:/backups --full'],
      options: ['--target', '--subtree', '--catalog', '--full', '--lease'],
      flags: ['full'],
      completes: 'paths',
      optionValues: { '--target': 'targets', '--subtree': 'paths', '--catalog': 'local' },
      cancellable: true,
      run: (ctx, a) =>
        withTargets(async (targets, plugins) => {
          const { BackupRun, selectorFor } = await import('../backup-peer/index.js');
          const spec = opt(a.options.target) ?? ctx.defaults.target;
          if (!spec)
            throw new TwinError(
              'ETWIN_USAGE',
              'backup needs --target TYPE:LOCATION (dir:/backups), or "target" in the config',
            );
          const lease = opt(a.options.lease);
          if (lease !== undefined && !(Number(lease) >= 1))
            throw new TwinError('ETWIN_USAGE', '--lease must be at least 1 (seconds)');
          const selector = selectorFor({
            paths: a.positional.filter((p) => p !== '/'),
            subtree: opt(a.options.subtree),
          });
          const target = await targets.open(spec);
          try {
            const client = await ctx.client();
            const run = new BackupRun({
              server: client.hello.server,
              token: '',
              target,
              catalogDir: opt(a.options.catalog) ?? ctx.defaults.catalog,
              selector,
              leaseMs: lease ? Math.round(Number(lease) * 1000) : undefined,
              full: a.options.full === true,
              signal: ctx.signal,
              connect: async () => sharedControl(client),
              hooks: await plugins(),
            });
            run.onDidProgress((p) => ctx.progress({ ...p, phase: `backup ${p.phase}` }));
            run.onDidWarn((w) => ctx.print(`warning: ${w.message}`));
            const r = await run.run();
            ctx.print(`snapshot ${r.snapshot.id}: ${describeTotals(r.snapshot.totals)}`);
            return {
              snapshotId: r.snapshot.id,
              backupId: r.backupId,
              stallMs: r.stallMs,
              hookFailures: r.hookFailures,
              totals: r.snapshot.totals,
            };
          } finally {
            await target.close();
          }
        }, o.pluginDirs),
    },
    {
      name: 'snapshots',
      summary: 'list the snapshots in the catalog',
      usage: 'snapshots [--catalog DIR]',
      examples: ['snapshots', 'snapshots --catalog /var/lib/twinfs/catalog'],
      options: ['--catalog'],
      optionValues: { '--catalog': 'local' },
      async run(ctx, a) {
        const { Catalog } = await import('../backup-peer/index.js');
        const list = await Catalog.with(opt(a.options.catalog) ?? ctx.defaults.catalog, (c) => c.list());
        for (const s of list)
          ctx.print(
            `${s.id}  ${new Date(s.time).toISOString()}  ${s.state.padEnd(8)}  ${s.totals.files} files ${bytes(s.totals.bytes)}  ${s.paths.join(',')}  ${s.target}`,
          );
        if (list.length === 0) ctx.print('no snapshots');
        return list;
      },
    },
    {
      name: 'restore',
      summary: 'restore a snapshot (or paths of it) into a directory',
      usage: 'restore SNAPSHOT [PATH...] --to DIR [--catalog DIR]',
      examples: ['restore latest --to /tmp/restored', 'restore latest /db/data.sqlite --to /tmp/restored'],
      options: ['--to', '--catalog'],
      completes: ['snapshots', 'paths'],
      optionValues: { '--to': 'local', '--catalog': 'local' },
      cancellable: true,
      run: (ctx, a) =>
        withTargets(async (targets) => {
          const { restore } = await import('../backup-peer/index.js');
          const [snapshotRef, ...paths] = a.positional;
          const to = opt(a.options.to);
          if (!snapshotRef || !to)
            throw new TwinError('ETWIN_USAGE', 'usage: restore SNAPSHOT [PATH...] --to DIR');
          const r = await restore({
            snapshot: snapshotRef,
            paths,
            to,
            catalogDir: opt(a.options.catalog) ?? ctx.defaults.catalog,
            registry: targets,
            signal: ctx.signal,
            onProgress: (p) => ctx.progress({ phase: 'restore', ...p }),
          });
          for (const f of r.failures) ctx.print(`failed   ${f.path}: ${f.code}: ${f.message}`);
          ctx.print(`restored ${r.entries} entries (${bytes(r.bytes)}) of ${r.snapshotId} to ${to}`);
          if (r.failures.length)
            throw new TwinError(
              'ETWIN_RESTORE_FAILED',
              `${r.failures.length} entries could not be restored`,
              { result: r },
            );
          return r;
        }, o.pluginDirs),
    },
    {
      name: 'check',
      summary: 're-read a snapshot at its target and compare it with the catalog',
      usage: 'check SNAPSHOT [--metadata-only] [--catalog DIR]',
      examples: ['check latest', 'check latest --metadata-only'],
      options: ['--catalog', '--metadata-only'],
      completes: 'snapshots',
      optionValues: { '--catalog': 'local' },
      run: (ctx, a) =>
        withTargets(async (targets) => {
          const { checkSnapshot } = await import('../backup-peer/index.js');
          const snapshotRef = a.positional[0];
          if (!snapshotRef) throw new TwinError('ETWIN_USAGE', 'usage: check SNAPSHOT');
          const r = await checkSnapshot({
            snapshot: snapshotRef,
            catalogDir: opt(a.options.catalog) ?? ctx.defaults.catalog,
            registry: targets,
            metadataOnly: a.options['metadata-only'] === true,
            onProgress: (p) => ctx.progress({ phase: 'check', ...p }),
          });
          for (const p of r.problems) ctx.print(`${p.kind.padEnd(10)} ${p.path}  ${p.message}`);
          ctx.print(
            r.ok
              ? `${r.snapshotId}: ${r.checked} entries verified`
              : `${r.snapshotId}: ${r.problems.length} problem(s)`,
          );
          if (!r.ok)
            throw new TwinError('ETWIN_CHECK_FAILED', `snapshot ${r.snapshotId} does not match the catalog`, {
              result: r,
            });
          return r;
        }, o.pluginDirs),
    },
  ];
}

/**
 * Runs fn with a target registry over a plugin host (the built-in, --plugin-dir and user plugin
 * folders): every target type, `dir:` included, comes from a plugin. The host is created on
 * first need (onStartup plugins activated then) and disposed at the end.
 */
async function withTargets<T>(
  fn: (targets: TargetRegistry, plugins: () => Promise<PluginHost>) => Promise<T>,
  pluginDirs?: string[],
): Promise<T> {
  const { TargetRegistry } = await import('../backup-peer/index.js');
  let host: Promise<PluginHost> | undefined;
  const plugins = () =>
    (host ??= (async () => {
      const h = await (await import('../plugins/index.js')).createPluginHost({ pluginDirs });
      await h.activateByEvent('onStartup');
      return h;
    })());
  const targets = new TargetRegistry([], async (type) => (await plugins()).getTargetProvider(type));
  try {
    return await fn(targets, plugins);
  } finally {
    await (await host?.catch(() => undefined))?.dispose().catch(() => undefined);
  }
}

/** The REPL's connection as a backup's control channel: the run must not close it. */
function sharedControl(client: ControlClient) {
  return {
    prepare: client.prepare.bind(client),
    renew: client.renew.bind(client),
    release: client.release.bind(client),
    onEvent: client.onEvent,
    onClose: client.onClose,
    close: async () => undefined,
  };
}

function describeTotals(t: {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
  copiedBytes: number;
  reusedFiles: number;
  skipped: number;
  nodes?: number;
  hardLinks?: number;
}): string {
  const skipped = t.skipped ? `, ${t.skipped} special files skipped` : '';
  const nodes = t.nodes ? `, ${t.nodes} fifos/devices/sockets` : '';
  const links = t.hardLinks ? ` (${t.hardLinks} of them hard links)` : '';
  return `${t.files} files${links}, ${t.dirs} dirs, ${t.symlinks} symlinks${nodes}, ${bytes(t.bytes)} (${bytes(t.copiedBytes)} copied, ${t.reusedFiles} files unchanged)${skipped}`;
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

/** The object store of a repository target (init). */
async function openStoreOf(targets: TargetRegistry, spec: string, create: boolean) {
  const store = await targets.openStore(spec, { create });
  if (!store)
    throw new TwinError(
      'ETWIN_TARGET_SPEC',
      `${spec}: this target type keeps no repository (dir: does; tar: is an archive per snapshot)`,
      {
        spec,
      },
    );
  return store;
}

/** An initialised repository target (prune, check of a whole repository). */
async function repositoryOf(targets: TargetRegistry, spec: string) {
  const { RepositoryTarget } = await import('../repository/index.js');
  const t = await targets.open(spec, { create: false });
  if (!(t instanceof RepositoryTarget)) {
    await t.close();
    throw new TwinError('ETWIN_TARGET_SPEC', `${spec}: this target type keeps no repository (dir: does)`, {
      spec,
    });
  }
  return t;
}

async function checkRepositoryCommand(
  out: Output,
  targets: TargetRegistry,
  spec: string,
  readData: boolean | undefined,
  subset: string | undefined,
): Promise<number> {
  const { checkRepository } = await import('../repository/index.js');
  let share = readData ? 1 : undefined;
  if (subset !== undefined) {
    const m = /^(\d+(?:\.\d+)?)%$/.exec(subset.trim());
    if (!m || !(Number(m[1]) > 0 && Number(m[1]) <= 100))
      throw new TwinError('ETWIN_USAGE', `--read-data-subset wants a share like 10%, got "${subset}"`);
    share = Number(m[1]) / 100;
  }
  const t = await repositoryOf(targets, spec);
  try {
    const r = await checkRepository(t.repo, {
      readData: share,
      onProgress: (p) =>
        out.progress({ phase: 'check', files: p.packs, filesTotal: p.packsTotal, bytes: p.bytes }),
    });
    out.stopBar();
    if (!out.json) for (const p of r.problems) out.line(`${p.kind.padEnd(9)} ${p.what}  ${p.message}`);
    out.result(
      { event: 'done', ...r },
      `${t.spec}: ${r.snapshots} snapshot(s), ${r.packs} pack(s), ${r.blobs} blob(s)${r.packsRead ? `, ${r.packsRead} pack(s) read (${bytes(r.bytesRead)})` : ''}: ${r.ok ? 'no problems' : `${r.problems.length} problem(s)${r.flagged ? `, ${r.flagged} copy(ies) flagged: the next backup stores them again` : ''}`}`,
    );
    if (!r.ok)
      throw new TwinError(
        'ETWIN_CHECK_FAILED',
        `${t.spec}: the repository check found ${r.problems.length} problem(s)`,
      );
    return 0;
  } finally {
    await t.close();
  }
}

function parseMirrorMap(list: string[] | undefined): Record<string, string> | undefined {
  if (!list?.length) return undefined;
  const map: Record<string, string> = {};
  for (const item of list) {
    const i = item.indexOf('=');
    if (i <= 0) throw new TwinError('ETWIN_USAGE', `--mirror-map wants DEVICE_ID=PATH, got "${item}"`);
    map[item.slice(0, i)] = path.resolve(item.slice(i + 1));
  }
  return map;
}
