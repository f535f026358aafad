import { promises as fsp } from 'node:fs';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { ErrorCodes } from '../../src/common/errors.js';
import { ControlClient } from '../../src/control/client.js';
import {
  ProtocolErrors,
  REQUEST_TYPES,
  requestSchema,
  serverMessageSchema,
} from '../../src/control/protocol.js';
import {
  type ControlFixture,
  type RawConn,
  startControlFixture,
  status,
  waitUntil,
} from './control-fixture.js';
import { FrameFuzzer } from './frame-fuzzer.js';

/**
 * The protocol decoders under seeded random frames (frame-fuzzer.ts): the schema in process,
 * the real server over a real websocket (authenticated and not), and the client against a
 * server that answers garbage. A failure message names the seed and frame to replay.
 */

const SEEDS = [1, 7, 2026];
const KNOWN = new Set([...Object.keys(ErrorCodes), ...Object.keys(ProtocolErrors)]);

describe('protocol decoders under random frames', () => {
  it('the request schema never throws, and what it accepts is well-formed (no .., no NUL, a known type)', () => {
    for (const seed of SEEDS) {
      const f = new FrameFuzzer(seed);
      for (let i = 0; i < 5000; i++) {
        const frame = f.frame();
        const where = `seed ${seed} frame ${i}: ${String(frame).slice(0, 200)}`;
        let raw: unknown;
        try {
          raw = JSON.parse(String(frame));
        } catch {
          continue;
        }
        const r = requestSchema.safeParse(raw);
        serverMessageSchema.safeParse(raw);
        if (!r.success) continue;
        expect(REQUEST_TYPES.has(r.data.type), where).toBe(true);
        const sel = (r.data as { selector?: { paths?: string[]; subtree?: string } }).selector;
        for (const p of [...(sel?.paths ?? []), ...(sel?.subtree ? [sel.subtree] : [])]) {
          expect(p.split('/').includes('..'), where).toBe(false);
          expect(p.includes('\0'), where).toBe(false);
        }
        // Decoding is stable: what was accepted re-encodes to the same request.
        expect(requestSchema.parse(JSON.parse(JSON.stringify(r.data))), where).toEqual(r.data);
      }
    }
  });

  describe('against a running server', () => {
    let fx: ControlFixture;
    beforeAll(async () => {
      fx = await startControlFixture();
      await fsp.writeFile(path.join(fx.mnt, 'f'), 'f\n');
    });
    afterAll(async () => {
      await fx?.close();
    });

    it('every frame gets a typed reply with a catalogued code (never ETWIN_INTERNAL) or a documented close', {
      timeout: 120_000,
    }, async () => {
      const closes = new Map<number, number>();
      let frames = 0;
      for (const seed of SEEDS) {
        const f = new FrameFuzzer(seed);
        let conn: RawConn | undefined;
        let sent = 0;
        for (let i = 0; i < 1000; i++) {
          // Well under the per-connection burst: the rate limit is tested elsewhere.
          if (!conn || conn.closed || sent >= 90) {
            conn?.terminate();
            conn = await fx.raw();
            expect((await conn.hello(fx.token)).type).toBe('result');
            sent = 0;
          }
          const frame = f.frame();
          const where = `seed ${seed} frame ${i}: ${String(frame).slice(0, 300)}`;
          conn.send(frame);
          sent++;
          frames++;
          const c = conn;
          const reply = await c.nextOrClose((m) => m.type !== 'event', 20_000);
          c.messages.length = 0;
          if (!reply) {
            closes.set(c.closed!.code, (closes.get(c.closed!.code) ?? 0) + 1);
            expect([4400, 4401], where).toContain(c.closed!.code);
            continue;
          }
          expect(['result', 'error'], where).toContain(reply.type);
          if (reply.type === 'error') {
            expect(KNOWN.has(reply.error.code), where).toBe(true);
            expect(reply.error.code, where).not.toBe('ETWIN_INTERNAL');
          }
        }
        conn?.terminate();
      }
      expect(frames).toBe(3000);
      // Unauthenticated: one random frame per connection; anything but hello is refused.
      const f = new FrameFuzzer(99);
      for (let i = 0; i < 150; i++) {
        const r = await fx.raw();
        const frame = f.frame();
        r.send(frame);
        const reply = await r.next((m) => m.type !== 'event', 10_000);
        expect(reply.type, String(frame).slice(0, 300)).toBe('error');
        expect(reply.error.code).toMatch(/^EPROTO_|^ETWIN_PATH_ESCAPE$/);
        r.terminate();
      }
      // The server is unharmed: it answers, holds nothing for the closed connections, serves files.
      const c = await fx.connect();
      await waitUntil(
        async () => {
          const s = await status(c);
          return s.backup.freezes.length === 0 && s.backup.backups.length === 0;
        },
        10_000,
        'nothing held after the fuzzing connections closed',
      );
      await fsp.writeFile(path.join(fx.mnt, 'after'), 'ok');
      expect(await fsp.readFile(path.join(fx.mnt, 'after'), 'utf8')).toBe('ok');
    });
  });

  it('the client settles every request whatever the server sends back', { timeout: 60_000 }, async () => {
    const f = new FrameFuzzer(4242);
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    wss.on('connection', (ws) => {
      ws.on('message', (data) => {
        const req = JSON.parse(String(data));
        if (req.type === 'hello')
          return ws.send(
            JSON.stringify({
              type: 'result',
              id: req.id,
              result: { version: 1, server: 'fuzz', deviceId: null, mirrorRoot: null },
            }),
          );
        for (let i = f.int(0, 4); i > 0; i--) {
          const frame = f.chance(0.5) ? f.frame() : JSON.stringify({ ...f.request(), id: req.id });
          ws.send(frame);
        }
        // Half the time a proper reply follows the garbage (if the garbage did not settle it).
        if (f.chance(0.5)) ws.send(JSON.stringify({ type: 'result', id: req.id, result: { ok: true } }));
      });
    });
    await new Promise((r) => wss.once('listening', r));
    const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
    try {
      const c = await ControlClient.connect(url, { token: 't', requestTimeoutMs: 100 });
      const outcomes = { resolved: 0, remote: 0, timeout: 0 };
      for (let i = 0; i < 200; i++) {
        await c.request('status').then(
          () => outcomes.resolved++,
          (err) => {
            if (err.name === 'RemoteError') {
              expect(typeof err.code).toBe('string');
              outcomes.remote++;
            } else {
              expect(err.code).toBe('ETWIN_CONTROL_TIMEOUT');
              outcomes.timeout++;
            }
          },
        );
      }
      expect(outcomes.resolved + outcomes.remote + outcomes.timeout).toBe(200);
      expect(outcomes.resolved).toBeGreaterThan(0);
      expect(outcomes.remote).toBeGreaterThan(0);
      await c.close();
    } finally {
      await new Promise((r) => wss.close(r));
    }
  });
});
