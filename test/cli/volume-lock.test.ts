import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMounted, unmountAll } from '../helpers/mounts.js';
import { type RunResult, sh } from '../helpers/proc.js';
import { CLI, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function serve(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return sh(`node ${q(CLI)} serve ${args.map(q).join(' ')}`, { timeoutMs });
}

/**
 * One owner per volume (issue 11, row 2): a second `twinfs serve` on the primary or the mirror
 * of a running server (another mount point, the same shared state directory) is refused with
 * ETWIN_VOLUME_LOCKED naming the first server's pid, before it reads the journal or mounts;
 * the lock is the kernel's, so it goes with a kill -9, and it is per volume, not per state dir.
 */
describe('twinfs serve: one server per volume', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: Record<string, string>;
  const servers: ServerHandle[] = [];
  beforeAll(async () => {
    t = await tempDirs('p', 'mr', 'state', 'm1', 'm2', 'm3', 'p2', 'p3', 'mr3', 'm4');
    d = t.dirs;
    await fsp.writeFile(path.join(d.p!, 'a'), 'hello');
  });
  afterAll(async () => {
    for (const s of servers) await s.kill().catch(() => undefined);
    await unmountAll(d.m1!, d.m2!, d.m3!, d.m4!);
    await t?.cleanup();
  });

  const first = () =>
    startServer({
      primary: d.p!,
      mount: d.m1!,
      args: ['--mirror', d.mr!, '--state-dir', d.state!],
    });

  it('a second server on the same primary and mirror is refused, naming the holder; the first goes on untouched', async () => {
    const s1 = await first();
    servers.push(s1);
    const journals = path.join(d.state!, 'journals');
    const before = await readDir(journals);
    const r = await serve(['--primary', d.p!, '--mount', d.m2!, '--mirror', d.mr!, '--state-dir', d.state!]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_VOLUME_LOCKED: /);
    expect(r.stderr).toContain(`pid ${s1.proc.pid}`);
    expect(r.stderr).toContain(d.p!);
    expect(r.stderr).not.toContain('recovering');
    expect(await isMounted(d.m2!)).toBe(false);
    expect(await readDir(journals)).toEqual(before);
    // The first server still serves.
    expect((await sh(`timeout 10 cat ${q(path.join(d.m1!, 'a'))}`)).stdout).toBe('hello');
  });

  it('the same mirror under another primary is refused too (the mirror is locked)', async () => {
    const r = await serve(['--primary', d.p2!, '--mount', d.m2!, '--mirror', d.mr!, '--state-dir', d.state!]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_VOLUME_LOCKED: the mirror /);
    expect(r.stderr).toContain(`pid ${servers[0]!.proc.pid}`);
    expect(await isMounted(d.m2!)).toBe(false);
  });

  it('the primary without a mirror is refused as well', async () => {
    const r = await serve(['--primary', d.p!, '--mount', d.m2!, '--state-dir', d.state!]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_VOLUME_LOCKED: the primary /);
    expect(await isMounted(d.m2!)).toBe(false);
  });

  it('another volume with the same state directory starts beside it (the lock is per volume)', async () => {
    const s3 = await startServer({
      primary: d.p3!,
      mount: d.m3!,
      args: ['--mirror', d.mr3!, '--state-dir', d.state!],
    });
    servers.push(s3);
    expect(await isMounted(d.m3!)).toBe(true);
    expect(await s3.stop()).toBe(0);
  });

  it('after kill -9 of the owner a new server takes the volume (no staleness timeout)', async () => {
    const s1 = servers[0]!;
    await s1.kill();
    const s2 = await startServer({
      primary: d.p!,
      mount: d.m4!,
      args: ['--mirror', d.mr!, '--state-dir', d.state!],
    });
    servers.push(s2);
    expect((await sh(`timeout 10 cat ${q(path.join(d.m4!, 'a'))}`)).stdout).toBe('hello');
    expect(await s2.stop()).toBe(0);
    // Released at a clean stop too.
    const s3 = await first();
    servers.push(s3);
    expect(await s3.stop()).toBe(0);
  });
});

async function readDir(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of await fsp.readdir(dir).catch(() => [] as string[]))
    out[n] = await fsp.readFile(path.join(dir, n), 'utf8');
  return out;
}
