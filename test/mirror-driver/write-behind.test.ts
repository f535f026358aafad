import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Change } from '../../src/fusefs/change-sink.js';
import type { MirrorDriver } from '../../src/mirror-driver/index.js';
import { sh } from '../helpers/proc.js';
import { ROOT, tempDirs } from '../helpers/server.js';
import { type DriverOnTempDirs, driverOnTempDirs, openDriver } from './mirror-helpers.js';

/**
 * Namespace and metadata changes are answered once queued, before the mirror applied them
 * (write-behind, docs/architecture.md "The mirror driver"). What keeps that safe: the queue's
 * order (a split is a marker in it, verify waits for it to drain) and the write intents
 * journaled before the primary changed (a kill -9 with changes still queued is repaired at
 * the next start, even without the start-up comparison).
 */

const own = { uid: process.getuid!(), gid: process.getgid!() };

/** One change the way volume-ops makes it: the intent, the primary, then the report. */
async function change(d: MirrorDriver, paths: string[], onPrimary: () => void, c: Change): Promise<void> {
  for (const p of paths) await d.beforeChange(p);
  onPrimary();
  await d.apply(c);
}

describe('mirror write-behind of namespace changes', () => {
  let env: DriverOnTempDirs | undefined;
  afterEach(async () => {
    await env?.d.dispose();
    await env?.t.cleanup();
    env = undefined;
  });

  it('answers before the mirror applied, and a split right after holds exactly what came before it', async () => {
    env = await driverOnTempDirs(async () => undefined);
    const { d, P, M } = env;
    const at = (p: string) => P + p;
    await change(d, ['/s'], () => fs.mkdirSync(at('/s'), 0o750), {
      op: 'mkdir',
      path: '/s',
      mode: 0o40750,
      ...own,
    });
    await change(d, ['/s/a'], () => fs.closeSync(fs.openSync(at('/s/a'), 'w', 0o644)), {
      op: 'create',
      path: '/s/a',
      mode: 0o100644,
      ...own,
    });
    await change(d, ['/s/a', '/s/b'], () => fs.renameSync(at('/s/a'), at('/s/b')), {
      op: 'rename',
      from: '/s/a',
      path: '/s/b',
    });
    await change(d, ['/s/b'], () => fs.chmodSync(at('/s/b'), 0o600), {
      op: 'chmod',
      path: '/s/b',
      mode: 0o600,
    });
    await change(d, ['/s/b', '/s/c'], () => fs.linkSync(at('/s/b'), at('/s/c')), {
      op: 'link',
      from: '/s/b',
      path: '/s/c',
    });
    await change(d, ['/s/b'], () => fs.unlinkSync(at('/s/b')), { op: 'unlink', path: '/s/b' });
    const mtimeNs = 1_234_567_890_123_456_789n;
    await change(d, ['/s/c'], () => fs.utimesSync(at('/s/c'), 1000, 1000), {
      op: 'utimens',
      path: '/s/c',
      atime: null,
      mtime: Number(mtimeNs / 1_000_000n),
      atimeNs: null,
      mtimeNs: String(mtimeNs),
    });
    // Answered before the mirror applied it: a mirror chmod takes a trip through libuv's pool,
    // which cannot complete before the awaited answer continues here.
    await d.beforeChange('/s/c');
    fs.chmodSync(at('/s/c'), 0o640);
    await d.apply({ op: 'chmod', path: '/s/c', mode: 0o640 });
    expect((fs.lstatSync(`${M}/s/c`, { throwIfNoEntry: false })?.mode ?? 0) & 0o7777).not.toBe(0o640);

    // No settling: the split is queued behind them, so its copy is the primary's state at the call.
    const s = await d.split({ subtrees: ['/s'] });
    const c = await fsp.lstat(`${M}/s/c`, { bigint: true });
    expect(Number(c.mode & 0o7777n)).toBe(0o640);
    expect(c.nlink).toBe(1n);
    expect(c.mtimeNs).toBe(mtimeNs);
    expect(fs.existsSync(`${M}/s/a`)).toBe(false);
    expect(fs.existsSync(`${M}/s/b`)).toBe(false);

    // After the split: tracked, not applied.
    await change(d, ['/s/c'], () => fs.chmodSync(at('/s/c'), 0o644), {
      op: 'chmod',
      path: '/s/c',
      mode: 0o644,
    });
    await change(d, ['/s/n'], () => fs.closeSync(fs.openSync(at('/s/n'), 'w', 0o644)), {
      op: 'create',
      path: '/s/n',
      mode: 0o100644,
      ...own,
    });
    await d.barrier();
    expect((await fsp.lstat(`${M}/s/c`)).mode & 0o7777).toBe(0o640);
    expect(fs.existsSync(`${M}/s/n`)).toBe(false);

    await d.resync(s.splitId);
    expect((await d.verify()).differences).toEqual([]);
    expect((await fsp.lstat(`${M}/s/c`)).mode & 0o7777).toBe(0o644);
  });

  it('a truncate is answered behind for a file with one name, and waits for one with several', async () => {
    env = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/one`, Buffer.alloc(5000, 1));
      await fsp.writeFile(`${p}/two`, Buffer.alloc(5000, 2));
      await fsp.link(`${p}/two`, `${p}/two-b`);
    });
    const { d, P, M } = env;
    const truncate = async (p: string) => {
      await d.beforeChange(p);
      fs.truncateSync(P + p, 100);
      await d.apply({ op: 'truncate', path: p, size: 100 });
      return fs.statSync(M + p).size;
    };
    // One name: the mirror's ftruncate (a trip through libuv's pool) has not happened yet.
    expect(await truncate('/one')).toBe(5000);
    // Several names: the times route copies right after it are read by this name, which the
    // next change (an unlink) may take away: answered once applied.
    expect(await truncate('/two')).toBe(100);
    expect((await d.verify()).differences).toEqual([]);
  });

  it('an fsync resolves with the data in the mirror; the name renamed and unlinked right behind it breaks nothing', async () => {
    // What an fsync must keep whatever queue it goes through (its sync inside the serial queue
    // or beside it).
    env = await driverOnTempDirs(async (p) => fsp.writeFile(`${p}/f`, Buffer.alloc(0)));
    const { d, P, M } = env;
    const data = Buffer.alloc(200_000, 7);
    await d.beforeChange('/f');
    fs.writeFileSync(`${P}/f`, data);
    const written = d.apply({ op: 'write', path: '/f', offset: 0, data });
    // Not awaited: the changes behind it are queued meanwhile.
    const synced = d.apply({ op: 'fsync', path: '/f', datasync: true });
    await change(d, ['/f', '/g'], () => fs.renameSync(`${P}/f`, `${P}/g`), {
      op: 'rename',
      from: '/f',
      path: '/g',
    });
    const syncedAgain = d.apply({ op: 'fsync', path: '/g', datasync: false });
    await change(d, ['/g'], () => fs.unlinkSync(`${P}/g`), { op: 'unlink', path: '/g' });
    await Promise.all([written, synced, syncedAgain]);
    await d.whenIdle();
    expect(d.status().broken).toEqual([]);
    expect(fs.existsSync(`${M}/g`)).toBe(false);
    // And one that stays: its bytes are in the mirror when the fsync resolves.
    await d.beforeChange('/h');
    fs.writeFileSync(`${P}/h`, data);
    await d.apply({ op: 'create', path: '/h', mode: 0o100644, ...own });
    await d.apply({ op: 'write', path: '/h', offset: 0, data });
    await d.apply({ op: 'fsync', path: '/h', datasync: true });
    expect(fs.readFileSync(`${M}/h`)).toEqual(data);
    expect((await d.verify()).differences).toEqual([]);
    expect(d.status().broken).toEqual([]);
  });

  it('keeps the order of queued changes to one name (rename, unlink, a directory in its place); verify drains first', async () => {
    env = await driverOnTempDirs(async (p) => fsp.mkdir(`${p}/q`));
    const { d, P, M } = env;
    const at = (p: string) => P + p;
    for (let i = 0; i < 50; i++) {
      await change(d, ['/q/x'], () => fs.writeFileSync(at('/q/x'), ''), {
        op: 'create',
        path: '/q/x',
        mode: 0o100644,
        ...own,
      });
      await change(d, ['/q/x', '/q/y'], () => fs.renameSync(at('/q/x'), at('/q/y')), {
        op: 'rename',
        from: '/q/x',
        path: '/q/y',
      });
      await change(d, ['/q/y'], () => fs.unlinkSync(at('/q/y')), { op: 'unlink', path: '/q/y' });
      await change(d, ['/q/x'], () => fs.mkdirSync(at('/q/x')), {
        op: 'mkdir',
        path: '/q/x',
        mode: 0o40755,
        ...own,
      });
      await change(d, ['/q/x'], () => fs.rmdirSync(at('/q/x')), { op: 'rmdir', path: '/q/x' });
    }
    await change(d, ['/q/x'], () => fs.symlinkSync('y', at('/q/x')), {
      op: 'symlink',
      path: '/q/x',
      target: 'y',
      ...own,
    });
    const v = await d.verify();
    expect(v.differences).toEqual([]);
    expect(await fsp.readlink(`${M}/q/x`)).toBe('y');
    expect(fs.existsSync(`${M}/q/y`)).toBe(false);
    expect(d.status().broken).toEqual([]);
  });

  it('while a split is live the application waits, and a resync compares a healed tree where later renames took it', async () => {
    // Stress seed 12 (libfuse3): the directory's rename is held (it holds a split file), so the
    // mirror lacks the new name and the rename inside it is healed from the primary. Answered
    // before that heal, the writer renamed the directory again and the heal found nothing: the
    // old name stayed in the mirror's copy of the directory, and came back with the resync.
    // Even waiting, the resync compared the healed tree at the name the heal made (/w/e), not
    // where the next held rename took it (/w/f): the stale x stayed there.
    env = await driverOnTempDirs(async (p) => {
      await fsp.mkdir(`${p}/w/d`, { recursive: true });
      await fsp.writeFile(`${p}/w/d/held`, 'held');
      await fsp.writeFile(`${p}/w/d/x`, 'x');
    });
    const { d, P, M } = env;
    const at = (p: string) => P + p;
    const s = await d.split({ paths: ['/w/d/held'] });
    const rename = (from: string, to: string) =>
      change(d, [from, to], () => fs.renameSync(at(from), at(to)), { op: 'rename', from, path: to });
    await rename('/w/d', '/w/e');
    await rename('/w/e/x', '/w/e/y');
    await rename('/w/e', '/w/f');
    await d.resync(s.splitId);
    expect((await d.verify()).differences).toEqual([]);
    expect((await fsp.readdir(`${M}/w/f`)).sort()).toEqual(['held', 'y']);
    expect(fs.existsSync(`${M}/w/d`)).toBe(false);
  });

  it('while a resync is queued or running the application waits (its copies read the primary as it is then)', async () => {
    env = await driverOnTempDirs(async (p) => {
      await fsp.writeFile(`${p}/held`, 'held');
      await fsp.writeFile(`${p}/other`, 'other');
    });
    const { d, P, M } = env;
    const s = await d.split({ paths: ['/held'] });
    const resynced = d.resync(s.splitId);
    await d.beforeChange('/other');
    fs.chmodSync(`${P}/other`, 0o604);
    await d.apply({ op: 'chmod', path: '/other', mode: 0o604 });
    expect(fs.statSync(`${M}/other`).mode & 0o7777).toBe(0o604);
    await resynced;
    // And behind again once it is done.
    await d.beforeChange('/other');
    fs.chmodSync(`${P}/other`, 0o606);
    await d.apply({ op: 'chmod', path: '/other', mode: 0o606 });
    expect(fs.statSync(`${M}/other`).mode & 0o7777).toBe(0o604);
    expect((await d.verify()).differences).toEqual([]);
  });

  it('a kill -9 with namespace changes queued: the next driver repairs them from the write intents', async () => {
    const t = await tempDirs('primary', 'mirror', 'state');
    try {
      const dirs = [t.dirs.primary!, t.dirs.mirror!, t.dirs.state!];
      const first = await openDriver({ primary: dirs[0]!, mirror: dirs[1]!, stateDir: dirs[2]! });
      await first.dispose();
      const fixture = path.join(ROOT, 'test/mirror-driver/fixtures/queued-crash.mjs');
      const r = await sh(
        `'${process.execPath}' '${fixture}' ${dirs.map((x) => `'${x}'`).join(' ')} --at 300`,
        {
          timeoutMs: 60_000,
        },
      );
      expect(r.code).not.toBe(0); // killed, not a clean exit
      expect(r.stdout).toMatch(/^queued \d+/);
      // Without the start-up comparison of the whole tree, only the journal's intents say what
      // may differ.
      const d = await openDriver({
        primary: dirs[0]!,
        mirror: dirs[1]!,
        stateDir: dirs[2]!,
        reconcileOnStart: false,
      });
      try {
        expect(d.status().state).toBe('PAIR');
        const v = await d.verify();
        expect(v.differences).toEqual([]);
        expect(v.checked).toBeGreaterThan(10);
      } finally {
        await d.dispose();
      }
    } finally {
      await t.cleanup();
    }
  });
});
