import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installBytePaths } from '../../src/posix/byte-paths.js';

/**
 * A failed node:fs call on a path with a byte that is not UTF-8 (U+DC00 + the byte in twinfs's
 * strings, sent to node:fs as bytes) names that path in its error as it was given, not decoded
 * with U+FFFD (another name). Found as a prepare refused with ETWIN_MIRROR_BROKEN where the
 * selected file was only gone (bench/stress.mjs --bytes, seed 46004).
 */
describe('errors of byte paths', () => {
  let dir: string;
  beforeAll(() => {
    installBytePaths();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'byte-errors-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const missing = () => `${dir}/gone\udcff`;
  const caught = async (f: () => unknown): Promise<NodeJS.ErrnoException & { dest?: string }> => {
    try {
      await f();
    } catch (err) {
      return err as NodeJS.ErrnoException;
    }
    throw new Error('no error');
  };

  it('sync, promise and callback calls, and calls that answer names', async () => {
    const p = missing();
    for (const f of [
      () => fs.lstatSync(p),
      () => fs.promises.lstat(p),
      () => new Promise((res, rej) => fs.lstat(p, (e, st) => (e ? rej(e) : res(st)))),
      () => fs.readdirSync(p),
      () => fs.promises.readdir(p),
      () => new Promise((res, rej) => fs.readdir(p, (e, n) => (e ? rej(e) : res(n)))),
    ]) {
      const e = await caught(f);
      expect([e.code, e.path]).toEqual(['ENOENT', p]);
    }
  });

  it('both paths of a two-path call', async () => {
    const from = missing();
    const to = `${dir}/to\udcfe`;
    const e = await caught(() => fs.promises.rename(from, to));
    expect([e.code, e.path, e.dest]).toEqual(['ENOENT', from, to]);
  });
});
