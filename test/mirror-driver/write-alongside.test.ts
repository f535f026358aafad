import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountTmpfs, unmountAll, waitFor } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import {
  type InProcess,
  mountInProcess,
  openDriver,
  pairedVolume,
  run,
  sha,
  waitForEvent,
} from './mirror-helpers.js';

/**
 * Large writes with a mirror bypass the write-back cache: the primary's and the mirror's copy
 * are written at the same time (ChangeSink.applyAlongside). What must still hold: a write the
 * primary refuses leaves the mirror what the primary holds, and a kill -9 between the two
 * copies is repaired by the next start from the write intents alone.
 */
describe('large writes with a mirror: primary and mirror written at once', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess | undefined;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'primary2', 'mnt2', 'mirror2', 'state');
    await mountTmpfs(t.dirs.primary!, 'size=2m');
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await srv?.kill();
    await unmountAll(t.dirs.mnt!, t.dirs.mnt2!, t.dirs.primary!);
    await t?.cleanup();
  });

  it('a write the full primary refuses part of: the mirror holds what the primary holds', async () => {
    m = await mountInProcess({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    // 1 MiB requests into a 2 MiB primary: the mirror (on another filesystem) takes all of each
    // one while the primary runs out of space inside one.
    const out = await run(
      `cd '${t.dirs.mnt}'; dd if=/dev/urandom of=big bs=1M count=4 status=none 2>&1; echo "rc=$?"`,
    );
    expect(out).toMatch(/No space left on device/);
    expect(out).not.toMatch(/rc=0/);
    await m.settle();
    const onPrimary = (await fsp.stat(`${t.dirs.primary}/big`)).size;
    expect(onPrimary).toBeGreaterThan(0);
    expect(onPrimary).toBeLessThan(4 * 1024 * 1024);
    expect((await fsp.stat(`${m.driver.dataRoot}/big`)).size).toBe(onPrimary);
    expect(await sha(`${m.driver.dataRoot}/big`)).toBe(await sha(`${t.dirs.primary}/big`));
    expect(m.driver.status().broken).toEqual([]);
    expect((await m.driver.verify()).differences).toEqual([]);
    await m.close();
    m = undefined;
  });

  it('a kill -9 mid-stream: the next start repairs from the write intents alone, exactly', async () => {
    const P = t.dirs.primary2!;
    const mnt = t.dirs.mnt2!;
    const args = ['--mirror', t.dirs.mirror2!, '--state-dir', t.dirs.state!];
    srv = await startServer({ primary: P, mount: mnt, args });
    await waitForEvent(srv, pairedVolume, 20_000);
    // Random data (zeros would look equal in holes), 1 MiB requests, three streams at once; and
    // namespace churn, answered once queued, so the mirror's queue runs behind the primary and
    // the kill finds requests written to the primary whose mirror copy has not started.
    const streams = run(
      `cd '${mnt}'; mkdir ns; for i in 1 2 3; do dd if=/dev/urandom of=s$i bs=1M count=2000 status=none & done
       for i in $(seq 1 100000); do head -c $((i % 3000)) /dev/zero >ns/f$i && mv ns/f$i ns/g$((i % 30)) &&
         chmod 6$((i % 8))4 ns/g$((i % 30)) || break; done; wait`,
      120_000,
    ).catch(() => undefined);
    // Killed while the streams are writing: some of their requests are on one copy only.
    const size = async () => {
      let n = 0;
      for (const i of [1, 2, 3])
        n += await fsp.stat(path.join(P, `s${i}`)).then(
          (s) => s.size,
          () => 0,
        );
      return n;
    };
    expect(await waitFor(async () => (await size()) >= 48 * 1024 * 1024, 60_000)).toBe(true);
    srv.proc.kill('SIGKILL');
    await srv.exited;
    await srv.kill(); // clears the dead mount
    srv = undefined;
    await streams;
    // Without the start-up comparison of the whole tree, only the journal's intents say what
    // may differ.
    const d = await openDriver({
      primary: P,
      mirror: t.dirs.mirror2!,
      stateDir: t.dirs.state!,
      reconcileOnStart: false,
    });
    try {
      expect(d.status().state).toBe('PAIR');
      const v = await d.verify();
      expect(v.differences).toEqual([]);
      expect(v.checked).toBeGreaterThanOrEqual(3);
      // (Without the recovery of the intents this fails: the mirror lacks what was queued.)
    } finally {
      await d.dispose();
    }
  });
});
