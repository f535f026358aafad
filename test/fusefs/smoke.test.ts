import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_LIBFUSE, libfuse3Usable, libfuseFromEnv } from '../../src/fusefs/native-options.js';
import { mountFixture, type PosixFixture } from '../helpers/posix.js';
import { tempDirs } from '../helpers/server.js';

describe('twinfs serve (smoke)', () => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('writes through the mount land on the primary after fsync', async () => {
    const f = path.join(fx.mnt, 'a.txt');
    const fh = await fsp.open(f, 'w');
    await fh.write('abc');
    await fh.sync();
    await fh.close();
    expect(await fsp.readFile(path.join(fx.primary, 'a.txt'), 'utf8')).toBe('abc');
    expect(await fsp.readFile(f, 'utf8')).toBe('abc');
  });

  it('is served by the libfuse TWINFS_FUSE names, else the default (the server maps that libfuse)', async () => {
    // fuse-native always loads its libfuse2 binding; the libfuse3 one only when a mount uses it.
    const maps = await fsp.readFile(`/proc/${fx.srv.proc.pid}/maps`, 'utf8');
    expect(maps.includes('libfuse3.so.3')).toBe(libfuseFromEnv() === 3);
  });

  it('stops cleanly on SIGTERM with exit 0', async () => {
    expect(await fx.srv.stop()).toBe(0);
  });
});

describe('choosing the libfuse (native-options.ts)', () => {
  it('TWINFS_FUSE=2 or 3 wins; unset is the default, or libfuse2 when the libfuse3 build is missing', () => {
    expect(libfuseFromEnv({ TWINFS_FUSE: '2' }, () => true)).toBe(2);
    expect(libfuseFromEnv({ TWINFS_FUSE: '3' }, () => false)).toBe(3);
    expect(libfuseFromEnv({}, () => true)).toBe(DEFAULT_LIBFUSE);
    expect(libfuseFromEnv({}, () => false)).toBe(2);
  });

  it("libfuse3 mounts as root, or with fusermount3 on the PATH (not with fuse's fusermount alone)", async () => {
    const t = await tempDirs('fuse2bin', 'fuse3bin');
    try {
      await fsp.writeFile(path.join(t.dirs.fuse2bin!, 'fusermount'), '#!/bin/sh\n', { mode: 0o755 });
      await fsp.writeFile(path.join(t.dirs.fuse3bin!, 'fusermount3'), '#!/bin/sh\n', { mode: 0o755 });
      expect(libfuse3Usable(0, t.dirs.fuse2bin!, () => true)).toBe(true);
      expect(libfuse3Usable(1000, t.dirs.fuse2bin!, () => true)).toBe(false);
      expect(libfuse3Usable(1000, `${t.dirs.fuse2bin}:${t.dirs.fuse3bin}`, () => true)).toBe(true);
      expect(libfuse3Usable(0, t.dirs.fuse3bin!, () => false)).toBe(false);
    } finally {
      await t.cleanup();
    }
  });

  it('another TWINFS_FUSE value is a usage error', () => {
    expect(() => libfuseFromEnv({ TWINFS_FUSE: '1' })).toThrow(
      expect.objectContaining({ code: 'ETWIN_USAGE' }),
    );
  });
});
