import { spawn } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { TwinFs } from '../../src/fusefs/index.js';
import {
  type ControlFixture,
  expectMirrorClean,
  nativeChangeStats,
  startControlFixture,
  stormFromBase,
  volumeGeneration,
  waitUntil,
} from '../control/control-fixture.js';
import { unmountAll } from '../helpers/mounts.js';
import { PYTHON, pyIn, shIn } from '../helpers/posix.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import {
  type InProcess,
  mountInProcess,
  openDriver,
  pairedVolume,
  waitForEvent,
} from '../mirror-driver/mirror-helpers.js';

/**
 * The libfuse3 path answers CREATE in libfuse's threads (native-create.h in the fuse-native
 * patch; the default, TWINFS_NATIVE_CREATE=0 turns it off) and hands the new file to JS through
 * the native unlinks' queue. The file's WRITE, FLUSH and RELEASE then name a handle JS never gave out: the
 * data must still reach the cache, the primary and the mirror; the mirror and the change record
 * must see every create in the primary's order (with the unlinks and JS's own changes); a
 * create needing an owner change, or made while a freeze or prepare inhibits writes, goes to JS.
 */

/** Create/write/rename/unlink storm of one worker in directory c<N> (argv: N, rounds). */
const STORM = `
import os, sys
w, rounds = sys.argv[1], int(sys.argv[2])
d = 'c' + w
os.makedirs(d, exist_ok=True)
for r in range(rounds):
    for i in range(8):
        p = '%s/n%d' % (d, i)
        if os.path.exists(p):
            os.unlink(p)
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.write(fd, (b'%d %d %s\\n' % (r, i, w.encode())) * (i + 1))
        os.close(fd)
        if i % 3 == 0:
            os.rename(p, p + '.r')
            os.rename(p + '.r', p)
        if i % 4 == 1:
            os.unlink(p)
`;

