import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveServeConfig } from '../../src/cli/serve.js';

/** The status page's and the log's settings in a config file: addresses and levels, not paths. */
describe('http and logLevel in the serve config', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-observe-config-'));
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });
  const write = async (obj: unknown) => {
    const f = path.join(dir, `c${Math.random().toString(36).slice(2)}.json`);
    await fsp.writeFile(f, JSON.stringify(obj));
    return f;
  };

  it('keeps http and logLevel as written (not resolved against the file like paths)', async () => {
    const config = await write({ primary: 'p', mount: 'm', http: '127.0.0.1:7421', logLevel: 'debug' });
    const cfg = await resolveServeConfig({ config });
    expect(cfg.http).toBe('127.0.0.1:7421');
    expect(cfg.logLevel).toBe('debug');
    expect(cfg.primary).toBe(path.join(dir, 'p'));
    // The command line wins over the file.
    expect((await resolveServeConfig({ config, http: '127.0.0.1:9', logLevel: 'warn' })).http).toBe(
      '127.0.0.1:9',
    );
  });

  it('refuses an unknown log level and a wrong type, by name', async () => {
    await expect(
      resolveServeConfig({ config: await write({ primary: 'p', mount: 'm', logLevel: 'loud' }) }),
    ).rejects.toMatchObject({
      code: 'ETWIN_USAGE',
      message: expect.stringContaining('"logLevel"'),
    });
    await expect(
      resolveServeConfig({ config: await write({ primary: 'p', mount: 'm', http: 7421 }) }),
    ).rejects.toMatchObject({
      code: 'ETWIN_CONFIG',
      data: { key: 'http' },
    });
  });
});
