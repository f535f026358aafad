import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountTmpfs, unmountAll, waitFor } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import {
  type InProcess,
  mountInProcess,
  pairedVolume,
  run,
  sha,
  twinfs,
  waitForEvent,
} from './mirror-helpers.js';

/** Writes more than the 2 MiB mirror holds, through the mount, with fsync; must all succeed. */
const FILL = (mnt: string) =>
  `set -e; cd '${mnt}'; dd if=/dev/urandom of=a bs=1M count=1 conv=fsync status=none;
   dd if=/dev/urandom of=b bs=1M count=3 conv=fsync status=none; mkdir d;
   dd if=/dev/urandom of=d/c bs=1M count=2 conv=fsync status=none; echo small >small; sync`;

describe('ENOSPC on the mirror: pairs go BROKEN, the application sees nothing, repair heals', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  const tmpfs: string[] = [];
  let m: InProcess | undefined;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs(
      'primary',
      'mnt',
      'mirror',
      'primary2',
      'mnt2',
      'mirror2',
      'primary3',
      'mnt3',
      'mirror3',
      'state',
    );
    for (const d of ['mirror', 'mirror2', 'mirror3']) {
      await mountTmpfs(t.dirs[d]!, 'size=2m');
      tmpfs.push(t.dirs[d]!);
    }
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await srv?.kill();
    await unmountAll(t.dirs.mnt!, t.dirs.mnt2!, t.dirs.mnt3!, ...tmpfs);
    await t?.cleanup();
  });

  it('in-process: writes and fsync succeed, status shows broken pairs, repair() after space returns makes verify clean', async () => {
    m = await mountInProcess({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    const broken: string[] = [];
    m.driver.onDidBreak((e) => broken.push(`${e.path} ${e.error}`));
    await run(FILL(t.dirs.mnt!));
    await m.settle();
    const st = m.driver.status();
    expect(st.state).toBe('DEGRADED');
    expect(st.broken.length).toBeGreaterThan(0);
    expect(broken.join('\n')).toMatch(/ENOSPC/);
    const victim = st.broken[0]!;
    expect(m.driver.stateOf(victim)).toBe('BROKEN');
    // A frozen copy of a broken pair would not be what the primary holds.
    await expect(m.driver.split({ paths: [victim] })).rejects.toMatchObject({ code: 'ETWIN_MIRROR_BROKEN' });
    await expect(m.driver.split({ volume: true })).rejects.toMatchObject({ code: 'ETWIN_MIRROR_BROKEN' });
    // The primary keeps serving: more writes, a rename of a broken file and of its directory.
    await run(`set -e; cd '${t.dirs.mnt}'; echo more >>b; mv b b2; mv d d2; echo x >>d2/c; sync`);
    await m.settle();
    expect((await m.driver.verify()).ok).toBe(true); // broken pairs are not compared

    await run(`mount -o remount,size=64m '${t.dirs.mirror}'`);
    const r = await m.driver.repair();
    expect(r.remaining).toEqual([]);
    expect(m.driver.status().state).toBe('PAIR');
    expect(m.driver.status().broken).toEqual([]);
    const v = await m.driver.verify();
    expect(v.differences).toEqual([]);
    expect(v.checked).toBeGreaterThanOrEqual(5);
    expect(await sha(`${m.driver.dataRoot}/b2`)).toBe(await sha(`${t.dirs.primary}/b2`));
    await m.close();
    m = undefined;
  });

  it('in-process: the automatic retry repairs once space returns', async () => {
    m = await mountInProcess({
      primary: t.dirs.primary3!,
      mount: t.dirs.mnt3!,
      mirror: t.dirs.mirror3!,
      stateDir: t.dirs.state!,
      driver: { retryBrokenMs: 200 },
    });
    await run(FILL(t.dirs.mnt3!));
    await m.settle();
    expect(m.driver.status().broken.length).toBeGreaterThan(0);
    await run(`mount -o remount,size=64m '${t.dirs.mirror3}'`);
    const driver = m.driver;
    expect(await waitFor(() => driver.status().broken.length === 0, 10_000)).toBe(true);
    expect((await m.driver.verify()).differences).toEqual([]);
    await m.close();
    m = undefined;
  });

  it('server: prints a "broken" event, keeps serving, records the broken pairs, repairs them at the next start', async () => {
    const args = ['--mirror', t.dirs.mirror2!, '--state-dir', t.dirs.state!, '--writeback-ms', '100'];
    srv = await startServer({ primary: t.dirs.primary2!, mount: t.dirs.mnt2!, args });
    await waitForEvent(srv, pairedVolume, 20_000);
    await run(FILL(t.dirs.mnt2!));
    const ev = await waitForEvent(srv, (e) => e.event === 'broken', 10_000);
    expect(String(ev.error)).toMatch(/ENOSPC/);
    // Reads and writes go on.
    await run(`set -e; cd '${t.dirs.mnt2}'; cat b >/dev/null; echo after >after; sync`);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    expect(
      (await twinfs(`verify --primary '${t.dirs.primary2}' --mirror '${t.dirs.mirror2}'`)).code,
    ).not.toBe(0);

    await run(`mount -o remount,size=64m '${t.dirs.mirror2}'`);
    srv = await startServer({ primary: t.dirs.primary2!, mount: t.dirs.mnt2!, args });
    await waitForEvent(srv, pairedVolume, 20_000);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const r = await twinfs(`verify --primary '${t.dirs.primary2}' --mirror '${t.dirs.mirror2}'`);
    expect(r.stdout).toMatch(/entries match/);
    expect(r.code).toBe(0);
  });
});
