import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
// One import brings the suite and a harness that runs this folder in a real plugin host.
import { describeTargetConformance, fixtures, loadTargetPlugin } from 'twinfs/conformance';
import { describe, expect, it } from 'vitest';

const PLUGIN = new URL('..', import.meta.url);

describeTargetConformance('checksum (example plugin)', async () => {
  const plugin = await loadTargetPlugin(PLUGIN);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'checksum-target-'));
  const target = await plugin.open(`checksum:${dir}`);
  return {
    target,
    reopen: () => plugin.open(`checksum:${dir}`),
    async cleanup() {
      await plugin.dispose();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
});

describe('checksum target', () => {
  it('writes a SHA256SUMS that sha256sum -c accepts, and its verify command finds a damaged file', async () => {
    const plugin = await loadTargetPlugin(PLUGIN);
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'checksum-target-'));
    try {
      const t = await plugin.open(`checksum:${dir}`);
      const a = fixtures.pseudoRandom(10_000, 1);
      const w = await t.beginSnapshot(fixtures.snapMeta('s1'));
      await w.putFile('/a.bin', fixtures.streamOf(a), fixtures.fileMeta(a.length));
      await w.putFile('/odd\\name', fixtures.streamOf(Buffer.from('x')), fixtures.fileMeta(1));
      await w.commit(fixtures.manifest(fixtures.snapMeta('s1'), [fixtures.fileEntry('/a.bin', a)]));
      const out = execFileSync('sha256sum', ['-c', '../SHA256SUMS'], { cwd: path.join(dir, 's1', 'data') });
      expect(out.toString()).toMatch(/a\.bin: OK/);
      expect(await plugin.host.executeCommand('checksum.verify', dir, 's1')).toEqual({
        snapshotId: 's1',
        files: 2,
        bad: [],
      });
      await fsp.writeFile(path.join(dir, 's1', 'data', 'a.bin'), 'tampered');
      expect(await plugin.host.executeCommand('checksum.verify', dir, 's1')).toMatchObject({
        bad: ['/a.bin'],
      });
      // A whole-file restore of a damaged file fails instead of handing back wrong bytes.
      await expect(fixtures.readAll(await t.openFile('s1', '/a.bin'))).rejects.toMatchObject({
        code: 'ETWIN_TARGET_FAILED',
      });
    } finally {
      await plugin.dispose();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
