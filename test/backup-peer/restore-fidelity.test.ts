import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdirNoAtime } from '../../src/posix/readdir.js';
import { readXattrs, setXattr } from '../../src/posix/xattr.js';
import { runCli } from '../helpers/cli.js';
import { PYTHON } from '../helpers/posix.js';
import { shOk } from '../helpers/proc.js';
import { ROOT, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

const MAKE_KINDS = path.join(ROOT, 'test/backup-peer/fixtures/make-kinds.py');

/**
 * Invariant 11 end to end (issue 10, "faithful restore"): a tree with every kind of entry is
 * made through a real mount (`twinfs serve --mirror --control`), backed up by a real peer
 * process from the split mirror into a `dir:` and a `tar:` target, restored by `twinfs
 * restore`, and the restored tree is compared with the primary: content, hard-link structure
 * (groups of names by inode), type, rdev, xattrs (POSIX ACLs included), owners (symlinks
 * included, by lstat), modes, and atime/mtime to the ns (a symlink's atime excepted:
 * reading one moves it, see describeTree).
 */
describe('restore gives back what was backed up (real server, real peer)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: Record<string, string>;
  let srv: ServerHandle;
  let common: string[];
  let pluginState: string;

  beforeAll(async () => {
    pluginState = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-fidelity-plugins-'));
    process.env.TWINFS_PLUGIN_STATE = path.join(pluginState, 'state');
    process.env.TWINFS_PLUGIN_PATH = path.join(pluginState, 'user');
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc', 'backups', 'catalog');
    d = t.dirs;
    // ACLs cannot be set through the mount (libfuse2 cannot enforce them: volume-ops refuses
    // them), but a primary may hold them from before: the mirror and backups must carry them.
    await fsp.mkdir(path.join(d.primary!, 'acl'));
    await fsp.writeFile(path.join(d.primary!, 'acl/f'), 'acl file');
    setXattr(path.join(d.primary!, 'acl/f'), 'system.posix_acl_access', acl(0o6, [[1234, 0o4]], 0o4, 0o4, 0));
    setXattr(path.join(d.primary!, 'acl'), 'system.posix_acl_access', acl(0o7, [[1234, 0o5]], 0o5, 0o5, 0));
    setXattr(path.join(d.primary!, 'acl'), 'system.posix_acl_default', acl(0o7, [[4321, 0o7]], 0o5, 0o7, 0));
    srv = await startServer({
      primary: d.primary!,
      mount: d.mnt!,
      args: [
        '--mirror',
        d.mirror!,
        '--state-dir',
        d.state!,
        '--control',
        '127.0.0.1:0',
        '--token-file',
        path.join(d.etc!, 'token'),
      ],
    });
    const url = (srv.events.find((e) => e.event === 'mounted') as { control: { url: string } }).control.url;
    common = ['--server', url, '--token-file', path.join(d.etc!, 'token'), '--catalog', d.catalog!];
    await shOk(`timeout 60 ${PYTHON} ${MAKE_KINDS} '${d.mnt}'`, { timeoutMs: 70_000 });
  }, 90_000);

  afterAll(async () => {
    await srv?.stop().catch(() => srv.kill());
    await t?.cleanup();
    if (pluginState) await fsp.rm(pluginState, { recursive: true, force: true });
  });

  // The second dir: run is an incremental one: unchanged files are shared with the first
  // snapshot (reuseFile), and their other names are linked to them in the new one.
  for (const [name, kind, reused] of [
    ['dir', 'dir', false],
    ['dir, incremental', 'dir', true],
    ['tar', 'tar', false],
  ] as const) {
    it(`${name}: back up the volume, restore it, and get the same tree`, async () => {
      const spec = `${kind}:${path.join(d.backups!, kind)}`;
      const b = await runCli(['backup', ...common, '--target', spec, '--json'], { timeoutMs: 120_000 });
      expect(b.code, b.stderr).toBe(0);
      const id = b.last.snapshotId as string;
      expect(b.last.totals).toMatchObject({ nodes: 6, hardLinks: 4, skipped: 0 });
      if (reused) expect(b.last.totals.reusedFiles).toBeGreaterThan(0);
      const to = path.join(t.base, `restored-${name.replace(/\W+/g, '-')}`);
      const r = await runCli(['restore', id, '--to', to, '--catalog', d.catalog!, '--json'], {
        timeoutMs: 120_000,
      });
      expect(r.code, r.stderr).toBe(0);
      expect(r.last).toMatchObject({ event: 'done', failures: [] });
      const want = await describeTree(d.primary!);
      const got = await describeTree(to);
      // Every kind is there (the fixture did make them all), then the whole trees are equal.
      const types = new Set(Object.values(want.entries).map((e) => e.type));
      expect([...types].sort()).toEqual(['block', 'char', 'dir', 'fifo', 'file', 'socket', 'symlink']);
      // Names that are not UTF-8 read back as their bytes (U+DC00 + byte: src/posix/byte-names.ts).
      expect(want.linkGroups).toEqual([
        ['/bytes\udcff/caf\udce9', '/bytes\udcff/l\udcfe'],
        ['/d/h3', '/d/sub/h2', '/h1'],
        ['/d/pair-a', '/pair-b'],
      ]);
      expect(got.entries).toEqual(want.entries);
      expect(got.linkGroups).toEqual(want.linkGroups);
      // Sparse comes back sparse: 8 MiB of hole take (almost) no blocks.
      expect((await fsp.stat(path.join(to, 'd/sparse'))).blocks * 512).toBeLessThan(1024 * 1024);
      const c = await runCli(['check', id, '--catalog', d.catalog!]);
      expect(c.code, c.stdout + c.stderr).toBe(0);
      // A part of the snapshot without the name the others link to: the selected names still
      // come back as one file.
      const part = `${to}-part`;
      const rp = await runCli(['restore', id, '/d', '--to', part, '--catalog', d.catalog!, '--json']);
      expect(rp.code, rp.stderr).toBe(0);
      const [h3, h2] = await Promise.all(['d/h3', 'd/sub/h2'].map((p) => fsp.lstat(path.join(part, p))));
      expect([h3!.ino, h3!.nlink, h3!.size]).toEqual([h2!.ino, 2, 17000]);
      expect(await fsp.readFile(path.join(part, 'd/h3'), 'utf8')).toBe('hard-linked data\n'.repeat(1000));
    }, 240_000);
  }
});

