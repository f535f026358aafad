import * as path from 'node:path';
import type { TargetRegistry } from '../backup-peer/targets/index.js';
import { TwinError } from '../common/errors.js';
import { formatBytes as bytes } from '../common/progress.js';
import type { ControlClient } from '../control/client.js';
import type { PluginHost } from '../plugins/index.js';
import { list, num, type OperatorCommand, type OptionSpec, type ParsedArgs, str } from './spec.js';

/** How long `backup` waits for its target to close before exiting anyway, ms. */
const TARGET_CLOSE_MS = 5000;

/**
 * The backup peer's operator commands: backup, snapshots, restore, check, forget. Each validates
 * its arguments, calls src/backup-peer, prints its human lines and returns its result (the last
 * JSON line, `{event:"done", ...}`). Targets and backup hooks come from the plugins of the
 * built-in and user folders and of --plugin-dir (ctx.pluginDirs).
 */

export const catalog: OptionSpec = {
  type: 'string',
  describe:
    "catalog directory (default: the config's, else /var/lib/twinfs/catalog as root, else ~/.local/state/twinfs/catalog)",
  completes: 'local',
};
/** --target on the commands that read snapshots: the target alone is the source of truth. */
export const targetOnly: OptionSpec = {
  type: 'string',
  describe:
    'read the snapshots from this target (TYPE:LOCATION) alone, the source of truth; the catalog is brought in line with it',
  completes: 'targets',
};
export const passwordFile: OptionSpec = {
  type: 'string',
  describe:
    'file holding the passphrase of an encrypted repository (or $TWINFS_PASSWORD, $TWINFS_PASSWORD_FILE)',
  completes: 'local',
};

/**
 * The passphrase file of this command (--password-file), else none: set on every command that
 * opens a repository, so one given to an earlier REPL command does not linger.
 */
export async function usePasswordFile(a: ParsedArgs): Promise<void> {
  (await import('../repository/index.js')).setPasswordFile(str(a.options['password-file']));
}

/** --exclude PATTERN (repeatable), restic's pattern syntax (src/common/path-patterns.ts). */
const excludeOption = (describe: string): OptionSpec => ({
  type: 'string',
  array: true,
  describe: `${describe} (repeatable; restic's syntax: *, ?, [..], **, a leading / anchors at the volume root, !PATTERN re-includes)`,
});
const excludeFileOption: OptionSpec = {
  type: 'string',
  array: true,
  describe: 'read --exclude patterns from FILE, one a line (# comments, $VAR expanded); repeatable',
  completes: 'local',
};

/**
 * The --KIND and --KIND-file patterns of a command (exclude, include), checked
 * (ETWIN_BAD_PATTERN); undefined when none is given.
 */
export async function patternsOf(a: ParsedArgs, kind: 'exclude' | 'include' = 'exclude') {
  const patterns = list(a.options[kind]);
  const files = list(a.options[`${kind}-file`]);
  const ipatterns = list(a.options[`i${kind}`]);
  const ifiles = list(a.options[`i${kind}-file`]);
  if (!patterns.length && !files.length && !ipatterns.length && !ifiles.length) return undefined;
  const { PathPatterns } = await import('../common/path-patterns.js');
  return PathPatterns.load({ patterns, files, ipatterns, ifiles });
}

/** --KIND, --KIND-file and their case-insensitive --iKIND, --iKIND-file forms (restic's set). */
function patternOptions(kind: 'exclude' | 'include', describe: string): Record<string, OptionSpec> {
  return {
    [kind]: excludeOption(describe),
    [`${kind}-file`]: {
      ...excludeFileOption,
      describe: `read --${kind} patterns from FILE, one a line (# comments, $VAR expanded); repeatable`,
    },
    [`i${kind}`]: excludeOption(`like --${kind}, ignoring case`),
    [`i${kind}-file`]: { ...excludeFileOption, describe: `like --${kind}-file, ignoring case` },
  };
}

