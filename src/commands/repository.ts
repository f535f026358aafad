import type { TargetRegistry } from '../backup-peer/targets/index.js';
import { TwinError } from '../common/errors.js';
import { formatBytes as bytes } from '../common/progress.js';
import { catalog, formatTime, passwordFile, targetOnly, usePasswordFile, withTargets } from './peer.js';
import type { CommandContext, OperatorCommand, OptionSpec, OptionValue, ParsedArgs } from './spec.js';
import { list, str } from './spec.js';

/**
 * The repository's operator commands (docs/repository.md): ls and diff of snapshots (from the
 * catalog or, with --target, the target alone), init and prune of a repository, and catalog
 * rebuild. `check --target` without a snapshot (src/commands/peer.ts) checks a whole repository
 * through checkRepositoryCommand.
 */

const repositoryTarget: OptionSpec = {
  type: 'string',
  describe: 'TYPE:LOCATION (dir:/backups)',
  completes: 'targets',
};

/** The --target a command cannot do without. */
/**
 * find's --oldest/--newest: '2026-01-31' (local midnight; for --newest the day's end),
 * '2026-01-31 13:45' or '2026-01-31T13:45:07' (local; a time without seconds in --newest means
 * that minute's end), or ISO 8601 with a zone ('2026-01-31T13:45:07Z'). Anything else is
 * ETWIN_USAGE naming the option.
 */
export function timeArg(v: OptionValue, which: 'oldest' | 'newest'): number | undefined {
  const text = str(v)?.trim();
  if (text === undefined) return undefined;
  const local = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?$/.exec(text);
  let ms: number;
  if (local) {
    const [y, mo, d, h, mi, sec] = local.slice(1).map((x) => (x === undefined ? undefined : Number(x)));
    const t = new Date(y!, mo! - 1, d!, h ?? 0, mi ?? 0, sec ?? 0);
    const valid = t.getFullYear() === y && t.getMonth() === mo! - 1 && t.getDate() === d;
    ms = valid && (h ?? 0) < 24 && (mi ?? 0) < 60 && (sec ?? 0) < 60 ? t.getTime() : Number.NaN;
    if (which === 'newest' && Number.isFinite(ms))
      ms += h === undefined ? 86_400_000 - 1 : sec === undefined ? 59_999 : 999;
  } else ms = /^\d{4}-\d{2}-\d{2}T.*(?:Z|[+-]\d{2}:?\d{2})$/.test(text) ? Date.parse(text) : Number.NaN;
  if (!Number.isFinite(ms))
    throw new TwinError(
      'ETWIN_USAGE',
      `--${which} ${JSON.stringify(text)} is not a time like 2026-01-31, '2026-01-31 13:45[:07]' or 2026-01-31T13:45:07Z`,
      { option: which, text },
    );
  return ms;
}

function requiredTarget(cmd: string, a: ParsedArgs): string {
  const spec = str(a.options.target);
  if (!spec) throw new TwinError('ETWIN_USAGE', `${cmd} needs --target TYPE:LOCATION (dir:/backups)`);
  return spec;
}