interface Described {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  rdev?: number;
  sha?: string;
  target?: string;
  xattrs: Record<string, string>;
  mtimeNs: string;
  atimeNs?: string;
}

/** Everything a restore must give back, per path, and the hard-link groups (paths by inode). */
async function describeTree(
  root: string,
): Promise<{ entries: Record<string, Described>; linkGroups: string[][] }> {
  const entries: Record<string, Described> = {};
  const byIno = new Map<string, string[]>();
  const walk = async (rel: string) => {
    for (const name of readdirNoAtime(path.join(root, rel)).sort()) {
      const r = `${rel}/${name}`;
      const abs = path.join(root, r);
      const st = await fsp.lstat(abs, { bigint: true });
      const type = typeName(st);
      const e: Described = {
        type,
        mode: Number(st.mode),
        uid: Number(st.uid),
        gid: Number(st.gid),
        size: type === 'file' || type === 'symlink' ? Number(st.size) : 0,
        nlink: type === 'dir' ? 0 : Number(st.nlink),
        xattrs: Object.fromEntries([...readXattrs(abs)].map(([k, v]) => [k, v.toString('hex')])),
        mtimeNs: String(st.mtimeNs),
      };
      // Reading a symlink moves its atime (relatime: ctime is newer once times were set) and
      // readlink cannot ask for O_NOATIME: the peer's copy of the mirror and this comparison
      // both move them. Files and directories are read with O_NOATIME, here and by the peer.
      if (type !== 'symlink') e.atimeNs = String(st.atimeNs);
      if (type === 'char' || type === 'block') e.rdev = Number(st.rdev);
      if (type === 'symlink') e.target = await fsp.readlink(abs);
      if (type === 'file') {
        e.sha = sha256NoAtime(abs);
        if (st.nlink > 1n) {
          const k = String(st.ino);
          byIno.set(k, [...(byIno.get(k) ?? []), r]);
        }
      }
      entries[r] = e;
      if (type === 'dir') await walk(r);
    }
  };
  await walk('');
  const linkGroups = [...byIno.values()].map((g) => g.sort()).sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
  return { entries, linkGroups };
}

function typeName(st: fs.BigIntStats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFile()) return 'file';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isSocket()) return 'socket';
  return 'other';
}

/** The content's sha256, read without moving the file's atime (this test compares atimes). */
function sha256NoAtime(file: string): string {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOATIME);
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(1 << 20);
    for (let n: number; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
    return h.digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A POSIX ACL in the kernel's xattr format (version 2; entries tag, perm, id, sorted by tag):
 * owner, named users, group, mask, other.
 */
function acl(
  owner: number,
  users: Array<[number, number]>,
  group: number,
  mask: number,
  other: number,
): Buffer {
  const entries: Array<[number, number, number]> = [
    [0x01, owner, 0xffffffff],
    ...users.map(([id, perm]): [number, number, number] => [0x02, perm, id]),
    [0x04, group, 0xffffffff],
    [0x10, mask, 0xffffffff],
    [0x20, other, 0xffffffff],
  ];
  const b = Buffer.alloc(4 + entries.length * 8);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + i * 8);
    b.writeUInt16LE(perm, 6 + i * 8);
    b.writeUInt32LE(id, 8 + i * 8);
  });
  return b;
}
