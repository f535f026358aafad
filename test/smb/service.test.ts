import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SmbEvent, SmbService, type SmbSettings } from '../../src/smb/index.js';
import { waitFor } from '../helpers/mounts.js';
import { tempDirs } from '../helpers/server.js';
import { freePort, removeCreatedUsers, sambaProcesses, smbclient, smbOk } from './smb-fixture.js';

/**
 * SmbService on its own, serving a plain directory (the lifecycle does not depend on FUSE):
 * what it writes, status and connected clients, restarts, giving up, read-only and guest shares,
 * and that stopping leaves no Samba process behind.
 */

const USERS = ['twsmb-svc', 'twsmb-svc2'];

describe('SmbService', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  const services: SmbService[] = [];

  beforeAll(async () => {
    t = await tempDirs('share', 'state1', 'state2', 'state3', 'state4', 'state5');
    await fsp.writeFile(path.join(t.dirs.share!, 'hello.txt'), 'hello\n');
  });
  afterAll(async () => {
    for (const s of services) await s.dispose().catch(() => undefined);
    await t?.cleanup();
    await removeCreatedUsers(USERS);
  });

  function service(
    state: string,
    settings: SmbSettings,
    extra: Partial<ConstructorParameters<typeof SmbService>[0]> = {},
  ) {
    const s = new SmbService({
      settings,
      sharePath: t.dirs.share!,
      stateDir: path.join(state, 'smb'),
      ...extra,
    });
    const events: SmbEvent[] = [];
    s.onEvent((e) => events.push(e));
    services.push(s);
    return { s, events };
  }

  it('keeps everything in its state directory, supervises smbd, lists clients, restarts it, stops it', async () => {
    const port = await freePort();
    const { s, events } = service(t.dirs.state1!, {
      listen: String(port),
      users: [
        { name: USERS[0]!, password: 'secret one' },
        { name: USERS[1]!, password: 'two' },
      ],
    });
    const st = await s.start();
    expect(st).toMatchObject({ state: 'running', running: true, host: '127.0.0.1', port, share: 'twinfs' });
    expect(events.map((e) => e.event)).toEqual(['smb-started']);

    // smb.conf names no path outside the state directory and the share (printcap: /dev/null).
    const conf = await fsp.readFile(s.layout.conf, 'utf8');
    const paths = [...conf.matchAll(/=\s*(?:tdbsam:)?(\/\S*)/g)]
      .map((m) => m[1]!)
      .filter((p) => !p.startsWith('/.fuse_hidden'));
    expect(paths.length).toBeGreaterThan(8);
    for (const p of paths)
      expect(p === '/dev/null' || p.startsWith(s.layout.root) || p === t.dirs.share, p).toBe(true);
    expect(conf).toMatch(/interfaces = 127\.0\.0\.1\n\s+bind interfaces only = yes/);
    expect(conf).toMatch(/map to guest = never/);
    expect((await fsp.stat(s.layout.root)).mode & 0o777).toBe(0o700);

    // A client that stays connected shows up in status().
    const session = spawn('smbclient', [`//127.0.0.1/twinfs`, '-p', String(port), '-U', USERS[1]!], {
      env: { ...process.env, PASSWD: 'two' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    try {
      let clients: Awaited<ReturnType<SmbService['status']>>['clients'] = [];
      expect(
        await waitFor(
          async () => (clients = (await s.status()).clients).some((c) => c.user === USERS[1]),
          10_000,
          200,
        ),
      ).toBe(true);
      expect(clients[0]).toMatchObject({ user: USERS[1], dialect: expect.stringMatching(/^SMB3/) });
      expect(clients[0]!.address).toMatch(/127\.0\.0\.1/);
    } finally {
      session.stdin!.end('exit\n');
      session.kill();
    }

    // smbd killed: died, restarted (new pid), serving again.
    const pid = st.pid!;
    process.kill(pid, 'SIGKILL');
    expect(await waitFor(() => events.some((e) => e.event === 'smb-restarted'), 20_000)).toBe(true);
    expect(events.map((e) => e.event)).toEqual(['smb-started', 'smb-died', 'smb-restarted']);
    expect(events[1]).toMatchObject({ pid, signal: 'SIGKILL' });
    const after = s.snapshot();
    expect(after).toMatchObject({ running: true, restarts: 1 });
    expect(after.pid).not.toBe(pid);
    expect(await smbOk({ port, user: USERS[0], password: 'secret one' }, 'get hello.txt -')).toContain(
      'hello',
    );

    await s.dispose();
    expect(events.at(-1)!.event).toBe('smb-stopped');
    expect(s.snapshot()).toMatchObject({ state: 'stopped', running: false, pid: null });
    expect(await sambaProcesses(s.layout.conf)).toEqual([]);
    expect((await smbclient({ port, user: USERS[0], password: 'secret one' }, 'ls')).code).not.toBe(0);
  });

  it('a hung smbd (stopped: its port still open, its pid alive) is found by the health check and restarted', async () => {
    const port = await freePort();
    const { s, events } = service(
      t.dirs.state5!,
      { listen: String(port), users: [{ name: USERS[0]!, password: 'pw' }] },
      { healthIntervalMs: 300, healthTimeoutMs: 1500, healthFailures: 2 },
    );
    const st = await s.start();
    expect(st.running).toBe(true);
    // Healthy: checks pass, nothing happens.
    await new Promise((r) => setTimeout(r, 1500));
    expect(events.map((e) => e.event)).toEqual(['smb-started']);
    process.kill(st.pid!, 'SIGSTOP');
    try {
      expect(await waitFor(() => events.some((e) => e.event === 'smb-restarted'), 30_000)).toBe(true);
    } finally {
      try {
        process.kill(st.pid!, 'SIGCONT');
      } catch {
        // already gone (killed by the service)
      }
    }
    expect(events.map((e) => e.event)).toEqual(['smb-started', 'smb-hung', 'smb-died', 'smb-restarted']);
    expect(events[1]).toMatchObject({ pid: st.pid, failures: 2 });
    const after = s.snapshot();
    expect(after).toMatchObject({ running: true, restarts: 1 });
    expect(after.pid).not.toBe(st.pid);
    expect(await smbOk({ port, user: USERS[0], password: 'pw' }, 'get hello.txt -')).toContain('hello');
    await s.dispose();
    expect(await sambaProcesses(s.layout.conf)).toEqual([]);
  });

  it('gives up after repeated failed restarts (bounded backoff) and says why', async () => {
    const port = await freePort();
    const { s, events } = service(
      t.dirs.state2!,
      { listen: String(port), users: [{ name: USERS[0]!, password: 'x' }] },
      { restartDelayMs: 300, maxRestartFailures: 2 },
    );
    const st = await s.start();
    expect(st.running).toBe(true);
    // smbd dies and someone else takes its port before the restart.
    const blocker = net.createServer();
    s.onEvent((e) => {
      if (e.event === 'smb-died') blocker.listen(port, '127.0.0.1');
    });
    process.kill(st.pid!, 'SIGKILL');
    try {
      expect(await waitFor(() => events.some((e) => e.event === 'smb-failed'), 20_000)).toBe(true);
      expect(events.find((e) => e.event === 'smb-failed')).toMatchObject({
        code: 'ETWIN_SMB_PORT_BUSY',
        gaveUp: true,
      });
      expect(s.snapshot()).toMatchObject({
        state: 'failed',
        running: false,
        lastError: { code: 'ETWIN_SMB_PORT_BUSY' },
      });
      expect(await sambaProcesses(s.layout.conf)).toEqual([]);
    } finally {
      blocker.close();
    }
  });

  it('serves a read-only share: reads work, every change is refused', async () => {
    const port = await freePort();
    const { s } = service(t.dirs.state3!, {
      listen: String(port),
      readOnly: true,
      users: [{ name: USERS[0]!, password: 'x' }],
    });
    expect((await s.start()).running).toBe(true);
    const login = { port, user: USERS[0], password: 'x' };
    expect(await smbOk(login, 'get hello.txt -')).toContain('hello');
    for (const cmd of ['put /etc/hostname new.txt', 'mkdir d', 'del hello.txt', 'rename hello.txt x.txt']) {
      const r = await smbclient(login, cmd);
      expect(r.stdout + r.stderr, cmd).toMatch(/NT_STATUS_(ACCESS_DENIED|MEDIA_WRITE_PROTECTED)/);
    }
    expect(await fsp.readdir(t.dirs.share!)).toEqual(['hello.txt']);
    await s.dispose();
  });

  it('lets guests in only when asked to', async () => {
    const port = await freePort();
    const { s } = service(t.dirs.state4!, { listen: String(port), guest: true, readOnly: true });
    expect((await s.start()).running).toBe(true);
    expect(await smbOk({ port }, 'get hello.txt -')).toContain('hello');
    expect(await fsp.readFile(s.layout.conf, 'utf8')).toMatch(/map to guest = bad user/);
    await s.dispose();
  });
});
