import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { memoryTargetPlugin, PluginSandbox, trace } from './plugin-fixtures.js';

let box: PluginSandbox;
beforeEach(async () => {
  box = await PluginSandbox.create();
  trace().events = [];
});
afterEach(async () => {
  await box.cleanup();
});

const meta = { size: 1, mode: 0o100644, uid: 0, gid: 0, mtime: 0 };
const snap = { snapshotId: 's1', time: 1, server: 'x', deviceId: 'd', selector: {} };

/** A well-behaved plugin beside the misbehaving ones: it must keep working. */
async function writeHealthy(): Promise<void> {
  await box.write({
    name: 'healthy',
    manifest: {
      activationEvents: ['onStartup', 'onTarget:good'],
      contributes: { backupTargets: [{ id: 'good' }] },
    },
    code: memoryTargetPlugin(
      'good',
      'async () => ({ hash: "ok", bytes: 1 })',
      `context.twinfs.onDidSplit((e) => globalThis.__twinfsPluginTrace.events.push('healthy saw ' + e.backupId));
       context.twinfs.onWillFreeze((e) => e.waitUntil(new Promise((r) => setTimeout(r, 20)).then(() =>
         globalThis.__twinfsPluginTrace.events.push('healthy quiesced'))));`,
    ),
  });
}

