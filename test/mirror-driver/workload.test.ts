import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimesNs } from '../../src/posix/set-times.js';
import { FIXTURES, unmountAll } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { MIXED, run, twinfs } from './mirror-helpers.js';

/**
 * A server started with --mirror duplicates every change: after mixed workloads and a clean
 * stop, the offline verify finds no difference; and it does find one made behind its back.
 */
describe('mirror equals primary after mixed workloads', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let mirror: string;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    mirror = t.dirs.mirror!;
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--mirror', mirror, '--state-dir', t.dirs.state!, '--writeback-ms', '100', '--cache-mb', '8'],
    });
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('runs the mixed workload and the randomized differential workload through the mount', async () => {
    const m = t.dirs.mnt!;
    await Promise.all([
      run(`'${MIXED}' '${m}/mixed1' 1`),
      run(`'${MIXED}' '${m}/mixed2' 2`),
      run(`node '${FIXTURES}/diff-ops.mjs' run '${m}/diff1' 11 250 >/dev/null`, 90_000),
      run(`node '${FIXTURES}/diff-ops.mjs' run '${m}/diff2' 12 250 >/dev/null`, 90_000),
    ]);
    // A second round over the same trees: renames of populated directories, rewrites.
    await run(`set -e; cd '${m}'; mv mixed1 mixed1-renamed; mv diff1 mixed1-renamed/diff1-inside;
      dd if=/dev/zero of=mixed2/dir1/f10 bs=4k seek=7 count=3 conv=notrunc status=none;
      rm -r mixed2/links; sync mixed2/dir1/f10`);
  });

  it('stops cleanly, and the offline verify exits 0', async () => {
    expect(await srv!.stop()).toBe(0);
    srv = undefined;
    expect(srv).toBeUndefined();
    const r = await twinfs(`verify --primary '${t.dirs.primary}' --mirror '${mirror}'`);
    expect(r.stdout + r.stderr).toMatch(/entries match/);
    expect(r.code).toBe(0);
    // The mirror really holds the tree (not an empty pair of trees that trivially match).
    const st = await fsp.stat(path.join(mirror, 'data/mixed1-renamed/dir1/f10'));
    expect(st.size).toBe(5_000_000);
    expect(st.mtime.toISOString()).toMatch(/^2001-02-0[23]/);
    expect((await fsp.lstat(path.join(mirror, 'data/mixed2/meta/fifo2'))).isFIFO()).toBe(true);
  });

  it('fails, listing each difference, when the mirror was changed behind its back', async () => {
    const data = path.join(mirror, 'data');
    // Same size, one byte different (content); a mode; an extra file; a missing file.
    const f = path.join(data, 'mixed2/dir1/f10');
    const st = await fsp.stat(f, { bigint: true });
    const fh = await fsp.open(f, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 1000);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, 1000);
    await fh.close();
    setTimesNs(f, st.atimeNs, st.mtimeNs);
    await fsp.chmod(path.join(data, 'mixed2/dir1/f0'), 0o600);
    await fsp.writeFile(path.join(data, 'mixed2/extra'), 'x');
    await fsp.rm(path.join(data, 'mixed1-renamed/deep-top/d2'));
    const r = await twinfs(`verify --primary '${t.dirs.primary}' --mirror '${mirror}'`);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/content\s+\/mixed2\/dir1\/f10/);
    expect(r.stdout).toMatch(/mode\s+\/mixed2\/dir1\/f0/);
    expect(r.stdout).toMatch(/extra-in-mirror\s+\/mixed2\/extra/);
    expect(r.stdout).toMatch(/missing-in-mirror\s+\/mixed1-renamed\/deep-top\/d2/);
    expect(r.stdout).toMatch(/4 difference\(s\)/);
  });
});