const mirrorMap: OptionSpec = {
  type: 'string',
  array: true,
  describe: 'DEVICE_ID=PATH: where this host sees a mirror (repeatable)',
  completes: 'local',
};

export const peerCommands: OperatorCommand[] = [
  {
    name: 'backup',
    summary:
      'back up paths, a subtree or the whole volume from the split mirror to a target; records the snapshot',
    usage:
      'backup [PATH...] [--subtree DIR] [--target TYPE:LOCATION] [--catalog DIR] [--full] [--exclude PATTERN] [--exclude-file FILE] [--lease SECONDS]',
    examples: [
      ['backup --target dir:/backups', 'the whole volume'],
      ['backup --subtree /db --config /etc/twinfs.json', 'server, token, target and catalog from the config'],
      ['backup /a.txt /b.txt --target dir:/backups --json', 'JSON progress lines, then the result'],
      [
        "backup --target dir:/backups --exclude '*.tmp' --exclude /cache",
        'everything but temporary files and /cache',
      ],
      [
        'backup --subtree /app --plugin-dir ./sqlite-checkpoint --on-hook-failure fail',
        'application-consistent: a plugin checkpoints the database first, or no backup',
      ],
    ],
    args: {
      name: 'paths',
      describe: 'volume paths (default: the whole volume)',
      completes: 'paths',
      volumePathsFrom: 'all',
    },
    options: {
      target: {
        type: 'string',
        describe: "TYPE:LOCATION (dir:/backups, tar:..., s3:...); default: the config's target",
        completes: 'targets',
      },
      path: {
        type: 'string',
        array: true,
        describe: 'a volume path to back up (repeatable; same as PATH...)',
        completes: 'paths',
      },
      subtree: {
        type: 'string',
        describe: 'a volume directory, with everything below it',
        completes: 'paths',
      },
      catalog,
      lease: {
        type: 'number',
        alias: 'lease-sec',
        describe: 'split lease in seconds, renewed while copying (default 60)',
      },
      'target-timeout': {
        type: 'number',
        alias: 'target-timeout-sec',
        describe:
          'the target took nothing (no file, no byte) for this many seconds while the split is held: release the split and fail with ETWIN_TARGET_HUNG (default 120)',
      },
      'mirror-map': mirrorMap,
      full: { type: 'boolean', describe: 'copy every file, share nothing with the previous snapshot' },
      tag: {
        type: 'string',
        array: true,
        describe: 'a label for the snapshot (repeatable; forget --keep-tag)',
      },
      ...patternOptions('exclude', 'leave out volume paths matching PATTERN, with everything below them'),
      'password-file': passwordFile,
      'check-source': {
        type: 'string',
        choices: ['metadata', 'data'],
        describe:
          'before releasing the split, compare the committed snapshot with the split copy it was read from: metadata (cheap) or data (every file read back and hashed); a mismatch fails the run',
      },
      'freeze-hook-timeout': {
        type: 'number',
        alias: 'freeze-hook-timeout-sec',
        describe:
          'seconds plugins may take to quiesce applications (onWillFreeze) before writes are held; not part of the write stall (default 10)',
      },
      'on-hook-failure': {
        type: 'string',
        choices: ['crash-consistent', 'fail'],
        describe:
          'when an onWillFreeze hook fails or times out: warn and back up crash-consistent (default), or fail',
      },
    },
    cancellable: true,
    run: (ctx, a) =>
      withTargets(async (targets, plugins) => {
        // The run's own modules, not the package's index (restore, check, forget, the daemon):
        // a backup's start-up counts against its time.
        const [{ BackupRun }, { selectorFor }] = await Promise.all([
          import('../backup-peer/backup-run.js'),
          import('../backup-peer/peer-config.js'),
        ]);
        await usePasswordFile(a);
        const spec = str(a.options.target) ?? ctx.defaults.target;
        if (!spec)
          throw new TwinError(
            'ETWIN_USAGE',
            'no target: pass --target TYPE:LOCATION (dir:/backups) or name "target" in the config',
          );
        const lease = num(a.options.lease);
        if (lease !== undefined && !(lease >= 1))
          throw new TwinError('ETWIN_USAGE', '--lease must be at least 1 (seconds)');
        const hookSec = num(a.options['freeze-hook-timeout']);
        if (hookSec !== undefined && !(hookSec > 0))
          throw new TwinError('ETWIN_USAGE', '--freeze-hook-timeout must be more than 0');
        const targetSec = num(a.options['target-timeout']);
        if (targetSec !== undefined && !(targetSec > 0))
          throw new TwinError('ETWIN_USAGE', '--target-timeout must be more than 0');
        const paths = [...a.positional, ...list(a.options.path)];
        const selector = selectorFor({
          paths: paths.includes('/') ? [] : paths,
          subtree: str(a.options.subtree),
        });
        const exclude = await patternsOf(a);
        // The server's connection is made while the target opens (its plugin found, loaded and
        // activated, the repository's config read): a cold command waited for one, then the
        // other. A failed connection is reported after the target opened, as before.
        const connecting = ctx.client();
        connecting.catch(() => undefined);
        const target = await targets.open(spec);
        try {
          const client = await connecting;
          const hooks = await plugins();
          const runOnce = () => {
            const run = new BackupRun({
              server: ctx.serverUrl ?? client.hello.server,
              token: '',
              target,
              catalogDir: str(a.options.catalog) ?? ctx.defaults.catalog,
              selector,
              leaseMs: lease === undefined ? undefined : Math.round(lease * 1000),
              targetTimeoutMs: targetSec === undefined ? undefined : Math.round(targetSec * 1000),
              mirrorMap: parseMirrorMap(list(a.options['mirror-map'])),
              full: a.options.full === true,
              tags: a.options.tag === undefined ? undefined : list(a.options.tag),
              exclude,
              checkSource: str(a.options['check-source']) as 'metadata' | 'data' | undefined,
              signal: ctx.signal,
              connect: async () => sharedControl(client),
              hooks,
              freezeHookTimeoutMs: hookSec === undefined ? undefined : Math.round(hookSec * 1000),
              onHookFailure: str(a.options['on-hook-failure']) as 'crash-consistent' | 'fail' | undefined,
            });
            run.onDidProgress((p) => ctx.progress({ ...p }));
            run.onDidWarn((w) => ctx.warn({ ...w }));
            return run.run();
          };
          let res: Awaited<ReturnType<typeof runOnce>>;
          try {
            res = await runOnce();
          } catch (err) {
            // Two first backups at once into one empty location, and the other's config landed
            // first: this run's snapshot was sealed with keys of its own and nothing of it was
            // stored (docs/repository.md, "Creating a repository"). The repository is there now,
            // and the target opens it afresh: the run is made again, into it, once.
            if ((err as TwinError)?.code !== 'ETWIN_REPO_CREATE_RACE' || ctx.signal.aborted) throw err;
            ctx.warn({
              code: 'ETWIN_REPO_CREATE_RACE',
              message: `${(err as Error).message}: backing up again, into it`,
            });
            res = await runOnce();
          }
          const s = res.snapshot;
          ctx.print(
            `snapshot ${s.id} complete: ${describeTotals(s.totals)}${
              res.sparse
                ? `; ${bytes(res.sparse.holeBytes)} of holes in ${res.sparse.files} sparse file${res.sparse.files === 1 ? '' : 's'} not read`
                : ''
            }${res.sourceCheck ? `; matches the split copy (${res.sourceCheck.checked} entries)` : ''}`,
          );
          return {
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
            changes: res.changes,
            sparse: res.sparse,
            direct: res.direct,
            sourceCheck: res.sourceCheck && {
              checked: res.sourceCheck.checked,
              bytes: res.sourceCheck.bytes,
              ok: res.sourceCheck.ok,
            },
          };
        } finally {
          // A hung target (ETWIN_TARGET_HUNG) may never finish closing: the result stands.
          let t: NodeJS.Timeout | undefined;
          await Promise.race([
            target.close().catch(() => undefined),
            new Promise<void>((r) => {
              t = setTimeout(r, TARGET_CLOSE_MS);
            }),
          ]);
          clearTimeout(t);
        }
      }, ctx.pluginDirs),
  },
  {
    name: 'snapshots',
    summary: 'list the snapshots in the catalog, or (--target) at a target',
    usage: 'snapshots [--target TYPE:LOCATION] [--catalog DIR]',
    examples: [
      ['snapshots --catalog /var/lib/twinfs/catalog', ''],
      ['snapshots --target dir:/backups', 'from the repository itself, no catalog needed'],
      ['snapshots --json', 'one JSON array of snapshot records'],
    ],
    options: { target: targetOnly, 'password-file': passwordFile, catalog },
    async run(ctx, a) {
      const { Catalog, syncCatalog } = await import('../backup-peer/index.js');
      const catalogDir = str(a.options.catalog) ?? ctx.defaults.catalog;
      const spec = str(a.options.target);
      let found: Array<import('../backup-peer/index.js').SnapshotRecord & { abandoned?: boolean }>;
      if (spec) {
        await usePasswordFile(a);
        found = await withTargets(async (targets) => {
          const t = await targets.open(spec, { create: false });
          try {
            return (await syncCatalog(catalogDir, t)).snapshots;
          } finally {
            await t.close();
          }
        }, ctx.pluginDirs);
      } else
        found = await Catalog.with(catalogDir, async (c) =>
          (await c.list()).map((s) => ({ ...s, abandoned: c.isAbandoned(s) })),
        );
      for (const s of found) {
        const state = (s.abandoned ? 'abandoned' : s.state).padEnd(9);
        const size = `${String(s.totals.files).padStart(7)} files ${bytes(s.totals.bytes).padStart(10)}`;
        ctx.print(
          `${s.id.padEnd(24)}  ${formatTime(s.time)}  ${state}  ${size}  ${s.paths.join(',').padEnd(12)}  ${s.target}`,
        );
      }
      ctx.print(
        `${found.length} snapshot(s), ${found.filter((s) => s.state === 'complete').length} complete`,
      );
      return found;
    },
  },
  {
    name: 'restore',
    summary: 'restore a snapshot (or volume paths of it) into a directory; nothing is written outside it',
    usage:
      'restore SNAPSHOT [PATH...] --to DIR [--include PATTERN] [--exclude PATTERN] [--overwrite always|never|if-newer] [--target TYPE:LOCATION] [--catalog DIR]',
    examples: [
      ['restore latest --to /tmp/restored', 'everything of the newest snapshot'],
      [
        "restore latest --to /srv/twinfs --include '*.conf' --overwrite if-newer",
        'configuration files, where the snapshot has a newer one',
      ],
      ['restore 20240101-0000-ab12 /db /etc/app.conf --to /srv/twinfs', 'two paths, back onto the mount'],
    ],
    args: {
      name: 'args',
      describe: "snapshot id, unique prefix or 'latest', then volume paths (default: everything)",
      completes: ['snapshots', 'paths'],
      volumePathsFrom: 1,
    },
    options: {
      to: {
        type: 'string',
        describe: 'destination directory (a twinfs mount works too)',
        completes: 'local',
      },
      ...patternOptions('include', 'restore only entries matching PATTERN, with everything below them'),
      ...patternOptions('exclude', 'leave out entries matching PATTERN, with everything below them'),
      overwrite: {
        type: 'string',
        choices: ['always', 'never', 'if-newer'],
        describe:
          'an entry that exists at the destination: replace it (always, the default), keep it (never), or replace it when the snapshot has a newer mtime (if-newer)',
      },
      target: targetOnly,
      'password-file': passwordFile,
      catalog,
    },
    cancellable: true,
    run: (ctx, a) =>
      withTargets(async (targets) => {
        const { restore } = await import('../backup-peer/index.js');
        await usePasswordFile(a);
        const [snapshotRef, ...paths] = a.positional;
        const to = str(a.options.to);
        if (!snapshotRef || !to)
          throw new TwinError('ETWIN_USAGE', 'usage: restore SNAPSHOT [PATH...] --to DIR');
        const r = await restore({
          include: await patternsOf(a, 'include'),
          exclude: await patternsOf(a),
          overwrite: str(a.options.overwrite) as 'always' | 'never' | 'if-newer' | undefined,
          snapshot: snapshotRef,
          paths: paths.length ? paths : undefined,
          to,
          target: str(a.options.target),
          catalogDir: str(a.options.catalog) ?? ctx.defaults.catalog,
          registry: targets,
          signal: ctx.signal,
          onProgress: (p) => ctx.progress({ phase: 'restore', ...p }),
        });
        for (const f of r.failures) ctx.warn({ code: f.code, message: `${f.path}: ${f.code}: ${f.message}` });
        const fails = r.failures.length ? `; ${r.failures.length} failed` : '';
        const kept = r.kept
          ? `; ${r.kept} existing entries kept (--overwrite ${str(a.options.overwrite)})`
          : '';
        ctx.print(
          `restored ${r.entries} entries (${bytes(r.bytes)}) of ${r.snapshotId} to ${path.resolve(to)}${kept}${fails}`,
        );
        if (r.failures.length)
          throw new TwinError('ETWIN_RESTORE_FAILED', `${r.failures.length} entries could not be restored`, {
            result: { event: 'done', ...r },
          });
        return { event: 'done', ...r };
      }, ctx.pluginDirs),
  },
  {
    name: 'check',
    summary:
      're-read a snapshot at its target and compare it with the catalog (or the mirror), or (--target without a snapshot) check a whole repository; exit 1 on any difference',
    usage:
      'check [SNAPSHOT] [--metadata-only] [--source] [--target TYPE:LOCATION [--read-data | --read-data-subset N%]] [--catalog DIR]',
    examples: [
      ['check latest', 're-read the newest snapshot at its target'],
      [
        'check latest --source',
        'compare the newest snapshot with the mirror, for every file unchanged since',
      ],
      ['check latest --metadata-only', 'sizes and stamps only: seconds, not hours'],
      [
        'check --target dir:/backups --read-data-subset 10%',
        'the whole repository, a tenth of its packs read',
      ],
    ],
    args: { name: 'snapshot', describe: "snapshot id, unique prefix, or 'latest'", completes: 'snapshots' },
    options: {
      target: targetOnly,
      'password-file': passwordFile,
      'read-data': {
        type: 'boolean',
        describe:
          'read every file back and compare its sha256 (the default); for a whole repository (--target, no snapshot): read and verify every pack',
      },
      'read-data-subset': {
        type: 'string',
        describe: 'repository check: read and verify this share of the packs, chosen at random (N%)',
      },
      catalog,
      'metadata-only': {
        type: 'boolean',
        describe:
          "cheap: compare each entry's type, size and the target's stamp of the stored copy, read no data",
      },
      source: {
        type: 'boolean',
        describe:
          "compare with the mirror instead of the catalog: the server splits the selection again and vouches which files did not change since the snapshot's split; those are compared",
      },
      'mirror-map': mirrorMap,
    },
    cancellable: true,
    run: (ctx, a) =>
      withTargets(async (targets) => {
        await usePasswordFile(a);
        if (a.options['metadata-only'] === true && a.options['read-data'] === true)
          throw new TwinError('ETWIN_USAGE', '--metadata-only and --read-data exclude each other');
        const snapshotRef = a.positional[0];
        const spec = str(a.options.target);
        if (!snapshotRef) {
          if (!spec)
            throw new TwinError(
              'ETWIN_USAGE',
              'check needs a snapshot, or --target TYPE:LOCATION for the whole repository',
            );
          return (await import('./repository.js')).checkRepositoryCommand(ctx, targets, spec, a);
        }
        const catalogDir = str(a.options.catalog) ?? ctx.defaults.catalog;
        if (a.options.source === true) {
          const { checkSnapshotAgainstSource } = await import('../backup-peer/index.js');
          const client = await ctx.client();
          const s = await checkSnapshotAgainstSource({
            snapshot: snapshotRef,
            target: spec,
            catalogDir,
            registry: targets,
            server: ctx.serverUrl ?? client.hello.server,
            token: '',
            connect: async () => sharedControl(client),
            mirrorMap: parseMirrorMap(list(a.options['mirror-map'])),
            readData: a.options['metadata-only'] !== true,
          });
          for (const p of s.problems) ctx.print(`${p.kind.padEnd(10)} ${p.path}  ${p.message}`);
          ctx.print(
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
              { result: { event: 'done', ...s } },
            );
          return { event: 'done', ...s };
        }
        const { checkSnapshot } = await import('../backup-peer/index.js');
        const r = await checkSnapshot({
          snapshot: snapshotRef,
          target: spec,
          catalogDir,
          registry: targets,
          metadataOnly: a.options['metadata-only'] === true,
          onProgress: (p) => ctx.progress({ phase: 'check', ...p }),
        });
        for (const p of r.problems)
          ctx.print(`${p.kind.padEnd(10)} ${p.path}  ${p.code ? `${p.code}: ` : ''}${p.message}`);
        ctx.print(
          r.ok
            ? `snapshot ${r.snapshotId}: ${r.checked} entries, ${bytes(r.bytes)} verified`
            : `snapshot ${r.snapshotId}: ${r.problems.length} problem(s) in ${r.checked} entries${
                r.flagged > 0
                  ? `; ${r.flagged} stored file(s) flagged, the next backup stores them again`
                  : ''
              }`,
        );
        if (!r.ok)
          throw new TwinError('ETWIN_CHECK_FAILED', `snapshot ${r.snapshotId} does not match the catalog`, {
            result: { event: 'done', ...r },
          });
        return { event: 'done', ...r };
      }, ctx.pluginDirs),
  },
  {
    name: 'forget',
    summary: 'remove the snapshots a keep policy does not keep (at the target; prune frees their data)',
    usage:
      'forget [--keep-last N] [--keep-hourly|daily|weekly|monthly|yearly N] [--keep-within DURATION] [--keep-tag TAG] [--dry-run] [--target TYPE:LOCATION] [--catalog DIR]',
    examples: [
      ['forget --keep-last 7 --keep-daily 30 --dry-run', 'what would go'],
      ['forget --target dir:/backups --keep-within 30d --keep-monthly 12', ''],
    ],
    options: {
      'keep-last': {
        type: 'number',
        describe: 'keep the newest N snapshots (per device, target and selection)',
      },
      'keep-hourly': { type: 'number', describe: 'keep the newest snapshot of each of the last N hours' },
      'keep-daily': { type: 'number', describe: 'keep the newest snapshot of each of the last N days' },
      'keep-weekly': { type: 'number', describe: 'keep the newest snapshot of each of the last N weeks' },
      'keep-monthly': { type: 'number', describe: 'keep the newest snapshot of each of the last N months' },
      'keep-yearly': { type: 'number', describe: 'keep the newest snapshot of each of the last N years' },
      'keep-within': {
        type: 'string',
        describe: 'keep every snapshot within this duration of the newest (7d, 2w, 1m, 1y2m, 12h)',
      },
      'keep-tag': { type: 'string', array: true, describe: 'keep every snapshot with this tag (repeatable)' },
      'dry-run': { type: 'boolean', describe: 'show what would be removed' },
      target: targetOnly,
      'password-file': passwordFile,
      catalog,
    },
    // Removed from the catalog but data left at the target: printed, and not a clean success.
    exitCode: (r) => ((r as { orphaned?: unknown[] }).orphaned?.length ? 1 : 0),
    run: (ctx, a) =>
      withTargets(async (targets) => {
        const { forget, parseDuration } = await import('../backup-peer/index.js');
        await usePasswordFile(a);
        for (const k of [
          'keep-last',
          'keep-hourly',
          'keep-daily',
          'keep-weekly',
          'keep-monthly',
          'keep-yearly',
        ] as const) {
          const v = num(a.options[k]);
          if (v !== undefined && !(Number.isInteger(v) && v >= 1))
            throw new TwinError('ETWIN_USAGE', `--${k} must be a whole number ≥ 1`);
        }
        const dry = a.options['dry-run'] === true;
        const within = str(a.options['keep-within']);
        const r = await forget({
          catalogDir: str(a.options.catalog) ?? ctx.defaults.catalog,
          policy: {
            keepLast: num(a.options['keep-last']),
            keepHourly: num(a.options['keep-hourly']),
            keepDaily: num(a.options['keep-daily']),
            keepWeekly: num(a.options['keep-weekly']),
            keepMonthly: num(a.options['keep-monthly']),
            keepYearly: num(a.options['keep-yearly']),
            keepWithinMs: within === undefined ? undefined : parseDuration(within),
            keepTags: a.options['keep-tag'] === undefined ? undefined : list(a.options['keep-tag']),
          },
          registry: targets,
          dryRun: dry,
          target: str(a.options.target),
        });
        for (const s of r.remove) ctx.print(`${dry ? 'would remove' : 'removed'} ${s.id} (${s.reason})`);
        for (const o of r.orphaned)
          ctx.warn({
            message: `${o.id}: removed from the catalog, but its data at ${o.target} remains: ${o.message}`,
          });
        ctx.print(
          `${dry ? 'would keep' : 'kept'} ${r.keep.length}, ${dry ? 'would remove' : 'removed'} ${r.remove.length} snapshot(s)`,
        );
        return {
          event: 'done',
          kept: r.keep.map((s) => s.id),
          removed: r.remove.map((s) => s.id),
          orphaned: r.orphaned,
          dryRun: dry,
        };
      }, ctx.pluginDirs),
  },
];