export const repositoryCommands: OperatorCommand[] = [
  {
    name: 'ls',
    summary: "list a snapshot's entries (below a volume path), from the catalog or (--target) the target",
    usage: 'ls SNAPSHOT [PATH] [--target TYPE:LOCATION] [--catalog DIR]',
    examples: [['ls latest /etc --target dir:/backups', '']],
    args: {
      name: 'args',
      describe: "snapshot id, unique prefix or 'latest', then a volume path (default: everything)",
      completes: ['snapshots', 'paths'],
      volumePathsFrom: 1,
    },
    options: { target: targetOnly, 'password-file': passwordFile, catalog },
    run: (ctx, a) =>
      withTargets(async (targets) => {
        const [ref, top = '/', ...more] = a.positional;
        if (!ref || more.length) throw new TwinError('ETWIN_USAGE', 'usage: ls SNAPSHOT [PATH]');
        await usePasswordFile(a);
        const { loadSnapshot } = await import('../backup-peer/index.js');
        const { snapshot: s, entries } = await loadSnapshot({
          ref,
          catalogDir: str(a.options.catalog) ?? ctx.defaults.catalog,
          target: str(a.options.target),
          registry: targets,
        });
        const shown = entries.filter((e) => top === '/' || e.path === top || e.path.startsWith(`${top}/`));
        for (const e of shown)
          ctx.print(
            `${e.type.padEnd(7)} ${(e.mode & 0o7777).toString(8).padStart(4, '0')} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${bytes(e.size).padStart(10)}  ${formatTime(e.mtime)}  ${e.path}${e.target ? ` -> ${e.target}` : ''}`,
          );
        ctx.print(`twinfs: ${shown.length} entries of ${s.id}`);
        return shown.map(({ snapshotId: _s, ...e }) => e);
      }, ctx.pluginDirs),
  },
  {
    name: 'diff',
    summary:
      'what changed between two snapshots: added, removed and changed entries (content, type, metadata)',
    usage: 'diff FROM TO [--target TYPE:LOCATION] [--catalog DIR]',
    examples: [['diff 20261201 latest --target dir:/backups', '']],
    args: {
      name: 'snapshots',
      describe: "two snapshots: id, unique prefix or 'latest'",
      completes: 'snapshots',
    },
    options: { target: targetOnly, 'password-file': passwordFile, catalog },
    run: (ctx, a) =>
      withTargets(async (targets) => {
        if (a.positional.length !== 2) throw new TwinError('ETWIN_USAGE', 'usage: diff FROM TO');
        await usePasswordFile(a);
        const { loadSnapshot } = await import('../backup-peer/index.js');
        const load = (ref: string) =>
          loadSnapshot({
            ref,
            catalogDir: str(a.options.catalog) ?? ctx.defaults.catalog,
            target: str(a.options.target),
            registry: targets,
          });
        const x = await load(a.positional[0]!);
        const y = await load(a.positional[1]!);
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
        for (const c of changes) ctx.print(`${c.change}  ${c.path}`);
        const count = (k: string) => changes.filter((c) => c.change === k).length;
        ctx.print(
          `${x.snapshot.id} → ${y.snapshot.id}: ${count('+')} added, ${count('-')} removed, ${count('M')} modified, ${count('T')} of another type, ${count('U')} metadata only`,
        );
        return { event: 'done', from: x.snapshot.id, to: y.snapshot.id, changes };
      }, ctx.pluginDirs),
  },
  {
    name: 'find',
    summary:
      'find entries matching patterns in every snapshot (or those named with --snapshot), like restic find',
    usage:
      'find PATTERN... [--snapshot ID]... [--ignore-case] [--oldest TIME] [--newest TIME] [--tag TAG]... [--target TYPE:LOCATION] [--catalog DIR]',
    examples: [
      ["find '*.conf' --target dir:/backups", 'every .conf file, in each snapshot that has one'],
      ['find /etc/passwd --snapshot latest', 'one path, in the newest snapshot'],
      [
        "find -i '*.JPG' --oldest 2026-01-01 --newest '2026-06-30 23:59'",
        'photos modified in the first half of 2026',
      ],
    ],
    args: {
      name: 'patterns',
      describe:
        "restic's syntax: *, ?, [..], **; a leading / anchors at the volume root, else a pattern matches at any depth",
    },
    options: {
      snapshot: {
        type: 'string',
        array: true,
        describe: "look only in this snapshot (id, unique prefix or 'latest'; repeatable)",
        completes: 'snapshots',
      },
      'ignore-case': { type: 'boolean', alias: 'i', describe: 'match the patterns ignoring case' },
      oldest: {
        type: 'string',
        alias: 'O',
        describe:
          "only entries modified at or after TIME (local time: '2026-01-31', '2026-01-31 13:45[:07]', or ISO 8601)",
      },
      newest: {
        type: 'string',
        alias: 'N',
        describe:
          'only entries modified at or before TIME (same forms as --oldest; a date alone means its whole day)',
      },
      tag: {
        type: 'string',
        array: true,
        describe: 'look only in snapshots with this tag (repeatable: any of them)',
      },
      target: targetOnly,
      'password-file': passwordFile,
      catalog,
    },
    run: (ctx, a) =>
      withTargets(async (targets) => {
        if (!a.positional.length) throw new TwinError('ETWIN_USAGE', 'usage: find PATTERN...');
        const { PathPatterns } = await import('../common/path-patterns.js');
        const patterns = PathPatterns.compile(a.positional, {
          ignoreCase: a.options['ignore-case'] === true,
        });
        const oldest = timeArg(a.options.oldest, 'oldest');
        const newest = timeArg(a.options.newest, 'newest');
        const tags = list(a.options.tag);
        await usePasswordFile(a);
        const { Catalog, loadSnapshot, pickSnapshot, syncCatalog } = await import('../backup-peer/index.js');
        const catalogDir = str(a.options.catalog) ?? ctx.defaults.catalog;
        const spec = str(a.options.target);
        const t = spec ? await targets.open(spec, { create: false }) : undefined;
        try {
          const all = t
            ? (await syncCatalog(catalogDir, t)).snapshots
            : await Catalog.with(catalogDir, async (c) => c.list({ state: 'complete' }));
          const refs = list(a.options.snapshot);
          const named = refs.length ? refs.map((r) => pickSnapshot(all, r, t?.spec ?? 'the catalog')) : all;
          const chosen = tags.length ? named.filter((s) => s.tags?.some((g) => tags.includes(g))) : named;
          const found: Array<{ snapshotId: string; time: number; entries: unknown[] }> = [];
          let n = 0;
          for (const s of chosen) {
            ctx.progress({ phase: 'find', files: ++n, filesTotal: chosen.length, bytes: 0 });
            const entries = t
              ? (await t.readManifest(s.id)).entries
              : (await loadSnapshot({ ref: s.id, catalogDir, registry: targets })).entries;
            const hits = entries
              .filter(
                (e) =>
                  patterns.matchesExactly(e.path) &&
                  (oldest === undefined || e.mtime >= oldest) &&
                  (newest === undefined || e.mtime <= newest),
              )
              .map(
                ({
                  snapshotId: _s,
                  stored: _t,
                  storedIn: _i,
                  ...e
                }: (typeof entries)[number] & { snapshotId?: string }) => e,
              )
              .sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0));
            if (!hits.length) continue;
            ctx.print(`found in snapshot ${s.id} of ${formatTime(s.time)}:`);
            for (const e of hits)
              ctx.print(
                `  ${e.type.padEnd(7)} ${bytes(e.size).padStart(10)}  ${formatTime(e.mtime)}  ${e.path}`,
              );
            found.push({ snapshotId: s.id, time: s.time, entries: hits });
          }
          const total = found.reduce((k, f) => k + f.entries.length, 0);
          ctx.print(`twinfs: ${total} match(es) in ${found.length} of ${chosen.length} snapshot(s)`);
          return { event: 'done', snapshots: chosen.length, found };
        } finally {
          await t?.close();
        }
      }, ctx.pluginDirs),
  },
  {
    name: 'init',
    summary: 'create a backup repository at a target (docs/repository.md)',
    usage: 'init --target TYPE:LOCATION [--encrypt | --no-encrypt] [--password-file FILE]',
    examples: [
      ['init --target dir:/backups', 'an unencrypted repository'],
      [
        'init --target s3:my-bucket/host1',
        'encrypted (the default for s3:); the passphrase from $TWINFS_PASSWORD',
      ],
      ['init --target dir:/backups --encrypt --password-file /root/.twinfs-pass', 'an encrypted one'],
    ],
    options: {
      target: repositoryTarget,
      encrypt: {
        type: 'boolean',
        describe:
          'encrypt everything stored (AES-256-GCM; the default for s3:, --no-encrypt to refuse); the passphrase from --password-file or $TWINFS_PASSWORD(_FILE)',
      },
      'password-file': passwordFile,
    },
    run: (ctx, a) =>
      withTargets(async (targets) => {
        const spec = requiredTarget('init', a);
        await usePasswordFile(a);
        const { Repository } = await import('../repository/index.js');
        const store = await openStoreOf(targets, spec, true);
        try {
          const encrypt =
            a.options.encrypt === undefined ? store.defaultEncrypted === true : a.options.encrypt === true;
          const repo = await Repository.init(store, { encrypt });
          ctx.print(
            `created ${repo.config.encryption ? 'an encrypted' : 'an unencrypted'} repository ${repo.config.id} at ${store.spec}`,
          );
          return {
            event: 'done',
            target: store.spec,
            id: repo.config.id,
            encrypted: !!repo.config.encryption,
          };
        } finally {
          await store.close();
        }
      }, ctx.pluginDirs),
  },
  {
    name: 'prune',
    summary: 'remove data no snapshot uses any more from a repository; --dry-run tells what it would free',
    usage: 'prune --target TYPE:LOCATION [--dry-run]',
    examples: [
      ['forget --target dir:/backups --keep-last 7', 'first forget the snapshots no longer wanted'],
      ['prune --target dir:/backups', 'then free the data only they used'],
    ],
    options: {
      target: repositoryTarget,
      'dry-run': { type: 'boolean', describe: 'report what would be freed, change nothing' },
      'password-file': passwordFile,
    },
    run: (ctx, a) =>
      withTargets(async (targets) => {
        const spec = requiredTarget('prune', a);
        await usePasswordFile(a);
        const { pruneRepository } = await import('../repository/index.js');
        const t = await repositoryOf(targets, spec);
        try {
          const r = await pruneRepository(t.repo, { dryRun: a.options['dry-run'] === true });
          ctx.print(
            `${r.dryRun ? 'would free' : 'freed'} ${bytes(r.bytesFreed)} of ${bytes(r.bytesBefore)}: ${r.packsDeleted} pack(s) deleted, ${r.packsRewritten} rewritten, ${r.packsUnindexed} unindexed removed, ${r.blobsRemoved} blob(s) dropped`,
          );
          const w = r.incompleteWrites;
          if (w?.count)
            ctx.print(
              `${w.removed ? 'removed' : 'would remove'} ${w.count} unfinished write(s) of dead writers (${bytes(w.bytes)}: S3 multipart uploads, dir: temporary files)`,
            );
          return { event: 'done', ...r };
        } finally {
          await t.close();
        }
      }, ctx.pluginDirs),
  },
  {
    name: 'catalog',
    summary:
      'catalog rebuild --target T: re-create the local catalog (a cache) from the snapshots at a target',
    usage: 'catalog rebuild --target TYPE:LOCATION [--catalog DIR]',
    examples: [['catalog rebuild --target dir:/backups', '']],
    args: { name: 'action', describe: 'rebuild' },
    options: { target: repositoryTarget, catalog, 'password-file': passwordFile },
    run: (ctx, a) =>
      withTargets(async (targets) => {
        const [action, ...more] = a.positional;
        if (action !== 'rebuild' || more.length)
          throw new TwinError(
            'ETWIN_USAGE',
            `catalog takes one action: rebuild${action && action !== 'rebuild' ? `; got "${action}"` : ''}`,
          );
        const spec = requiredTarget('catalog rebuild', a);
        await usePasswordFile(a);
        const { syncCatalog } = await import('../backup-peer/index.js');
        const t = await targets.open(spec, { create: false });
        try {
          const r = await syncCatalog(str(a.options.catalog) ?? ctx.defaults.catalog, t);
          ctx.print(
            `catalog: ${r.snapshots.length} snapshot(s) at ${t.spec}; ${r.added} added, ${r.removed} removed`,
          );
          return { event: 'done', snapshots: r.snapshots.length, added: r.added, removed: r.removed };
        } finally {
          await t.close();
        }
      }, ctx.pluginDirs),
  },
];

