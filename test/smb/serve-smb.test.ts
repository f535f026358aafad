import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { waitFor } from '../helpers/mounts.js';
import { sh, shOk } from '../helpers/proc.js';
import {
  freePort,
  removeCreatedUsers,
  type SmbLogin,
  sambaProcesses,
  smbclient,
  smbOk,
  waitEvent,
} from './smb-fixture.js';

/**
 * `twinfs serve --smb` end to end: a real twinfs serve process with a mirror, its smbd on
 * loopback, and real smbclient sessions. What SMB clients do must land on the primary and the
 * mirror, and what they see (times, space, attributes, sizes) must be right.
 */

const USERS = ['twsmb-ann', 'twsmb-ben'];
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe('twinfs serve --smb: files through SMB land on the primary and the mirror', () => {
  let fx: ControlFixture;
  let ann: SmbLogin;
  let tmp: string;

  beforeAll(async () => {
    const port = await freePort();
    fx = await startControlFixture({
      args: [
        '--writeback-ms',
        '200',
        '--smb',
        `127.0.0.1:${port}`,
        '--smb-user',
        `${USERS[0]}:pw-ann:1`,
        '--smb-user',
        `${USERS[1]}:pw-ben`,
      ],
    });
    await waitEvent(fx.srv, 'smb-started');
    ann = { port, user: USERS[0], password: 'pw-ann:1' };
    tmp = path.join(fx.base, 'etc');
  });
  afterAll(async () => {
    await fx?.close();
    await removeCreatedUsers(USERS);
  });

  const P = (...p: string[]) => path.join(fx.primary, ...p);
  const M = (...p: string[]) => path.join(fx.mirrorRoot, ...p);
  const read = (f: string) => fsp.readFile(f, 'utf8').catch(() => null);
  /**
   * The primary holds content at rel once the write-back ran (200 ms here): data written through
   * SMB is in twinfs's cache until then (a time set on the file no longer writes it back).
   */
  async function onPrimary(rel: string, content: string | null): Promise<void> {
    expect(
      await waitFor(async () => (await read(P(rel))) === content, 10_000),
      `primary ${rel} should be ${content}`,
    ).toBe(true);
  }
  async function onMirror(rel: string, content: string | null): Promise<void> {
    expect(
      await waitFor(async () => (await read(M(rel))) === content, 10_000),
      `mirror ${rel} should be ${content}`,
    ).toBe(true);
  }

  it('announces itself: smb-started carries the pid, address and share', async () => {
    const e = await waitEvent(fx.srv, 'smb-started');
    expect(e).toMatchObject({ host: '127.0.0.1', port: ann.port, share: 'twinfs' });
    expect(e.pid).toBeGreaterThan(0);
  });

  it('put, get, mkdir, rename and del land on the primary and the mirror', async () => {
    await fsp.writeFile(path.join(tmp, 'one.txt'), 'one\n');
    await fsp.writeFile(path.join(tmp, 'two.txt'), 'two two\n');
    await smbOk(
      ann,
      `lcd ${tmp}; mkdir docs; put one.txt docs\\one.txt; put two.txt two.txt; put two.txt gone.txt`,
    );
    await onPrimary('docs/one.txt', 'one\n');
    await onPrimary('two.txt', 'two two\n');
    await onMirror('docs/one.txt', 'one\n');
    await onMirror('two.txt', 'two two\n');

    await smbOk(
      ann,
      `lcd ${tmp}; get docs\\one.txt back.txt; rename two.txt docs\\moved.txt; del gone.txt; mkdir empty; rmdir empty`,
    );
    expect(await read(path.join(tmp, 'back.txt'))).toBe('one\n');
    await onPrimary('two.txt', null);
    await onPrimary('docs/moved.txt', 'two two\n');
    await onPrimary('gone.txt', null);
    await onMirror('docs/moved.txt', 'two two\n');
    await onMirror('two.txt', null);
    await onMirror('gone.txt', null);
    expect(await fsp.stat(P('empty')).catch(() => null)).toBeNull();
    // Files written over SMB belong to the owner of the mount root (force user), not the SMB user.
    const st = await fsp.stat(P('docs/one.txt'));
    expect([st.uid, st.mode & 0o777]).toEqual([(await fsp.stat(fx.primary)).uid, 0o644]);
  });

  it('refuses a wrong password, an unknown user and anonymous access', async () => {
    const wrong = await smbclient({ ...ann, password: 'nope' }, 'ls');
    expect(wrong.code).not.toBe(0);
    expect(wrong.stdout + wrong.stderr).toMatch(/NT_STATUS_LOGON_FAILURE/);
    const unknown = await smbclient({ port: ann.port, user: 'twsmb-nobody', password: 'x' }, 'ls');
    expect(unknown.stdout + unknown.stderr).toMatch(/NT_STATUS_LOGON_FAILURE/);
    const anon = await smbclient({ port: ann.port }, 'ls');
    expect(anon.code).not.toBe(0);
    expect(anon.stdout + anon.stderr).toMatch(/NT_STATUS_(ACCESS_DENIED|LOGON_FAILURE)/);
    // The second user logs in with its own password.
    await smbOk({ port: ann.port, user: USERS[1], password: 'pw-ben' }, 'ls');
  });

  it('sets file times like touch -m and cp -p: the write time alone, the access time kept', async () => {
    await smbOk(ann, `lcd ${tmp}; put one.txt times.txt`);
    const before = await fsp.stat(P('times.txt'));
    // utimes FILE CREATE ACCESS WRITE CHANGE; -1 leaves a time as it is.
    await smbOk(ann, 'utimes times.txt -1 -1 2001:02:03-04:05:06 -1');
    // On the primary once the put's data, if the cache took it, is written back (a time set on a
    // file with cached data is put back by its write-back: docs/architecture.md), as the mirror.
    const WANT = Date.parse('2001-02-03T04:05:06.000Z');
    await waitFor(async () => (await fsp.stat(P('times.txt'))).mtimeMs === WANT, 10_000);
    const after = await fsp.stat(P('times.txt'));
    expect(new Date(after.mtimeMs).toISOString()).toBe('2001-02-03T04:05:06.000Z');
    expect(after.atimeMs).toBe(before.atimeMs);
    const info = await smbOk(ann, 'allinfo times.txt');
    expect(info).toMatch(/write_time:\s+Sat Feb {2}3 04:05:06 2001/);
    await waitFor(
      async () => (await fsp.stat(M('times.txt')).catch(() => null))?.mtimeMs === after.mtimeMs,
      10_000,
    );
    expect((await fsp.stat(M('times.txt'))).mtimeMs).toBe(after.mtimeMs);
    // And the access time alone.
    await smbOk(ann, 'utimes times.txt -1 2002:03:04-05:06:07 -1 -1');
    const again = await fsp.stat(P('times.txt'));
    expect(new Date(again.atimeMs).toISOString()).toBe('2002-03-04T05:06:07.000Z');
    expect(again.mtimeMs).toBe(after.mtimeMs);
  });

  it('reports the free and total space of the primary (du)', async () => {
    const out = await smbOk(ann, 'du');
    const m = /(\d+) blocks of size (\d+)\. (\d+) blocks available/.exec(out);
    expect(m, out).not.toBeNull();
    const [total, avail] = [Number(m![1]) * Number(m![2]), Number(m![3]) * Number(m![2])];
    const s = await fsp.statfs(fx.primary);
    const [ptotal, pavail] = [s.blocks * s.bsize, s.bavail * s.bsize];
    expect(Math.abs(total - ptotal) / ptotal).toBeLessThan(0.001);
    // Other suites write meanwhile: a loose bound on free space.
    expect(Math.abs(avail - pavail) / ptotal).toBeLessThan(0.01);
  });

  it('keeps DOS attributes (setmode) in user.DOSATTRIB on the primary and the mirror', async () => {
    await smbOk(ann, `lcd ${tmp}; put one.txt attrs.txt; setmode attrs.txt +rh`);
    expect(await smbOk(ann, 'allinfo attrs.txt')).toMatch(/attributes: RHA \(23\)/);
    const primaryAttr = await shOk(
      `getfattr --only-values -n user.DOSATTRIB ${q(P('attrs.txt'))} | od -An -tx1`,
    );
    expect(primaryAttr.trim().length).toBeGreaterThan(0);
    expect(
      await waitFor(
        async () =>
          (await sh(`getfattr --only-values -n user.DOSATTRIB ${q(M('attrs.txt'))} | od -An -tx1`)).stdout ===
          primaryAttr,
        10_000,
      ),
    ).toBe(true);
    // The attributes did not change the Unix mode (map archive/hidden/system are off).
    expect((await fsp.stat(P('attrs.txt'))).mode & 0o777).toBe(0o644);
    await smbOk(ann, 'setmode attrs.txt -rh');
    expect(await smbOk(ann, 'allinfo attrs.txt')).toMatch(/attributes: A \(20\)/);
  });

  it('renames over an existing file only when asked to, and then replaces it', async () => {
    await fsp.writeFile(path.join(tmp, 'new.txt'), 'new content\n');
    await smbOk(ann, `lcd ${tmp}; put new.txt src.txt; put one.txt dst.txt`);
    const refused = await smbclient(ann, 'rename src.txt dst.txt');
    expect(refused.stdout + refused.stderr).toMatch(/NT_STATUS_OBJECT_NAME_COLLISION/);
    await onPrimary('dst.txt', 'one\n');
    await smbOk(ann, 'rename src.txt dst.txt -f');
    await onPrimary('dst.txt', 'new content\n');
    await onPrimary('src.txt', null);
    await onMirror('dst.txt', 'new content\n');
    await onMirror('src.txt', null);
  });

  it('deletes a file another process holds open: gone for SMB clients, readable by the holder, no .fuse_hidden left', async () => {
    await fsp.writeFile(path.join(tmp, 'held.txt'), 'held content\n');
    await smbOk(ann, `lcd ${tmp}; put held.txt held.txt`);
    // A local reader keeps the file open on the mount while the SMB client deletes it.
    const holder = sh(
      `exec 3<${q(path.join(fx.mnt, 'held.txt'))}; echo open > ${q(path.join(tmp, 'holder.ready'))}; ` +
        `while [ ! -e ${q(path.join(tmp, 'holder.go'))} ]; do sleep 0.05; done; cat <&3`,
      { timeoutMs: 30_000 },
    );
    expect(await waitFor(async () => (await read(path.join(tmp, 'holder.ready'))) !== null, 10_000)).toBe(
      true,
    );
    await smbOk(ann, 'del held.txt');
    const listing = await smbOk(ann, 'ls');
    expect(listing).not.toMatch(/held\.txt/);
    expect(listing).not.toMatch(/fuse_hidden/);
    await fsp.writeFile(path.join(tmp, 'holder.go'), '');
    const r = await holder;
    expect(r.stdout).toBe('held content\n');
    await onPrimary('held.txt', null);
    expect(
      await waitFor(
        async () => !(await fsp.readdir(fx.primary)).some((n) => n.startsWith('.fuse_hidden')),
        10_000,
      ),
    ).toBe(true);
    await onMirror('held.txt', null);
  });

  it('reports sizes above 4 GiB (a sparse file grown through the mount)', async () => {
    const size = 5 * 1024 ** 3 + 64 * 1024;
    const big = path.join(fx.mnt, 'big.img');
    await shOk(`truncate -s ${size} ${q(big)} && printf END >> ${q(big)}`);
    // smbclient's allinfo prints stream sizes modulo 2^32 (also for a plain ext4 share); `ls`
    // carries the 64-bit end of file.
    const m = /big\.img\s+[A-Z]*\s+(\d+)\s/.exec(await smbOk(ann, 'ls big.img'));
    expect(Number(m?.[1])).toBe(size + 3);
    // Reading the data past the 4 GiB mark over SMB means reading 4 GiB first (smbclient's
    // reget, which could start there, does not work past 4 GiB): about 40 s here, too slow for
    // this suite.
    // The size must be right on the primary too, once the cache has written the tail back.
    expect(await waitFor(async () => (await fsp.stat(P('big.img'))).size === size + 3, 10_000)).toBe(true);
  });

  it('stops smbd and its helpers before unmounting on SIGTERM', async () => {
    const conf = path.join(fx.base, 'state/smb/smb.conf');
    expect((await sambaProcesses(conf)).length).toBeGreaterThan(0);
    const code = await fx.srv.stop();
    expect(code).toBe(0);
    const names = fx.srv.events.map((e) => e.event);
    expect(names.indexOf('smb-stopped')).toBeGreaterThan(names.indexOf('stopping'));
    expect(names.indexOf('smb-stopped')).toBeLessThan(names.indexOf('unmounted'));
    expect(await sambaProcesses(conf)).toEqual([]);
  });
});
