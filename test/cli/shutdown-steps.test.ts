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

/**
 * The detach: fuse-native's close runs `fusermount -uz` through a shell and calls back once the
 * child's output is closed. Here a `fusermount` first in PATH unmounts for real and leaves a
 * process behind that holds that output (the way a stop hung in a handle-diff seed: the mount
 * gone, the callback never called). The stop must say where the close is, go on once the
 * kernel has dropped the mount, and still write everything back and exit 0.
 */
describe('twinfs serve: a detach whose callback never comes, the mount gone', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'bin');
    const real = (await shOk('command -v fusermount || command -v fusermount3')).trim();
    await fsp.writeFile(
      path.join(t.dirs.bin!, 'fusermount'),
      `#!/bin/sh\n${JSON.stringify(real)} "$@"\nrc=$?\nsleep 41.5 &\nexit $rc\n`,
      { mode: 0o755 },
    );
  });
  afterAll(async () => {
    await srv?.kill().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    // The sleep that held the output.
    await shOk(`pkill -x -f 'sleep 41.5' || true`);
    await t?.cleanup();
  });

  it('SIGTERM: the stop goes on 10 s after the kernel dropped the mount, says where the close was, writes back, exits 0', async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--writeback-ms', '60000'],
      env: { ...process.env, PATH: `${t.dirs.bin}:${process.env.PATH}` },
    });
    await shOk(`printf 'kept through a stuck detach' > '${t.dirs.mnt}/f'`, { timeoutMs: 10_000 });
    const started = Date.now();
    const code = await srv.stop(40_000);
    expect(code, srv.stderr()).toBe(0);
    expect(srv.stderr()).toMatch(
      /still waiting for the write-back and unmount after \d+ s \(detaching the mount: fusermount -uz exited \(0\) after \d+ ms, its output not closed yet/,
    );
    expect(srv.stderr()).toMatch(
      /did not call back 10 s after the kernel dropped the mount .*going on without it/,
    );
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await isMounted(t.dirs.mnt!)).toBe(false);
    expect(await fsp.readFile(path.join(t.dirs.primary!, 'f'), 'utf8')).toBe('kept through a stuck detach');
  }, 60_000);
});
