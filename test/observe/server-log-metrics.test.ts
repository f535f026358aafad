import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { sh } from '../helpers/proc.js';
import { type ServerHandle, tempDirs } from '../helpers/server.js';
import { run, waitForEvent } from '../mirror-driver/mirror-helpers.js';
import { startObservedServer } from './observe-fixture.js';

interface Family {
  name: string;
  type: string;
  help: string;
  metrics: Array<{
    value?: string;
    labels?: Record<string, string>;
    buckets?: Record<string, string>;
    count?: string;
    sum?: string;
  }>;
}

/**
 * The server log and /metrics of a real `twinfs serve` (separate process, real mount, mirror,
 * control channel and status port) through a whole backup sequence driven from outside: a
 * refused token, a freeze and its thaw, a real `twinfs backup` process (prepare, copy,
 * release, commit), a pair broken for real (its mirror copy made immutable) and a repair.
 * The log's JSON lines are parsed and the events looked for in order; the exposition is parsed
 * with a Prometheus text-format parser.
 */
describe('server log and metrics through a backup sequence', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let c: ControlClient | undefined;
  let httpUrl = '';
  let controlUrl = '';
  let operatorToken = '';
  let readToken = '';
  let mirrorData = '';
  let immutable: string | undefined;
  let backupReply: any;

  const metrics = async (token: string) => {
    const res = await fetch(`${httpUrl}metrics`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.text();
    const parse = (await import('parse-prometheus-text-format')).default as (s: string) => Family[];
    return { status: res.status, families: res.status === 200 ? parse(text) : [], text };
  };
  const family = (fams: Family[], name: string) => {
    const f = fams.find((x) => x.name === name);
    if (!f) throw new Error(`no metric ${name}`);
    return f;
  };
  const value = (fams: Family[], name: string, labels: Record<string, string> = {}) => {
    const m = family(fams, name).metrics.find((x) =>
      Object.entries(labels).every(([k, v]) => x.labels?.[k] === v),
    );
    if (!m) throw new Error(`no ${name} with ${JSON.stringify(labels)}`);
    return Number(m.value);
  };

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'backups', 'catalog');
    const o = await startObservedServer(t.dirs, { http: true });
    let tokenFile: string;
    ({ srv, controlUrl, httpUrl, mirrorData, operatorToken, readToken, tokenFile } = o);
    expect((srv.events.find((e) => e.event === 'mounted') as any).control.tokenFile).toBe(tokenFile);
    // d/big made first, then appended to (O_APPEND opens are JS's): the bytes go through the
    // write-back cache (counted below); a new file's, and those through an open JS has not
    // taken, go to the primary in libfuse's thread.
    await run(
      `set -e; cd '${t.dirs.mnt}'; mkdir d; : > d/big; head -c 300000 /dev/urandom >> d/big; echo a > a.txt; sync`,
    );

    // A wrong token: refused, and logged without the token.
    await expect(
      ControlClient.connect(controlUrl, { token: 'not-the-token-0123456789', client: 'intruder' }),
    ).rejects.toMatchObject({ code: 'EPROTO_AUTH' });

    c = await o.connect('log-test');
    const f: any = await c.request('freeze', { selector: { paths: ['/a.txt'] } });
    await c.request('thaw', { freezeId: f.freezeId });

    const r = await o.backupOfD(`dir:${t.dirs.backups}`, t.dirs.catalog!);
    expect(r.code, r.stderr).toBe(0);
    backupReply = r.last;

    // A pair broken for real: the mirror refuses to write its copy.
    immutable = path.join(mirrorData, 'a.txt');
    await run(`chattr +i '${immutable}'`);
    await run(`set -e; cd '${t.dirs.mnt}'; echo more >> a.txt; sync a.txt`);
    await waitForEvent(srv, (e) => e.event === 'broken' && e.path === '/a.txt', 30_000);
    await run(`chattr -i '${immutable}'`);
    immutable = undefined;
    const rep: any = await c.request('repair');
    expect(rep.remaining).toEqual([]);
    // The reply can overtake the server's stdout on its way here.
    const until = Date.now() + 10_000;
    while (!srv.log.some((l) => l.kind === 'repaired') && Date.now() < until)
      await new Promise((r) => setTimeout(r, 50));
  }, 180_000);

  afterAll(async () => {
    if (immutable) await sh(`chattr -i '${immutable}'`);
    await c?.close();
    await srv?.kill();
    await t?.cleanup();
  });

  it('logs each step of the sequence as a JSON line, in order, and never a token', async () => {
    const log = srv!.log;
    const find = (from: number, pred: (l: any) => boolean, what: string) => {
      const i = log.findIndex((l, k) => k >= from && pred(l));
      if (i < 0)
        throw new Error(
          `no log line for ${what} after line ${from}:\n${log.map((l) => JSON.stringify(l)).join('\n')}`,
        );
      return i;
    };
    const listening = find(0, (l) => l.kind === 'listening', 'listening');
    expect(log[listening]!.control).toBe(controlUrl);
    expect(log[listening]!.http).toBe(httpUrl);
    let i = find(listening, (l) => l.kind === 'connection', 'a connection');
    const refused = find(i, (l) => l.kind === 'auth-failed' && l.client === 'intruder', 'the wrong token');
    expect(log[refused]!.level).toBe(40);
    i = find(
      refused,
      (l) => l.kind === 'authenticated' && l.client === 'log-test' && l.role === 'operator',
      'hello',
    );
    i = find(i, (l) => l.kind === 'frozen' && l.selector?.paths?.[0] === '/a.txt', 'the freeze');
    i = find(i, (l) => l.kind === 'thawed', 'the thaw');
    const prepare = find(
      i,
      (l) => l.kind === 'prepare' && l.backupId === backupReply.backupId,
      'the prepare',
    );
    expect(log[prepare]!.stallMs).toBe(backupReply.stallMs);
    i = find(prepare, (l) => l.kind === 'released' && l.backupId === backupReply.backupId, 'the release');
    const done = find(i, (l) => l.kind === 'backup' && l.backupId === backupReply.backupId, 'the backup');
    expect(log[done]).toMatchObject({
      outcome: 'ok',
      target: `dir:${t.dirs.backups}`,
      snapshotId: backupReply.snapshotId,
    });
    expect(log[done]!.copiedBytes).toBeGreaterThanOrEqual(300_000);
    i = find(done, (l) => l.kind === 'broken' && l.path === '/a.txt', 'the broken pair');
    expect(log[i]!.level).toBe(50);
    find(i, (l) => l.kind === 'repaired', 'the repair');
    for (const l of log) {
      // Never `event`: readers of the --json event lines on the same stdout key on it.
      expect(l.event).toBeUndefined();
      expect(typeof l.kind).toBe('string');
      expect(typeof l.msg).toBe('string');
      expect(typeof l.time).toBe('string');
    }
    const all = JSON.stringify(log) + srv!.stderr();
    expect(all).not.toContain(operatorToken);
    expect(all).not.toContain(readToken);
    expect(all).not.toContain('not-the-token-0123456789');
  });

  it('serves /metrics to a token only, with the sequence counted in conventional names and units', async () => {
    expect((await metrics('wrong-token-value')).status).toBe(401);
    expect((await fetch(`${httpUrl}metrics`)).status).toBe(401);
    const { status, families } = await metrics(readToken);
    expect(status).toBe(200);
    for (const f of families) {
      expect(f.name).toMatch(/^[a-z_][a-z0-9_]*$/);
      if (f.type === 'COUNTER') expect(f.name).toMatch(/_total$/);
    }
    expect(value(families, 'twinfs_prepares_total', { outcome: 'ok' })).toBe(1);
    expect(value(families, 'twinfs_releases_total', { reason: 'release' })).toBe(1);
    expect(value(families, 'twinfs_freezes_total')).toBe(1);
    expect(value(families, 'twinfs_active_freezes')).toBe(0);
    expect(value(families, 'twinfs_active_leases')).toBe(0);
    expect(value(families, 'twinfs_backups_in_progress')).toBe(0);
    expect(value(families, 'twinfs_backups_total', { target: `dir:${t.dirs.backups}`, outcome: 'ok' })).toBe(
      1,
    );
    expect(
      value(families, 'twinfs_backup_copied_bytes_total', { target: `dir:${t.dirs.backups}` }),
    ).toBeGreaterThanOrEqual(300_000);
    const lastOk = value(families, 'twinfs_backup_last_success_timestamp_seconds', {
      target: `dir:${t.dirs.backups}`,
    });
    expect(Math.abs(lastOk - Date.now() / 1000)).toBeLessThan(600);
    expect(value(families, 'twinfs_auth_failures_total', { channel: 'control' })).toBe(1);
    // The wrong bearer token just presented to /metrics (a request without one is no failure).
    expect(value(families, 'twinfs_auth_failures_total', { channel: 'http' })).toBe(1);
    expect(value(families, 'twinfs_control_connections', { role: 'operator' })).toBe(1);
    expect(value(families, 'twinfs_control_connections_total')).toBeGreaterThanOrEqual(3);
    expect(value(families, 'twinfs_repairs_total', { outcome: 'ok' })).toBe(1);
    expect(value(families, 'twinfs_broken_pairs')).toBe(0);
    expect(value(families, 'twinfs_mirror_state', { state: 'PAIR' })).toBe(1);
    expect(value(families, 'twinfs_writeback_bytes_total')).toBeGreaterThanOrEqual(300_000);
    expect(family(families, 'twinfs_cache_dirty_bytes').type).toBe('GAUGE');
    const stall = family(families, 'twinfs_write_stall_seconds');
    expect(stall.type).toBe('HISTOGRAM');
    expect(Number(stall.metrics[0]!.count)).toBe(1);
    expect(Number(stall.metrics[0]!.sum)).toBeCloseTo(backupReply.stallMs / 1000, 6);
  });
});
