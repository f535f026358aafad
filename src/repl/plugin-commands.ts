import type { OperatorCommand } from '../commands/index.js';
import { TwinError } from '../common/errors.js';

/** What the REPL needs of the plugin host (src/plugins PluginHost fits). */
export interface PluginCommandHost {
  list(): Array<{
    name: string;
    version: string;
    state: string;
    error?: string;
    source: string;
    targets: string[];
    commands: string[];
    problems: string[];
  }>;
  commandList(): Array<{ command: string; title: string; plugin: string }>;
  executeCommand(id: string, ...args: unknown[]): Promise<unknown>;
}

/**
 * `plugins` (what is installed, its state, targets and commands) and one REPL command per
 * plugin-contributed command, typed as its id: `checksum.verify /backups 2024...`. Positional
 * words are passed to the command as strings; its result is printed (strings as they are,
 * anything else as JSON).
 */
export function pluginOperatorCommands(
  host: PluginCommandHost,
  reserved: ReadonlySet<string>,
): OperatorCommand[] {
  const plugins: OperatorCommand = {
    name: 'plugins',
    summary: 'installed plugins: state, backup targets and commands they contribute',
    usage: 'plugins [NAME]',
    examples: [
      ['plugins', ''],
      ['plugins twinfs-s3', ''],
    ],
    args: { name: 'name', describe: 'a plugin name' },
    async run(ctx, a) {
      const want = a.positional[0];
      const list = host.list().filter((p) => !want || p.name === want);
      if (want && list.length === 0)
        throw new TwinError('ETWIN_PLUGIN_NOT_FOUND', `no plugin "${want}" (plugins lists them)`, {
          plugin: want,
        });
      for (const p of list) {
        ctx.print(`${p.name}@${p.version}  ${p.state}${p.error ? ` (${p.error})` : ''}  [${p.source}]`);
        if (p.targets.length) ctx.print(`    targets:  ${p.targets.join(', ')}`);
        if (p.commands.length) ctx.print(`    commands: ${p.commands.join(', ')}`);
        if (p.problems.length) ctx.print(`    problems: ${p.problems.slice(-3).join(' | ')}`);
      }
      return list;
    },
  };
  const contributed = host
    .commandList()
    .filter((c) => !reserved.has(c.command))
    .map(
      (c): OperatorCommand => ({
        name: c.command,
        summary: `${c.title} (plugin ${c.plugin})`,
        usage: `${c.command} [ARG...]`,
        plugin: c.plugin,
        args: { name: 'args', describe: 'arguments of the plugin command', completes: 'local' },
        async run(ctx, a) {
          const r = await host.executeCommand(c.command, ...a.raw);
          if (r !== undefined) ctx.print(typeof r === 'string' ? r : JSON.stringify(r, null, 2));
          return r ?? null;
        },
      }),
    );
  return [plugins, ...contributed];
}
