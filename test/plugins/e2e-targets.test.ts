import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { Catalog } from '../../src/backup-peer/catalog.js';
import { checkSnapshot } from '../../src/backup-peer/check.js';
import { restore } from '../../src/backup-peer/restore.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import {
  FakeControl,
  type Mirror,
  makeMirror,
  snapshotTree,
  tempDir,
  volumeBackupRun,
} from '../backup-peer/peer-fixture.js';
import { memoryTargetPlugin } from './plugin-fixtures.js';
import { type S3Fixture, startS3 } from './s3-fixture.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

/**
 * A backup run of the peer (against a hand-made mirror and a fake control channel) into each
 * target plugin, through the plugin host exactly as the CLI wires it, then an incremental run,
 * then restores of the whole snapshot and of one file, compared with the mirror byte for byte
 * and metadata for metadata.
 */
describe('end to end: backup, incremental backup and restore through each target plugin', () => {
  let base: string;
  let cleanup: () => Promise<void>;
  let s3: S3Fixture;
  let host: PluginHost;
  let registry: TargetRegistry;
  let mirror: Mirror;
  const big = Buffer.from(Buffer.alloc(3 * 1024 * 1024 + 5).map((_, i) => (i * 13) % 251));

  beforeAll(async () => {
    ({ dir: base, cleanup } = await tempDir('twinfs-e2e-'));
    s3 = await startS3();
    await fsp.mkdir(path.join(base, 'extra/crashy'), { recursive: true });
    await fsp.writeFile(
      path.join(base, 'extra/crashy/package.json'),
      JSON.stringify({
        name: 'crashy',
        version: '1.0.0',
        main: 'index.js',
        type: 'module',
        engines: { twinfs: '^1.0.0' },
        contributes: { backupTargets: [{ id: 'crashy' }] },
      }),
    );
    await fsp.writeFile(
      path.join(base, 'extra/crashy/index.js'),
      memoryTargetPlugin(
        'crashy',
        `async (p, data) => {
          if (p.endsWith('c.bin')) throw new TypeError('bug in plugin');
          const h = (await import('node:crypto')).createHash('sha256');
          let bytes = 0;
          for await (const c of data) { h.update(c); bytes += c.length; }
          return { hash: h.digest('hex'), bytes };
        }`,
      ),
    );
    host = new PluginHost({
      dirs: [
        { dir: path.join(ROOT, 'plugins'), source: 'builtin' },
        { dir: path.join(ROOT, 'examples/plugins/checksum-target'), source: 'cli' },
        { dir: path.join(base, 'extra'), source: 'cli' },
      ],
      storageRoot: path.join(base, 'plugin-state'),
      configuration: { 'twinfs-s3': { endpoint: s3.endpoint, ...s3.credentials, partSizeMiB: 5 } },
      log: () => undefined,
    });
    await host.discover();
    // What the peer's CLI does: every target type comes from the plugin host.
    registry = new TargetRegistry([], (type) => host.getTargetProvider(type));
  }, 60_000);

  afterAll(async () => {
    await host?.dispose();
    await s3?.close();
    await cleanup?.();
  });

  beforeEach(async () => {
    const dir = path.join(base, `mirror-${randomUUID()}`);
    mirror = await makeMirror(dir, {
      docs: {
        'a.txt': { content: 'alpha\n', mode: 0o640, uid: 1001, gid: 1002, mtime: 1_650_000_000_250 },
        'b.txt': 'bravo\n',
        deep: { er: { 'c.bin': big } },
        'link-to-a': { symlink: 'a.txt' },
        'abs-link': { symlink: '/etc/passwd' },
      },
      'top.txt': { content: 'top', mode: 0o755, mtime: 1_600_000_000_000 },
      empty: {},
    });
  });

  const specs = () => ({
    dir: `dir:${base}/t-dir`,
    tar: `tar:${base}/t-tar`,
    'tar?gzip': `tar:${base}/t-tgz?gzip`,
    s3: `s3:${s3.bucket}/e2e/${randomUUID()}`,
    'checksum (example)': `checksum:${base}/t-sum`,
  });

  for (const name of ['dir', 'tar', 'tar?gzip', 's3', 'checksum (example)'] as const) {
    it(name, async () => {
      // An s3 repository is encrypted by default: its passphrase, as an operator gives it.
      if (name === 's3') process.env.TWINFS_PASSWORD = 'e2e passphrase';
      onTestFinished(() => {
        delete process.env.TWINFS_PASSWORD;
      });
      const spec = specs()[name];
      const catalogDir = path.join(base, `catalog-${randomUUID()}`);
      const target = await registry.open(spec);
      const run = () => volumeBackupRun(target, catalogDir, new FakeControl(mirror)).run();
      const first = await run();
      expect(first.snapshot.state).toBe('complete');
      expect(first.snapshot.target).toBe(target.spec);
      await fsp.writeFile(path.join(mirror.data, 'docs/b.txt'), 'bravo, changed\n');
      const second = await run();
      expect(second.snapshot.totals).toMatchObject({ reusedFiles: 3, copiedBytes: 15 });

      const to = path.join(base, `restore-${randomUUID()}`);
      const r = await restore({ snapshot: second.snapshot.id, to, catalogDir, registry });
      expect(r.failures).toEqual([]);
      expect(await snapshotTree(to)).toEqual(await snapshotTree(mirror.data));
      const one = path.join(base, `restore-${randomUUID()}`);
      await restore({
        snapshot: first.snapshot.id,
        paths: ['/docs/deep/er/c.bin'],
        to: one,
        catalogDir,
        registry,
      });
      expect((await fsp.readFile(path.join(one, 'docs/deep/er/c.bin'))).equals(big)).toBe(true);
      expect((await checkSnapshot({ snapshot: 'latest', catalogDir, registry })).ok).toBe(true);
      await target.close();
    });
  }

  it('a target that throws mid-backup fails the run cleanly, recorded against its plugin', async () => {
    const catalogDir = path.join(base, `catalog-${randomUUID()}`);
    const target = await registry.open('crashy:anywhere');
    await expect(volumeBackupRun(target, catalogDir, new FakeControl(mirror)).run()).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_FAILED',
      data: { plugin: 'crashy' },
    });
    expect(host.info('crashy').problems[0]).toMatch(
      /crashy\.putFile \(plugin crashy\) failed: bug in plugin/,
    );
    const catalog = await Catalog.open(catalogDir);
    try {
      expect((await catalog.list()).filter((s) => s.state === 'complete')).toEqual([]);
    } finally {
      await catalog.close();
    }
    // The other plugins are untouched.
    expect(host.info('twinfs-dir').state).toBe('active');
  });
});
