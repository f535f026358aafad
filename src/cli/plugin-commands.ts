import type { Argv } from 'yargs';
import { createPluginHost, type PluginInfo } from '../plugins/index.js';

function printPlugin(p: PluginInfo): void {
  process.stdout.write(
    `${p.name}@${p.version}  ${p.state}${p.error ? ` (${p.error})` : ''}  [${p.source}]\n` +
      (p.targets.length ? `    targets:  ${p.targets.join(', ')}\n` : '') +
      (p.commands.length ? `    commands: ${p.commands.join(', ')}\n` : '') +
      (p.problems.length ? `    problems: ${p.problems.slice(-3).join(' | ')}\n` : ''),
  );
}

/** `twinfs plugins list|info|enable|disable|run`. */
export function registerPluginCommands(y: Argv, setStatus: (code: number) => void): Argv {
  return y.command(
    'plugins <action> [name] [args..]',
    'list, inspect, enable, disable plugins, or run a plugin command',
    (b) =>
      b
        .positional('action', {
          choices: ['list', 'info', 'enable', 'disable', 'run'] as const,
          demandOption: true,
        })
        .positional('name', {
          type: 'string',
          describe: 'plugin name (info/enable/disable) or command id (run)',
        })
        .positional('args', { type: 'string', array: true })
        .option('plugin-dir', { type: 'string', array: true, describe: 'extra plugin folders' })
        .option('json', { type: 'boolean' })
        .example('twinfs plugins list --json', 'plugins and the target ids they contribute')
        .example('twinfs plugins run example.hello world', 'run a plugin-contributed command'),
    async (a: any) => {
      const host = await createPluginHost({
        pluginDirs: a['plugin-dir'],
        log: a.json ? () => undefined : undefined,
      });
      try {
        const need = () => {
          if (!a.name)
            throw Object.assign(new Error(`plugins ${a.action} needs a name`), { code: 'ETWIN_USAGE' });
          return a.name as string;
        };
        switch (a.action) {
          case 'list': {
            const list = host.list();
            if (a.json) process.stdout.write(JSON.stringify(list) + '\n');
            else list.forEach(printPlugin);
            break;
          }
          case 'info': {
            const p = host.info(need());
            if (a.json) process.stdout.write(JSON.stringify(p) + '\n');
            else printPlugin(p);
            break;
          }
          case 'enable':
          case 'disable':
            await host.setEnabled(need(), a.action === 'enable');
            if (!a.json) process.stdout.write(`${a.name} ${a.action}d\n`);
            else process.stdout.write(JSON.stringify(host.info(a.name)) + '\n');
            break;
          case 'run': {
            const r = await host.executeCommand(need(), ...((a.args as string[]) ?? []));
            process.stdout.write(
              (a.json
                ? JSON.stringify(r ?? null)
                : r === undefined
                  ? ''
                  : typeof r === 'string'
                    ? r
                    : JSON.stringify(r, null, 2)) + '\n',
            );
            break;
          }
        }
        setStatus(0);
      } finally {
        await host.dispose().catch(() => undefined);
      }
    },
  );
}
