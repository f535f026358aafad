import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture } from '../helpers/posix.js';

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

  it('stops cleanly on SIGTERM with exit 0', async () => {
    expect(await fx.srv.stop()).toBe(0);
  });
});
