import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { runCli } from '../helpers/cli.js';
import { sh } from '../helpers/proc.js';
import { controlServeArgs, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { run, sha } from './mirror-helpers.js';

/**
 * A BROKEN pair returns to PAIR only through a repair that verified it (issue 10): broken for
 * real (the mirror's copy made immutable with chattr +i, so the mirror refuses the write),
 * BROKEN across an unrelated write and a restart, still BROKEN after a repair while the cause
 * remains, PAIR with mirror == primary once the cause is gone and a repair ran.
 */
describe('BROKEN pairs: only a verified repair clears them', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let c: ControlClient | undefined;
  let mirrorData = '';
  const immutable: string[] = [];
  const tokenFile = () => path.join(t.dirs.state!, 'control.token');

  async function start(): Promise<void> {
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: controlServeArgs(t.dirs, tokenFile()),
    });
    const mounted = srv.events.find((e) => e.event === 'mounted') as any;
    mirrorData = mounted.mirror.mirrorRoot;
    const token = (await fsp.readFile(tokenFile(), 'utf8')).trim();
    c = await ControlClient.connect(mounted.control.url, { token, client: 'test', requestTimeoutMs: 60_000 });
    await settle();
  }

  async function stop(): Promise<void> {
    await c?.close();
    c = undefined;
    expect(await srv!.stop()).toBe(0);
    srv = undefined;
  }

  /** Waits until start-up work is done and every change is applied. */
  async function settle(): Promise<any> {
    const end = Date.now() + 30_000;
    for (;;) {
      const s: any = await c!.request('status');
      if (s.mirror.state !== 'COPY' && s.mirror.queueLength === 0) return s;
      if (Date.now() > end) throw new Error(`mirror not settled: ${JSON.stringify(s.mirror)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** `twinfs pairs PATH --json`: what an operator sees. */
  async function pairs(p: string): Promise<string> {
    const mounted = srv!.events.find((e) => e.event === 'mounted') as any;
    const r = await runCli([
      'pairs',
      p,
      '--json',
      '--server',
      mounted.control.url,
      '--token-file',
      tokenFile(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    return r.last.state;
  }

  async function chattr(flag: '+i' | '-i', file: string): Promise<void> {
    await run(`chattr ${flag} '${file}'`);
    if (flag === '+i') immutable.push(file);
    else immutable.splice(immutable.indexOf(file), 1);
  }

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    await start();
  });
  afterAll(async () => {
    for (const f of immutable) await sh(`chattr -i '${f}'`);
    await c?.close().catch(() => undefined);
    await srv?.kill();
    await t?.cleanup();
  });

  it('stays BROKEN across an unrelated write, a restart and a repair with the cause present; a repair after the cause is gone makes it PAIR with mirror == primary', async () => {
    const mnt = t.dirs.mnt!;
    await run(`set -e; cd '${mnt}'; head -c 100000 /dev/urandom > f; echo g > g; sync`);
    await settle();
    expect(await pairs('/f')).toBe('PAIR');

    await chattr('+i', `${mirrorData}/f`);
    await run(`set -e; cd '${mnt}'; head -c 5000 /dev/urandom >> f; sync f`);
    let s = await settle();
    expect(s.mirror.broken).toContain('/f');
    expect(srv!.events.some((e) => e.event === 'broken' && e.path === '/f')).toBe(true);
    expect(await pairs('/f')).toBe('BROKEN');

    // An unrelated write: /g follows, /f stays BROKEN.
    await run(`set -e; cd '${mnt}'; echo more >> g; sync g`);
    s = await settle();
    expect(s.mirror.broken).toEqual(['/f']);
    expect(await pairs('/g')).toBe('PAIR');
    expect(await pairs('/f')).toBe('BROKEN');

    // A restart: the journal keeps it; the start-up repair cannot fix it while the cause is there.
    await stop();
    await start();
    expect(await pairs('/f')).toBe('BROKEN');

    // An explicit repair with the cause still present.
    const r1: any = await c!.request('repair');
    expect(r1.remaining).toContain('/f');
    expect(await pairs('/f')).toBe('BROKEN');

    await chattr('-i', `${mirrorData}/f`);
    // Nothing clears it by itself: no repair ran yet.
    expect(await pairs('/f')).toBe('BROKEN');
    const r2: any = await c!.request('repair');
    expect(r2.remaining).toEqual([]);
    expect(await pairs('/f')).toBe('PAIR');
    expect(await sha(`${mirrorData}/f`)).toBe(await sha(`${t.dirs.primary}/f`));
    const v: any = await c!.request('verify', { content: true });
    expect(v.differences).toEqual([]);
    expect(v.skipped).toBe(0);
  }, 120_000);

  it('a repair compares after copying: a torn copy that size, mtime and ctime cannot reveal is found and fixed', async () => {
    const mnt = t.dirs.mnt!;
    await run(`set -e; cd '${mnt}'; mkdir d; head -c 50000 /dev/urandom > d/x; sync d/x`);
    await settle();
    // Break the directory's pair for real: the mirror refuses its chmod.
    await chattr('+i', `${mirrorData}/d`);
    await run(`chmod 700 '${mnt}/d'`);
    let s = await settle();
    expect(s.mirror.broken).toContain('/d');
    // Meanwhile the mirror's copy of d/x got torn in a way a quick comparison cannot see: same
    // size, same mtime, and a ctime newer than the primary's.
    const torn = `${mirrorData}/d/x`;
    const st = await fsp.stat(torn);
    const fh = await fsp.open(torn, 'r+');
    await fh.write(Buffer.alloc(4096, 0), 0, 4096, 20_000);
    await fh.close();
    await fsp.utimes(torn, st.atime, st.mtime);
    expect(await sha(torn)).not.toBe(await sha(`${t.dirs.primary}/d/x`));

    await chattr('-i', `${mirrorData}/d`);
    const r: any = await c!.request('repair');
    expect(r.remaining).toEqual([]);
    s = await settle();
    expect(s.mirror.broken).toEqual([]);
    expect(await sha(torn)).toBe(await sha(`${t.dirs.primary}/d/x`));
    expect(((await fsp.stat(`${mirrorData}/d`)).mode & 0o777).toString(8)).toBe('700');
  }, 120_000);
});
