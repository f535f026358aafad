import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readManifest } from '../../src/plugins/manifest.js';
import { memoryTargetPlugin, PluginSandbox, trace, tracingPlugin } from './plugin-fixtures.js';

let box: PluginSandbox;
beforeEach(async () => {
  box = await PluginSandbox.create();
  trace().events = [];
});
afterEach(async () => {
  await box.cleanup();
});

describe('plugin host: activation', () => {
  it('activates each plugin on its own activation event, and only then', async () => {
    await box.write({
      name: 'on-target',
      manifest: { activationEvents: ['onTarget:alpha'], contributes: { backupTargets: [{ id: 'alpha' }] } },
      code: memoryTargetPlugin(
        'alpha',
        undefined,
        `globalThis.__twinfsPluginTrace.events.push('activate:T');`,
      ),
    });
    await box.write({
      name: 'on-command',
      manifest: {
        activationEvents: ['onCommand:cmd.hello'],
        contributes: { commands: [{ command: 'cmd.hello', title: 'Hello' }] },
      },
      code: tracingPlugin(
        'C',
        `context.subscriptions.push(context.twinfs.registerCommand('cmd.hello', (who) => 'hello ' + who));`,
      ),
    });
    await box.write({
      name: 'on-event',
      manifest: { activationEvents: ['onEvent:onDidThaw'] },
      code: tracingPlugin('E', `context.twinfs.onDidThaw((e) => t.events.push('thaw:' + e.backupId));`),
    });
    await box.write({ name: 'on-startup', code: tracingPlugin('S') });
    const host = await box.host();
    expect(host.list().map((p) => [p.name, p.state])).toEqual([
      ['on-command', 'inactive'],
      ['on-event', 'inactive'],
      ['on-startup', 'inactive'],
      ['on-target', 'inactive'],
    ]);
    expect(host.targetIds()).toEqual(['alpha']);
    expect(host.commandList()).toEqual([{ command: 'cmd.hello', title: 'Hello', plugin: 'on-command' }]);

    await host.activateByEvent('onStartup');
    expect(trace().events).toEqual(['activate:S']);
    const provider = await host.getTargetProvider('alpha');
    expect((await provider.open('/x')).spec).toBe('alpha:/x');
    expect(await host.executeCommand('cmd.hello', 'world')).toBe('hello world');
    await host.emit('onDidThaw', { backupId: 'b1', selector: { volume: true } });
    expect(trace().events).toEqual(['activate:S', 'activate:T', 'activate:C', 'activate:E', 'thaw:b1']);
    expect(host.list().every((p) => p.state === 'active')).toBe(true);
  });

  it('disposes subscriptions in reverse order after deactivate(), and forgets what they registered', async () => {
    await box.write({
      name: 'disposer',
      manifest: { contributes: { commands: [{ command: 'd.cmd', title: 'D' }] } },
      code: tracingPlugin(
        'D',
        `context.subscriptions.push(context.twinfs.registerCommand('d.cmd', () => 1));
         context.subscriptions.push(context.twinfs.onDidFreeze(() => t.events.push('freeze:D')));`,
      ),
    });
    const host = await box.host();
    await host.activateByEvent('onStartup');
    await host.emit('onDidFreeze', { selector: {} });
    await host.setEnabled('disposer', false);
    expect(trace().events).toEqual(['activate:D', 'freeze:D', 'deactivate:D', 'dispose2:D', 'dispose1:D']);
    await host.emit('onDidFreeze', { selector: {} });
    expect(trace().events.filter((e) => e === 'freeze:D')).toHaveLength(1);
    await expect(host.executeCommand('d.cmd')).rejects.toMatchObject({ code: 'ETWIN_PLUGIN_NOT_FOUND' });
    // host.dispose() deactivates whatever is still active the same way.
    await host.setEnabled('disposer', true);
    await host.activateByEvent('onStartup');
    await host.dispose();
    expect(trace().events.slice(-4)).toEqual(['activate:D', 'deactivate:D', 'dispose2:D', 'dispose1:D']);
  });

  it('gives each plugin its storage folder, a persistent state store and validated configuration', async () => {
    await box.write({
      name: 'configured',
      manifest: {
        contributes: {
          configuration: {
            properties: {
              level: { type: 'integer', minimum: 1, maximum: 9, default: 3 },
              mode: { type: 'string', enum: ['fast', 'safe'], default: 'safe' },
              label: { type: 'string' },
              tags: { type: 'array', items: { type: 'string', pattern: '^[a-z]+$' } },
            },
          },
        },
      },
      code: `export async function activate(context) {
        const c = context.configuration;
        const n = context.state.get('runs', 0) + 1;
        await context.state.update('runs', n);
        globalThis.__twinfsPluginTrace.events.push(JSON.stringify({
          level: c.get('level'), mode: c.get('mode'), label: c.get('label', 'none'), runs: n,
          storage: context.storagePath, keys: context.state.keys(),
        }));
      }`,
    });
    let host = await box.host({ configuration: { configured: { level: 7 } } });
    await host.activateByEvent('onStartup');
    const first = JSON.parse(trace().events[0]!);
    expect(first).toMatchObject({ level: 7, mode: 'safe', label: 'none', runs: 1, keys: ['runs'] });
    expect((await fsp.stat(first.storage)).isDirectory()).toBe(true);
    await host.dispose();
    host = await box.host({ configuration: { configured: { mode: 'fast', label: 'x' } } });
    await host.activateByEvent('onStartup');
    expect(JSON.parse(trace().events[1]!)).toMatchObject({ level: 3, mode: 'fast', label: 'x', runs: 2 });

    for (const [bad, msg] of [
      [{ level: 12 }, /setting "level" must be <= 9/],
      [{ level: 'high' }, /setting "level" must be integer/],
      [{ mode: 'slow' }, /setting "mode" must be equal to one of the allowed values: fast, safe/],
      [{ colour: 'red' }, /unknown setting "colour"/],
      // A real JSON-Schema validator: items and patterns are checked too.
      [{ tags: ['ok', 7] }, /setting "tags\.1" must be string/],
      [{ tags: ['Upper'] }, /setting "tags\.0" must match pattern/],
    ] as const) {
      const h = await box.host({ configuration: { configured: bad } });
      await h.activateByEvent('onStartup');
      expect(h.info('configured')).toMatchObject({ state: 'failed', error: expect.stringMatching(msg) });
    }
  });

  it('persists enable/disable across hosts', async () => {
    await box.write({
      name: 'toggled',
      manifest: { activationEvents: ['onTarget:tog'], contributes: { backupTargets: [{ id: 'tog' }] } },
      code: memoryTargetPlugin('tog'),
    });
    const h1 = await box.host();
    await h1.setEnabled('toggled', false);
    const h2 = await box.host();
    expect(h2.info('toggled').state).toBe('disabled');
    await expect(h2.getTargetProvider('tog')).rejects.toMatchObject({ code: 'ETWIN_PLUGIN_DISABLED' });
    await h2.setEnabled('toggled', true);
    const h3 = await box.host();
    expect(h3.info('toggled').state).toBe('inactive');
    await expect(h3.getTargetProvider('tog')).resolves.toBeTruthy();
    await expect(h3.setEnabled('nope', true)).rejects.toMatchObject({ code: 'ETWIN_PLUGIN_NOT_FOUND' });
  });
});