/** A time as both front ends show it: `2024-01-01 12:00:00` (UTC). */
export function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
}

/**
 * Runs fn with a target registry over a plugin host (the built-in, --plugin-dir and user plugin
 * folders): every target type, `dir:` included, comes from a plugin. The host is created on
 * first need (onStartup plugins activated then) and disposed at the end.
 */
export async function withTargets<T>(
  fn: (targets: TargetRegistry, plugins: () => Promise<PluginHost>) => Promise<T>,
  pluginDirs?: string[],
): Promise<T> {
  const { TargetRegistry } = await import('../backup-peer/targets/index.js');
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

/**
 * The front end's connection as a backup's control channel: the client itself, with only `close`
 * made a no-op (the run must not close a connection the REPL or CLI goes on using). Every other
 * member, present or added later, is the client's own, bound to it.
 */
export function sharedControl(client: ControlClient): ControlClient {
  const close = async () => undefined;
  return new Proxy(client, {
    get(target, key) {
      if (key === 'close') return close;
      const v = Reflect.get(target, key, target) as unknown;
      // Methods (on the prototype) run on the client; own fields (the onEvent/onClose events)
      // are handed over as they are.
      return typeof v === 'function' && !Object.hasOwn(target, key)
        ? (v as (...a: unknown[]) => unknown).bind(target)
        : v;
    },
  });
}

export function describeTotals(t: {
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

export function parseMirrorMap(entries: string[]): Record<string, string> | undefined {
  if (!entries.length) return undefined;
  const map: Record<string, string> = {};
  for (const item of entries) {
    const i = item.indexOf('=');
    if (i <= 0) throw new TwinError('ETWIN_USAGE', `--mirror-map wants DEVICE_ID=PATH, got "${item}"`);
    map[item.slice(0, i)] = path.resolve(item.slice(i + 1));
  }
  return map;
}
