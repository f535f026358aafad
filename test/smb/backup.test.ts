import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { waitFor } from '../helpers/mounts.js';
import { ROOT } from '../helpers/server.js';
import { CHUNK, checkStreamPrefix } from './fixtures/stream.mjs';
import { freePort, removeCreatedUsers, waitEvent } from './smb-fixture.js';

/**
 * Backing up a file an SMB client keeps writing (ARCHITECTURE.md, invariants 1 and 2, with
 * Samba between the writer and the mount): the mirror copy a prepare hands out is a prefix of
 * what the client sent — no holes, no garbage — and stays frozen until release, while the
 * client is held no longer than the maximum stall.
 */

const USER = 'twsmb-bk';
const MAX_STALL_MS = 1000;
/** Scheduling noise on two cores with other suites running. */
const SLACK_MS = 500;
const WRITER = path.join(ROOT, 'test/smb/fixtures/stream-writer.mjs');
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe('twinfs serve --smb: a file an SMB client keeps writing is backed up consistently', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  let port: number;

  beforeAll(async () => {
    port = await freePort();
    fx = await startControlFixture({
      args: ['--max-stall-ms', String(MAX_STALL_MS), '--smb', String(port), '--smb-user', `${USER}:pw-bk`],
    });
    await waitEvent(fx.srv, 'smb-started');
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
    await removeCreatedUsers([USER]);
  });

  it('prepare during an smbclient upload: the mirror copy is a frozen prefix of the stream; the client waited < max stall', async () => {
    const stats = path.join(fx.base, 'etc/writer-stats.json');
    // stream-writer → pipe → smbclient put from stdin → smbd → FUSE mount: ~5 s at 16 MiB/s.
    const pipeline =
      `node ${q(WRITER)} ${q(JSON.stringify({ durationMs: 5000, rateMiBs: 16, stats }))} | ` +
      `PASSWD=pw-bk smbclient //127.0.0.1/twinfs -p ${port} -m SMB3 -U ${USER} -c 'put - stream.dat'`;
    const upload = spawn('/bin/sh', ['-c', pipeline], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    upload.stdout!.on('data', (d) => (out += d));
    upload.stderr!.on('data', (d) => (out += d));
    const uploaded = new Promise<number | null>((r) => upload.on('exit', (code) => r(code)));
    try {
      // The upload is under way once the file has grown on the mount.
      const mounted = path.join(fx.mnt, 'stream.dat');
      expect(
        await waitFor(
          async () => ((await fsp.stat(mounted).catch(() => null))?.size ?? 0) > 4 * CHUNK,
          10_000,
        ),
      ).toBe(true);
      await new Promise((r) => setTimeout(r, 1000));

      const t0 = performance.now();
      const p = await c.prepare({ paths: ['/stream.dat'] });
      const prepareMs = performance.now() - t0;
      expect(p.stallMs).toBeLessThan(MAX_STALL_MS);
      const item = p.items.find((i) => i.path === '/stream.dat');
      expect(item).toBeDefined();
      const copyPath = path.join(p.mirrorRoot, item!.mirrorPath);
      const copy = await fsp.readFile(copyPath);
      expect(copy.length).toBeGreaterThan(4 * CHUNK);
      expect(copy.length).toBe(item!.size);
      expect(checkStreamPrefix(copy)).toBeNull();
      // Frozen: the client goes on writing, the split copy does not move.
      await new Promise((r) => setTimeout(r, 700));
      expect((await fsp.readFile(copyPath)).equals(copy)).toBe(true);
      await c.release(p.backupId);

      expect(await uploaded, out).toBe(0);
      const w = JSON.parse(await fsp.readFile(stats, 'utf8')) as {
        bytes: number;
        maxBlockMs: number;
        slowBlocks: unknown[];
      };
      // The writer blocks while smbclient waits for smbd: an upper bound on what the freeze
      // cost the SMB client (the pipe and smbclient's buffers absorb part of any stall).
      expect(w.maxBlockMs, JSON.stringify(w.slowBlocks)).toBeLessThan(MAX_STALL_MS + SLACK_MS);
      expect(prepareMs).toBeLessThan(MAX_STALL_MS + SLACK_MS);
      expect(w.bytes).toBeGreaterThan(copy.length);

      // Everything the client sent is on the primary, and after release the mirror catches up.
      const primary = path.join(fx.primary, 'stream.dat');
      expect(
        await waitFor(
          async () => ((await fsp.stat(primary).catch(() => null))?.size ?? 0) === w.bytes,
          15_000,
        ),
      ).toBe(true);
      const whole = await fsp.readFile(primary);
      expect(checkStreamPrefix(whole)).toBeNull();
      const mirrored = path.join(fx.mirrorRoot, 'stream.dat');
      expect(
        await waitFor(
          async () => (await fsp.readFile(mirrored).catch(() => Buffer.alloc(0))).equals(whole),
          20_000,
          200,
        ),
      ).toBe(true);
    } finally {
      upload.kill('SIGKILL');
    }
  });
});