describe('plugin host: manifests, engines, duplicates, dependencies', () => {
  it('refuses engines "*", incompatible and malformed ranges with ETWIN_PLUGIN_ENGINE', async () => {
    const star = await box.write({
      name: 'star',
      manifest: { engines: { twinfs: '*' } },
      code: tracingPlugin('x'),
    });
    const future = await box.write({ name: 'future', manifest: { engines: { twinfs: '^2.0.0' } }, code: '' });
    const junk = await box.write({ name: 'junk', manifest: { engines: { twinfs: 'soon' } }, code: '' });
    await box.write({
      name: 'fine',
      manifest: { engines: { twinfs: '>=1.0.0 <2' } },
      code: tracingPlugin('F'),
    });
    await expect(readManifest(star)).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_ENGINE',
      message: /not "\*"/,
    });
    await expect(readManifest(future)).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_ENGINE',
      message: 'future needs twinfs API ^2.0.0; this is 1.3.0',
    });
    await expect(readManifest(junk)).rejects.toMatchObject({ code: 'ETWIN_PLUGIN_ENGINE' });
    const host = await box.host();
    await host.activateByEvent('onStartup');
    const states = Object.fromEntries(host.list().map((p) => [p.name, p.state]));
    expect(states).toEqual({
      'cli:future': 'failed',
      'cli:junk': 'failed',
      'cli:star': 'failed',
      fine: 'active',
    });
    expect(trace().events).toEqual(['activate:F']);
  });

  it('API 1.3.0 loads plugins written for 1.0.0 to 1.3.0, and refuses one that needs a later 1.x', async () => {
    // 1.1.0 to 1.3.0 only added optional members (openStore, ObjectStore, incompleteWrites,
    // listNames, putNew): a 1.0.0 plugin keeps working.
    for (const [name, range] of [
      ['caret-one', '^1.0.0'],
      ['one-x', '1.x'],
      ['caret-one-one', '^1.1.0'],
      ['caret-one-two', '^1.2.0'],
      ['caret-one-three', '^1.3.0'],
    ] as const)
      expect(
        await readManifest(await box.write({ name, manifest: { engines: { twinfs: range } }, code: '' })),
      ).toMatchObject({ name, engines: { twinfs: range } });
    const later = await box.write({ name: 'later', manifest: { engines: { twinfs: '^1.4.0' } }, code: '' });
    await expect(readManifest(later)).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_ENGINE',
      message: 'later needs twinfs API ^1.4.0; this is 1.3.0',
    });
  });

  it('refuses a malformed manifest with ETWIN_PLUGIN_MANIFEST, naming the field', async () => {
    const dir = await box.write({
      name: 'bad-events',
      manifest: { activationEvents: ['whenever'] },
      code: '',
    });
    await expect(readManifest(dir)).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_MANIFEST',
      message: expect.stringMatching(/activationEvents\.0/),
    });
    await fsp.writeFile(path.join(dir, 'package.json'), '{ not json');
    await expect(readManifest(dir)).rejects.toMatchObject({ code: 'ETWIN_PLUGIN_MANIFEST' });
  });

  it('refuses duplicate plugin names, target ids and command ids', async () => {
    await box.write({ name: 'twin', code: tracingPlugin('first') }, 'a');
    await box.write({ name: 'twin', code: tracingPlugin('second') }, 'b');
    await box.write(
      {
        name: 'target-one',
        manifest: { activationEvents: ['onTarget:same'], contributes: { backupTargets: [{ id: 'same' }] } },
        code: memoryTargetPlugin('same'),
      },
      'a',
    );
    await box.write(
      {
        name: 'target-two',
        manifest: { activationEvents: ['onTarget:same'], contributes: { backupTargets: [{ id: 'same' }] } },
        code: memoryTargetPlugin('same'),
      },
      'b',
    );
    const cmd = (name: string) => ({
      name,
      manifest: { contributes: { commands: [{ command: 'dup.cmd', title: 'dup' }] } },
      code: `export function activate(c) { c.subscriptions.push(c.twinfs.registerCommand('dup.cmd', () => '${name}')); }`,
    });
    await box.write(cmd('cmd-one'), 'a');
    await box.write(cmd('cmd-two'), 'b');
    const host = await box.host({ dirs: ['a', 'b'] });
    const twins = host.list().filter((p) => p.name === 'twin');
    expect(twins.map((p) => p.state)).toEqual(['inactive', 'failed']);
    expect(twins[1]!.error).toMatch(/a plugin with that name is already loaded/);
    expect(host.info('target-two')).toMatchObject({
      state: 'failed',
      error: 'target-two: backup target id already contributed by target-one',
    });
    expect((await (await host.getTargetProvider('same')).open('x')).spec).toBe('same:x');
    await host.activateByEvent('onStartup');
    expect(trace().events).toEqual(['activate:first']);
    const failed = host.list().filter((p) => p.name.startsWith('cmd-') && p.state === 'failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]!.error).toMatch(/command "dup.cmd" is already registered/);
  });

  it('activates dependencies first, and refuses missing, failed and cyclic ones', async () => {
    const dep = (name: string, deps: string[], code = tracingPlugin(name)) => ({
      name,
      manifest: {
        activationEvents: [`onCommand:${name}.go`],
        pluginDependencies: Object.fromEntries(deps.map((d) => [d, '*'])),
      },
      code,
    });
    await box.write(dep('base', []));
    await box.write(dep('middle', ['base']));
    await box.write(dep('top', ['middle', 'base']));
    await box.write(dep('cyc-a', ['cyc-b']));
    await box.write(dep('cyc-b', ['cyc-a']));
    await box.write(dep('orphan', ['not-installed']));
    await box.write(
      dep('broken', [], 'export function activate() { throw new Error("broken on purpose"); }'),
    );
    await box.write(dep('needs-broken', ['broken']));
    const host = await box.host();
    await host.activateByEvent('onCommand:top.go');
    expect(trace().events).toEqual(['activate:base', 'activate:middle', 'activate:top']);

    await host.activateByEvent('onCommand:cyc-a.go');
    expect(host.info('cyc-a')).toMatchObject({
      state: 'failed',
      error: expect.stringMatching(/dependency cycle: cyc-a -> cyc-b -> cyc-a/),
    });
    expect(host.info('cyc-b').state).toBe('failed');
    await host.activateByEvent('onCommand:orphan.go');
    expect(host.info('orphan').error).toBe('orphan depends on not-installed, which is not installed');
    await host.activateByEvent('onCommand:needs-broken.go');
    expect(host.info('needs-broken').error).toMatch(/depends on broken, which failed: broken on purpose/);
    expect(trace().events).toEqual(['activate:base', 'activate:middle', 'activate:top']);
  });
});