/** The object store of a repository target (init). */
async function openStoreOf(targets: TargetRegistry, spec: string, create: boolean) {
  const store = await targets.openStore(spec, { create });
  if (!store)
    throw new TwinError(
      'ETWIN_TARGET_SPEC',
      `${spec}: this target type keeps no repository (dir: does; tar: is an archive per snapshot)`,
      { spec },
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

/** `check --target T` without a snapshot: the whole repository (--read-data, --read-data-subset N%). */
export async function checkRepositoryCommand(
  ctx: CommandContext,
  targets: TargetRegistry,
  spec: string,
  a: ParsedArgs,
): Promise<unknown> {
  const { checkRepository } = await import('../repository/index.js');
  let share = a.options['read-data'] === true ? 1 : undefined;
  const subset = str(a.options['read-data-subset']);
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
        ctx.progress({ phase: 'check', files: p.packs, filesTotal: p.packsTotal, bytes: p.bytes }),
    });
    for (const p of r.problems) ctx.print(`${p.kind.padEnd(9)} ${p.what}  ${p.message}`);
    ctx.print(
      `${t.spec}: ${r.snapshots} snapshot(s), ${r.packs} pack(s), ${r.blobs} blob(s)${r.packsRead ? `, ${r.packsRead} pack(s) read (${bytes(r.bytesRead)})` : ''}: ${r.ok ? 'no problems' : `${r.problems.length} problem(s)${r.flagged ? `, ${r.flagged} copy(ies) flagged: the next backup stores them again` : ''}`}`,
    );
    const result = { event: 'done', ...r };
    if (!r.ok)
      throw new TwinError(
        'ETWIN_CHECK_FAILED',
        `${t.spec}: the repository check found ${r.problems.length} problem(s)`,
        { result },
      );
    return result;
  } finally {
    await t.close();
  }
}
