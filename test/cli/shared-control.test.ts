import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedControl } from '../../src/commands/peer.js';
import { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';

/**
 * A backup run started from the CLI or the REPL uses the front end's control connection
 * (sharedControl): every member of the client, present or added later, must reach it (a wrapper
 * that copied methods one by one once lost `report`), and only closing must not.
 */
describe('sharedControl: the front end’s connection handed to a backup run', () => {
  let fx: ControlFixture;
  let client: ControlClient;
  beforeAll(async () => {
    fx = await startControlFixture();
    client = await fx.connect();
  }, 60_000);
  afterAll(async () => {
    await fx?.close();
  });

  it('has every method of ControlClient, bound to the client, and its close leaves the connection open', async () => {
    const shared = sharedControl(client) as unknown as Record<string, unknown>;
    const methods = Object.getOwnPropertyNames(ControlClient.prototype).filter(
      (k) =>
        k !== 'constructor' &&
        typeof Object.getOwnPropertyDescriptor(ControlClient.prototype, k)?.value === 'function',
    );
    expect(methods).toEqual(
      expect.arrayContaining(['call', 'request', 'prepare', 'renew', 'release', 'report']),
    );
    for (const k of methods) expect(typeof shared[k], k).toBe('function');
    expect(shared.hello).toBe(client.hello);
    expect(shared.onEvent).toBe(client.onEvent);
    // A real request through the shared handle, then a close that must not close the socket.
    const status = await (shared.call as ControlClient['call'])('status');
    expect(status).toMatchObject({ mirror: { deviceId: expect.any(String) } });
    await (shared.close as () => Promise<void>)();
    expect(client.isClosed).toBe(false);
    expect(await client.call('status')).toMatchObject({ mirror: { deviceId: expect.any(String) } });
  }, 60_000);
});
