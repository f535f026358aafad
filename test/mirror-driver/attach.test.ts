import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { pairedVolume, run, twinfs, waitForEvent } from './mirror-helpers.js';

/** A populated primary, made directly (no server): many small files, big ones, links, metadata. */
async function populate(root: string): Promise<void> {
  // 20,000 small files: enough entries that the initial copy outlasts the operations below.
  const make = `const fs=require('fs');for(let d=1;d<=100;d++){fs.mkdirSync('tree/d'+d,{recursive:true});for(let f=1;f<=200;f++)fs.writeFileSync('tree/d'+d+'/f'+f,d+'/'+f+'\\n')}`;
  await run(
    `set -e; cd '${root}'; node -e "${make}"
     for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=big$i bs=1M count=24 status=none; done
     ln big1 big1-link; ln -s tree/d1/f1 sym; mkfifo fifo; chmod 600 big2; chown 12:34 big3
     setfattr -n user.tag -v hello big4; touch -m -d 2010-10-10 tree/d2/f2`,
    60_000,
  );
}

describe('attaching a mirror to a populated primary', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  const serve = (mirror: string) =>
    startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--mirror', mirror, '--state-dir', t.dirs.state!, '--writeback-ms', '100'],
    });
  const verify = () => twinfs(`verify --primary '${t.dirs.primary}' --mirror '${t.dirs.mirror}'`);
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'mirror2', 'state');
    await populate(t.dirs.primary!);
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('an empty mirror gets the initial copy (COPY, then PAIR) while the filesystem stays usable', async () => {
    srv = await serve(t.dirs.mirror!);
    await waitForEvent(srv, (e) => e.event === 'state' && e.state === 'COPY', 5000);
    // Reads, writes, renames and removals through the mount, during the copy.
    const t0 = Date.now();
    const mnt = t.dirs.mnt!;
    await run(
      `set -e; cd '${mnt}'; cat big6 tree/d40/f100 >/dev/null; ls tree >/dev/null;
       echo during >tree/d40/new; echo append >>tree/d39/f1; mv tree/d38 tree/d38-moved; rm -r tree/d37; mv tree/d99 tree/d99-moved; echo x >tree/d99-moved/f1;
       dd if=/dev/urandom of=big5 bs=64k count=4 seek=3 conv=notrunc,fsync status=none; rm big6`,
    );
    const opsMs = Date.now() - t0;
    const pairedDuringOps = srv.events.some(pairedVolume);
    await waitForEvent(srv, pairedVolume, 60_000);
    const copyMs = Date.now() - t0;
    const states = srv.events.filter((e) => e.event === 'state' && e.paths === 'volume').map((e) => e.state);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    expect(states).toEqual(['COPY', 'PAIR']);
    // The operations did not wait for the copy to finish (timings in the message if they did).
    expect({ pairedDuringOps, opsMs, copyMs }).toMatchObject({ pairedDuringOps: false });
    const r = await verify();
    expect(r.stdout).toMatch(/entries match/);
    expect(r.code).toBe(0);
    const [a, b] = await Promise.all(
      ['big1', 'big1-link'].map((f) => fsp.stat(path.join(t.dirs.mirror!, 'data', f))),
    );
    expect(a!.ino).toBe(b!.ino);
  });

  it('a stale mirror (the primary changed while no server ran) is brought up to date', async () => {
    const p = t.dirs.primary!;
    // Offline changes, some invisible to size and mtime: same-size content with the old mtime
    // restored, an xattr, an owner.
    await run(
      `set -e; cd '${p}'; echo more >>tree/d1/f1; rm -r tree/d2; mkdir tree/new; echo n >tree/new/n; mv big2 big2-renamed;
       chmod 640 tree/d3/f3; chown 5:6 tree/d3/f4; setfattr -n user.offline -v 1 tree/d3/f5;
       m=$(stat -c %y big3); dd if=/dev/urandom of=big3 bs=4k count=1 seek=100 conv=notrunc status=none; touch -m -d "$m" big3;
       ln -sfn tree/d4/f4 sym; rm big1-link`,
    );
    expect((await verify()).code).not.toBe(0);
    srv = await serve(t.dirs.mirror!);
    await waitForEvent(srv, pairedVolume, 60_000);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const r = await verify();
    expect(r.stdout).toMatch(/entries match/);
    expect(r.code).toBe(0);
  });

  it('a kill -9 during the initial copy: the next start completes it', async () => {
    const mirror2 = t.dirs.mirror2!;
    srv = await serve(mirror2);
    await waitForEvent(srv, (e) => e.event === 'state' && e.state === 'COPY', 5000);
    await new Promise((r) => setTimeout(r, 150));
    await srv.kill();
    srv = undefined;
    srv = await serve(mirror2);
    await waitForEvent(srv, pairedVolume, 60_000);
    expect(await srv.stop()).toBe(0);
    srv = undefined;
    const r = await twinfs(`verify --primary '${t.dirs.primary}' --mirror '${mirror2}'`);
    expect(r.stdout).toMatch(/entries match/);
    expect(r.code).toBe(0);
  });
});
