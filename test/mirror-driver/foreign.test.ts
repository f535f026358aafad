import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMounted, unmountAll } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, run, twinfs, waitForEvent } from './mirror-helpers.js';

describe('a mirror belongs to one primary', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  const serve = (primary: string, mirror: string, extra: string[] = []) =>
    startServer({
      primary,
      mount: t.dirs.mnt!,
      args: ['--mirror', mirror, '--state-dir', t.dirs.state!, ...extra],
    });
  beforeAll(async () => {
    t = await tempDirs('p1', 'p2', 'mnt', 'mirror', 'state', 'junk');
    await run(
      `set -e; echo one >'${t.dirs.p1}/one'; echo two >'${t.dirs.p2}/two'; echo mine >'${t.dirs.junk}/precious'`,
    );
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('is refused (ETWIN_MIRROR_FOREIGN, non-zero exit, nothing mounted) when another primary starts with it', async () => {
    srv = await serve(t.dirs.p1!, t.dirs.mirror!);
    await waitForEvent(srv, pairedVolume, 20_000);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const device = await fsp.readFile(path.join(t.dirs.mirror!, 'device.json'), 'utf8');

    const err = await serve(t.dirs.p2!, t.dirs.mirror!).then(
      (s) => {
        srv = s;
        return null;
      },
      (e: Error) => e,
    );
    expect(err).not.toBeNull();
    expect(err!.message).toMatch(/exited \(1\) before mounting/);
    expect(err!.message).toMatch(/ETWIN_MIRROR_FOREIGN/);
    expect(err!.message).toContain(t.dirs.p1!);
    expect(await isMounted(t.dirs.mnt!)).toBe(false);
    // Untouched: the record and p1's copy.
    expect(await fsp.readFile(path.join(t.dirs.mirror!, 'device.json'), 'utf8')).toBe(device);
    expect(await fsp.readdir(path.join(t.dirs.mirror!, 'data'))).toEqual(['one']);
  });

  it('is refused when it is a non-empty directory that is not a twinfs mirror, and left as it was', async () => {
    const err = await serve(t.dirs.p1!, t.dirs.junk!).then(
      (s) => {
        srv = s;
        return null;
      },
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/ETWIN_MIRROR_FOREIGN/);
    expect(err?.message).toMatch(/not a twinfs mirror/);
    expect(await isMounted(t.dirs.mnt!)).toBe(false);
    expect(await fsp.readdir(t.dirs.junk!)).toEqual(['precious']);
    const v = await twinfs(`verify --primary '${t.dirs.p1}' --mirror '${t.dirs.junk}'`);
    expect(v.code).not.toBe(0);
    expect(v.stderr).toMatch(/ETWIN_MIRROR_FOREIGN/);
  });

  it('can be taken over on purpose (--adopt-mirror): it then holds the new primary', async () => {
    srv = await serve(t.dirs.p2!, t.dirs.mirror!, ['--adopt-mirror']);
    await waitForEvent(srv, pairedVolume, 20_000);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const r = await twinfs(`verify --primary '${t.dirs.p2}' --mirror '${t.dirs.mirror}'`);
    expect(r.code).toBe(0);
    expect(await fsp.readdir(path.join(t.dirs.mirror!, 'data'))).toEqual(['two']);
    // And now p1 is the stranger.
    await expect(serve(t.dirs.p1!, t.dirs.mirror!)).rejects.toThrow(/ETWIN_MIRROR_FOREIGN/);
  });
});
