import type { Argv } from 'yargs';
import { TwinError } from '../common/errors.js';
import type { PluginInfo } from '../plugins/index.js';

function printPlugin(p: PluginInfo): void {
  process.stdout.write(
    `${p.name}@${p.version}  ${p.state}${p.error ? ` (${p.error})` : ''}  [${p.source}]\n` +
      (p.targets.length ? `    targets:  ${p.targets.join(', ')}\n` : '') +
      (p.commands.length ? `    commands: ${p.commands.join(', ')}\n` : '') +
      (p.problems.length ? `    problems: ${p.problems.slice(-3).join(' | ')}\n` : ''),
  );
}

/** `twinfs plugins list|info|enable|disable|run|install`. */
export function registerPluginCommands(y: Argv, setStatus: (code: number) => void): Argv {
  return y.command(
    'plugins <action> [name] [args..]',
    'list, inspect, enable, disable or install plugins, or run a plugin command',
    (b) =>
      b
        .positional('action', {
          choices: ['list', 'info', 'enable', 'disable', 'run', 'install'] as const,
          demandOption: true,
        })
        .positional('name', {
          type: 'string',
          describe:
            'plugin name (info/enable/disable), command id (run), or a plugin folder or tarball (install)',
        })
        .positional('args', { type: 'string', array: true })
        .option('plugin-dir', { type: 'string', array: true, describe: 'extra plugin folders' })
        .option('json', { type: 'boolean' })
        .option('to', {
          type: 'string',
          describe:
            'install: the plugin folder to install into (default $TWINFS_PLUGIN_PATH, else ~/.config/twinfs/plugins)',
        })
        .option('force', {
          type: 'boolean',
          describe: 'install: replace an installed plugin of the same name',
        })
        .example('twinfs plugins install ./twinfs-foo-1.0.0.tgz', 'a tarball made by npm pack')
        .example('twinfs plugins list --json', 'plugins and the target ids they contribute')
        .example('twinfs plugins run example.hello world', 'run a plugin-contributed command'),
    async (a: any) => {
      if (a.action === 'install') {
        if (!a.name) throw new TwinError('ETWIN_USAGE', 'plugins install needs a plugin folder or tarball');
        const { installPlugin } = await import('../plugins/install.js');
        const { defaultUserPluginDir } = await import('../plugins/index.js');
        const r = await installPlugin(a.name, a.to ?? defaultUserPluginDir(), { force: a.force });
        // Loaded by a plugin host as any run would: a plugin that cannot load is reported now.
        const { createPluginHost } = await import('../plugins/index.js');
        const host = await createPluginHost({ pluginDirs: [r.dir], log: () => undefined });
        try {
          const info = host.info(r.name);
          if (a.json) process.stdout.write(JSON.stringify({ ...r, state: info.state }) + '\n');
          else
            process.stdout.write(
              `installed ${r.name}@${r.version} at ${r.dir}${r.replaced ? ' (replaced the old one)' : ''}\n`,
            );
        } finally {
          await host.dispose().catch(() => undefined);
        }
        setStatus(0);
        return;
      }
      const { createPluginHost } = await import('../plugins/index.js');
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
