import { TwinError } from '../common/errors.js';
import { formatBytes } from '../common/progress.js';
import { covers } from '../common/selector.js';
import { describeStatus } from '../repl/status-text.js';
import {
  type CommandContext,
  num,
  type OperatorCommand,
  type OptionSpec,
  type ParsedArgs,
  str,
  volumePath,
} from './spec.js';

/** PATH... plus --subtree DIR → a protocol selector ('/' alone is the volume). */
export function selectorOf(paths: string[], subtree?: string) {
  if (subtree !== undefined) {
    if (paths.length) throw new TwinError('ETWIN_USAGE', 'give either paths or --subtree, not both');
    return subtree === '/' ? { volume: true } : { subtree };
  }
  return paths.length === 0 || (paths.length === 1 && paths[0] === '/') ? { volume: true } : { paths };
}

/** A selector (protocol or internal form) in words: `/`, `/a /b`, `/db/**`. */
export function selectorText(s: {
  volume?: boolean;
  paths?: readonly string[];
  subtree?: string;
  subtrees?: readonly string[];
}): string {
  if (s.volume) return '/';
  const parts = [
    ...(s.paths ?? []),
    ...(s.subtree ? [s.subtree] : []).concat(s.subtrees ?? []).map((t) => `${t}/**`),
  ];
  return parts.join(' ');
}

function positiveMs(v: number | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (!(v > 0)) throw new TwinError('ETWIN_USAGE', `${what} must be a positive number of seconds`);
  return Math.round(v * 1000);
}

/** The selection of freeze and split: paths, or --subtree DIR; at least one. */
function requiredSelector(command: string, a: ParsedArgs) {
  const subtree = str(a.options.subtree);
  if (a.positional.length === 0 && subtree === undefined)
    throw new TwinError(
      'ETWIN_USAGE',
      `${command} needs at least one path (/ for the whole volume) or --subtree DIR`,
    );
  return selectorOf(a.positional, subtree);
}

const subtree: OptionSpec = {
  type: 'string',
  describe: 'a volume directory, with everything below it (instead of paths)',
  completes: 'paths',
};
const volumePaths = {
  name: 'paths',
  describe: 'volume paths, from the volume root (/ is the whole volume)',
  completes: 'paths',
  volumePathsFrom: 'all',
} as const;

/** The status reply with the last backups of its volume from the local catalog. */
async function statusOf(ctx: CommandContext, catalog?: string) {
  const s = await (await ctx.client()).call('status');
  const recent =
    (await ctx.recentSnapshots?.(s.mirror?.deviceId ?? null, 3, catalog).catch(() => null)) ?? null;
  return { s, recent };
}

