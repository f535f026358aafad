import { existsSync, promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/mounts.js';
import { sh, shOk } from '../helpers/proc.js';
import { CLI, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { freePort, removeCreatedUsers, sambaProcesses, waitEvent } from './smb-fixture.js';

/**
 * When SMB cannot be served, `twinfs serve` says why (one event with a stable code) and the
 * local mount goes on serving; mistakes in the SMB settings stop it before it mounts anything.
 */

const USER = 'twsmb-fail';
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe('twinfs serve --smb: failures are reported and the mount keeps serving', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  const servers: ServerHandle[] = [];
  beforeAll(async () => {
    t = await tempDirs('p1', 'm1', 's1', 'p2', 'm2', 's2', 'cfg');
  });
  afterAll(async () => {
    for (const s of servers) await s.kill();
    await t?.cleanup();
    await removeCreatedUsers([USER]);
  });

  async function expectMountServes(srv: ServerHandle, primary: string): Promise<void> {
    await shOk(`echo still-here > ${q(path.join(srv.mount, 'local.txt'))}`);
    expect(
      await waitFor(
        async () =>
          (await fsp.readFile(path.join(primary, 'local.txt'), 'utf8').catch(() => '')) === 'still-here\n',
        10_000,
      ),
    ).toBe(true);
    expect(srv.proc.exitCode).toBeNull();
  }

  it('Samba not installed: ETWIN_SMB_NOT_INSTALLED, the mount serves', async () => {
    // A machine without the samba package has no smbd anywhere. The honest stand-in here: the
    // server's PATH keeps every directory except those holding smbd (Debian: /usr/sbin, /sbin),
    // so twinfs looks for smbd exactly as it would there and finds none. Nothing else it needs
    // lives only there (fusermount and the other Samba tools are in /usr/bin and /bin).
    const PATH = (process.env.PATH ?? '')
      .split(':')
      .filter((d) => d && !existsSync(path.join(d, 'smbd')))
      .join(':');
    expect((await sh('command -v smbd', { env: { ...process.env, PATH } })).code).not.toBe(0);
    const port = await freePort();
    const srv = await startServer({
      primary: t.dirs.p1!,
      mount: t.dirs.m1!,
      args: [
        '--state-dir',
        t.dirs.s1!,
        '--writeback-ms',
        '200',
        '--smb',
        String(port),
        '--smb-user',
        `${USER}:pw`,
      ],
      env: { ...process.env, PATH },
    });
    servers.push(srv);
    const e = await waitEvent(srv, 'smb-failed');
    expect(e).toMatchObject({ code: 'ETWIN_SMB_NOT_INSTALLED', gaveUp: false });
    expect(e.message).toMatch(/smbd/);
    expect(e.message).toMatch(/apt|samba/i);
    await expectMountServes(srv, t.dirs.p1!);
    expect(await srv.stop()).toBe(0);
  });

  it('port already taken: ETWIN_SMB_PORT_BUSY, the mount serves, no smbd left running', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const srv = await startServer({
        primary: t.dirs.p2!,
        mount: t.dirs.m2!,
        args: [
          '--state-dir',
          t.dirs.s2!,
          '--writeback-ms',
          '200',
          '--smb',
          `127.0.0.1:${port}`,
          '--smb-user',
          `${USER}:pw`,
        ],
      });
      servers.push(srv);
      const e = await waitEvent(srv, 'smb-failed');
      expect(e).toMatchObject({ code: 'ETWIN_SMB_PORT_BUSY' });
      expect(e.message).toContain(String(port));
      await expectMountServes(srv, t.dirs.p2!);
      expect(await sambaProcesses(path.join(t.dirs.s2!, 'smb/smb.conf'))).toEqual([]);
      expect(await srv.stop()).toBe(0);
    } finally {
      blocker.close();
    }
  });

  it('SMB settings mistakes stop serve before it mounts (usage and config errors)', async () => {
    const run = (args: string[]) =>
      sh(`node ${q(CLI)} serve --primary ${q(t.dirs.p1!)} --mount ${q(t.dirs.m1!)} ${args.map(q).join(' ')}`);
    const noUsers = await run(['--smb', '4450']);
    expect(noUsers.code).toBe(1);
    expect(noUsers.stderr).toMatch(/^twinfs: error ETWIN_CONFIG: SMB has no users/);
    const badPort = await run(['--smb', '127.0.0.1:99999', '--smb-user', 'a:b']);
    expect(badPort.stderr).toMatch(/^twinfs: error ETWIN_USAGE: --smb must be \[HOST:\]PORT/);
    const userOnly = await run(['--smb-user', 'a:b']);
    expect(userOnly.stderr).toMatch(/^twinfs: error ETWIN_USAGE: --smb-user needs --smb/);
    const badName = await run(['--smb', '4450', '--smb-user', 'Bad Name:x']);
    expect(badName.stderr).toMatch(/ETWIN_CONFIG: --smb-user: SMB user name "Bad Name"/);
    const cfg = path.join(t.dirs.cfg!, 'twinfs.json');
    await fsp.writeFile(
      cfg,
      JSON.stringify({ smb: { listen: '4450', users: [{ name: 'ok', password: 'x' }], guestt: true } }),
    );
    const unknownKey = await run(['--config', cfg]);
    expect(unknownKey.stderr).toMatch(/ETWIN_CONFIG: config .*"smb": unknown setting "guestt"/);
    for (const r of [noUsers, badPort, userOnly, badName, unknownKey])
      expect(r.stdout).not.toContain('mounted');
  });
});
