import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

describe('twinfs serve (smoke)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt');
    srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt! });
  });
  afterAll(async () => {
    await srv?.kill();
    await t?.cleanup();
  });

  it('writes through the mount land on the primary after fsync', async () => {
    const f = path.join(t.dirs.mnt!, 'a.txt');
    const fh = await fsp.open(f, 'w');
    await fh.write('abc');
    await fh.sync();
    await fh.close();
    expect(await fsp.readFile(path.join(t.dirs.primary!, 'a.txt'), 'utf8')).toBe('abc');
    expect(await fsp.readFile(f, 'utf8')).toBe('abc');
  });

  it('stops cleanly on SIGTERM with exit 0', async () => {
    expect(await srv.stop()).toBe(0);
  });
});
