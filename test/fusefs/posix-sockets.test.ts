import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/mounts.js';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';
import { tempDirs } from '../helpers/server.js';

/**
 * UNIX sockets in the mount (issue 10): an application that binds a socket in its data
 * directory works on twinfs as on the backing filesystem (bind(2) asks the filesystem for a
 * socket node: FUSE MKNOD with S_IFSOCK), mknod(S_IFSOCK) works, and the mirror carries them
 * as nodes of the same mode and owner.
 */
describe('UNIX sockets in the mount', () => {
  let fx: PosixFixture;
  let t: Awaited<ReturnType<typeof tempDirs>>;
  beforeAll(async () => {
    t = await tempDirs('mirror', 'state');
    fx = await mountFixture(['--mirror', t.dirs.mirror!, '--state-dir', t.dirs.state!]);
  });
  afterAll(async () => {
    await fx?.close();
    await t?.cleanup();
  });

  it('bind, listen, connect and talk through a socket bound in the mount', async () => {
    const out = await pyIn(
      fx.mnt,
      `import socket, os
os.mkdir('app')
s = socket.socket(socket.AF_UNIX); s.bind('app/server.sock'); s.listen(1)
c = socket.socket(socket.AF_UNIX); c.connect('app/server.sock')
a, _ = s.accept(); c.sendall(b'ping'); print(a.recv(4).decode())`,
      { timeoutMs: 20_000 },
    );
    expect(out.trim().split(' ')[0]).toBe('ping');
    const st = await fsp.lstat(path.join(fx.primary, 'app/server.sock'));
    expect(st.isSocket()).toBe(true);
  });

  it('mknod(S_IFSOCK) makes a socket node with the mode asked for', async () => {
    await pyIn(
      fx.mnt,
      `import os, stat\nos.mknod('made.sock', stat.S_IFSOCK | 0o640)\nos.chown('made.sock', 1234, 4321)`,
    );
    const st = await fsp.lstat(path.join(fx.primary, 'made.sock'));
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o7777).toBe(0o640);
  });

  it('the mirror holds both sockets as nodes with the same mode and owner', async () => {
    for (const name of ['app/server.sock', 'made.sock']) {
      const p = await fsp.lstat(path.join(fx.primary, name));
      const mirrored = () => fsp.lstat(path.join(t.dirs.mirror!, 'data', name)).catch(() => undefined);
      expect(await waitFor(async () => (await mirrored())?.uid === p.uid, 10_000)).toBe(true);
      const m = (await mirrored())!;
      expect(m.isSocket()).toBe(true);
      expect([m.mode, m.uid, m.gid]).toEqual([p.mode, p.uid, p.gid]);
    }
  });
});
