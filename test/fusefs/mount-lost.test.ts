import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMounted, runSteps, unmountAll } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { sha, twinfs } from '../mirror-driver/mirror-helpers.js';
import { bytes } from './fixtures/bytes.mjs';

/**
 * Issue 11, row 13: the volume unmounted behind the server's back (`twinfs unmount M` while it
 * runs). The server notices, writes its cached data back, and stops with a coded reason and a
 * non-zero status (a supervisor sees it and may start it again).
 */
describe('the server notices its mount vanished', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'state');
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('twinfs unmount while serving: the server writes back, stops with ETWIN_MOUNT_LOST, exit 1', async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--state-dir', t.dirs.state!, '--writeback-ms', '600000'],
    });
    // Acknowledged by close(), still only in the cache.
    const w = await runSteps([
      { op: 'open', path: path.join(t.dirs.mnt!, 'f'), flags: 'w' },
      { op: 'write', off: 0, len: 1 << 20, seed: 7, chunk: 4096 },
      { op: 'close' },
    ]);
    expect(w.every((r) => r.ok)).toBe(true);

    const u = await twinfs(`unmount '${t.dirs.mnt}'`);
    expect(u.code, u.stderr).toBe(0);
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
      srv.exited,
      new Promise<'running'>((r) => {
        timer = setTimeout(() => r('running'), 20_000);
      }),
    ]);
    clearTimeout(timer);
    expect(code, srv.stderr()).toBe(1);
    expect(srv.stderr()).toMatch(
      /^twinfs: error ETWIN_MOUNT_LOST: .* was unmounted while the server was serving it .*cached data was written back/m,
    );
    expect(srv.stderr()).not.toMatch(/ETWIN_UNMOUNT_FAILED/);
    expect(srv.events.map((e) => e.event)).toEqual(
      expect.arrayContaining(['stopping', 'unmounted', 'error']),
    );
    srv = undefined;
    expect(await isMounted(t.dirs.mnt!)).toBe(false);
    expect(await sha(path.join(t.dirs.primary!, 'f'))).toBe(
      createHash('sha256')
        .update(bytes(1 << 20, 7))
        .digest('hex'),
    );
  });
});
