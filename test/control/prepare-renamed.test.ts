import { promises as fsp } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { BackupService } from '../../src/control/backup-service.js';
import type { TwinFs } from '../../src/fusefs/filesystem.js';
import { VolumeOps } from '../../src/fusefs/volume-ops.js';
import { VolumePaths } from '../../src/fusefs/volume-paths.js';
import { WriteInhibitor } from '../../src/fusefs/write-inhibitor.js';
import { WritebackCache } from '../../src/fusefs/writeback-cache.js';
import { MirrorDriver } from '../../src/mirror-driver/index.js';
import { installBytePaths } from '../../src/posix/byte-paths.js';
import { tempDirs } from '../helpers/server.js';

/**
 * A paths prepare whose file is renamed away after the prepare looked it up and before the
 * split: the split copy has no such file, which is "not found", not a broken mirror.
 *
 * That window (the kernel write-back before the inhibition) is a few ms that no outside process
 * can be made to hit on purpose, so the rename is done from the write-back step itself: the
 * backup service, the mirror driver, the primary and the mirror are real (directories and the
 * driver in this process); the filesystem is the VolumeOps FUSE would call, without a mount
 * (the service uses its paths, inhibitor and cache flush only).
 */
describe('prepare of a file renamed away just before the split', () => {
  let t: Awaited<ReturnType<typeof tempDirs>> | undefined;
  let d: MirrorDriver | undefined;
  let cache: WritebackCache | undefined;
  afterEach(async () => {
    await cache?.dispose();
    await d?.dispose();
    await t?.cleanup();
  });

  // The second name's last byte is not UTF-8 (U+DC00 + the byte in twinfs's strings): the split
  // copy's ENOENT then carries the name decoded with U+FFFD (found by bench/stress.mjs --bytes,
  // seed 46004, as ETWIN_MIRROR_BROKEN).
  it.each([
    ['/a', '/b'],
    ['/a\udcff', '/b\udcfe'],
  ])('fails with ETWIN_NOT_FOUND naming the path (%j), and leaves nothing split', async (A, B) => {
    installBytePaths();
    t = await tempDirs('primary', 'mirror', 'state');
    const P = t.dirs.primary!;
    await fsp.writeFile(`${P}${A}`, 'data');
    await fsp.writeFile(`${P}/keep`, 'other');
    d = await MirrorDriver.open({
      primary: P,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
      log: () => undefined,
    });
    await d.whenReady();
    cache = new WritebackCache({ sink: d, writebackMs: 60_000 });
    const paths = new VolumePaths(P);
    const inhibitor = new WriteInhibitor();
    const ops = new VolumeOps({ paths, cache, sink: d, gate: inhibitor });
    const fs = { paths, inhibitor, mountPoint: P, flushWhere: async () => undefined } as unknown as TwinFs;
    let renamed = 0;
    const svc = new BackupService({
      fs,
      mirror: d,
      kernelWriteback: {
        sync: async () => {
          if (renamed++ === 0) await ops.rename(A, B);
          return { ms: 0, names: 0 };
        },
      },
    });
    const err = await svc.prepare({ paths: [A, '/keep'] }, { owner: 'test' }).then(
      () => undefined,
      (e) => e,
    );
    expect(renamed).toBe(1);
    expect(err).toMatchObject({ code: 'ETWIN_NOT_FOUND', data: { path: A } });
    // Nothing stays split: the same selection without the missing file prepares at once.
    await d.whenIdle();
    expect(d.status().splits).toEqual([]);
    const ok = await svc.prepare({ paths: [B, '/keep'] }, { owner: 'test' });
    expect(ok.items.map((i) => i.path).sort()).toEqual([B, '/keep']);
  });
});
