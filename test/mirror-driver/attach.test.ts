import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, run, twinfs, waitForEvent } from './mirror-helpers.js';

/**
 * Bounds of the slow steps, each failing with what it waited for: serving until mounted, an
 * initial copy or start-up comparison, an offline `twinfs verify` of the trees (contents
 * included). Generous: on a loaded 2-core machine the copy of the large tree took over 60 s.
 */
const MOUNT_MS = 60_000;
const COPY_MS = 120_000;
const VERIFY_MS = 120_000;
/** A test's bound: above the sum of its steps' bounds. */
const TEST_MS = MOUNT_MS * 2 + COPY_MS + VERIFY_MS * 2;

/**
 * A populated primary, made directly (no server): dirs×200 small files, six 12 MiB ones (over
 * the size the copy takes in chunks), a hard link, a symlink, a FIFO, modes, an owner, an
 * xattr and an old mtime.
 */
async function populate(root: string, dirs: number): Promise<void> {
  const make = `const fs=require('fs');for(let d=1;d<=${dirs};d++){fs.mkdirSync('tree/d'+d,{recursive:true});for(let f=1;f<=200;f++)fs.writeFileSync('tree/d'+d+'/f'+f,d+'/'+f+'\\n')}`;
  await run(
    `set -e; cd '${root}'; node -e "${make}"
     for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=big$i bs=1M count=12 status=none; done
     ln big1 big1-link; ln -s tree/d1/f1 sym; mkfifo fifo; chmod 600 big2; chown 12:34 big3
     setfattr -n user.tag -v hello big4; touch -m -d 2010-10-10 tree/d2/f2`,
    COPY_MS,
  );
}

/** Temporary directories with a populated primary, and `twinfs serve` with a mirror on them. */
function attachFixture(dirs: number) {
  const f = {} as { t: Awaited<ReturnType<typeof tempDirs>>; srv: ServerHandle | undefined };
  beforeAll(async () => {
    f.t = await tempDirs('primary', 'mnt', 'mirror', 'mirror2', 'state');
    await populate(f.t.dirs.primary!, dirs);
  }, TEST_MS);
  afterAll(async () => {
    await f.srv?.kill();
    await unmountAll(f.t.dirs.mnt!);
    await f.t?.cleanup();
  });
  const serve = (mirror: string) =>
    startServer({
      primary: f.t.dirs.primary!,
      mount: f.t.dirs.mnt!,
      args: ['--mirror', mirror, '--state-dir', f.t.dirs.state!, '--writeback-ms', '100'],
      timeoutMs: MOUNT_MS,
    });
  const verify = (mirror = f.t.dirs.mirror!) =>
    twinfs(`verify --primary '${f.t.dirs.primary}' --mirror '${mirror}'`, VERIFY_MS);
  /** Serves mirror until its start-up work is done, then stops the server (which must exit 0). */
  const serveUntilPaired = async (mirror: string) => {
    f.srv = await serve(mirror);
    await waitForEvent(f.srv, pairedVolume, COPY_MS);
    expect(await f.srv.stop()).toBe(0);
    f.srv = undefined;
  };
  return { f, serve, verify, serveUntilPaired };
}

/**
 * The initial copy runs in the background while the filesystem is in use, and a start killed
 * in the middle of it completes it on the next start. 20,000 small files: enough entries that
 * the copy outlasts the operations below and the kill.
 */
describe('attaching a mirror to a populated primary', () => {
  const { f, serve, verify, serveUntilPaired } = attachFixture(100);

  it(
    'an empty mirror gets the initial copy (COPY, then PAIR) while the filesystem stays usable',
    async () => {
      const srv = (f.srv = await serve(f.t.dirs.mirror!));
      await waitForEvent(srv, (e) => e.event === 'state' && e.state === 'COPY', 5000);
      // Reads, writes, renames and removals through the mount, during the copy.
      const t0 = Date.now();
      const mnt = f.t.dirs.mnt!;
      await run(
        `set -e; cd '${mnt}'; cat big6 tree/d40/f100 >/dev/null; ls tree >/dev/null;
       echo during >tree/d40/new; echo append >>tree/d39/f1; mv tree/d38 tree/d38-moved; rm -r tree/d37; mv tree/d99 tree/d99-moved; echo x >tree/d99-moved/f1;
       dd if=/dev/urandom of=big5 bs=64k count=4 seek=3 conv=notrunc,fsync status=none; rm big6`,
      );
      const opsMs = Date.now() - t0;
      const pairedDuringOps = srv.events.some(pairedVolume);
      await waitForEvent(srv, pairedVolume, COPY_MS);
      const copyMs = Date.now() - t0;
      const states = srv.events
        .filter((e) => e.event === 'state' && e.paths === 'volume')
        .map((e) => e.state);
      expect(await srv.stop()).toBe(0);
      f.srv = undefined;
      expect(states).toEqual(['COPY', 'PAIR']);
      // The operations did not wait for the copy to finish (timings in the message if they did).
      expect({ pairedDuringOps, opsMs, copyMs }).toMatchObject({ pairedDuringOps: false });
      const r = await verify();
      expect(r.stdout).toMatch(/entries match/);
      expect(r.code).toBe(0);
      const [a, b] = await Promise.all(
        ['big1', 'big1-link'].map((n) => fsp.stat(path.join(f.t.dirs.mirror!, 'data', n))),
      );
      expect(a!.ino).toBe(b!.ino);
    },
    TEST_MS,
  );

  it(
    'a kill -9 during the initial copy: the next start completes it',
    async () => {
      const mirror2 = f.t.dirs.mirror2!;
      f.srv = await serve(mirror2);
      await waitForEvent(f.srv, (e) => e.event === 'state' && e.state === 'COPY', 5000);
      await new Promise((r) => setTimeout(r, 150));
      // Killed in the middle of the copy (else this would test a clean restart).
      expect(f.srv.events.some(pairedVolume)).toBe(false);
      await f.srv.kill();
      f.srv = undefined;
      await serveUntilPaired(mirror2);
      const r = await verify(mirror2);
      expect(r.stdout).toMatch(/entries match/);
      expect(r.code).toBe(0);
    },
    TEST_MS,
  );
});

/**
 * A mirror that the primary moved away from while no server ran is brought up to date by the
 * start-up comparison. What it compares does not depend on the number of entries: a small
 * tree (2,000 files) keeps its copies and verifies short.
 */
describe('starting on a stale mirror', () => {
  const { f, verify, serveUntilPaired } = attachFixture(10);

  it(
    'a stale mirror (the primary changed while no server ran) is brought up to date',
    async () => {
      await serveUntilPaired(f.t.dirs.mirror!);
      const p = f.t.dirs.primary!;
      // Offline changes, some invisible to size and mtime: same-size content with the old mtime
      // restored, an xattr, an owner.
      await run(
        `set -e; cd '${p}'; echo more >>tree/d1/f1; rm -r tree/d2; mkdir tree/new; echo n >tree/new/n; mv big2 big2-renamed;
       chmod 640 tree/d3/f3; chown 5:6 tree/d3/f4; setfattr -n user.offline -v 1 tree/d3/f5;
       m=$(stat -c %y big3); dd if=/dev/urandom of=big3 bs=4k count=1 seek=100 conv=notrunc status=none; touch -m -d "$m" big3;
       ln -sfn tree/d4/f4 sym; rm big1-link`,
      );
      expect((await verify()).code).not.toBe(0);
      await serveUntilPaired(f.t.dirs.mirror!);
      const r = await verify();
      expect(r.stdout).toMatch(/entries match/);
      expect(r.code).toBe(0);
    },
    TEST_MS,
  );
});
