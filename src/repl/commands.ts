import { TwinError } from '../common/errors.js';
import type { ControlClient } from '../control/client.js';
import type { ParsedArgs } from './words.js';

/** What a command needs from the front end (REPL or CLI). */
export interface CommandContext {
  /** The connected control client (the REPL reconnects behind it). */
  client(): Promise<ControlClient>;
  /** Prints one line of human output (suppressed with --json). */
  print(line: string): void;
  json: boolean;
  signal: AbortSignal;
}

export interface OperatorCommand {
  name: string;
  summary: string;
  usage: string;
  examples?: string[];
  /** Options this command takes (for completion and help). */
  options?: string[];
  /** Options that take no value. */
  flags?: string[];
  /** What positional arguments complete to. */
  completes?: 'paths' | 'snapshots' | 'targets' | 'commands';
  run(ctx: CommandContext, args: ParsedArgs): Promise<unknown>;
}

const selectorOf = (paths: string[]) =>
  paths.length === 0 || (paths.length === 1 && paths[0] === '/') ? { volume: true } : { paths };

function seconds(v: string | boolean | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0)
    throw new TwinError('ETWIN_USAGE', `${what} must be a positive number of seconds`);
  return Math.round(n * 1000);
}

const fmtBytes = (n: number) =>
  n >= 1 << 30
    ? `${(n / (1 << 30)).toFixed(1)} GiB`
    : n >= 1 << 20
      ? `${(n / (1 << 20)).toFixed(1)} MiB`
      : n >= 1024
        ? `${(n / 1024).toFixed(1)} KiB`
        : `${n} B`;

