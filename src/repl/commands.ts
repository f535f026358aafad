import { TwinError } from '../common/errors.js';
import { formatBytes, type ProgressReport } from '../common/progress.js';
import { covers } from '../common/selector.js';
import type { ControlClient } from '../control/client.js';
import { describeStatus, type RecentSnapshots } from './status-text.js';
import type { ParsedArgs } from './words.js';

/** Defaults a front end takes from the operator config (`--config`, docs/cli.md). */
export interface OperatorDefaults {
  catalog?: string;
  target?: string;
}

/** What a command needs from the front end (REPL or CLI). */
export interface CommandContext {
  /** The connected control client (the REPL reconnects behind it). */
  client(): Promise<ControlClient>;
  /** Prints one line of human output (suppressed with --json). */
  print(line: string): void;
  /** Reports progress of long work: a bar or status line on a TTY, JSON lines with --json, else nothing. */
  progress(p: ProgressReport): void;
  json: boolean;
  signal: AbortSignal;
  defaults: OperatorDefaults;
  /**
   * The newest snapshots of a device in the local catalog (`catalog`, else the configured or
   * default one), newest first; null when there is no catalog here. Given by front ends that can
   * read a catalog.
   */
  recentSnapshots?(deviceId: string | null, limit: number, catalog?: string): Promise<RecentSnapshots | null>;
}

/** What an argument completes to in the REPL. 'local' is a path on this host (--to, --catalog). */
export type CompletionKind = 'paths' | 'snapshots' | 'targets' | 'commands' | 'local';

export interface OperatorCommand {
  name: string;
  summary: string;
  usage: string;
  examples?: string[];
  /** Options this command takes (for completion and help). */
  options?: string[];
  /** Options that take no value. */
  flags?: string[];
  /** What positional arguments complete to, by position; the last kind repeats. */
  completes?: CompletionKind | CompletionKind[];
  /** What the value of an option completes to ('--target' → 'targets'). */
  optionValues?: Record<string, CompletionKind>;
  /** The plugin that contributes the command, if any (it parses its own words: ParsedArgs.raw). */
  plugin?: string;
  /** Honours ctx.signal and cleans up before it settles (the REPL waits for it on Ctrl-C). */
  cancellable?: boolean;
  run(ctx: CommandContext, args: ParsedArgs): Promise<unknown>;
}

/** PATH... plus --subtree DIR → a protocol selector ('/' alone is the volume). */
export function selectorOf(paths: string[], subtree?: string | boolean) {
  if (typeof subtree === 'string') {
    if (paths.length) throw new TwinError('ETWIN_USAGE', 'give either paths or --subtree, not both');
    return subtree === '/' ? { volume: true } : { subtree };
  }
  return paths.length === 0 || (paths.length === 1 && paths[0] === '/') ? { volume: true } : { paths };
}

/** A selector (protocol or internal form) in words: `/`, `/a /b`, `/db/**`. */
export function selectorText(s: {
  volume?: boolean;
  paths?: string[];
  subtree?: string;
  subtrees?: string[];
}): string {
  if (s.volume) return '/';
  const parts = [
    ...(s.paths ?? []),
    ...(s.subtree ? [s.subtree] : []).concat(s.subtrees ?? []).map((t) => `${t}/**`),
  ];
  return parts.join(' ');
}

function seconds(v: string | boolean | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n <= 0)
    throw new TwinError('ETWIN_USAGE', `${what} must be a positive number of seconds`);
  return Math.round(n * 1000);
}

/** The selection of freeze and split: paths, or --subtree DIR; at least one. */
function requiredSelector(command: string, a: ParsedArgs) {
  if (a.positional.length === 0 && typeof a.options.subtree !== 'string')
    throw new TwinError(
      'ETWIN_USAGE',
      `${command} needs at least one path (/ for the whole volume) or --subtree DIR`,
    );
  return selectorOf(a.positional, a.options.subtree);
}

