import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll, waitFor } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { tempDirs } from '../helpers/server.js';
import { fingerprint, type InProcess, mountInProcess, run } from './mirror-helpers.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

/**
 * The mirror starts the write-back of every large write as it writes it (MirrorWriter,
 * EARLY_WRITEBACK_BYTES; started per 8 MiB of a file, WRITEBACK_BATCH_BYTES), outside the
 * change's turn, one at a time (the others wait, merged per file), and closes a descriptor only
 * once its running write-back settled. Attacked here: several processes write large
 * requests into, truncate, rename away and back, unlink and re-create the same few files (so
 * descriptors are closed while their write-back runs, and their numbers reused), with fsyncs
 * among them, while volume splits come and go and are resynced. Afterwards the mirror must
 * equal the primary (content, sizes, times: verify), and no descriptor may be left open.
 */
describe('early write-back of the mirror under concurrent large writes, truncates and splits', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess | undefined;
  let mnt: string;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    mnt = t.dirs.mnt!;
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    await unmountAll(mnt);
    await t?.cleanup();
  });

  it('the mirror equals the primary and every descriptor is closed', async () => {
    const before = openFds();
    m = await mountInProcess({
      primary: t.dirs.primary!,
      mount: mnt,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    const M = m.driver.dataRoot;
    // Four writers over the same four files of up to 16 MiB: 1 MiB requests (large: written
    // beside the primary, and written back early on the mirror once 8 MiB of a file wait), each followed at once by another change of the
    // file: a rename away and back or an unlink (the mirror closes the descriptor of both names
    // while its write-back may still run, and the number is reused by the next open), a
    // truncate to an odd size, an fsync, a re-creation.
    const writer = (seed: number) => `
import os, random
r = random.Random(${seed})
bufs = [os.urandom(1 << 20) for _ in range(4)]
for i in range(300):
    f = 'f%d' % r.randrange(4)
    try:
        fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for k in range(r.randrange(1, 4)):
                os.pwrite(fd, bufs[r.randrange(4)], r.randrange(16) << 20)
            op = r.randrange(6)
            if op == 0: os.ftruncate(fd, r.randrange(1 << 24))
            elif op == 1: os.fsync(fd)
        finally:
            os.close(fd)
        op = r.randrange(4)
        if op == 0:
            os.rename(f, 'g${seed}'); os.rename('g${seed}', f)
        elif op == 1: os.unlink(f)
    except FileNotFoundError:
        pass
`;
    const work = run(
      `cd '${mnt}'; ${[1, 2, 3, 4].map((s) => `${PYTHON} -c "${writer(s)}" &`).join('\n')} wait`,
      240_000,
    );
    let done = false;
    void work.finally(() => {
      done = true;
    });
    // Volume splits while they run: each freezes the mirror mid-stream, the writes to it are
    // tracked, and its resync copies them from the primary.
    let splits = 0;
    while (!done) {
      const s = await m.driver.split({ volume: true });
      await new Promise((r) => setTimeout(r, 150));
      await m.driver.resync(s.splitId);
      splits++;
      await new Promise((r) => setTimeout(r, 100));
    }
    await work;
    expect(splits).toBeGreaterThan(0);
    await m.settle();

    expect(m.driver.status().broken).toEqual([]);
    const v = await m.driver.verify({ content: true });
    expect(v.differences).toEqual([]);
    expect(await fingerprint(M)).toEqual(await fingerprint(t.dirs.primary!));

    // Every descriptor the writer opened is closed, also those closed while written back.
    await m.close();
    m = undefined;
    expect(await waitFor(async () => openFds() <= before, 10_000)).toBe(true);
  }, 300_000);
});
