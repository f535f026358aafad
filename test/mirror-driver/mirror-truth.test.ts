import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountTmpfs, unmountAll } from '../helpers/mounts.js';
import { sh } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, run, twinfs, waitForEvent } from './mirror-helpers.js';

/**
 * Status tells the truth about the mirror (issue 11, rows 11 and 12): a repair that leaves
 * pairs BROKEN fails, and a mirror whose filesystem disappeared is BROKEN, with the reason.
 * Real server processes, the mirror on real tmpfs mounts, the CLI over the control channel.
 */
describe('mirror status: failed repairs and vanished mirrors', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  const tmpfs: string[] = [];
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'primary2', 'mnt2', 'mirror2', 'state');
    for (const [d, size] of [
      ['mirror', '2m'],
      ['mirror2', '64m'],
    ] as const) {
      await mountTmpfs(t.dirs[d]!, `size=${size}`);
      tmpfs.push(t.dirs[d]!);
    }
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!, t.dirs.mnt2!, ...tmpfs);
    await t?.cleanup();
  });

  async function start(primary: string, mnt: string, mirror: string) {
    const s = await startServer({
      primary,
      mount: mnt,
      args: [
        '--mirror',
        mirror,
        '--state-dir',
        t.dirs.state!,
        '--control',
        '127.0.0.1:0',
        '--writeback-ms',
        '100',
      ],
    });
    await waitForEvent(s, pairedVolume, 20_000);
    const url = (s.events.find((e) => e.event === 'mounted') as any).control.url as string;
    return { s, conn: `--server '${url}' --token-file '${path.join(t.dirs.state!, 'control.token')}'` };
  }

  it('mirror repair exits non-zero with ETWIN_MIRROR_BROKEN while the mirror disk is still full, 0 once it healed', async () => {
    const { s, conn } = await start(t.dirs.primary!, t.dirs.mnt!, t.dirs.mirror!);
    srv = s;
    // More than the 2 MiB mirror holds, fsync-acknowledged: the application sees no error.
    await run(
      `set -e; cd '${t.dirs.mnt}'; dd if=/dev/urandom of=big bs=1M count=3 conv=fsync status=none; sync`,
    );
    await waitForEvent(s, (e) => e.event === 'broken', 10_000);
    const still = await twinfs(`mirror repair ${conn}`);
    expect(still.code, still.stderr + still.stdout).toBe(1);
    expect(still.stderr).toMatch(
      /^twinfs: error ETWIN_MIRROR_BROKEN: repair: .*still BROKEN: \/big \(ENOSPC/m,
    );
    expect(still.stderr).not.toMatch(/\n\s+at /);

    await sh(`mount -o remount,size=64m '${t.dirs.mirror}'`);
    const healed = await twinfs(`mirror repair ${conn}`);
    expect(healed.code, healed.stderr).toBe(0);
    expect(healed.stdout).toMatch(/all pairs in sync/);
    expect(await s.stop()).toBe(0);
    srv = undefined;
  });

  it('a mirror whose filesystem is unmounted under the server is BROKEN with the reason; repair refuses to copy into what is left', async () => {
    const { s, conn } = await start(t.dirs.primary2!, t.dirs.mnt2!, t.dirs.mirror2!);
    srv = s;
    await run(`set -e; cd '${t.dirs.mnt2}'; mkdir d; echo one >d/one; echo two >two; sync`);
    const before = await twinfs(`pairs ${conn}`);
    expect(before.stdout).toMatch(/^volume: PAIR$/m);

    // Both files written back to the mirror first: a write-back that runs after the unmount
    // breaks its own pair (ENOENT under the gone directory) before the check of the root.
    const onMirror = (rel: string) =>
      fsp.readFile(path.join(t.dirs.mirror2!, 'data', rel), 'utf8').catch(() => '');
    for (const deadline = Date.now() + 20_000; ; ) {
      if ((await onMirror('d/one')) === 'one\n' && (await onMirror('two')) === 'two\n') break;
      if (Date.now() > deadline) throw new Error('the files never reached the mirror');
      await new Promise((r) => setTimeout(r, 50));
    }
    // The mirror's filesystem goes away (a lazy unmount: the directory stays, empty).
    await sh(`umount -l '${t.dirs.mirror2}'`);
    const broken = await waitForEvent(s, (e) => e.event === 'broken', 10_000);
    expect(broken).toMatchObject({ path: '/', error: expect.stringMatching(/^ENODEV: .*vanished/) });
    const pairs = await twinfs(`pairs /d/one ${conn}`);
    expect(pairs.stdout).toMatch(/^\/d\/one: BROKEN$/m);
    expect(pairs.stdout).toMatch(/^ {2}broken \/: ENODEV: the mirror's filesystem vanished/m);
    const st = await twinfs(`status --json ${conn}`);
    const status = JSON.parse(st.stdout.trim().split('\n').pop()!);
    expect(status.mirror.state).toBe('DEGRADED');
    expect(status.mirror.broken).toContain('/');
    expect(status.mirror.brokenReasons['/']).toMatch(/vanished/);

    // The primary keeps serving.
    await run(`set -e; cd '${t.dirs.mnt2}'; echo three >three; cat d/one; sync`);
    // A repair cannot heal it, and never copies onto the disk under the old mount point.
    const rep = await twinfs(`mirror repair ${conn}`);
    expect(rep.code).toBe(1);
    expect(rep.stderr).toMatch(
      /ETWIN_MIRROR_BROKEN: .*still BROKEN: \/ \(ENODEV: the mirror's filesystem vanished/,
    );
    expect(await fsp.readdir(t.dirs.mirror2!)).toEqual([]);

    expect(await s.stop()).toBe(0);
    srv = undefined;
  });
});

/**
 * Found by the full-mirror chaos scenario: a rename onto a pair broken by a full mirror was not
 * applied to the mirror, so the old name stayed there after the repair (verify: extra in mirror).
 */
describe('a rename onto a broken pair', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    await mountTmpfs(t.dirs.mirror!, 'size=2m');
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!, t.dirs.mirror!);
    await t?.cleanup();
  });

  it('the old name leaves the mirror with the repair: verify is clean', async () => {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: [
        '--mirror',
        t.dirs.mirror!,
        '--state-dir',
        t.dirs.state!,
        '--control',
        '127.0.0.1:0',
        '--writeback-ms',
        '100',
      ],
    });
    await waitForEvent(srv, pairedVolume, 20_000);
    const url = (srv.events.find((e) => e.event === 'mounted') as any).control.url as string;
    const conn = `--server '${url}' --token-file '${path.join(t.dirs.state!, 'control.token')}'`;
    // a is mirrored; b (3 MiB) does not fit in the 2 MiB mirror: its pair breaks.
    await run(
      `set -e; cd '${t.dirs.mnt}'; echo small >a; sync a; dd if=/dev/urandom of=b bs=1M count=3 conv=fsync status=none`,
    );
    await waitForEvent(srv, (e) => e.event === 'broken' && e.path === '/b', 10_000);
    expect(await fsp.readFile(path.join(t.dirs.mirror!, 'data/a'), 'utf8')).toBe('small\n');
    await run(`set -e; cd '${t.dirs.mnt}'; mv a b; sync`);
    await sh(`mount -o remount,size=64m '${t.dirs.mirror}'`);
    const healed = await twinfs(`mirror repair ${conn}`);
    expect(healed.code, healed.stderr).toBe(0);
    const v = await twinfs(`verify ${conn}`);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    await expect(fsp.access(path.join(t.dirs.mirror!, 'data/a'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fsp.readFile(path.join(t.dirs.mirror!, 'data/b'), 'utf8')).toBe('small\n');
    expect(await srv.stop()).toBe(0);
    srv = undefined;
  });
});
