import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pyIn } from '../helpers/posix.js';
import { type MirroredVolume, mirroredVolume } from '../helpers/server.js';
import { withVolumeOps } from '../mirror-driver/mirror-helpers.js';

// renameat2(2) through the mount (fuse-native patch level 15): RENAME_NOREPLACE is a rename that
// fails with EEXIST when the target exists, as on ext4 (coreutils' mv tries it first on every
// move; before, every one failed with EINVAL and mv fell back to a plain rename). RENAME_EXCHANGE
// and RENAME_WHITEOUT stay EINVAL (not supported; programs fall back). The same program runs in a
// plain directory on the primary's filesystem and through the mount; the results must agree,
// except for the two flags twinfs refuses.
const PROGRAM = `
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def r2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) == 0:
        return 'ok'
    return errno.errorcode[ctypes.get_errno()]
def names():
    return sorted(os.listdir('.'))
out = {}
with open('a', 'w') as f: f.write('A')
with open('b', 'w') as f: f.write('B')
out['onto existing'] = [r2('a', 'b', 1), open('a').read(), open('b').read()]
out['to a new name'] = [r2('a', 'c', 1), names(), open('c').read()]
os.link('c', 'c2')
out['onto another name of the file'] = [r2('c', 'c2', 1), names()]
os.mkdir('d'); os.mkdir('e')
with open('d/x', 'w') as f: f.write('X')
out['directory onto an empty one'] = [r2('d', 'e', 1), names()]
out['directory to a new name'] = [r2('d', 'f', 1), names(), open('f/x').read()]
out['missing source'] = r2('nothing', 'g', 1)
out['held target'] = None
fd = os.open('b', os.O_RDONLY)
out['held target'] = [r2('c', 'b', 1), names(), os.read(fd, 10).decode()]
os.close(fd)
out['exchange'] = r2('b', 'c', 2)
out['whiteout'] = r2('b', 'w', 4)
print(json.dumps(out))
`;

describe('renameat2 RENAME_NOREPLACE through the mount', () => {
  let v: MirroredVolume;
  beforeAll(async () => {
    v = await mirroredVolume({ extraDirs: ['plain'], timeoutMs: 60_000 });
    await v.start();
  });
  afterAll(async () => {
    await v?.close();
  });

  it('fails with EEXIST on a target that exists and renames to one that does not, as on ext4', async () => {
    const plain = JSON.parse(await pyIn(v.dirs.plain!, PROGRAM));
    const mounted = JSON.parse(await pyIn(v.dirs.mnt!, PROGRAM));
    expect(plain).toMatchObject({
      'onto existing': ['EEXIST', 'A', 'B'],
      'to a new name': ['ok', ['b', 'c'], 'A'],
      'onto another name of the file': ['EEXIST', ['b', 'c', 'c2']],
      'directory onto an empty one': ['EEXIST', ['b', 'c', 'c2', 'd', 'e']],
      'directory to a new name': ['ok', ['b', 'c', 'c2', 'e', 'f'], 'X'],
      'missing source': 'ENOENT',
      'held target': ['EEXIST', ['b', 'c', 'c2', 'e', 'f'], 'B'],
    });
    // Not supported through the mount: EINVAL, what a filesystem without them answers.
    expect({ exchange: mounted.exchange, whiteout: mounted.whiteout }).toEqual({
      exchange: 'EINVAL',
      whiteout: 'EINVAL',
    });
    for (const k of ['exchange', 'whiteout']) {
      delete mounted[k];
      delete plain[k];
    }
    expect(mounted).toEqual(plain);
  });

  it('the mirror holds the renamed names', async () => {
    expect(await v.stopServer()).toBe(0);
    expect((await fsp.readdir(path.join(v.dirs.mirror!, 'data'))).sort()).toEqual(['b', 'c', 'c2', 'e', 'f']);
    expect(await fsp.readFile(path.join(v.dirs.mirror!, 'data', 'f', 'x'), 'utf8')).toBe('X');
    const { code, report } = await v.verify();
    expect(report).toMatchObject({ ok: true });
    expect(code).toBe(0);
  });
});

describe('RENAME_NOREPLACE onto a name the kernel did not know', () => {
  it('fails with EEXIST, changes nothing, and reports nothing to the mirror', async () => {
    // In this process, the way FUSE calls the filesystem: the kernel refuses a NOREPLACE onto a
    // name its own lookup finds, so only a name made behind the server reaches this check.
    await withVolumeOps(
      (P) => fsp.writeFile(`${P}/f`, 'F'),
      async ({ ops, d, P, since }) => {
        await fsp.writeFile(`${P}/g`, 'G');
        await expect(ops.rename('/f', '/g', undefined, 1)).rejects.toMatchObject({ code: 'EEXIST' });
        await expect(ops.rename('/f', '/h', undefined, 2)).rejects.toMatchObject({ code: 'EINVAL' });
        expect(await fsp.readFile(`${P}/f`, 'utf8')).toBe('F');
        expect(await fsp.readFile(`${P}/g`, 'utf8')).toBe('G');
        expect(d.changesSince(since).renamed).toEqual([]);
        await ops.rename('/f', '/h', undefined, 1);
        expect((await fsp.readdir(P)).sort()).toEqual(['g', 'h']);
        expect(d.changesSince(since).renamed).toEqual([{ from: '/f', to: '/h' }]);
      },
    );
  });
});
