import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { sh } from '../helpers/proc.js';
import { type MirroredVolume, mirroredVolume } from '../helpers/server.js';

/**
 * pjdfstest-style metadata pass with the mirror on (fixtures/meta-ops.py): ~75 namespace and
 * attribute operations (errnos of create/link/rename/rmdir/unlink/symlink corner cases, ELOOP,
 * ENAMETOOLONG, trailing slashes, fifos and sockets, setuid/sticky/setgid modes, xattrs, chmod and
 * utimens of a symlink itself) and, after each, which entries' mtime and ctime moved, their
 * link counts, modes and sizes, and entries that came, went, moved or were replaced. The oracle
 * is the kernel's own filesystem: the same program in a plain directory beside the primary.
 * Afterwards the mirror must hold what the primary holds (offline verify, times included).
 */

/**
 * Known divergence, a FUSE protocol limit: chown(path, -1, -1) changes nothing but ctime. Without
 * the kernel's write-back cache FUSE does not send that ctime (FATTR_CTIME) and high-level libfuse
 * has no call for an empty setattr, so the server never hears of it: ctime stays.
 */
const KNOWN: Record<string, string> = {
  'chown d/a -1 -1 = OK | d/a:c': 'chown d/a -1 -1 = OK | ',
};

async function metaOps(dir: string): Promise<string[]> {
  const r = await sh(`cd '${dir}' && ${PYTHON} '${path.join(FIXTURES, 'meta-ops.py')}'`, {
    timeoutMs: 60_000,
  });
  if (r.code !== 0) throw new Error(`meta-ops.py in ${dir} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r.stdout.trimEnd().split('\n');
}

describe('metadata operations through a mirrored mount, against the kernel’s own filesystem', () => {
  let v: MirroredVolume;
  beforeAll(async () => {
    v = await mirroredVolume({ extraDirs: ['plain'] });
    await v.start();
  });
  afterAll(async () => {
    await v?.close();
  });

  it('every operation has the local result and changes the same times, links and modes', async () => {
    const plain = await metaOps(v.dirs.plain!);
    await sh(`mkdir '${v.dirs.mnt}/t'`, { timeoutMs: 10_000 });
    const mnt = await metaOps(path.join(v.dirs.mnt!, 't'));
    // The oracle ran every step (the list is what the test is about).
    expect(plain.length).toBeGreaterThanOrEqual(75);
    expect(plain).toContain('stat a symlink loop = ELOOP | ');
    expect(mnt).toEqual(plain.map((l) => KNOWN[l] ?? l));
  });

  it('after unmount the mirror holds the primary’s tree, times included', async () => {
    expect(await v.stopServer()).toBe(0);
    const r = await v.verify();
    expect(r.report).toMatchObject({ differences: [] });
    expect(r.code).toBe(0);
  });
});
