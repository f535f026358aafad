import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES } from '../helpers/mounts.js';
import { sh } from '../helpers/proc.js';
import { type MirroredVolume, mirroredVolume, ROOT } from '../helpers/server.js';

/**
 * Real programs through a mirrored mount (fixtures/programs.sh, in a child process): git (commit,
 * gc --aggressive, fsck --strict, repack), a tar -p round trip, rsync -aHX, sqlite3 in WAL and
 * rollback-journal mode (transactions, VACUUM, integrity_check), make, gcc and ar. Each checks its
 * own result; afterwards the mirror must hold what the primary holds (offline verify).
 */
describe('git, tar, rsync, sqlite3 and a compiler through a mirrored mount', () => {
  let v: MirroredVolume;
  beforeAll(async () => {
    v = await mirroredVolume();
    await v.start();
  });
  afterAll(async () => {
    await v?.close();
  });

  it('every program ends with its own check passing', async () => {
    const r = await sh(
      `sh '${path.join(FIXTURES, 'programs.sh')}' '${v.dirs.mnt}' '${path.join(ROOT, 'src')}'`,
      {
        timeoutMs: 240_000,
      },
    );
    expect(r.stdout).not.toContain('FAIL');
    for (const p of ['git ok 4', 'tar ok', 'rsync ok', 'sqlite wal ok', 'sqlite delete ok', 'cc ok'])
      expect(r.stdout).toContain(p);
  }, 300_000);

  it('after unmount the mirror holds the primary’s tree', async () => {
    expect(await v.stopServer()).toBe(0);
    const { code, report } = await v.verify();
    expect(report).toMatchObject({ ok: true, differences: [] });
    expect(code).toBe(0);
  });
});