describe('plugin host: a failing plugin is isolated and recorded', () => {
  it('records an activate() that throws, one that hangs and a module that does not load; the others activate', async () => {
    await writeHealthy();
    await box.write({
      name: 'thrower',
      code: 'export function activate() { throw new Error("no config file"); }',
    });
    await box.write({ name: 'hanger', code: 'export function activate() { return new Promise(() => {}); }' });
    await box.write({ name: 'syntax', code: 'export function activate( {' });
    await box.write({ name: 'no-activate', code: 'export const x = 1;' });
    await box.write({ name: 'escaper', manifest: { main: '../healthy/index.js' }, code: '' });
    const host = await box.host({ activationTimeoutMs: 300 });
    await host.activateByEvent('onStartup');
    const info = Object.fromEntries(host.list().map((p) => [p.name, p]));
    expect(info.healthy!.state).toBe('active');
    expect(info.thrower).toMatchObject({ state: 'failed', error: 'no config file' });
    expect(info.hanger).toMatchObject({
      state: 'failed',
      error: 'hanger: activate() did not finish within 300 ms',
    });
    expect(info.syntax!.state).toBe('failed');
    expect(info['no-activate']).toMatchObject({
      state: 'failed',
      error: expect.stringMatching(/exports no activate/),
    });
    expect(info.escaper).toMatchObject({
      state: 'failed',
      error: expect.stringMatching(/inside the plugin folder/),
    });
    // A failed plugin is not retried behind the operator's back, and its activation is not re-run.
    await host.activateByEvent('onStartup');
    expect(host.info('thrower').state).toBe('failed');
  });

  it('records a throwing listener and still delivers the event to the others', async () => {
    await writeHealthy();
    await box.write({
      name: 'bad-listener',
      code: `export function activate(c) { c.twinfs.onDidSplit(() => { throw new Error('listener bug'); }); }`,
    });
    const host = await box.host();
    await host.activateByEvent('onStartup');
    await host.emit('onDidSplit', { backupId: 'b7', deviceId: 'd', selector: {} });
    expect(trace().events).toContain('healthy saw b7');
    expect(host.info('bad-listener')).toMatchObject({
      state: 'active',
      problems: ['onDidSplit listener threw: listener bug'],
    });
    expect(host.info('healthy').problems).toEqual([]);
  });

  it('stops waiting for a listener that hangs, and records it', async () => {
    await writeHealthy();
    await box.write({
      name: 'hanging-listener',
      code: `export function activate(c) { c.twinfs.onDidSplit(() => new Promise(() => {})); }`,
    });
    const host = await box.host({ listenerTimeoutMs: 200 });
    await host.activateByEvent('onStartup');
    await host.emit('onDidSplit', { backupId: 'b8', deviceId: 'd', selector: {} });
    expect(trace().events).toContain('healthy saw b8');
    expect(host.info('hanging-listener').problems).toEqual([
      'onDidSplit listener did not finish within 200 ms',
    ]);
  });

  it('onWillFreeze: waits for waitUntil promises, bounded by its timeout, and names the plugins that failed', async () => {
    await writeHealthy();
    await box.write({
      name: 'slow-app',
      code: `export function activate(c) { c.twinfs.onWillFreeze((e) => e.waitUntil(new Promise(() => {}))); }`,
    });
    await box.write({
      name: 'failing-app',
      code: `export function activate(c) { c.twinfs.onWillFreeze((e) => e.waitUntil(Promise.reject(new Error('db locked')))); }`,
    });
    await box.write({
      name: 'throwing-app',
      code: `export function activate(c) { c.twinfs.onWillFreeze(() => { throw new Error('oops'); }); }`,
    });
    const host = await box.host();
    await host.activateByEvent('onStartup');
    const started = Date.now();
    const failures = await host.willFreeze({ selector: { volume: true } }, 300);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(trace().events).toContain('healthy quiesced');
    expect(failures.sort((a, b) => a.plugin.localeCompare(b.plugin))).toEqual([
      { plugin: 'failing-app', message: 'onWillFreeze: db locked' },
      { plugin: 'slow-app', message: 'onWillFreeze: did not finish within 300 ms' },
      { plugin: 'throwing-app', message: 'onWillFreeze: oops' },
    ]);
    expect(host.info('slow-app').problems).toEqual(['onWillFreeze: did not finish within 300 ms']);
  });

  it('fails a target operation that throws or hangs with an error naming the plugin; other targets work', async () => {
    await writeHealthy();
    await box.write({
      name: 'crashy-target',
      manifest: { activationEvents: ['onTarget:crashy'], contributes: { backupTargets: [{ id: 'crashy' }] } },
      code: memoryTargetPlugin('crashy', 'async () => { null.boom(); }'),
    });
    await box.write({
      name: 'stuck-target',
      manifest: { activationEvents: ['onTarget:stuck'], contributes: { backupTargets: [{ id: 'stuck' }] } },
      code: memoryTargetPlugin('stuck', '() => new Promise(() => {})'),
    });
    await box.write({
      name: 'bad-open',
      manifest: {
        activationEvents: ['onTarget:badopen'],
        contributes: { backupTargets: [{ id: 'badopen' }] },
      },
      code: `export function activate(c) { c.twinfs.registerBackupTarget('badopen', { open: async () => { throw c.twinfs.errors.failed('bucket gone'); } }); }`,
    });
    await box.write({
      name: 'undeclared',
      manifest: { activationEvents: ['onStartup'] },
      code: `export function activate(c) { c.twinfs.registerBackupTarget('sneaky', { open: async () => ({}) }); }`,
    });
    const host = await box.host({ targetOpTimeoutMs: 300 });
    const crashy = await (await host.getTargetProvider('crashy')).open('/x');
    const w1 = await crashy.beginSnapshot(snap);
    await expect(w1.putFile('/f', Readable.from([Buffer.from('x')]), meta)).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_FAILED',
      message: expect.stringMatching(/^crashy\.putFile \(plugin crashy-target\) failed: /),
      data: { plugin: 'crashy-target', op: 'crashy.putFile' },
    });
    const stuck = await (await host.getTargetProvider('stuck')).open('/x');
    const w2 = await stuck.beginSnapshot(snap);
    await expect(w2.putFile('/f', Readable.from([Buffer.from('x')]), meta)).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_TIMEOUT',
      message: 'stuck.putFile (plugin stuck-target) made no progress for 300 ms',
    });
    await expect(stuck.listSnapshots()).resolves.toEqual([]);
    // Contract errors keep their code and are not "problems" of the plugin.
    await expect((await host.getTargetProvider('badopen')).open('x')).rejects.toMatchObject({
      code: 'ETWIN_TARGET_FAILED',
      data: { plugin: 'bad-open' },
    });
    await host.activateByEvent('onStartup');
    expect(host.info('undeclared')).toMatchObject({
      state: 'failed',
      error: expect.stringMatching(/without declaring it in contributes.backupTargets/),
    });
    expect(host.info('crashy-target').problems).toHaveLength(1);
    expect(host.info('stuck-target').problems).toEqual([
      'stuck.putFile (plugin stuck-target) made no progress for 300 ms',
    ]);
    expect(host.info('bad-open').problems).toEqual([]);
    const good = await (await host.getTargetProvider('good')).open('/y');
    expect(
      await (await good.beginSnapshot(snap)).putFile('/f', Readable.from([Buffer.from('x')]), meta),
    ).toEqual({
      hash: 'ok',
      bytes: 1,
    });
    await expect(host.getTargetProvider('nope')).rejects.toMatchObject({ code: 'ETWIN_TARGET_SPEC' });
  });

  it('lets a put run past the timeout as long as it keeps consuming its stream', async () => {
    await box.write({
      name: 'slow-target',
      manifest: { activationEvents: ['onTarget:slow'], contributes: { backupTargets: [{ id: 'slow' }] } },
      code: memoryTargetPlugin(
        'slow',
        `async (p, data) => {
          let bytes = 0;
          for await (const c of data) { bytes += c.length; await new Promise((r) => setTimeout(r, 100)); }
          return { hash: 'slow', bytes };
        }`,
      ),
    });
    const host = await box.host({ targetOpTimeoutMs: 300 });
    const t = await (await host.getTargetProvider('slow')).open('/x');
    const w = await t.beginSnapshot(snap);
    const chunks = Array.from({ length: 8 }, () => Buffer.alloc(100_000));
    const started = Date.now();
    expect(await w.putFile('/f', Readable.from(chunks), meta)).toEqual({ hash: 'slow', bytes: 800_000 });
    expect(Date.now() - started).toBeGreaterThan(600);
    expect(host.info('slow-target').problems).toEqual([]);
  });

  it('names the failed plugin when its target is asked for', async () => {
    await box.write({
      name: 'dead-target',
      manifest: { activationEvents: ['onTarget:dead'], contributes: { backupTargets: [{ id: 'dead' }] } },
      code: 'export function activate() { throw new Error("missing credentials"); }',
    });
    const host = await box.host();
    await expect(host.getTargetProvider('dead')).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_FAILED',
      message: 'target "dead" is unavailable: plugin dead-target failed: missing credentials',
    });
  });

  it('records a throwing command and a throwing deactivate()', async () => {
    await box.write({
      name: 'cmds',
      manifest: { contributes: { commands: [{ command: 'cmds.fail', title: 'fail' }] } },
      code: `const t = globalThis.__twinfsPluginTrace;
export function activate(context) {
  t.events.push('activate:X');
  context.subscriptions.push({ dispose: () => t.events.push('dispose1:X') });
  context.subscriptions.push({ dispose: () => t.events.push('dispose2:X') });
  context.subscriptions.push(context.twinfs.registerCommand('cmds.fail', () => { throw new Error('bad input'); }));
}
export function deactivate() { throw new Error('cannot stop'); }`,
    });
    const host = await box.host();
    await expect(host.executeCommand('cmds.fail')).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_COMMAND',
      message: 'command cmds.fail (plugin cmds) failed: bad input',
    });
    await expect(host.dispose()).rejects.toThrow(/failed to deactivate/);
    // Subscriptions are disposed even though deactivate() threw.
    expect(trace().events).toEqual(['activate:X', 'dispose2:X', 'dispose1:X']);
    expect(host.info('cmds').problems).toEqual([
      'command cmds.fail failed: bad input',
      'deactivate() threw: cannot stop',
    ]);
  });
});
