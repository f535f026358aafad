import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMounted, mountTmpfs, unmountAll } from '../helpers/mounts.js';
import { type RunResult, sh, shOk } from '../helpers/proc.js';
import { CLI, startServer, tempDirs } from '../helpers/server.js';

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function twinfs(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return sh(`node ${q(CLI)} ${args.map(q).join(' ')}`, { timeoutMs });
}

/** A failed `twinfs serve`: non-zero exit, one clear line with the code, no stack trace, nothing mounted. */
async function expectServeError(args: string[], code: string, mount?: string, exit = 1): Promise<string> {
  const r = await twinfs(['serve', ...args]);
  expect(r.code, `exit status; stderr: ${r.stderr}`).toBe(exit);
  expect(r.stderr).toMatch(new RegExp(`^twinfs: error ${code}: \\S`));
  expect(r.stderr, 'no stack trace for a user mistake').not.toMatch(/\n\s+at /);
  expect(r.stdout).not.toContain('mounted');
  if (mount) expect(await isMounted(mount)).toBe(false);
  return r.stderr;
}

describe('twinfs serve: bad input fails clearly and mounts nothing', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: Record<string, string>;
  /** Mounts this file made itself (tmpfs, bind): removed in afterAll. */
  const own: string[] = [];
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'busy', 'full', 'stale', 'rotmpfs', 'robind', 'outer', 'cfg');
    d = t.dirs;
    await fsp.writeFile(path.join(t.base, 'file'), 'x');
  });
  afterAll(async () => {
    await unmountAll(...own, ...Object.values(d));
    await t?.cleanup();
  });

  it('mount point missing', async () => {
    const msg = await expectServeError(
      ['--primary', d.primary!, '--mount', path.join(t.base, 'nope')],
      'ETWIN_MOUNTPOINT_MISSING',
    );
    expect(msg).toContain(path.join(t.base, 'nope'));
  });

  it('mount point is not a directory', async () => {
    await expectServeError(
      ['--primary', d.primary!, '--mount', path.join(t.base, 'file')],
      'ETWIN_MOUNTPOINT_NOT_DIR',
    );
  });

  it('mount point is already a mount (a tmpfs): refused, and the tmpfs is left alone', async () => {
    await mountTmpfs(d.busy!, 'size=1m');
    own.push(d.busy!);
    await fsp.writeFile(path.join(d.busy!, 'keep'), 'k');
    const r = await twinfs(['serve', '--primary', d.primary!, '--mount', d.busy!]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_MOUNTPOINT_BUSY: .*already a mount \(tmpfs\)/);
    expect(await fsp.readFile(path.join(d.busy!, 'keep'), 'utf8')).toBe('k');
    // `twinfs unmount` refuses to touch a mount that is not FUSE.
    const u = await twinfs(['unmount', d.busy!]);
    expect(u.code).toBe(1);
    expect(u.stderr).toMatch(/^twinfs: error ETWIN_NOT_MOUNTED: .*not a FUSE mount/);
    expect(await isMounted(d.busy!)).toBe(true);
  });

  it('a stale FUSE mount (server killed): refused with a hint, and `twinfs unmount` clears it', async () => {
    const srv = await startServer({ primary: d.primary!, mount: d.stale! });
    srv.proc.kill('SIGKILL');
    await srv.exited;
    const st = await sh(`stat ${q(d.stale!)}`);
    expect(st.stderr).toMatch(/Transport endpoint is not connected/);
    const msg = await expectServeError(
      ['--primary', d.primary!, '--mount', d.stale!],
      'ETWIN_MOUNTPOINT_BUSY',
    );
    expect(msg).toContain(`twinfs unmount ${d.stale}`);
    expect(await isMounted(d.stale!)).toBe(true); // still the stale one: serve did not touch it
    const u = await twinfs(['unmount', d.stale!]);
    expect(u.code, u.stderr).toBe(0);
    expect(u.stdout).toContain('unmounted');
    expect(await isMounted(d.stale!)).toBe(false);
    expect((await fsp.stat(d.stale!)).isDirectory()).toBe(true);
    // Now it is an ordinary empty directory again: serving works.
    const again = await startServer({ primary: d.primary!, mount: d.stale! });
    expect(await again.stop()).toBe(0);
  });

  it('`twinfs unmount` of a directory that is not a mount fails clearly', async () => {
    const u = await twinfs(['unmount', d.mnt!]);
    expect(u.code).toBe(1);
    expect(u.stderr).toMatch(/^twinfs: error ETWIN_NOT_MOUNTED: /);
  });

  it('mount point not empty: refused; --force mounts over it and the entries come back after', async () => {
    await fsp.writeFile(path.join(d.full!, 'under'), 'u');
    await expectServeError(
      ['--primary', d.primary!, '--mount', d.full!],
      'ETWIN_MOUNTPOINT_NOT_EMPTY',
      d.full,
    );
    await fsp.writeFile(path.join(d.primary!, 'served'), 's');
    const srv = await startServer({ primary: d.primary!, mount: d.full!, args: ['--force'] });
    try {
      expect((await shOk(`ls ${q(d.full!)}`)).split('\n')).toContain('served');
    } finally {
      expect(await srv.stop()).toBe(0);
    }
    expect(await isMounted(d.full!)).toBe(false);
    expect(await fsp.readdir(d.full!)).toEqual(['under']);
  });

  it('primary missing, or not a directory', async () => {
    await Promise.all(
      ['nope', 'file'].map((p) =>
        expectServeError(
          ['--primary', path.join(t.base, p), '--mount', d.mnt!],
          'ETWIN_PRIMARY_MISSING',
          d.mnt,
        ),
      ),
    );
  });

  it('primary not writable: a read-only tmpfs, a read-only bind mount', async () => {
    await mountTmpfs(d.rotmpfs!, 'size=1m,ro');
    own.push(d.rotmpfs!);
    const m1 = await expectServeError(
      ['--primary', d.rotmpfs!, '--mount', d.mnt!],
      'ETWIN_PRIMARY_NOT_WRITABLE',
      d.mnt,
    );
    expect(m1).toContain('EROFS');
    await shOk(`mount --bind ${q(d.primary!)} ${q(d.robind!)} && mount -o remount,bind,ro ${q(d.robind!)}`);
    own.push(d.robind!);
    await expectServeError(['--primary', d.robind!, '--mount', d.mnt!], 'ETWIN_PRIMARY_NOT_WRITABLE', d.mnt);
    // Nothing was left behind by the write probe.
    expect((await fsp.readdir(d.primary!)).filter((n) => n.startsWith('.twinfs-probe'))).toEqual([]);
  });

  it('primary and mount overlapping, either way round, or the same directory', async () => {
    const inner = path.join(d.outer!, 'inner');
    await fsp.mkdir(inner);
    const link = path.join(t.base, 'link-to-primary');
    await fsp.symlink(d.primary!, link);
    const cases: Array<[string[], string | undefined]> = [
      // The mount point inside the primary.
      [['--primary', d.outer!, '--mount', inner], inner],
      // The primary inside the mount point (so it is not empty either: overlap is the real problem).
      [['--primary', inner, '--mount', d.outer!], d.outer],
      [['--primary', inner, '--mount', d.outer!, '--force'], d.outer],
      // The same directory, also when spelled through a symlink.
      [['--primary', d.mnt!, '--mount', d.mnt!], d.mnt],
      [['--primary', link, '--mount', path.join(d.primary!, '..', 'primary')], d.primary],
      // A mirror inside the primary.
      [['--primary', d.outer!, '--mount', d.mnt!, '--mirror', inner], d.mnt],
    ];
    await Promise.all(cases.map(([args, mount]) => expectServeError(args, 'ETWIN_OVERLAP', mount)));
  });

  it('bad config files: unreadable, invalid JSON, unknown key, wrong type, bad value', async () => {
    const cfg = (name: string, text: string) => {
      const f = path.join(d.cfg!, name);
      return fsp.writeFile(f, text).then(() => f);
    };
    const base = ['--primary', d.primary!, '--mount', d.mnt!, '--config'];
    const cases: Array<[string, string | null, string]> = [
      ['missing.json', null, 'ENOENT'],
      ['bad.json', '{"cacheMb": 4,', 'not valid JSON'],
      ['unknown.json', '{"cacheMB": 4}', 'unknown setting "cacheMB"'],
      ['type.json', '{"writebackMs": "fast"}', '"writebackMs" must be a number'],
      ['neg.json', '{"cacheMb": -1}', '"cacheMb" must be a positive number'],
      ['array.json', '[1, 2]', 'must hold a JSON object'],
      ['fuse.json', '{"fuse": 4}', '"fuse" must be 2 or 3'],
    ];
    // Independent invocations: run them side by side (each is a Node start-up).
    await Promise.all(
      cases.map(async ([name, text, want]) => {
        const f = text === null ? path.join(d.cfg!, name) : await cfg(name, text);
        const msg = await expectServeError([...base, f], 'ETWIN_CONFIG', d.mnt);
        expect(msg).toContain(want);
        expect(msg).toContain(f);
      }),
    );
  });

  it('a config file can hold the settings (relative paths relative to the file)', async () => {
    const f = path.join(t.base, 'good.json');
    await fsp.writeFile(
      f,
      JSON.stringify({ primary: 'primary', mount: 'mnt', cacheMb: 2, writebackMs: 100 }),
    );
    const proc = await startServer({ primary: d.primary!, mount: d.mnt!, args: ['--config', f] });
    try {
      expect(proc.events.find((e) => e.event === 'mounted')).toMatchObject({
        primary: d.primary,
        mount: d.mnt,
        cacheBytes: 2 * 1024 * 1024,
      });
    } finally {
      expect(await proc.stop()).toBe(0);
    }
  });

  it('missing --primary or --mount, and bad option values, are usage errors (exit 2)', async () => {
    const ok = ['--primary', d.primary!, '--mount', d.mnt!];
    const cases: Array<[string[], string | null]> = [
      [['--mount', d.mnt!], '--primary'],
      [['--primary', d.primary!], '--mount'],
      [[...ok, '--cache-mb', '0'], '--cache-mb must be a positive number'],
      [[...ok, '--writeback-ms', 'soon'], '--writeback-ms must be a positive number'],
      [[...ok, '--fuse', '1'], '--fuse must be 2 or 3'],
      [[...ok, '--no-such-option'], null],
    ];
    await Promise.all(
      cases.map(async ([args, want]) => {
        const msg = await expectServeError(args, 'ETWIN_USAGE', d.mnt, 2);
        if (want) expect(msg).toContain(want);
      }),
    );
  });

  it('SIGTERM and SIGINT: cached data written back, exit 0, unmounted', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const srv = await startServer({
        primary: d.primary!,
        mount: d.mnt!,
        args: ['--writeback-ms', '600000'],
      });
      // Made first, then appended to (O_APPEND opens are JS's): the cache takes the write (a new
      // file's, and those through an open JS has not taken, go to the primary natively).
      await shOk(`: > ${q(path.join(d.mnt!, signal))}`);
      await shOk(`printf ${signal} >> ${q(path.join(d.mnt!, signal))}`);
      expect(await fsp.readFile(path.join(d.primary!, signal), 'utf8')).toBe('');
      srv.proc.kill(signal);
      expect(await srv.exited).toBe(0);
      expect(await isMounted(d.mnt!)).toBe(false);
      expect(await fsp.readFile(path.join(d.primary!, signal), 'utf8')).toBe(signal);
      expect(srv.events.map((e) => e.event)).toEqual(['mounted', 'stopping', 'unmounted']);
    }
  });
});
