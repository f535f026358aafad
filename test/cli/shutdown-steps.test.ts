import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMounted, unmountAll } from '../helpers/mounts.js';
import { shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { PluginSandbox } from '../plugins/plugin-fixtures.js';

/**
 * The shutdown's steps that hold no data (control channel, backup service, plugins, SMB) are
 * bounded: a plugin whose deactivate() never settles must not keep the volume mounted or its
 * cached data unwritten. The step is told on stderr while it waits and when it is left behind.
 */
describe('twinfs serve: a shutdown step that never ends is left behind, the volume still written back', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let plugins: PluginSandbox;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'state');
    plugins = await PluginSandbox.create();
    await plugins.write({
      name: 'never-stops',
      code: 'export function activate() {}\nexport function deactivate() { return new Promise(() => {}); }\n',
    });
  });
  afterAll(async () => {
    await srv?.kill().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
    await plugins?.cleanup();
  });

  it('SIGTERM: the plugins step is left after its bound, the data written back, the volume unmounted, exit 0', async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      // A long write-back delay: the file's data is only in the server's cache when it stops.
      // Plugins run with the control channel (they hear its backups' events).
      args: [
        '--plugin-dir',
        path.join(plugins.root, 'plugins'),
        '--control',
        '127.0.0.1:0',
        '--state-dir',
        t.dirs.state!,
        '--writeback-ms',
        '60000',
      ],
      env: {
        ...process.env,
        TWINFS_PLUGIN_PATH: path.join(plugins.root, 'none'),
        TWINFS_PLUGIN_STATE: plugins.storageRoot,
      },
    });
    await shOk(`printf 'kept through a stuck plugin' > '${t.dirs.mnt}/f'`, { timeoutMs: 10_000 });
    const code = await srv.stop(40_000);
    expect(code, srv.stderr()).toBe(0);
    expect(srv.stderr()).toMatch(/stopping: still waiting for the plugins after \d+ s/);
    expect(srv.stderr()).toMatch(/stopping: the plugins did not stop within 10 s; going on without it/);
    expect(await isMounted(t.dirs.mnt!)).toBe(false);
    expect(await fsp.readFile(path.join(t.dirs.primary!, 'f'), 'utf8')).toBe('kept through a stuck plugin');
  }, 60_000);
});
