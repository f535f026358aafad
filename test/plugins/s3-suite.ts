import { randomUUID } from 'node:crypto';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  fileEntry,
  fileMeta,
  manifest,
  pseudoRandom,
  readAll,
  snapMeta,
  streamOf,
} from '../conformance/fixtures.js';
import { describeTargetConformance, type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';
import { type S3Fixture, uniquePrefix } from './s3-fixture.js';

export const PLUGIN = path.resolve(import.meta.dirname, '../../plugins/s3');

/**
 * The s3 target's suite against one S3-compatible server: the conformance suite, then what is
 * particular to S3 (multipart, retries, crashed uploads, the AWS_* environment, bad specs).
 * `fixture` is read when the cases run (the server is started in the caller's beforeAll).
 */
export function describeS3Target(name: string, fixture: () => S3Fixture): void {
  const settings = (extra: Record<string, unknown> = {}) => {
    const s3 = fixture();
    return { endpoint: s3.endpoint, ...s3.credentials, partSizeMiB: 5, maxAttempts: 3, ...extra };
  };

  /** A fresh prefix per case: the bucket is shared, the snapshots are not. */
  describeTargetConformance(`s3 (${name})`, async () => {
    const s3 = fixture();
    const plugin = await loadTargetPlugin(PLUGIN, { configuration: settings() });
    const spec = `s3:${s3.bucket}/conformance/${randomUUID()}`;
    const target = await plugin.open(spec);
    return {
      target,
      reopen: () => plugin.open(spec),
      async cleanup() {
        for (const s of await target.listSnapshots()) await target.deleteSnapshot(s.snapshotId);
        await target.close();
        await plugin.dispose();
      },
    };
  });

  describe(`s3 target specifics (${name})`, () => {
    let plugin: LoadedPlugin;
    let s3: S3Fixture;
    beforeAll(async () => {
      s3 = fixture();
      plugin = await loadTargetPlugin(PLUGIN, { configuration: settings() });
    });
    afterAll(async () => {
      await plugin?.dispose();
    });

    it('uploads a large file in parts and a small one in a single PUT', async () => {
      const t = await plugin.open(`s3:${s3.bucket}/${uniquePrefix('multipart')}`);
      const big = pseudoRandom(12 * 1024 * 1024, 3);
      const w = await t.beginSnapshot(snapMeta('mp'));
      s3.requests.length = 0;
      await w.putFile('/big', streamOf(big), fileMeta(big.length));
      const parts = s3.requests.filter((r) => r.startsWith('PUT') && r.includes('partNumber='));
      expect(parts.length).toBe(3);
      expect(s3.requests.some((r) => r.startsWith('POST') && r.includes('uploads'))).toBe(true);
      s3.requests.length = 0;
      await w.putFile('/small', streamOf(Buffer.from('small')), fileMeta(5));
      expect(s3.requests.filter((r) => r.startsWith('PUT'))).toHaveLength(1);
      expect(s3.requests.some((r) => r.includes('partNumber='))).toBe(false);
      await w.commit(
        manifest(snapMeta('mp'), [fileEntry('/big', big), fileEntry('/small', Buffer.from('small'))]),
      );
      expect((await readAll(await t.openFile('mp', '/big'))).equals(big)).toBe(true);
      await t.deleteSnapshot('mp');
    });

    it('retries transient errors (503 SlowDown) and reports them as transient once attempts run out', async () => {
      const t = await plugin.open(`s3:${s3.bucket}/${uniquePrefix('retry')}`);
      const w = await t.beginSnapshot(snapMeta('retry'));
      s3.failNext(2);
      expect(await w.putFile('/a', streamOf(Buffer.from('aaa')), fileMeta(3))).toMatchObject({ bytes: 3 });
      s3.failNext(100);
      await expect(w.putFile('/b', streamOf(Buffer.from('bbb')), fileMeta(3))).rejects.toMatchObject({
        code: 'ETWIN_TARGET_TRANSIENT',
      });
      await expect(t.listSnapshots()).rejects.toMatchObject({ code: 'ETWIN_TARGET_TRANSIENT' });
      s3.failNext(0);
      await w.commit(manifest(snapMeta('retry'), [fileEntry('/a', Buffer.from('aaa'))]));
      expect(await readAll(await t.openFile('retry', '/a'))).toEqual(Buffer.from('aaa'));
      await expect(t.stat('retry', '/b')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
      await t.deleteSnapshot('retry');
    });

    it('a snapshot whose manifest was never written is not listed, and deleteSnapshot removes its objects', async () => {
      const prefix = uniquePrefix('crash');
      const spec = `s3:${s3.bucket}/${prefix}`;
      const t = await plugin.open(spec);
      const w = await t.beginSnapshot(snapMeta('crashed'));
      await w.putFile('/a', streamOf(Buffer.from('a')), fileMeta(1));
      // The peer dies here: no commit, no abort. Another process opens the target.
      const t2 = await plugin.open(spec);
      expect(await t2.listSnapshots()).toEqual([]);
      await expect(t2.stat('crashed', '/a')).rejects.toMatchObject({ code: 'ETWIN_TARGET_NOT_FOUND' });
      const objects = () => s3.listKeys(`${prefix}/`);
      expect(await objects()).toEqual([`${prefix}/snapshots/crashed/files/a`]);
      await t2.deleteSnapshot('crashed');
      expect(await objects()).toEqual([]);
    });

    it('takes credentials and the endpoint from the AWS_* environment', async () => {
      const saved = { ...process.env };
      Object.assign(process.env, {
        AWS_ENDPOINT_URL: s3.endpoint,
        AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
        AWS_REGION: 'eu-west-1',
      });
      const envPlugin = await loadTargetPlugin(PLUGIN, { configuration: { maxAttempts: 1 } });
      try {
        const t = await envPlugin.open(`s3:${s3.bucket}/${uniquePrefix('from-env')}`);
        expect(await t.listSnapshots()).toEqual([]);
        await expect(envPlugin.open('s3:no-such-bucket/x')).rejects.toMatchObject({
          code: 'ETWIN_TARGET_FAILED',
          message: expect.stringMatching(/does not exist/),
        });
      } finally {
        process.env = saved;
        await envPlugin.dispose();
      }
    });

    it('refuses malformed specs and unknown settings', async () => {
      await expect(plugin.open('s3:Bad_Bucket/x')).rejects.toMatchObject({
        code: 'ETWIN_TARGET_FAILED',
        message: expect.stringMatching(/"B" is not allowed/),
      });
      // Too short: the reason, not only a refusal.
      await expect(plugin.open('s3:ab/x')).rejects.toMatchObject({
        code: 'ETWIN_TARGET_FAILED',
        message: expect.stringMatching(
          /"ab" is not a bucket name: it is 2 character\(s\) long; a bucket name has 3 to 63/,
        ),
      });
      await expect(plugin.open(`s3:${s3.bucket}/a/../b`)).rejects.toMatchObject({
        code: 'ETWIN_TARGET_FAILED',
      });
      const bad = await loadTargetPlugin(PLUGIN, { configuration: { partSizeMiB: 1 } });
      try {
        await expect(bad.open(`s3:${s3.bucket}/x`)).rejects.toMatchObject({ code: 'ETWIN_PLUGIN_FAILED' });
        expect(bad.info()).toMatchObject({ state: 'failed', error: expect.stringMatching(/partSizeMiB/) });
      } finally {
        await bad.dispose();
      }
    });
  });
}
