import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../control/control-fixture.js';
import { PYTHON, shIn } from '../helpers/posix.js';
import { type MirroredVolume, mirroredVolume } from '../helpers/server.js';

/**
 * rmdir(2) of a directory whose last file is unlinked while another process still has it open
 * succeeds, and that process keeps reading and writing the file through its descriptor until it
 * closes it (as on ext4). High-level libfuse renames such a file to `.fuse_hidden…` instead of
 * unlinking it (removed at the last release), so the directory was not empty for the filesystem
 * and the rmdir failed with ENOTEMPTY (stress seeds 2809, 2910, 3200). Each case runs in a child
 * process, in a plain directory (the oracle) and through the mount; the mirror never holds a
 * `.fuse_hidden` name.
 */

// mkdir d; d/f written (and d/g with -busy: d is not empty for the application either); a
// holder process opens d/f; d/f unlinked; rmdir d (or a directory e renamed over d); the holder
// then writes, reads back and fstats through its descriptor, and closes it. The listing leaves
// out libfuse's hidden names (still there while the holder has the file open, with -busy).
const SCRIPT = `
import json, os, subprocess, sys
os.mkdir(sys.argv[1]); os.chdir(sys.argv[1])
os.mkdir('d')
with open('d/f', 'w') as fh: fh.write('data\\n')
if sys.argv[2].endswith('-busy'):
    with open('d/g', 'w') as fh: fh.write('g\\n')
holder = subprocess.Popen([sys.executable, '-c', '''
import os, sys
fd = os.open("d/f", os.O_RDWR)
print("open", flush=True)
sys.stdin.readline()
out = {}
def op(name, f):
    try:
        r = f()
        if r is not None: out[name] = r
    except OSError as e:
        out[name] = e.strerror
op("write", lambda: os.pwrite(fd, b"more\\\\n", 5) and None)
op("read", lambda: os.pread(fd, 100, 0).decode())
op("size", lambda: os.fstat(fd).st_size)
op("fsync", lambda: os.fsync(fd))
op("close", lambda: os.close(fd))
print(__import__("json").dumps(out), flush=True)
'''], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == 'open'
os.unlink('d/f')
if sys.argv[2].startswith('rename'):
    os.mkdir('e')
    with open('e/kept', 'w') as fh: fh.write('kept\\n')
out = {}
try:
    if sys.argv[2].startswith('rename'): os.rename('e', 'd')
    else: os.rmdir('d')
    out['done'] = 'ok'
except OSError as e:
    out['done'] = e.strerror
out['listing'] = sorted(os.path.join(r, n) for r, ds, fs in os.walk('.') for n in ds + fs if not n.startswith('.fuse_hidden'))
holder.stdin.write('go\\n'); holder.stdin.flush()
out['holder'] = json.loads(holder.stdout.readline())
holder.wait()
print(json.dumps(out))
`;

async function rmdirOpenUnlinked(dir: string, name: string, op: Op): Promise<Record<string, unknown>> {
  const r = await shIn(dir, `${PYTHON} - ${name} ${op}`, { input: SCRIPT, timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`script in ${dir} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

/** rmdir of the directory, or rename of another directory over it; -busy: d holds d/g too. */
type Op = 'rmdir' | 'rename' | 'rmdir-busy' | 'rename-busy';
const OPS: Op[] = ['rmdir', 'rename', 'rmdir-busy', 'rename-busy'];
const PLAIN_LISTING: Record<Op, string[]> = {
  rmdir: [],
  rename: ['./d', './d/kept'],
  'rmdir-busy': ['./d', './d/g'],
  'rename-busy': ['./d', './d/g', './e', './e/kept'],
};

/** Every name under dir (recursively) that libfuse's hiding made. */
async function hiddenNames(dir: string): Promise<string[]> {
  const all = (await fsp.readdir(dir, { recursive: true })) as string[];
  return all.filter((n) => path.basename(n).startsWith('.fuse_hidden'));
}

for (const libfuse of [2, 3] as const) {
  describe(`rmdir of a directory whose file is unlinked while open (libfuse${libfuse})`, () => {
    let v: MirroredVolume;
    beforeAll(async () => {
      v = await mirroredVolume({
        extraDirs: ['plain'],
        args: ['--fuse', String(libfuse)],
        timeoutMs: 60_000,
      });
      await v.start();
    });
    afterAll(async () => {
      await v?.close();
    });

    it.each(OPS)(
      '%s ends as on ext4, and the open file stays readable and writable until closed',
      async (op) => {
        const plain = await rmdirOpenUnlinked(v.dirs.plain!, op, op);
        expect(plain).toMatchObject({
          listing: PLAIN_LISTING[op],
          holder: { read: 'data\nmore\n', size: 10 },
        });
        // Busy: d keeps d/g, the hidden name is not dropped, and the call fails as on ext4.
        if (op.endsWith('-busy')) expect(['Directory not empty', 'File exists']).toContain(plain.done);
        else expect(plain.done).toBe('ok');
        const mounted = await rmdirOpenUnlinked(v.dirs.mnt!, op, op);
        // Not fstat: the kernel asks for the attributes of the inode without the handle, and
        // high-level libfuse has no path for it once its directory is gone (ENOENT, or ESTALE on
        // libfuse3). docs/reliability.md, "rmdir of a directory holding .fuse_hidden names".
        delete (mounted.holder as Record<string, unknown>).size;
        delete (plain.holder as Record<string, unknown>).size;
        expect(mounted).toEqual(plain);
        const top = { rmdir: [], rename: ['d'], 'rmdir-busy': ['d'], 'rename-busy': ['d', 'e'] }[op];
        expect((await fsp.readdir(path.join(v.dirs.primary!, op))).sort()).toEqual(top);
        // The holder closed the file: libfuse removes its hidden name at the last release.
        if (op.endsWith('-busy'))
          await waitUntil(
            async () => (await fsp.readdir(path.join(v.dirs.primary!, op, 'd'))).join() === 'g',
            10_000,
            'the hidden name gone',
          );
      },
    );

    it('the mirror holds the same, and no hidden name', async () => {
      expect(await v.stopServer()).toBe(0);
      expect(await fsp.readdir(path.join(v.dirs.mirror!, 'data', 'rmdir'))).toEqual([]);
      expect(await fsp.readdir(path.join(v.dirs.mirror!, 'data', 'rename', 'd'))).toEqual(['kept']);
      expect(await fsp.readdir(path.join(v.dirs.mirror!, 'data', 'rmdir-busy', 'd'))).toEqual(['g']);
      expect(await fsp.readdir(path.join(v.dirs.mirror!, 'data', 'rename-busy', 'd'))).toEqual(['g']);
      expect(await fsp.readdir(path.join(v.dirs.mirror!, 'data', 'rename-busy', 'e'))).toEqual(['kept']);
      expect(await hiddenNames(path.join(v.dirs.mirror!, 'data'))).toEqual([]);
      const { code, report } = await v.verify();
      expect(report).toMatchObject({ ok: true });
      expect(code).toBe(0);
    });
  });
}