describe("create answered in libfuse's threads (libfuse3)", () => {
  let fx: ControlFixture;
  let c: ControlClient;
  const stats = () => nativeChangeStats(c);
  const py = (code: string) => pyIn(fx.mnt, `import os\n${code}\n`);

  beforeAll(async () => {
    fx = await startControlFixture({ args: ['--fuse', '3'] });
    c = await fx.connect();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('files created natively reach the primary, the mirror and a prepare with their data, modes and change entries', async () => {
    const since = await volumeGeneration(c);
    const before = await stats();
    expect(before.enabled).toBe(true);
    await py(
      "os.mkdir('a')\nfor i in range(20):\n  fd = os.open('a/f%d' % i, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600 + i % 2 * 0o40); os.write(fd, b'%d' % i * (100 * i + 1)); os.close(fd)",
    );
    const after = await stats();
    expect(after.creates - before.creates).toBe(20);
    // Each file's one write(2) went natively or, when JS took the create first (the previous
    // file's RELEASE, which close(2) does not wait for, may come between), to JS.
    expect(after.writes + after.writeFallbacks - before.writes - before.writeFallbacks).toBe(20);
    expect(after.writes).toBeGreaterThan(before.writes);
    expect(after.busy).toBe(0);
    for (let i = 0; i < 20; i++) {
      const want = Buffer.from(String(i).repeat(100 * i + 1));
      // Read through the mount from a child: the cache answers before any write-back.
      const r = await shIn(fx.mnt, `cat a/f${i}`, { timeoutMs: 30_000 });
      expect(r.stdout).toBe(want.toString());
    }
    const p = await c.prepare({ subtree: '/a' }, { since: since });
    try {
      expect(p.changes?.unknown).toBeUndefined();
      for (let i = 0; i < 20; i++) {
        const want = Buffer.from(String(i).repeat(100 * i + 1));
        expect(p.changes?.changed).toContain(`/a/f${i}`);
        expect(await fsp.readFile(path.join(fx.primary, `a/f${i}`))).toEqual(want);
        expect(await fsp.readFile(path.join(p.mirrorRoot, `a/f${i}`))).toEqual(want);
        const st = await fsp.lstat(path.join(p.mirrorRoot, `a/f${i}`));
        expect(st.mode & 0o777).toBe(0o600 + (i % 2) * 0o40);
      }
    } finally {
      await c.release(p.backupId);
    }
  });

  /**
   * A child process runs `code` (Python, `os` imported; it opens `fd`) in the mount, then holds
   * fd open, with no other request, until the returned promise's `close()`.
   */
  const holdOpen = async (tag: string, code: string) => {
    const ready = path.join(fx.base, `${tag}-ready`);
    const go = path.join(fx.base, `${tag}-go`);
    const holder = pyIn(
      fx.mnt,
      `import os, time\n${code}\nopen('${ready}', 'w').close()\nwhile not os.path.exists('${go}'): time.sleep(0.05)\nos.close(fd)\n`,
      { timeoutMs: 60_000 },
    );
    const close = async () => {
      await fsp.writeFile(go, '');
      await holder;
    };
    try {
      await waitUntil(async () => existsSync(ready), 20_000, `${tag}: the file open`);
    } catch (err) {
      await close();
      throw err;
    }
    return { close };
  };

  it('a file created natively and held open with no other request is in a prepare that follows', async () => {
    // JS is not woken for a native create: the prepare's inhibition takes the queue.
    const before = await stats();
    const holder = await holdOpen(
      'held',
      "fd = os.open('held', os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o604)",
    );
    try {
      expect((await stats()).creates - before.creates).toBe(1);
      const p = await c.prepare({ subtree: '/held' });
      try {
        expect(p.items.map((i) => i.path)).toEqual(['/held']);
        const st = await fsp.lstat(path.join(p.mirrorRoot, 'held'));
        expect([st.size, st.mode & 0o777]).toEqual([0, 0o604]);
      } finally {
        await c.release(p.backupId);
      }
    } finally {
      await holder.close();
    }
  });

  it('writes to a file created natively and held open are answered natively and reach a prepare that follows', async () => {
    // No other request reaches JS meanwhile: the writes stay in the queue with the create until
    // the prepare's inhibition takes it; the mirror's copy is made from the queued bytes.
    const before = await stats();
    const holder = await holdOpen(
      'wheld',
      "fd = os.open('wheld', os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)\nfor i in range(5): os.write(fd, bytes([65 + i]) * 3000)\nos.pwrite(fd, b'xyz', 100)",
    );
    const want = Buffer.concat([0, 1, 2, 3, 4].map((i) => Buffer.alloc(3000, 65 + i)));
    want.write('xyz', 100);
    try {
      const mid = await stats();
      expect(mid.creates - before.creates).toBe(1);
      // Six write(2)s; the kernel splits an unaligned one at the first page it does not hold whole.
      expect(mid.writes - before.writes).toBeGreaterThanOrEqual(6);
      expect(mid.writeFallbacks).toBe(before.writeFallbacks);
      expect(await fsp.readFile(path.join(fx.primary, 'wheld'))).toEqual(want);
      const p = await c.prepare({ subtree: '/wheld' });
      try {
        expect(p.items.map((i) => [i.path, i.size])).toEqual([['/wheld', want.length]]);
        expect(await fsp.readFile(path.join(p.mirrorRoot, 'wheld'))).toEqual(want);
        const [sp, sm] = await Promise.all([
          fsp.lstat(path.join(fx.primary, 'wheld'), { bigint: true }),
          fsp.lstat(path.join(p.mirrorRoot, 'wheld'), { bigint: true }),
        ]);
        expect(sm.mtimeNs).toBe(sp.mtimeNs);
      } finally {
        await c.release(p.backupId);
      }
      // The prepare took the create: a write now goes to JS (and still lands).
      const r = await shIn(fx.mnt, 'cat wheld | wc -c', { timeoutMs: 30_000 });
      expect(r.stdout.trim()).toBe(String(want.length));
    } finally {
      await holder.close();
    }
  });

  it("a create by another user gets that user as owner (the setgid parent's group), natively; a create while a freeze inhibits writes goes to JS", async () => {
    await py(
      "os.mkdir('pub')\nos.chmod('pub', 0o777)\nos.mkdir('sg')\nos.chown('sg', 0, 4242)\nos.chmod('sg', 0o2777)",
    );
    await c.request('flush');
    const before = await stats();
    const r = await shIn(
      fx.mnt,
      "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo x > pub/mine && echo y > sg/theirs'",
      { timeoutMs: 30_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    const mid = await stats();
    expect(mid.creates - before.creates, JSON.stringify([before, mid])).toBe(2);
    const p = await c.prepare({ volume: true });
    try {
      for (const root of [fx.primary, p.mirrorRoot]) {
        const [a, b] = await Promise.all([
          fsp.lstat(path.join(root, 'pub/mine')),
          fsp.lstat(path.join(root, 'sg/theirs')),
        ]);
        expect([a.uid, a.gid, b.uid, b.gid, a.size, b.size], root).toEqual([65534, 65534, 65534, 4242, 2, 2]);
      }
    } finally {
      await c.release(p.backupId);
    }

    await py("open('fz', 'wb').close()");
    const f: any = await c.request('freeze', { selector: { paths: ['/fz'] }, timeoutMs: 60_000 });
    try {
      expect((await stats()).enabled).toBe(false);
      const s0 = await stats();
      // A file outside the freeze is created at once, through JS.
      const r2 = await shIn(fx.mnt, 'printf y > during && cat during', { timeoutMs: 30_000 });
      expect(r2.stdout).toBe('y');
      // Not tried natively at all while native changes are off.
      expect((await stats()).creates).toBe(s0.creates);
      expect(existsSync(path.join(fx.primary, 'during'))).toBe(true);
    } finally {
      await c.request('thaw', { freezeId: f.freezeId });
    }
    await waitUntil(async () => (await stats()).enabled, 5000, 'native changes back on');
  });

  it('create/write/rename/unlink storms from child processes during prepare loops: mirror and change record follow the primary', async () => {
    const WORKERS = 3;
    const ROUNDS = 20;
    const { since, before, after } = await stormFromBase(
      fx,
      c,
      { script: STORM, workers: WORKERS, args: [String(ROUNDS)], pauseMs: 20 },
      stats,
    );
    // Creates between prepares were answered natively (none while a prepare inhibits).
    expect(after.creates - before.creates).toBeGreaterThan(WORKERS * 4);
    expect(after.busy).toBe(0);

    const last = await c.prepare({ volume: true }, { since: since });
    try {
      const ch = last.changes!;
      expect(ch.unknown).toBeUndefined();
      for (let w = 0; w < WORKERS; w++)
        for (let i = 0; i < 8; i++) {
          const p = `/c${w}/n${i}`;
          if (i % 4 === 1) {
            expect(ch.deleted).toContain(p);
            expect(existsSync(path.join(last.mirrorRoot, p))).toBe(false);
          } else {
            expect(ch.changed).toContain(p);
            const want = Buffer.from(`${ROUNDS - 1} ${i} ${w}\n`.repeat(i + 1));
            expect(await fsp.readFile(path.join(last.mirrorRoot, p))).toEqual(want);
            expect((await fsp.lstat(path.join(last.mirrorRoot, p))).mode & 0o777).toBe(0o640);
          }
        }
    } finally {
      await c.release(last.backupId);
    }
    await expectMirrorClean(c);
  });
});

/**
 * A native create reaches the primary before JS hears of it (and so before its path's write
 * intent). The mirror's intent for the whole volume, written before native changes are turned on
 * (ChangeSink.changesAhead), must cover a kill -9 in between: the next start repairs the mirror
 * from it even without the start-up reconciliation walk (reconcileOnStart: false), which would
 * find the file anyway. Without that intent, nothing names the file and the mirror never gets it.
 */
describe('a kill -9 of the server between a native create and its report', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  afterAll(async () => {
    await srv?.kill();
    if (t) await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('the next start copies the file to the mirror from the whole-volume intent', async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'flags');
    const mirror = { dir: t.dirs.mirror!, stateDir: t.dirs.state! };
    srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt!, mirror, args: ['--fuse', '3'] });
    await waitForEvent(srv, pairedVolume, 30_000);
    const ready = path.join(t.dirs.flags!, 'ready');
    // Created, written and held open: the writes are answered natively too (the create is still
    // queued), and no FLUSH or RELEASE takes the native queue before the kill.
    const holder = holdCreated(t.dirs.mnt!, 'held', ready, 10_000);
    try {
      await waitUntil(async () => existsSync(ready), 20_000, 'the file created');
      expect((await fsp.readFile(path.join(t.dirs.primary!, 'held'))).equals(HELD_DATA)).toBe(true);
      srv.proc.kill('SIGKILL');
      await srv.exited;
      await srv.kill(); // aborts the dead connection and unmounts
      srv = undefined;
    } finally {
      holder.kill('SIGKILL');
    }

    const d = await openDriver({
      primary: t.dirs.primary!,
      mirror: mirror.dir,
      stateDir: mirror.stateDir,
      reconcileOnStart: false,
    });
    try {
      const st = await fsp.lstat(path.join(d.dataRoot, 'held'));
      expect([st.isFile(), st.size, st.mode & 0o777]).toEqual([true, HELD_DATA.length, 0o604]);
      expect((await fsp.readFile(path.join(d.dataRoot, 'held'))).equals(HELD_DATA)).toBe(true);
    } finally {
      await d.dispose();
    }
  });
});

/** What holdCreated writes (`bytes` of it): 'h' then 'i', alternating every 1000 bytes. */
const HELD_DATA = Buffer.from(
  Array.from({ length: 10 }, (_, i) => (i % 2 ? 'i' : 'h').repeat(1000)).join(''),
);

/**
 * A process that creates `name` in `dir` (O_EXCL, mode 0604), writes the first `bytes` of
 * HELD_DATA in 1000-byte write(2)s, touches `ready` and sleeps holding it open.
 */
function holdCreated(dir: string, name: string, ready: string, bytes = 0) {
  return spawn(
    PYTHON,
    [
      '-c',
      `import os, time\nfd = os.open('${name}', os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o604)\nfor i in range(${bytes} // 1000): os.write(fd, (b'i' if i % 2 else b'h') * 1000)\nopen('${ready}', 'w').close()\ntime.sleep(120)\n`,
    ],
    { cwd: dir, stdio: 'ignore' },
  );
}

/**
 * The change record's rule is that a change on the primary is in the record. A native create
 * reaches the record when JS takes the native queue, which a file created and held open never
 * makes it do: the record must take the queue itself before it answers (ChangeRecord.reportAhead).
 */
describe('the change record asked while a native create is unreported', () => {
  let t: Awaited<ReturnType<typeof tempDirs>> | undefined;
  let m: InProcess | undefined;
  afterAll(async () => {
    await m?.close();
    if (t) await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('changesSince lists a file created natively and held open, with no request in between', async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'flags');
    m = await mountInProcess({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
    });
    const g0 = m.driver.status().changes;
    expect(g0.vouching).toBe(true);
    const creates = () => (m!.fs.status().kernelCache as any).nativeUnlink.creates as number;
    const before = creates();
    const ready = path.join(t.dirs.flags!, 'ready');
    const holder = holdCreated(t.dirs.mnt!, 'held', ready);
    try {
      await waitUntil(async () => existsSync(ready), 20_000, 'the file created');
      const answer = m.driver.changesSince({ log: g0.log, generation: g0.generation });
      expect(answer.unknown).toBeUndefined();
      expect(answer.changed).toEqual(['/held']);
      expect(creates() - before).toBe(1);
    } finally {
      holder.kill('SIGKILL');
      await new Promise((r) =>
        holder.exitCode !== null || holder.signalCode !== null ? r(null) : holder.on('exit', r),
      );
    }
  });
});

/**
 * A sink with a write-intent hook (beforeChange) that cannot take changes made ahead of it (no
 * changesAhead) must see every create before the primary has the file: creates stay on the JS
 * thread for it. Natively created, the file would exist when beforeChange is called.
 */
describe('a sink with beforeChange and no changesAhead', () => {
  let t: Awaited<ReturnType<typeof tempDirs>> | undefined;
  let twin: TwinFs | undefined;
  afterAll(async () => {
    await twin?.unmount().catch(() => undefined);
    if (t) await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('sees each create before the file exists on the primary (creates go to JS)', async () => {
    t = await tempDirs('primary', 'mnt');
    const primary = t.dirs.primary!;
    const seen: Array<{ path: string; existed: boolean }> = [];
    const created = new Set<string>();
    twin = await TwinFs.mount({
      primary,
      mount: t.dirs.mnt!,
      log: () => undefined,
      native: { libfuse: 3 },
      sink: {
        beforeChange(p: string) {
          seen.push({ path: p, existed: existsSync(primary + p) });
        },
        async apply(c) {
          if (c.op === 'create') created.add(c.path);
        },
      },
    });
    await shIn(t.dirs.mnt!, 'for i in 1 2 3 4 5; do echo $i > f$i; done', { timeoutMs: 30_000 });
    await twin.flushAll();
    expect([...created].sort()).toEqual(['/f1', '/f2', '/f3', '/f4', '/f5']);
    // The first beforeChange of each file is its create's.
    for (const p of created) expect(seen.find((x) => x.path === p)).toEqual({ path: p, existed: false });
    const n = (twin.status().kernelCache as any).nativeUnlink as { creates: number; enabled: boolean };
    expect(n.enabled).toBe(true);
    expect(n.creates).toBe(0);
  });
});