/** The operator commands backed by the control channel. The peer's commands are added by the peer module. */
export const controlCommands: OperatorCommand[] = [
  {
    name: 'status',
    summary: 'pair states, cache, active freezes and leases, stall statistics',
    usage: 'status',
    async run(ctx) {
      const s = (await (await ctx.client()).request('status')) as any;
      if (!ctx.json) {
        const c = s.fs.cache;
        ctx.print(`volume   ${s.fs.primary} at ${s.fs.mount}${s.fs.writeThrough ? ' (write-through)' : ''}`);
        ctx.print(
          `cache    ${fmtBytes(c.dirtyBytes)} dirty of ${fmtBytes(c.limitBytes)} in ${c.dirtyFiles} file(s); ${c.openFiles} open; ${c.writeErrors} write-back error(s)`,
        );
        if (s.mirror) {
          ctx.print(
            `mirror   ${s.mirror.state} device ${s.mirror.deviceId} at ${s.mirror.mirrorRoot}; queue ${s.mirror.queueLength}`,
          );
          for (const sp of s.mirror.splits)
            ctx.print(
              `  split  ${sp.splitId} ${JSON.stringify(sp.selector)} tracked ${fmtBytes(sp.trackedBytes)} in ${sp.trackedFiles} file(s)`,
            );
          for (const b of s.mirror.broken) ctx.print(`  BROKEN ${b}`);
        } else ctx.print('mirror   none');
        const st = s.backup.stall;
        ctx.print(
          `stall    ${st.prepares} prepare(s), ${st.failedPrepares} failed; max ${st.maxStallMs.toFixed(1)} ms; last ${st.lastStallMs === null ? '-' : `${st.lastStallMs.toFixed(1)} ms`}`,
        );
        for (const b of s.backup.backups)
          ctx.print(
            `lease    ${b.backupId} ${JSON.stringify(b.selector)} expires in ${Math.max(0, Math.round((b.expiresAt - Date.now()) / 1000))} s`,
          );
        for (const f of s.backup.freezes)
          ctx.print(
            `frozen   ${f.freezeId} ${JSON.stringify(f.selector)} since ${new Date(f.since).toISOString()}`,
          );
        if (s.smb)
          ctx.print(
            `smb      ${s.smb.running ? 'running' : 'stopped'}${s.smb.port ? ` on port ${s.smb.port}` : ''}`,
          );
      }
      return s;
    },
  },
  {
    name: 'freeze',
    summary: 'inhibit writes to files (flushing their cached data) until thaw or timeout',
    usage: 'freeze PATH... [--timeout SECONDS]',
    examples: ['freeze /db/data.sqlite --timeout 20'],
    options: ['--timeout'],
    completes: 'paths',
    async run(ctx, a) {
      if (a.positional.length === 0)
        throw new TwinError('ETWIN_USAGE', 'freeze needs at least one path (/ for the whole volume)');
      const r = (await (
        await ctx.client()
      ).request('freeze', {
        selector: selectorOf(a.positional),
        timeoutMs: seconds(a.options.timeout, '--timeout'),
      })) as any;
      ctx.print(
        `frozen ${a.positional.join(' ')} (${r.freezeId}); writes held until thaw or ${Math.round(r.timeoutMs / 1000)} s`,
      );
      return r;
    },
  },
  {
    name: 'thaw',
    summary: 'let held writes proceed (all freezes, or those covering the given paths or ids)',
    usage: 'thaw [PATH|FREEZE_ID...]',
    completes: 'paths',
    async run(ctx, a) {
      const client = await ctx.client();
      const s = (await client.request('status')) as any;
      const freezes: any[] = s.backup.freezes;
      const want = a.positional;
      const chosen = freezes.filter(
        (f) =>
          want.length === 0 ||
          want.includes(f.freezeId) ||
          want.some(
            (p) => f.selector.volume || f.selector.paths?.includes(p) || f.selector.subtrees?.includes(p),
          ),
      );
      if (chosen.length === 0)
        throw new TwinError(
          'ETWIN_UNKNOWN_FREEZE',
          want.length ? `nothing frozen matches ${want.join(' ')}` : 'nothing is frozen',
        );
      const out = [];
      for (const f of chosen) {
        const r = (await client.request('thaw', { freezeId: f.freezeId })) as any;
        ctx.print(`thawed ${f.freezeId} after ${(r.heldMs / 1000).toFixed(1)} s`);
        out.push(r);
      }
      return out;
    },
  },
  {
    name: 'pairs',
    summary: 'mirror pair state: splits, broken pairs (optionally for one path)',
    usage: 'pairs [PATH]',
    completes: 'paths',
    async run(ctx, a) {
      const s = (await (await ctx.client()).request('status')) as any;
      if (!s.mirror) throw new TwinError('ETWIN_NO_MIRROR', 'this server has no mirror');
      const p = a.positional[0];
      const splits = s.mirror.splits.filter(
        (sp: any) =>
          !p ||
          sp.selector.volume ||
          sp.selector.paths?.includes(p) ||
          sp.selector.subtrees?.some((t: string) => p === t || p.startsWith(t + '/')),
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
          `  split ${sp.splitId} ${JSON.stringify(sp.selector)}, ${fmtBytes(sp.trackedBytes)} changed since`,
        );
      for (const b of broken) ctx.print(`  broken ${b}`);
      return { path: p ?? null, state, splits, broken };
    },
  },
  {
    name: 'split',
    summary:
      '(advanced) prepare a backup by hand: inhibit, flush, split; prints the backup id and mirror path',
    usage: 'split PATH... [--lease SECONDS]',
    options: ['--lease'],
    completes: 'paths',
    async run(ctx, a) {
      if (a.positional.length === 0)
        throw new TwinError('ETWIN_USAGE', 'split needs at least one path (/ for the whole volume)');
      const r = await (await ctx.client()).prepare(selectorOf(a.positional) as any, {
        leaseMs: seconds(a.options.lease, '--lease'),
      });
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
    async run(ctx, a) {
      const id = a.positional[0];
      if (!id) throw new TwinError('ETWIN_USAGE', 'resync needs a backup id (see status)');
      const r = (await (await ctx.client()).release(id)) as any;
      ctx.print(`resynced ${id}: ${fmtBytes(r.bytesCopied)} copied, ${r.entries} entries, ${r.ms} ms`);
      return r;
    },
  },
  {
    name: 'verify',
    summary: 'compare primary and mirror for every pair in PAIR state',
    usage: 'verify [--no-content]',
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
    async run(ctx) {
      const r = (await (await ctx.client()).request('repair', {}, 3600_000)) as any;
      ctx.print(
        `repair: ${fmtBytes(r.bytes)} copied; ${r.remaining.length ? `still broken: ${r.remaining.join(' ')}` : 'all pairs in sync'}`,
      );
      return r;
    },
  },
  {
    name: 'flush',
    summary: 'write all cached data back to the primary (and the mirror) durably',
    usage: 'flush',
    async run(ctx) {
      const r = await (await ctx.client()).request('flush', {}, 600_000);
      ctx.print('flushed');
      return r;
    },
  },
];
