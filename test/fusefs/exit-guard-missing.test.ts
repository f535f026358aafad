import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shOk } from '../helpers/proc.js';
import { startServer, tempDirs } from '../helpers/server.js';

/**
 * Without fusectl (/sys/fs/fuse/connections not mounted, as in some containers) a server has no
 * exit guard (exit-guard.ts), and a server stuck on its own mount could then never end: it says
 * so when it mounts. The absence is stood in for by pointing TWINFS_FUSE_CONNECTIONS_DIR at an
 * empty directory: unmounting the real fusectl would take the guard from every other test
 * running beside this one.
 */
describe('a server without fusectl', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mnt2', 'conns');
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('says at mount that it has no exit guard, and serves', async () => {
    const srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      env: { ...process.env, TWINFS_FUSE_CONNECTIONS_DIR: t.dirs.conns! },
    });
    try {
      expect(srv.stderr()).toMatch(
        new RegExp(
          `no exit guard for ${t.dirs.mnt}: ${t.dirs.conns}/\\d+ does not exist \\(fusectl is not mounted`,
        ),
      );
      // It serves as any other (the mount touched from a child process, never from here).
      await fsp.writeFile(path.join(t.dirs.primary!, 'f'), 'served');
      expect(await shOk(`cat '${t.dirs.mnt}/f'`)).toBe('served');
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });

  it('with its connection directory there (fusectl mounted), says nothing of the kind', async () => {
    const srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt2! });
    try {
      expect(srv.stderr()).not.toMatch(/no exit guard/);
    } finally {
      expect(await srv.stop()).toBe(0);
    }
  });
});
