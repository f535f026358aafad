import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PluginSandbox } from './plugin-fixtures.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

let box: PluginSandbox;
let env: NodeJS.ProcessEnv;

/** Runs the built CLI (dist/, as CI builds it) with the sandbox's state and user plugin folders. */
function twinfs(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--no-warnings', CLI, ...args],
      { env, timeout: 30_000 },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  box = await PluginSandbox.create();
  env = {
    ...process.env,
    TWINFS_PLUGIN_STATE: box.storageRoot,
    TWINFS_PLUGIN_PATH: path.join(box.root, 'user'),
  };
  await box.write(
    {
      name: 'user-notifier',
      manifest: { activationEvents: ['onEvent:onDidCompleteBackup'] },
      code: 'export function activate() {}',
    },
    'user',
  );
  await box.write(
    {
      name: 'dev-hello',
      manifest: {
        contributes: {
          commands: [
            { command: 'hello.say', title: 'Say hello' },
            { command: 'hello.greet', title: 'Greet with the configured greeting' },
          ],
          backupTargets: [{ id: 'null' }],
          configuration: { properties: { greeting: { type: 'string', default: 'hello' } } },
        },
      },
      code: `export function activate(c) {
        c.subscriptions.push(c.twinfs.registerCommand('hello.say', (who) => 'hello ' + who));
        c.subscriptions.push(c.twinfs.registerCommand('hello.greet', (who) => c.configuration.get('greeting') + ' ' + who));
      }`,
    },
    'dev',
  );
});
afterAll(async () => {
  await box?.cleanup();
});

describe('twinfs plugins (CLI)', () => {
  it('list --json names each plugin, where it comes from and the target ids it contributes', async () => {
    const r = await twinfs(
      'plugins',
      'list',
      '--json',
      '--plugin-dir',
      path.join(box.root, 'dev', 'dev-hello'),
    );
    expect(r.code, r.stderr).toBe(0);
    const list = JSON.parse(r.stdout) as Array<{
      name: string;
      source: string;
      targets: string[];
      state: string;
    }>;
    const by = Object.fromEntries(list.map((p) => [p.name, p]));
    expect(by['twinfs-dir']).toMatchObject({ source: 'builtin', targets: ['dir'], state: 'inactive' });
    expect(by['twinfs-tar']).toMatchObject({ source: 'builtin', targets: ['tar'], state: 'inactive' });
    expect(by['twinfs-s3']).toMatchObject({ source: 'builtin', targets: ['s3'], state: 'inactive' });
    expect(by['dev-hello']).toMatchObject({
      source: 'cli',
      targets: ['null'],
      commands: ['hello.say', 'hello.greet'],
    });
    expect(by['user-notifier']).toMatchObject({ source: 'user', targets: [] });
  });

  it('runs a contributed command, activating its plugin', async () => {
    const r = await twinfs(
      'plugins',
      'run',
      'hello.say',
      'world',
      '--plugin-dir',
      path.join(box.root, 'dev'),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('hello world\n');
  });

  it('disable and enable persist between runs', async () => {
    expect((await twinfs('plugins', 'disable', 'twinfs-s3')).stdout).toBe('twinfs-s3 disabled\n');
    const info = JSON.parse((await twinfs('plugins', 'info', 'twinfs-s3', '--json')).stdout);
    expect(info).toMatchObject({ name: 'twinfs-s3', state: 'disabled', targets: ['s3'] });
    expect((await twinfs('plugins', 'enable', 'twinfs-s3')).code).toBe(0);
    const again = JSON.parse((await twinfs('plugins', 'info', 'twinfs-s3', '--json')).stdout);
    expect(again.state).toBe('inactive');
  });

  it('passes settings from $TWINFS_PLUGIN_CONFIG, and a bad setting fails that plugin only', async () => {
    const file = path.join(box.root, 'settings.json');
    await fsp.writeFile(file, JSON.stringify({ plugins: { 'dev-hello': { greeting: 'hi' } } }));
    const dev = path.join(box.root, 'dev');
    const r = await twinfs('plugins', 'run', 'hello.greet', 'you', '--plugin-dir', dev);
    expect(r.stdout).toBe('hello you\n');
    env.TWINFS_PLUGIN_CONFIG = file;
    try {
      expect((await twinfs('plugins', 'run', 'hello.greet', 'you', '--plugin-dir', dev)).stdout).toBe(
        'hi you\n',
      );
      await fsp.writeFile(file, JSON.stringify({ plugins: { 'dev-hello': { greeting: 7 } } }));
      const bad = await twinfs('plugins', 'run', 'hello.greet', 'you', '--plugin-dir', dev);
      expect(bad.code).not.toBe(0);
      const list = JSON.parse((await twinfs('plugins', 'list', '--json', '--plugin-dir', dev)).stdout);
      expect(list.find((p: { name: string }) => p.name === 'twinfs-tar').state).toBe('inactive');
    } finally {
      delete env.TWINFS_PLUGIN_CONFIG;
    }
  });

  it('answers an unknown plugin with a named error, not a stack trace', async () => {
    const r = await twinfs('plugins', 'info', 'no-such-plugin');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/ETWIN_PLUGIN_NOT_FOUND|no plugin named no-such-plugin/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
