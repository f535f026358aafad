import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, pyIn } from '../helpers/posix.js';

// The libfuse3 path (`serve --fuse 3`): the kernel caches attributes, entries and pages, and
// twinfs keeps those caches exact for every name of a hard-linked file. High-level libfuse gives
// each name its own kernel inode, so after a change through one name the others would show the
// old nlink, mode, owner, size, times and data unless twinfs invalidates them.

let fx: PosixFixture;
beforeAll(async () => {
  fx = await mountFixture(['--fuse', '3']);
});
afterAll(async () => {
  await fx?.close();
});

// Each check runs in its own process, as another program would: fsync through the first name
// (so cached data is on the primary), then lstat and read every name through the mount, and the
// primary's file as the oracle.
const LOOK = `
import json, os, sys
names = sys.argv[1:]
fd = os.open(names[0], os.O_RDONLY)
os.fsync(fd)
os.close(fd)
def attrs(p):
    st = os.lstat(p)
    return [st.st_nlink, oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns]
out = {}
for n in names:
    with open(n, 'rb') as f:
        out[n] = attrs(n) + [f.read().hex()]
print(json.dumps(out))
`;

type Seen = Record<string, Array<number | string>>;

/** Runs python statements (os imported) in dir, in a process of their own. */
const py = (dir: string, code: string) => pyIn(dir, `import os\n${code}\n`);

async function look(dir: string, names: string[]): Promise<Seen> {
  return JSON.parse(await pyIn(dir, LOOK, { args: names })) as Seen;
}

async function oracle(name: string): Promise<Array<number | string>> {
  const p = path.join(fx.primary, 'hk', name);
  const st = await fsp.lstat(p, { bigint: true });
  const data = await fsp.readFile(p);
  return [
    Number(st.nlink),
    `0o${Number(st.mode).toString(8)}`,
    Number(st.uid),
    Number(st.gid),
    Number(st.size),
    Number(st.mtimeNs),
    data.toString('hex'),
  ];
}

// A writer of unaligned pwrites through one name (each write(2) covers part of a page, which the
// kernel keeps locked until the WRITE is answered); the second one fsyncs every 8 writes.
const WRITER = `
import os, sys
name, count, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'
fd = os.open(name, os.O_WRONLY)
buf = bytes([65 + len(name) % 26]) * 1000
for i in range(count):
    os.pwrite(fd, buf, (i % 200) * 1000 + 7)
    if sync and i % 8 == 7:
        os.fsync(fd)
os.close(fd)
print(count)
`;

describe('kernel caching on the libfuse3 path', () => {
  it('two writers through two names of one file both finish (each WRITE waited for the other name: a hang)', async () => {
    await py(fx.mnt, "os.mkdir('tw'); open('tw/a', 'wb').write(bytes(262144)); os.link('tw/a', 'tw/b')");
    const dir = path.join(fx.mnt, 'tw');
    await look(dir, ['a', 'b']);
    // Before the fix this hung within seconds in every run: the write through a waited for b's
    // invalidation, which waited for the page locked by the write through b, which waited for
    // a's invalidation queued behind it. A hang fails here on the timeout.
    const runs = await Promise.all([
      pyIn(dir, WRITER, { args: ['a', '3000', '0'], timeoutMs: 120_000 }),
      pyIn(dir, WRITER, { args: ['b', '3000', '1'], timeoutMs: 120_000 }),
    ]);
    expect(runs.map((r) => r.trim())).toEqual(['3000', '3000']);
    // And both names still show one file's content afterwards.
    const seen = await look(dir, ['a', 'b']);
    expect(seen.a).toEqual(seen.b);
  });

  it('serves stat from the kernel cache (a change behind the server is not seen)', async () => {
    await py(fx.mnt, "os.mkdir('kc'); open('kc/f', 'w').write('x'); os.chmod('kc/f', 0o644)");
    expect(await py(fx.mnt, "print(oct(os.lstat('kc/f').st_mode))")).toBe('0o100644\n');
    // Behind twinfs's back (the primary belongs to twinfs while mounted): a cached attribute
    // stays; with attr_timeout=0 (the libfuse2 path) the new mode would show at once.
    await fsp.chmod(path.join(fx.primary, 'kc/f'), 0o600);
    expect(await py(fx.mnt, "print(oct(os.lstat('kc/f').st_mode))")).toBe('0o100644\n');
  });

  it('every name of a hard link shows the change made through another name, at once', async () => {
    await py(
      fx.mnt,
      "os.mkdir('hk'); open('hk/a', 'w').write('first'); os.link('hk/a', 'hk/b'); os.link('hk/a', 'hk/c')",
    );
    let names = ['a', 'b', 'c'];
    const dir = path.join(fx.mnt, 'hk');
    // Fill the kernel's caches (attributes, pages) under every name.
    await look(dir, names);
    // [what, program run in the directory, the names afterwards, whether it changes what lstat
    // and read show (a rename alone moves only ctime)]
    const steps: Array<[label: string, program: string, after: string[], changes: boolean]> = [
      ['chmod through b', "os.chmod('b', 0o640)", names, true],
      ['chown through c', "os.chown('c', 1234, 5678)", names, true],
      ['write through a', "f = open('a', 'r+b'); f.seek(2); f.write(b'XYZ-longer'); f.close()", names, true],
      ['truncate through b', "os.truncate('b', 4)", names, true],
      ['utimens through c', "os.utime('c', ns=(1_000_000_123, 1_500_000_456))", names, true],
      ['link through a', "os.link('a', 'd')", ['a', 'b', 'c', 'd'], true],
      ['unlink through d', "os.unlink('d')", names, true],
      ['rename over c', "open('x', 'w').write('other'); os.rename('x', 'c')", ['a', 'b'], true],
      ['rename of b', "os.rename('b', 'e')", ['a', 'e'], false],
      ['chmod through a', "os.chmod('a', 0o604)", ['a', 'e'], true],
      ['append through e', "f = open('e', 'ab'); f.write(b'++'); f.close()", ['a', 'e'], true],
    ];
    let before = await look(dir, names);
    for (const [label, program, after, changes] of steps) {
      await py(dir, program);
      names = after;
      const seen = await look(dir, names);
      const truth = await oracle(names[0]!);
      for (const n of names)
        expect({ step: label, name: n, seen: seen[n] }).toEqual({ step: label, name: n, seen: truth });
      // The step changed what a stale cache would show, so the check above can fail.
      const stale = JSON.stringify(Object.values(before)[0]);
      expect({ step: label, changed: JSON.stringify(truth) !== stale }).toEqual({
        step: label,
        changed: changes,
      });
      before = seen;
    }
  });
});