/** The operator commands backed by the control channel. */
export const controlCommands: OperatorCommand[] = [
  {
    name: 'status',
    summary: 'pair states, cache, active freezes and leases, stall statistics, last backups',
    usage: 'status [--catalog DIR]',
    examples: [
      ['status', ''],
      ['status --catalog /var/lib/twinfs/catalog --json', 'the server status as one JSON object'],
    ],
    options: {
      catalog: {
        type: 'string',
        describe:
          'catalog directory for "last backups" (default: the config\'s, else the default catalog if it exists)',
        completes: 'local',
      },
    },
    async run(ctx, a) {
      const { s, recent } = await statusOf(ctx, str(a.options.catalog));
      for (const l of describeStatus(s, recent)) ctx.print(l);
      return { ...s, lastBackups: recent };
    },
  },
  {
    name: 'freeze',
    summary: 'inhibit writes to files (flushing their cached data) until thaw or timeout',
    usage: 'freeze PATH... | --subtree DIR [--timeout SECONDS]',
    examples: [
      ['freeze /db/data.sqlite --timeout 20', 'held until thawed or 20 s pass'],
      ['freeze --subtree /db', ''],
      ['freeze /', 'the whole volume'],
    ],
    args: volumePaths,
    options: {
      timeout: { type: 'number', describe: 'thaw by itself after this many seconds (server default 30)' },
      subtree,
    },
    holds: 'freeze',
    async run(ctx, a) {
      const selector = requiredSelector('freeze', a);
      const timeoutMs = positiveMs(num(a.options.timeout), '--timeout');
      const r = await (await ctx.client()).call('freeze', { selector, timeoutMs });
      ctx.print(
        `frozen ${selectorText(selector)} (${r.freezeId}); writes held until thaw or ${Math.round(r.timeoutMs / 1000)} s`,
      );
      return r;
    },
  },
  {
    name: 'thaw',
    summary:
      'let held writes proceed (all freezes, or those covering the given paths or ids); nothing frozen is not an error',
    usage: 'thaw [PATH|FREEZE_ID...]',
    examples: [
      ['thaw', 'everything frozen'],
      ['thaw /db/data.sqlite', 'the freezes covering a path'],
    ],
    args: { name: 'paths', describe: 'volume paths or freeze ids (fz-...)', completes: 'paths' },
    async run(ctx, a) {
      const client = await ctx.client();
      const s = await client.call('status');
      const want = a.positional;
      const ids = want.filter((w) => w.startsWith('fz-'));
      const paths = want.filter((w) => !w.startsWith('fz-')).map(volumePath);
      const chosen = s.backup.freezes.filter(
        (f) =>
          want.length === 0 ||
          ids.includes(f.freezeId) ||
          paths.some((p) => covers(toSelector(f.selector), p)),
      );
      // Idempotent: what should not be frozen is not, so a script's `thaw` succeeds.
      if (chosen.length === 0)
        ctx.print(want.length ? `nothing frozen matches ${want.join(' ')}` : 'nothing is frozen');
      const out = [];
      for (const f of chosen) {
        const r = await client.call('thaw', { freezeId: f.freezeId });
        ctx.print(
          `thawed ${selectorText(f.selector)} (${f.freezeId}) after ${(r.heldMs / 1000).toFixed(1)} s`,
        );
        out.push(r);
      }
      return out;
    },
  },
  {
    name: 'pairs',
    summary: 'mirror pair state: splits, broken pairs (optionally for one path)',
    usage: 'pairs [PATH]',
    examples: [
      ['pairs', 'the volume: PAIR, SPLIT, COPY or BROKEN'],
      ['pairs /db/data.sqlite --json', ''],
    ],
    args: volumePaths,
    async run(ctx, a) {
      const s = await (await ctx.client()).call('status');
      if (!s.mirror) throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror');
      const p = a.positional[0];
      const splits = s.mirror.splits.filter(
        (sp) =>
          !p ||
          p === '/' ||
          covers(toSelector(sp.selector), p) ||
          sp.selector.paths?.some((x) => x.startsWith(p + '/')) ||
          sp.selector.subtrees?.some((x) => x.startsWith(p + '/')),
      );
      const broken = s.mirror.broken.filter(
        (b) => !p || p === '/' || p === b || p.startsWith(b + '/') || b === '/',
      );
      const state = broken.length
        ? 'BROKEN'
        : splits.length
          ? 'SPLIT'
          : s.mirror.state === 'COPY'
            ? 'COPY'
            : 'PAIR';
      ctx.print(`${p ?? 'volume'}: ${state}`);
      for (const sp of splits)
        ctx.print(
          `  split ${sp.splitId} ${selectorText(sp.selector)}, ${formatBytes(sp.trackedBytes)} changed since`,
        );
      for (const b of broken)
        ctx.print(`  broken ${b}${s.mirror.brokenReasons?.[b] ? `: ${s.mirror.brokenReasons[b]}` : ''}`);
      return { path: p ?? null, state, splits, broken };
    },
  },
  {
    name: 'split',
    summary:
      '(advanced) prepare a backup by hand: inhibit, flush, split; prints the backup id and mirror path',
    usage: 'split PATH... | --subtree DIR [--lease SECONDS]',
    examples: [
      [
        'split /db/data.sqlite --lease 300',
        'holds the split until `resync ID` (or Ctrl-C on the command line)',
      ],
      ['split --subtree /db', ''],
    ],
    args: volumePaths,
    options: {
      lease: {
        type: 'number',
        describe: 'seconds the split is held without renewal (renewed while the command line holds it)',
      },
      subtree,
    },
    holds: 'split',
    async run(ctx, a) {
      const selector = requiredSelector('split', a);
      const leaseMs = positiveMs(num(a.options.lease), '--lease');
      const r = await (await ctx.client()).prepare(selector, { leaseMs });
      ctx.print(
        `split ${r.backupId}: ${r.items.length} item(s) frozen at ${r.mirrorRoot} (device ${r.deviceId}); writes held ${r.stallMs.toFixed(1)} ms`,
      );
      return r;
    },
  },
  {
    name: 'resync',
    summary: '(advanced) release a split by backup id: copy what changed and rejoin the pairs',
    usage: 'resync BACKUP_ID',
    examples: [['resync bk-0c3e...', 'release a split held elsewhere']],
    args: { name: 'id', describe: 'the backup id of the split (status lists them)' },
    async run(ctx, a) {
      const id = a.positional[0];
      if (!id) throw new TwinError('ETWIN_USAGE', 'resync needs a backup id (see status)');
      const r = await (await ctx.client()).release(id);
      ctx.print(`resynced ${id}: ${formatBytes(r.bytesCopied)} copied, ${r.entries} entries, ${r.ms} ms`);
      return r;
    },
  },
  {
    name: 'verify',
    summary: 'compare primary and mirror for every pair in PAIR state; exit 0 only if they match',
    usage: 'verify [--no-content]',
    examples: [
      ['verify', ''],
      ['verify --no-content', 'metadata only'],
    ],
    options: {
      content: { type: 'boolean', default: true, describe: 'compare content hashes (--no-content to skip)' },
    },
    async run(ctx, a) {
      const r = await (await ctx.client()).call('verify', { content: a.options.content !== false }, 3600_000);
      for (const d of r.differences) ctx.print(`${d.kind.padEnd(18)} ${d.path}`);
      ctx.print(
        r.ok ? `verify: ${r.checked} entries match` : `verify: ${r.differences.length} difference(s)`,
      );
      if (!r.ok)
        throw new TwinError(
          'ETWIN_VERIFY_FAILED',
          `${r.differences.length} difference(s) between primary and mirror`,
          { report: r, result: r },
        );
      return r;
    },
  },
  {
    name: 'repair',
    summary: 'resync broken mirror pairs fully',
    usage: 'repair',
    examples: [['repair', 'after the mirror disk is back']],
    async run(ctx) {
      const r = await (await ctx.client()).call('repair', {}, 3600_000);
      // A repair that left pairs BROKEN failed: scripts and supervisors go by the exit status.
      if (r.remaining.length > 0)
        throw new TwinError(
          'ETWIN_MIRROR_BROKEN',
          `repair: ${formatBytes(r.bytes)} copied, but ${r.remaining.length} pair(s) are still BROKEN: ${r.remaining
            .map((p) => (r.reasons?.[p] ? `${p} (${r.reasons[p]})` : p))
            .join(', ')}`,
          { report: r, result: r },
        );
      ctx.print(`repair: ${formatBytes(r.bytes)} copied; all pairs in sync`);
      return r;
    },
  },
  {
    name: 'flush',
    summary: 'write all cached data back to the primary (and the mirror) durably',
    usage: 'flush',
    examples: [['flush', 'all cached data to the primary and the mirror, durably']],
    async run(ctx) {
      const r = await (await ctx.client()).call('flush', {}, 600_000);
      ctx.print('flushed');
      return r;
    },
  },
];

/** A status selection (protocol or internal form) as the covers() test takes it. */
function toSelector(s: { volume?: boolean; paths?: string[]; subtree?: string; subtrees?: string[] }) {
  return {
    volume: s.volume,
    paths: s.paths,
    subtrees: [...(s.subtrees ?? []), ...(s.subtree ? [s.subtree] : [])],
  };
}
