import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MirrorWriter } from '../../src/mirror-driver/mirror-writer.js';
import { unmountAll } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { tempDirs } from '../helpers/server.js';
import { fingerprint, type InProcess, mountInProcess, run } from './mirror-helpers.js';

/**
 * The mirror's create with its open in libuv's pool (MirrorWriter, ASYNC_CREATE_NS; taken where
 * the synchronous open is slow, every create here: TWINFS_MIRROR_POOL_CREATE_US=0). What the
 * synchronous create did must still hold: the changes after a create wait for it (each file is
 * written, renamed or unlinked at once after its create), a stale entry in the mirror under the
 * new name is unlinked, not truncated (another name of its file keeps its bytes), and the mode
 * the umask took from the mirror's open is set again.
 */
describe("the mirror's create in the pool", () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess | undefined;
  const before = process.env.TWINFS_MIRROR_POOL_CREATE_US;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'direct');
    process.env.TWINFS_MIRROR_POOL_CREATE_US = '0';
  });
  afterAll(async () => {
    if (before === undefined) delete process.env.TWINFS_MIRROR_POOL_CREATE_US;
    else process.env.TWINFS_MIRROR_POOL_CREATE_US = before;
    await m?.close().catch(() => undefined);
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('the mirror equals the primary after creates followed at once by writes, renames and unlinks', async () => {
    m = await mountInProcess({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    const M = m.driver.dataRoot;
    // Files whose mirror entries are then made stale: hard links, in the mirror only, of
    // "keep" under names the primary does not have (as a crash or a held rename leaves them).
    await run(`cd '${t.dirs.mnt}'; printf keep-bytes > keep`, 30_000);
    await m.settle();
    for (let i = 0; i < 8; i++) fs.linkSync(`${M}/keep`, `${M}/s${i}`);

    // Creates with mode 0666 under umask 0 (the server's umask takes bits from the mirror's
    // open), each followed at once by a write, and some by a rename or an unlink; the stale
    // names are created again with other bytes.
    const script = `
import os
os.umask(0)
for i in range(300):
    name = 's%d' % i if i < 8 else 'f%d' % i
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.write(fd, ('%d ' % i).encode() * (i % 50 + 1))
    os.close(fd)
    if i % 7 == 3: os.rename(name, 'r%d' % i)
    elif i % 11 == 5: os.unlink(name)
`;
    await run(`cd '${t.dirs.mnt}' && ${PYTHON} -c "${script}"`, 60_000);
    await m.settle();

    const writer = (m.driver as unknown as { c: { writer: MirrorWriter } }).c.writer;
    expect(writer.poolCreates).toBeGreaterThan(250);
    expect(fs.readFileSync(`${M}/keep`, 'utf8')).toBe('keep-bytes');
    expect(fs.statSync(`${M}/f100`).mode & 0o7777).toBe(0o666);
    expect(await fingerprint(M)).toEqual(await fingerprint(t.dirs.primary!));
    expect(m.driver.status().broken).toEqual([]);
    expect((await m.driver.verify()).differences).toEqual([]);
  }, 90_000);

  it("a create's turn ends only once its file exists and its descriptor is kept", async () => {
    // The queue runs the next change when apply's promise settles: nothing of the create may
    // still be in the pool then. (Directly on the writer: the mount's write-back comes 200 ms
    // after a create, long after any pool trip.)
    const root = t.dirs.direct!;
    const w = new MirrorWriter(root);
    try {
      for (let i = 0; i < 40; i++) {
        await w.apply({
          op: 'create',
          path: `/t${i}`,
          mode: 0o640,
          uid: process.getuid!(),
          gid: process.getgid!(),
        });
        expect(fs.statSync(`${root}/t${i}`).mode & 0o7777).toBe(0o640);
        expect(w.linkCount(`/t${i}`)).toBe(1);
      }
      expect(w.poolCreates).toBeGreaterThan(30);
    } finally {
      w.closeAll();
    }
  });
});
