import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, sleep, startControlFixture, status, waitUntil } from './control-fixture.js';

/**
 * The security model of the control channel (docs/security.md): roles (a read-only token may
 * only look), token rotation without a restart (file change, SIGHUP), a bad rotation keeping
 * the old token, per-connection rate limits, and tokens never written to the server's output.
 */

describe('control channel security: roles, rotation, rate limits, secrets', () => {
  let fx: ControlFixture;
  let readFile: string;
  let readToken: string;
  /** Every token this file presented or installed: none may appear in the server's output. */
  const secrets: string[] = [];

  beforeAll(async () => {
    const dir = await fsp.mkdtemp('/tmp/twinfs-read-token-');
    readFile = path.join(dir, 'read.token');
    fx = await startControlFixture({ args: ['--read-token-file', readFile] });
    readToken = (await fsp.readFile(readFile, 'utf8')).trim();
    secrets.push(fx.token, readToken);
    expect((await fsp.stat(readFile)).mode & 0o777).toBe(0o600);
    await fsp.writeFile(path.join(fx.mnt, 'f'), 'f\n');
  });
  afterAll(async () => {
    await fx?.close();
    await fsp.rm(path.dirname(readFile), { recursive: true, force: true });
  });

  it('a read-only token may look (status, verify, events) but not freeze, prepare, flush or repair', async () => {
    const r = await ControlClient.connect(fx.url, { token: readToken, client: 'monitor' });
    try {
      expect(r.hello.role).toBe('read');
      const s: any = await r.request('status');
      expect(s.connections.find((x: any) => x.client === 'monitor')?.role).toBe('read');
      expect(await r.request('verify', { content: false })).toMatchObject({ ok: true });
      const refused: Array<[string, Record<string, unknown>]> = [
        ['freeze', { selector: { paths: ['/f'] } }],
        ['prepare', { selector: { paths: ['/f'] } }],
        ['thaw', { freezeId: 'fz-x' }],
        ['release', { backupId: 'bk-x' }],
        ['renew', { backupId: 'bk-x' }],
        ['flush', {}],
        ['repair', {}],
      ];
      for (const [type, payload] of refused)
        await expect(r.request(type, payload), type).rejects.toMatchObject({ code: 'EPROTO_FORBIDDEN' });
      // Nothing was frozen or split, and the connection is still usable.
      const after: any = await r.request('status');
      expect(after.backup.freezes).toEqual([]);
      expect(after.mirror.splits).toEqual([]);
    } finally {
      await r.close();
    }
  });

  it('rotation: a new token in the file works within seconds, the old one stops; live sessions go on', {
    timeout: 30_000,
  }, async () => {
    const live = await fx.connect();
    const next = `rotated-${Date.now()}-${Math.random().toString(16).slice(2)}`;
    secrets.push(next);
    // Replaced by rename, as an editor or a secrets agent does.
    const tmp = `${fx.tokenFile}.new`;
    await fsp.writeFile(tmp, next + '\n', { mode: 0o600 });
    await fsp.rename(tmp, fx.tokenFile);
    await waitUntil(
      () =>
        ControlClient.connect(fx.url, { token: next }).then(
          (c) => c.close().then(() => true),
          () => false,
        ),
      10_000,
      'the rotated token to be accepted',
    );
    await expect(ControlClient.connect(fx.url, { token: fx.token })).rejects.toMatchObject({
      code: 'EPROTO_AUTH',
    });
    expect((await status(live)).backup).toBeDefined();
    await live.close();

    // SIGHUP re-reads at once and does not stop the server (its default action would).
    const third = `hup-${Date.now()}-${Math.random().toString(16).slice(2)}`;
    secrets.push(third);
    await fsp.writeFile(fx.tokenFile, third + '\n');
    fx.srv.proc.kill('SIGHUP');
    await waitUntil(
      () =>
        ControlClient.connect(fx.url, { token: third }).then(
          (c) => c.close().then(() => true),
          () => false,
        ),
      10_000,
      'the token re-read on SIGHUP',
    );
    expect(fx.srv.proc.exitCode).toBeNull();

    // A bad rotation (others may read the file) keeps the previous token and says why.
    // (Mode first: the new content must never sit in a 0600 file the poller could take.)
    await fsp.chmod(fx.tokenFile, 0o644);
    await fsp.writeFile(fx.tokenFile, 'leaked-token-value\n');
    secrets.push('leaked-token-value');
    fx.srv.proc.kill('SIGHUP');
    await waitUntil(
      () => /ETWIN_TOKEN_PERMISSIONS/.test(fx.srv.stderr()),
      10_000,
      'the refusal to be logged',
    );
    await expect(ControlClient.connect(fx.url, { token: 'leaked-token-value' })).rejects.toMatchObject({
      code: 'EPROTO_AUTH',
    });
    const c = await ControlClient.connect(fx.url, { token: third });
    await c.close();
    await fsp.writeFile(fx.tokenFile, third + '\n');
    await fsp.chmod(fx.tokenFile, 0o600);
    fx.token = third;
  });

  it('a connection over its request rate gets EPROTO_RATE_LIMITED, recovers after a pause, and is closed if it keeps on', {
    timeout: 30_000,
  }, async () => {
    const r = await fx.raw();
    expect((await r.hello(fx.token)).type).toBe('result');
    for (let i = 0; i < 150; i++) r.send({ type: 'status', id: i });
    const replies = await Promise.all(
      Array.from({ length: 150 }, (_, i) =>
        r.next((m) => m.id === i && (m.type === 'result' || m.type === 'error')),
      ),
    );
    const limited = replies.filter((m) => m.type === 'error');
    expect(limited.length).toBeGreaterThan(0);
    for (const m of limited) expect(m.error.code).toBe('EPROTO_RATE_LIMITED');
    expect(replies.filter((m) => m.type === 'result').length).toBeGreaterThanOrEqual(16);
    await sleep(2500);
    expect((await r.request({ type: 'status', id: 'after-pause' })).type).toBe('result');
    // A client that ignores the refusals and keeps sending is cut off.
    for (let i = 0; i < 2000 && !r.closed; i++) r.send({ type: 'status', id: `flood-${i}` });
    expect((await r.whenClosed()).code).toBe(1008);
    // Others are not affected.
    const c = await fx.connect();
    expect((await status(c)).backup).toBeDefined();
  });

  it('tokens never appear in the server output, whatever was presented', async () => {
    const r = await fx.raw();
    const wrong = `wrong-${'w'.repeat(40)}`;
    secrets.push(wrong);
    await r.hello(wrong);
    const r2 = await fx.raw();
    r2.send({ type: 'hello', id: 1, version: 1, token: fx.token, extra: 'x' });
    await r2.next();
    const out = JSON.stringify(fx.srv.events) + fx.srv.stderr();
    for (const s of secrets) expect(out, 'a token in the server output').not.toContain(s);
  });
});
