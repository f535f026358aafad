import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/mounts.js';
import { mountFixture, type PosixFixture, pyIn, shInOk } from '../helpers/posix.js';

// Many processes at once on one mount. libfuse hands the ops to JS from many threads and async
// handlers interleave: every result here must still be what a local filesystem gives.

const PROCS = 8;

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture();
});
afterAll(async () => {
  await fx?.close();
});

/** Starts n copies of a python program in dir (argv[1] = 0..n-1) and waits for all. */
async function parallel(dir: string, n: number, program: string): Promise<string[]> {
  return Promise.all(
    Array.from({ length: n }, (_, i) => pyIn(dir, program, { args: [String(i)], timeoutMs: 60_000 })),
  );
}

describe('concurrent processes', () => {
  it('writers of disjoint regions of one file all land, read back and on the primary', async () => {
    await shInOk(fx.mnt, 'mkdir regions');
    const program = `
import os, sys
i = int(sys.argv[1])
fd = os.open('shared', os.O_CREAT | os.O_RDWR, 0o644)
for k in range(64):                     # interleaved 4 KiB blocks: block b belongs to b % ${PROCS}
    b = k * ${PROCS} + i
    os.pwrite(fd, bytes([65 + i]) * 4096, b * 4096)
    if k % 16 == 15:
        # read-your-writes while the others keep writing
        assert os.pread(fd, 4096, b * 4096) == bytes([65 + i]) * 4096
os.close(fd)
`;
    await parallel(path.join(fx.mnt, 'regions'), PROCS, program);
    const expected = Buffer.alloc(64 * PROCS * 4096);
    for (let b = 0; b < 64 * PROCS; b++) expected.fill(65 + (b % PROCS), b * 4096, (b + 1) * 4096);
    const sha = (d: Buffer) => createHash('sha1').update(d).digest('hex');
    expect(sha(await fsp.readFile(path.join(fx.mnt, 'regions/shared')))).toBe(sha(expected));
    await pyIn(fx.mnt, "import os\nfd = os.open('regions/shared', os.O_RDONLY)\nos.fsync(fd)");
    expect(sha(await fsp.readFile(path.join(fx.primary, 'regions/shared')))).toBe(sha(expected));
  });

  it('overlapping whole-file writes from many processes never mix within one write(2)', async () => {
    await shInOk(fx.mnt, 'mkdir overlap');
    const program = `
import os, sys
i = int(sys.argv[1])
fd = os.open('same', os.O_CREAT | os.O_RDWR, 0o644)
for k in range(30):
    os.pwrite(fd, bytes([65 + i]) * (256 * 1024), 0)   # two 128 KiB FUSE writes under one inode lock
    assert len(os.pread(fd, 256 * 1024, 0)) == 256 * 1024
os.close(fd)
`;
    await parallel(path.join(fx.mnt, 'overlap'), PROCS, program);
    const d = await fsp.readFile(path.join(fx.mnt, 'overlap/same'));
    expect(d.length).toBe(256 * 1024);
    expect(new Set(d).size).toBe(1);
  });

  it('O_APPEND writers never overwrite each other', async () => {
    await shInOk(fx.mnt, 'mkdir appends');
    const program = `
import os, sys
i = int(sys.argv[1])
fd = os.open('log', os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
for k in range(300):
    os.write(fd, ('%02d:%04d\\n' % (i, k)).encode())
os.close(fd)
`;
    await parallel(path.join(fx.mnt, 'appends'), PROCS, program);
    const lines = (await fsp.readFile(path.join(fx.mnt, 'appends/log'), 'utf8')).split('\n').filter(Boolean);
    expect(lines.length).toBe(PROCS * 300);
    expect(new Set(lines).size).toBe(PROCS * 300);
    // Each writer's lines stay in its own order.
    for (let i = 0; i < PROCS; i++) {
      const mine = lines.filter((l) => l.startsWith(`${String(i).padStart(2, '0')}:`));
      expect(mine).toEqual(
        Array.from({ length: 300 }, (_, k) => `${String(i).padStart(2, '0')}:${String(k).padStart(4, '0')}`),
      );
    }
  });

  it('create, rename, unlink and mkdir storms in one directory leave exactly the expected entries', async () => {
    await shInOk(fx.mnt, 'mkdir storm');
    const program = `
import os, sys
i = int(sys.argv[1])
for k in range(150):
    name = 'f%d-%d' % (i, k)
    with open(name, 'w') as f: f.write(name)
    if k % 3 == 0: os.rename(name, 'g%d-%d' % (i, k))
    if k % 5 == 0: os.unlink('g%d-%d' % (i, k) if k % 3 == 0 else name)
    if k % 10 == 0:
        os.mkdir('d%d-%d' % (i, k))
        with open('d%d-%d/inner' % (i, k), 'w') as f: f.write('x')
        if k % 20 == 0:
            os.unlink('d%d-%d/inner' % (i, k)); os.rmdir('d%d-%d' % (i, k))
`;
    await parallel(path.join(fx.mnt, 'storm'), PROCS, program);
    const expected: string[] = [];
    for (let i = 0; i < PROCS; i++) {
      for (let k = 0; k < 150; k++) {
        if (k % 5 !== 0) expected.push(k % 3 === 0 ? `g${i}-${k}` : `f${i}-${k}`);
        if (k % 10 === 0 && k % 20 !== 0) expected.push(`d${i}-${k}`);
      }
    }
    expected.sort();
    const viaMount = (await fsp.readdir(path.join(fx.mnt, 'storm'))).sort();
    expect(viaMount).toEqual(expected);
    expect((await fsp.readdir(path.join(fx.primary, 'storm'))).sort()).toEqual(expected);
    // Every surviving file holds its original name.
    const check = `
import os
bad = [n for n in os.listdir('.') if n[0] in 'fg' and open(n).read() != 'f' + n[1:]]
print(len(bad), bad[:5])
`;
    expect(await pyIn(path.join(fx.mnt, 'storm'), check)).toBe('0 []\n');
  });

  it('racing mkdir/rmdir and rename of the same names give only the local outcomes', async () => {
    await shInOk(fx.mnt, 'mkdir race && cd race && echo payload > a');
    const program = `
import errno, os, sys
i = int(sys.argv[1])
seen = set()
for k in range(200):
    for op in (lambda: os.mkdir('dir'), lambda: os.rmdir('dir'), lambda: os.rename('a', 'b'), lambda: os.rename('b', 'a')):
        try:
            op(); seen.add('OK')
        except OSError as e:
            seen.add(errno.errorcode[e.errno])
print(' '.join(sorted(seen)))
`;
    const outs = await parallel(path.join(fx.mnt, 'race'), PROCS, program);
    for (const o of outs)
      for (const code of o.trim().split(' ')) expect(['OK', 'EEXIST', 'ENOENT']).toContain(code);
    const left = (await fsp.readdir(path.join(fx.mnt, 'race'))).filter((n) => n !== 'dir');
    expect(left.length).toBe(1);
    expect(await fsp.readFile(path.join(fx.mnt, 'race', left[0]!), 'utf8')).toBe('payload\n');
    expect((await fsp.readdir(path.join(fx.primary, 'race'))).sort()).toEqual(
      (await fsp.readdir(path.join(fx.mnt, 'race'))).sort(),
    );
  });

  it('parallel readers see a consistent file while others rewrite other files', async () => {
    await shInOk(fx.mnt, 'mkdir rw && dd if=/dev/urandom of=rw/fixed bs=64k count=32 status=none');
    const want = createHash('sha1')
      .update(await fsp.readFile(path.join(fx.mnt, 'rw/fixed')))
      .digest('hex');
    const program = `
import hashlib, os, sys
i = int(sys.argv[1])
out = set()
for k in range(20):
    if i % 2:
        with open('fixed', 'rb') as f: out.add(hashlib.sha1(f.read()).hexdigest())
    else:
        with open('scratch%d' % i, 'wb') as f: f.write(os.urandom(65536 * 4))
        os.truncate('scratch%d' % i, 1000 * k)
print(' '.join(sorted(out)))
`;
    const outs = await parallel(path.join(fx.mnt, 'rw'), PROCS, program);
    for (let i = 1; i < PROCS; i += 2) expect(outs[i]!.trim()).toBe(want);
    for (let i = 0; i < PROCS; i += 2)
      expect((await fsp.stat(path.join(fx.mnt, `rw/scratch${i}`))).size).toBe(19_000);
  });

  it('small files written by many processes reach the primary soon after the write-back delay', async () => {
    // Default write-back delay: 3 s. Each cached file also holds a descriptor in the server
    // until written back, so a slow drain ends in EMFILE for untar-sized workloads.
    await shInOk(fx.mnt, 'mkdir small');
    await Promise.all(
      Array.from({ length: PROCS }, (_, i) =>
        shInOk(path.join(fx.mnt, 'small'), `for k in $(seq 1 50); do echo "p${i} $k" > p${i}-$k; done`),
      ),
    );
    const written = Date.now();
    const onPrimary = async () => {
      const names = await fsp.readdir(path.join(fx.primary, 'small'));
      let full = 0;
      for (const n of names) if ((await fsp.stat(path.join(fx.primary, 'small', n))).size > 0) full++;
      return full;
    };
    const done = await waitFor(async () => (await onPrimary()) === PROCS * 50, 8000, 200);
    expect({
      done,
      onPrimary: await onPrimary(),
      seconds: Math.round((Date.now() - written) / 1000),
    }).toMatchObject({
      done: true,
      onPrimary: PROCS * 50,
    });
  });

  it('a thousand files from many processes in one directory are all listed', async () => {
    await shInOk(fx.mnt, 'mkdir many');
    await Promise.all(
      Array.from({ length: PROCS }, (_, i) =>
        shInOk(path.join(fx.mnt, 'many'), `for k in $(seq 1 125); do echo $k > p${i}-$k; done`),
      ),
    );
    expect(await shInOk(path.join(fx.mnt, 'many'), 'ls | wc -l && cat * | wc -l && ls -f | wc -l')).toBe(
      `${PROCS * 125}\n${PROCS * 125}\n${PROCS * 125 + 2}\n`,
    );
  });
});
