import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import {
  type ControlFixture,
  recordEvents,
  startControlFixture,
  status,
  waitUntil,
} from '../control/control-fixture.js';
import { privatePluginState, runCli, watchCli } from '../helpers/cli.js';
import { sh } from '../helpers/proc.js';
import { dataPacks, filesUnder, snapshotTree } from './peer-fixture.js';

/**
 * The backup sequence end to end: a real `twinfs serve --mirror --control` process, real
 * `twinfs backup|restore|check|snapshots|forget|peer` processes, a real websocket.
 */

/** A twinfs command run to its end. */
const cli = (args: string[], timeoutMs?: number) => runCli(args, { timeoutMs });

// Targets come from plugins: the plugin hosts of the servers and the peers (children of this
// forked test process) keep their state in a temporary folder and see no user plugins.
privatePluginState('peer-e2e');

describe('backup peer end to end (real server, real peer processes)', () => {
  let fx: ControlFixture;
  let client: ControlClient;
  let targetDir: string;
  let catalog: string;
  let common: string[];
  const snapshots: string[] = [];
  let killedId = '';

  beforeAll(async () => {
    fx = await startControlFixture();
    client = await fx.connect();
    targetDir = path.join(fx.base, 'backups');
    catalog = path.join(fx.base, 'catalog');
    common = [
      '--server',
      fx.url,
      '--token-file',
      fx.tokenFile,
      '--target',
      `dir:${targetDir}`,
      '--catalog',
      catalog,
    ];
    // The volume, written through the mount (this process does not serve it).
    const m = fx.mnt;
    await fsp.mkdir(path.join(m, 'docs/deep'), { recursive: true });
    await fsp.writeFile(path.join(m, 'docs/a.txt'), 'alpha\n');
    await fsp.writeFile(path.join(m, 'docs/b.txt'), 'bravo\n');
    await fsp.writeFile(
      path.join(m, 'docs/deep/c.bin'),
      Buffer.alloc(1024 * 1024 + 5).map((_, i) => i % 253),
    );
    await fsp.symlink('../a.txt', path.join(m, 'docs/deep/link'));
    await fsp.chown(path.join(m, 'docs/a.txt'), 1001, 1002);
    await fsp.chmod(path.join(m, 'docs/a.txt'), 0o600);
    await fsp.chmod(path.join(m, 'docs/deep'), 0o750);
    await fsp.utimes(path.join(m, 'docs/b.txt'), 1_600_000_000.25, 1_600_000_000.25);
    await fsp.utimes(path.join(m, 'docs/deep'), 1_500_000_000, 1_500_000_000);
    await fsp.utimes(path.join(m, 'docs'), 1_500_000_000, 1_500_000_000);
  }, 60_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('backs up the volume and restores it byte for byte, metadata included', async () => {
    const r = await cli(['backup', ...common, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.last).toMatchObject({ event: 'done', totals: { files: 3, symlinks: 1, reusedFiles: 0 } });
    expect(r.lines.some((l) => l.event === 'progress' && l.phase === 'copy')).toBe(true);
    snapshots.push(r.last.snapshotId);
    const to = path.join(fx.base, 'restore1');
    const rr = await cli(['restore', r.last.snapshotId, '--to', to, '--catalog', catalog, '--json']);
    expect(rr.code, rr.stderr).toBe(0);
    expect(rr.last).toMatchObject({ event: 'done', failures: [] });
    expect(await snapshotTree(to)).toEqual(await snapshotTree(fx.primary));
    // The split was released and the pairs rejoined.
    const s = await status(client);
    expect(s.backup.backups).toEqual([]);
    expect(s.mirror.splits).toEqual([]);
  });

  it('an incremental run copies only the changed file', async () => {
    await fsp.writeFile(path.join(fx.mnt, 'docs/b.txt'), 'bravo, version two\n');
    const r = await cli(['backup', ...common, '--subtree', '/docs', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.last.totals).toMatchObject({ files: 3, copiedBytes: 19, reusedFiles: 2 });
    snapshots.push(r.last.snapshotId);
    const to = path.join(fx.base, 'restore2');
    expect((await cli(['restore', 'latest', '--to', to, '--catalog', catalog])).code).toBe(0);
    expect(await snapshotTree(path.join(to, 'docs'))).toEqual(
      await snapshotTree(path.join(fx.primary, 'docs')),
    );
  });

  it('restores into the twinfs mount (it is just a directory)', async () => {
    const to = path.join(fx.mnt, 'restored');
    const r = await cli([
      'restore',
      snapshots[0]!,
      '/docs/deep',
      'docs/a.txt',
      '--to',
      to,
      '--catalog',
      catalog,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const a = await snapshotTree(path.join(fx.primary, 'restored/docs/deep'));
    expect(a).toEqual(await snapshotTree(path.join(fx.primary, 'docs/deep')));
    expect(await fsp.readFile(path.join(fx.mnt, 'restored/docs/a.txt'), 'utf8')).toBe('alpha\n');
    const st = await fsp.lstat(path.join(fx.primary, 'restored/docs/a.txt'));
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([1001, 1002, 0o600]);
  });

  it('refuses restore paths escaping --to, with a code and nothing written', async () => {
    const to = path.join(fx.base, 'escape-to');
    for (const p of ['../../etc/passwd', '/docs/../../x']) {
      const r = await cli(['restore', snapshots[0]!, p, '--to', to, '--catalog', catalog]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^twinfs: error ETWIN_PATH_ESCAPE: /);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(await fsp.readdir(to).catch(() => [])).toEqual([]);
  });

  it('refuses to read the mirror through a FUSE mount', async () => {
    const r = await cli([
      'backup',
      ...common,
      '--path',
      '/docs/a.txt',
      '--mirror-map',
      `${fx.deviceId}=${fx.mnt}`,
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ETWIN_MIRROR_ON_MOUNT: .*FUSE mount/);
    expect((await status(client)).backup.backups).toEqual([]);
  });

  it('kill -9 of the peer mid-copy: no complete snapshot, the server releases the split', async () => {
    await fsp.mkdir(path.join(fx.mnt, 'big'));
    // Random data: zeros deduplicate to one chunk and are stored before the test can kill.
    await sh(`head -c 256M /dev/urandom > '${fx.mnt}/big/file'`, { timeoutMs: 60_000 });
    const events = recordEvents(client);
    const peer = watchCli(['backup', ...common, '--subtree', '/big', '--lease-sec', '2', '--json']);
    await waitUntil(
      () => peer.lines.some((l) => l.phase === 'copy') || peer.proc.exitCode !== null,
      30_000,
      'copy',
    );
    const { snapshotId, backupId } = peer.lines.find((l) => l.phase === 'copy');
    killedId = snapshotId;
    // Kill while the big file is half stored (the split is held until the copy ends).
    const started = () => peer.lines.some((l) => l.bytes > 0);
    await waitUntil(() => started() || peer.proc.exitCode !== null, 10_000, 'the copy to start');
    peer.proc.kill('SIGKILL');
    const killedAt = Date.now();
    await peer.exited;
    expect(
      peer.lines.some((l) => l.event === 'done' || l.phase === 'commit'),
      'the copy ended first',
    ).toBe(false);
    expect(Math.max(...peer.lines.map((l) => l.bytes ?? 0))).toBeLessThan(256 * 1024 * 1024);

    await waitUntil(
      async () => (await status(client)).backup.backups.length === 0,
      10_000,
      'the server to release the split',
    );
    const released = events.find((e) => e.event === 'released' && e.data.backupId === backupId);
    expect(released?.at).toBeGreaterThanOrEqual(killedAt);
    await waitUntil(
      async () => (await status(client)).mirror.splits.length === 0,
      10_000,
      'the pairs to rejoin',
    );
    const list = await cli(['snapshots', '--catalog', catalog, '--json']);
    const killed = list.last.find((s: any) => s.id === snapshotId);
    expect(killed).toMatchObject({ state: 'running', abandoned: true });
    expect(list.last.filter((s: any) => s.state === 'complete').map((s: any) => s.id)).toEqual(snapshots);
    expect(await filesUnder(targetDir, 'snapshots')).not.toContain(`snapshots/${snapshotId}`);
    // The dead peer's repository lock is left behind...
    expect(await filesUnder(targetDir, 'locks')).toHaveLength(1);

    // The next run cleans up after the dead one.
    const again = await cli(['backup', ...common, '--path', '/docs/a.txt', '--json']);
    expect(again.code, again.stderr).toBe(0);
    snapshots.push(again.last.snapshotId);
    const after = await cli(['snapshots', '--catalog', catalog, '--json']);
    expect(after.last.find((s: any) => s.id === snapshotId).state).toBe('failed');
    // ...and the next taker removes it as stale (its process is gone).
    expect(await filesUnder(targetDir, 'locks')).toEqual([]);
  }, 120_000);

  it('check re-hashes the target data and exits 1 on a corrupted file', async () => {
    const ok = await cli(['check', snapshots[1]!, '--catalog', catalog]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    // b.txt changed in snapshot 2, so its data there is its own chunk: a byte of it flipped.
    const v2 = Buffer.byteLength('bravo, version two\n');
    const packs = await dataPacks(targetDir);
    const pack = packs.find((p) => p.rows.some(([, type, , , raw]) => type === 'data' && raw === v2))!;
    const [, , offset] = pack.rows.find(([, type, , , raw]) => type === 'data' && raw === v2)!;
    const bytes = await fsp.readFile(pack.file);
    bytes[offset + 3] = bytes[offset + 3]! ^ 0x20;
    await fsp.writeFile(pack.file, bytes);
    const bad = await cli(['check', snapshots[1]!, '--catalog', catalog, '--json']);
    expect(bad.code).toBe(1);
    expect(bad.last).toMatchObject({ event: 'error', code: 'ETWIN_CHECK_FAILED' });
    const report = bad.lines.find((l) => l.event === 'done');
    expect(report.problems).toEqual([expect.objectContaining({ path: '/docs/b.txt', kind: 'hash' })]);
    expect((await cli(['check', snapshots[0]!, '--catalog', catalog])).code).toBe(0);
  }, 120_000);

  it('the peer daemon runs on its interval and stops cleanly on SIGTERM', async () => {
    const config = path.join(fx.base, 'peer.json');
    await fsp.writeFile(
      config,
      JSON.stringify({
        server: fx.url,
        tokenFile: fx.tokenFile,
        target: `dir:${targetDir}`,
        catalog,
        intervalSec: 1,
        paths: ['/docs/a.txt'],
      }),
    );
    const d = watchCli(['peer', '--config', config, '--json']);
    await waitUntil(
      () => d.lines.filter((l) => l.event === 'backup-complete').length >= 2 || d.proc.exitCode !== null,
      90_000,
      'two runs',
    );
    d.proc.kill('SIGTERM');
    expect(await d.exited, d.stderr()).toBe(0);
    expect(d.lines.at(-1).event).toBe('stopped');
    expect(d.lines.filter((l) => l.event === 'backup-failed')).toEqual([]);
    expect((await status(client)).backup.backups).toEqual([]);
  }, 150_000);

  it('forget keeps the newest and deletes the rest, data included', async () => {
    // Policies apply per (device, target, selection): '/', '/docs' and '/docs/a.txt' here.
    const before = (await cli(['snapshots', '--catalog', catalog, '--json'])).last as any[];
    const aTxt = before
      .filter((s) => s.state === 'complete' && s.paths.join() === '/docs/a.txt')
      .map((s) => s.id);
    expect(aTxt.length).toBeGreaterThanOrEqual(3);
    const r = await cli(['forget', '--keep-last', '1', '--catalog', catalog, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.last.kept.sort()).toEqual([snapshots[0], snapshots[1], aTxt.at(-1)].sort());
    expect(r.last.removed.sort()).toEqual([killedId, ...aTxt.slice(0, -1)].sort());
    const left = await filesUnder(targetDir, 'snapshots');
    for (const id of r.last.removed) expect(left).not.toContain(`snapshots/${id}`);
    const list = await cli(['snapshots', '--catalog', catalog, '--json']);
    for (const s of list.last) expect(left).toContain(`snapshots/${s.id}`);
    const usage = await cli(['forget', '--catalog', catalog]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/ETWIN_USAGE/);
  });
});

describe('backup peer end to end: the server dies mid-copy', () => {
  let fx: ControlFixture | undefined;
  afterAll(async () => {
    await fx?.close();
  });

  it('the peer fails cleanly: ETWIN_SPLIT_LOST, no complete snapshot, nothing committed', async () => {
    fx = await startControlFixture();
    const targetDir = path.join(fx.base, 'backups');
    const catalog = path.join(fx.base, 'catalog');
    await fsp.mkdir(path.join(fx.mnt, 'big'));
    // Random bytes: zeros dedupe into one chunk and copy in a blink (the peer once finished and
    // committed before the kill below landed).
    await sh(`head -c 192M /dev/urandom > '${fx.mnt}/big/file'`, { timeoutMs: 60_000 });
    const args = [
      '--server',
      fx.url,
      '--token-file',
      fx.tokenFile,
      '--target',
      `dir:${targetDir}`,
      '--catalog',
      catalog,
    ];
    const peer = watchCli(['backup', ...args, '--subtree', '/big', '--json']);
    await waitUntil(
      () => peer.lines.some((l) => l.phase === 'copy') || peer.proc.exitCode !== null,
      30_000,
      'copy',
    );
    const { snapshotId } = peer.lines.find((l) => l.phase === 'copy');
    const started = () => peer.lines.some((l) => l.bytes > 0);
    await waitUntil(() => started() || peer.proc.exitCode !== null, 10_000, 'the copy to start');
    // The peer is stopped while the server dies, so "mid-copy" holds however fast the copy is:
    // it resumes to a closed connection and a renew that cannot be answered.
    expect(peer.proc.kill('SIGSTOP')).toBe(true);
    const server = fx.srv.proc;
    server.kill('SIGKILL');
    await waitUntil(
      () => server.exitCode !== null || server.signalCode !== null,
      10_000,
      'the server to die',
    );
    peer.proc.kill('SIGCONT');
    expect(await peer.exited).toBe(1);
    expect(peer.lines.at(-1)).toMatchObject({ event: 'error', code: 'ETWIN_SPLIT_LOST' });
    // (After the note that the first backup created the repository.)
    expect(peer.stderr()).toMatch(/^twinfs: error ETWIN_SPLIT_LOST: /m);
    const list = await cli(['snapshots', '--catalog', catalog, '--json']);
    expect(list.last).toEqual([expect.objectContaining({ id: snapshotId, state: 'failed' })]);
    // No snapshot, the aborted run's packs removed, its lock released.
    expect(await filesUnder(targetDir, 'snapshots')).toEqual([]);
    expect(await filesUnder(targetDir, 'data')).toEqual([]);
    expect(await filesUnder(targetDir, 'locks')).toEqual([]);
  }, 120_000);
});
