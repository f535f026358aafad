import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { type ControlFixture, startControlFixture, status, waitUntil } from '../control/control-fixture.js';
import { pyIn } from '../helpers/posix.js';

/**
 * libfuse3 with cache_readdir: the kernel keeps a directory's listing in its page cache across
 * opens, so a second walk of an unchanged tree reads no listing from twinfs. Every change of a
 * directory's entries must still show in the next listing, whoever makes it: changes through the
 * mount (the kernel drops the cached listing itself), and libfuse's removal of a hidden file at
 * its last close, which no request of the kernel's announces (twinfs invalidates the directory).
 */

/** The names and types of a directory, listed by a process of its own through the mount. */
const LIST = `
import json, os, sys
print(json.dumps(sorted([e.name, e.is_dir(follow_symlinks=False), e.is_symlink()] for e in os.scandir(sys.argv[1]))))
`;

describe('directory listings cached by the kernel (libfuse3)', () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const kc = async () => (await status(c)).fs.kernelCache as Record<string, number>;
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);
  const listed = async (dir: string) => JSON.parse(await pyIn(fx.mnt, LIST, { args: [dir] })) as unknown[];
  /** The same, read on the primary: the oracle. */
  const truth = async (dir: string) => {
    const out: Array<[string, boolean, boolean]> = [];
    for (const e of await fsp.readdir(path.join(fx.primary, dir), { withFileTypes: true }))
      out.push([e.name, e.isDirectory(), e.isSymbolicLink()]);
    return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  };

  beforeAll(async () => {
    fx = await startControlFixture({ args: ['--fuse', '3'] });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('an unchanged directory is listed from the kernel cache', async () => {
    await py("os.makedirs('rc/sub'); [open(f'rc/f{i}', 'w').write('x') for i in range(20)]");
    expect(await listed('rc')).toEqual(await truth('rc'));
    const before = (await kc()).readdirs!;
    // Listed again by two other processes, lstat of every entry too: nothing asked of twinfs.
    expect(await listed('rc')).toEqual(await truth('rc'));
    await py("[os.lstat('rc/' + n) for n in os.listdir('rc')]");
    expect((await kc()).readdirs).toBe(before);
  });

  it('every change of the entries shows in the next listing, made by another process', async () => {
    await py(
      "os.makedirs('ch/in'); os.mkdir('ch/out'); open('ch/in/m', 'w').write('m'); open('ch/a', 'w').write('a'); open('ch/b', 'w').write('b')",
    );
    // [what, program run in the mount, the directories it changes]
    const steps: Array<[label: string, program: string, dirs: string[]]> = [
      ['create', "open('ch/new', 'w').write('n')", ['ch']],
      ['unlink', "os.unlink('ch/a')", ['ch']],
      ['rename in', "os.rename('ch/in/m', 'ch/m')", ['ch', 'ch/in']],
      ['rename out', "os.rename('ch/b', 'ch/out/b')", ['ch', 'ch/out']],
      ['rename within', "os.rename('ch/new', 'ch/renamed')", ['ch']],
      ['rename over a name', "os.rename('ch/m', 'ch/renamed')", ['ch']],
      ['mkdir', "os.mkdir('ch/d')", ['ch']],
      ['symlink', "os.symlink('renamed', 'ch/s')", ['ch']],
      ['link', "os.link('ch/renamed', 'ch/out/l')", ['ch/out']],
      ['rmdir', "os.rmdir('ch/d')", ['ch']],
      ['rename of a directory', "os.rename('ch/out', 'ch/moved')", ['ch', 'ch/moved']],
      [
        'a directory replaced by a file of its name',
        "os.rmdir('ch/in'); open('ch/in', 'w').write('f')",
        ['ch'],
      ],
    ];
    for (const [label, program, dirs] of steps) {
      // Each listing cached first (read twice: the second from the cache).
      for (const d of dirs) if (d !== 'ch/moved') await listed(d);
      const old = JSON.stringify(await listed('ch'));
      await py(program);
      for (const d of dirs)
        expect({ step: label, dir: d, seen: await listed(d) }).toEqual({
          step: label,
          dir: d,
          seen: await truth(d),
        });
      // The step changed what a stale cached listing would show, so the check above can fail.
      expect({
        step: label,
        changed: JSON.stringify(await truth(dirs[0]!)) !== old || dirs[0] !== 'ch',
      }).toEqual({
        step: label,
        changed: true,
      });
    }
  });

  it("libfuse's removal of a hidden file at its last close shows in the next listing", async () => {
    await py("os.mkdir('hid'); open('hid/keep', 'w').write('k'); open('hid/h', 'w').write('h')");
    const ready = path.join(fx.base, 'holder-ready');
    const done = path.join(fx.base, 'holder-done');
    // A process holds h open until told; unlinking h then makes libfuse hide it (a rename to
    // .fuse_hidden…), and its close makes libfuse unlink that name, with no kernel request.
    const holder = pyIn(
      fx.mnt,
      `import os, time\nfd = os.open('hid/h', os.O_RDONLY)\nopen('${ready}', 'w').close()\nwhile not os.path.exists('${done}'): time.sleep(0.02)\nos.close(fd)\n`,
      { timeoutMs: 60_000 },
    );
    await waitUntil(
      async () =>
        fsp.access(ready).then(
          () => true,
          () => false,
        ),
      20_000,
      'the holder opened h',
    );
    await py("os.unlink('hid/h')");
    const hidden = await truth('hid');
    expect(hidden.map((e) => e[0]).some((n) => n.startsWith('.fuse_hidden'))).toBe(true);
    expect(await listed('hid')).toEqual(hidden);
    expect(await listed('hid')).toEqual(hidden);
    const before = await kc();
    await fsp.writeFile(done, '');
    await holder;
    // libfuse unlinked the hidden name on the primary, and twinfs has sent what it sends for it.
    await waitUntil(async () => (await truth('hid')).length === 1, 20_000, 'the hidden name removed');
    await waitUntil(
      async () => {
        const k = await kc();
        return k.listings! > before.listings! && k.done! >= k.queued!;
      },
      20_000,
      'the directory invalidated',
    );
    expect(await listed('hid')).toEqual([['keep', false, false]]);
  });
});