/** The operator commands backed by the control channel. The peer's commands are added by the peer module. */
export const controlCommands: OperatorCommand[] = [
  {
    name: 'status',
    summary: 'pair states, cache, active freezes and leases, stall statistics, last backups',
    usage: 'status [--catalog DIR]',
    examples: ['status', 'status --catalog /var/lib/twinfs/catalog'],
    options: ['--catalog'],
    optionValues: { '--catalog': 'local' },
    async run(ctx, a) {
      const s = (await (await ctx.client()).request('status')) as any;
      const catalog = typeof a.options.catalog === 'string' ? a.options.catalog : undefined;
      const recent =
        (await ctx.recentSnapshots?.(s.mirror?.deviceId ?? null, 3, catalog).catch(() => null)) ?? null;
      if (!ctx.json) for (const l of describeStatus(s, recent)) ctx.print(l);
      return { ...s, lastBackups: recent };
    },
  },
  {
    name: 'freeze',
    summary: 'inhibit writes to files (flushing their cached data) until thaw or timeout',
    usage: 'freeze PATH... | --subtree DIR [--timeout SECONDS]',
    examples: ['freeze /db/data.sqlite --timeout 20', 'freeze --subtree /db', 'freeze /'],
    options: ['--timeout', '--subtree'],
    completes: 'paths',
    optionValues: { '--subtree': 'paths' },
    async run(ctx, a) {
      const selector = requiredSelector('freeze', a);
      const timeoutMs = seconds(a.options.timeout, '--timeout');
      const r = (await (await ctx.client()).request('freeze', { selector, timeoutMs })) as any;
      ctx.print(
        `frozen ${selectorText(selector)} (${r.freezeId}); writes held until thaw or ${Math.round(r.timeoutMs / 1000)} s`,
      );
      return r;
    },
  },
  {
    name: 'thaw',
    summary: 'let held writes proceed (all freezes, or those covering the given paths or ids)',
    usage: 'thaw [PATH|FREEZE_ID...]',
    examples: ['thaw', 'thaw /db/data.sqlite'],
    completes: 'paths',
    async run(ctx, a) {
      const client = await ctx.client();
      const s = (await client.request('status')) as any;
      const freezes: any[] = s.backup.freezes;
      const want = a.positional;
      const chosen = freezes.filter(
        (f) => want.length === 0 || want.includes(f.freezeId) || want.some((p) => covers(f.selector, p)),
      );
      if (chosen.length === 0)
        throw new TwinError(
          'ETWIN_UNKNOWN_FREEZE',
          want.length ? `nothing frozen matches ${want.join(' ')}` : 'nothing is frozen',
        );
      const out = [];
      for (const f of chosen) {
        const r = (await client.request('thaw', { freezeId: f.freezeId })) as any;
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
    examples: ['pairs', 'pairs /db/data.sqlite'],
    completes: 'paths',
    async run(ctx, a) {
      const s = (await (await ctx.client()).request('status')) as any;
      if (!s.mirror) throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror');
      const p = a.positional[0];
      const splits = s.mirror.splits.filter(
        (sp: any) =>
          !p || covers(sp.selector, p) || sp.selector.paths?.some((x: string) => x.startsWith(p + '/')),
      );
      const broken = s.mirror.broken.filter(
        (b: string) => !p || p === b || p.startsWith(b + '/') || b === '/',
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
    examples: ['split /db/data.sqlite --lease 300', 'split --subtree /db'],
    options: ['--lease', '--subtree'],
    completes: 'paths',
    optionValues: { '--subtree': 'paths' },
    async run(ctx, a) {
      const selector = requiredSelector('split', a);
      const leaseMs = seconds(a.options.lease, '--lease');
      const r = await (await ctx.client()).prepare(selector as any, { leaseMs });
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
    examples: ['resync bk-0c3e...'],
    async run(ctx, a) {
      const id = a.positional[0];
      if (!id) throw new TwinError('ETWIN_USAGE', 'resync needs a backup id (see status)');
      const r = (await (await ctx.client()).release(id)) as any;
      ctx.print(`resynced ${id}: ${formatBytes(r.bytesCopied)} copied, ${r.entries} entries, ${r.ms} ms`);
      return r;
    },
  },
  {
    name: 'verify',
    summary: 'compare primary and mirror for every pair in PAIR state',
    usage: 'verify [--no-content]',
    examples: ['verify', 'verify --no-content'],
    flags: ['no-content'],
    options: ['--no-content'],
    async run(ctx, a) {
      const r = (await (
        await ctx.client()
      ).request('verify', { content: !a.options['no-content'] }, 3600_000)) as any;
      for (const d of r.differences) ctx.print(`${d.kind.padEnd(18)} ${d.path}`);
      ctx.print(
        r.ok ? `verify: ${r.checked} entries match` : `verify: ${r.differences.length} difference(s)`,
      );
      if (!r.ok)
        throw new TwinError(
          'ETWIN_VERIFY_FAILED',
          `${r.differences.length} difference(s) between primary and mirror`,
          { report: r },
        );
      return r;
    },
  },
  {
    name: 'repair',
    summary: 'resync broken mirror pairs fully',
    usage: 'repair',
    examples: ['repair'],
    async run(ctx) {
      const r = (await (await ctx.client()).request('repair', {}, 3600_000)) as any;
      // A repair that left pairs BROKEN failed: scripts and supervisors go by the exit status.
      if (r.remaining.length > 0)
        throw new TwinError(
          'ETWIN_MIRROR_BROKEN',
          `repair: ${formatBytes(r.bytes)} copied, but ${r.remaining.length} pair(s) are still BROKEN: ${r.remaining
            .map((p: string) => (r.reasons?.[p] ? `${p} (${r.reasons[p]})` : p))
            .join(', ')}`,
          { report: r },
        );
      ctx.print(`repair: ${formatBytes(r.bytes)} copied; all pairs in sync`);
      return r;
    },
  },
  {
    name: 'flush',
    summary: 'write all cached data back to the primary (and the mirror) durably',
    usage: 'flush',
    examples: ['flush'],
    async run(ctx) {
      const r = await (await ctx.client()).request('flush', {}, 600_000);
      ctx.print('flushed');
      return r;
    },
  },
];
