import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { ROOT, type ServerHandle, tempDirs } from '../helpers/server.js';
import { run } from '../mirror-driver/mirror-helpers.js';
import { type ObservedServer, startObservedServer } from './observe-fixture.js';

/** Debian's chromium (scripts/setup.sh installs it); puppeteer-core never downloads a browser. */
const CHROMIUM = '/usr/bin/chromium';

/**
 * The status page of a real `twinfs serve --http` (separate process, real mount and mirror) in
 * headless Chromium: it asks for a token without one, opens with the read-only token, and
 * shows a freeze and a backup (prepare, progress, last success) as they happen over its event
 * stream. The screenshot goes to docs/status-page.png with TWINFS_UPDATE_SCREENSHOT=1, else to
 * the test's temporary directory.
 */
describe('status page in headless Chromium', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let c: ControlClient | undefined;
  let o: ObservedServer;
  let browser: Browser | undefined;
  let page: Page;
  let httpUrl = '';
  let readToken = '';

  const textOf = (sel: string) => page.$eval(sel, (el) => (el as HTMLElement).textContent ?? '');
  const waitForText = (sel: string, text: string, timeout = 20_000) =>
    page.waitForFunction(
      (s: string, x: string) => document.querySelector(s)?.textContent?.includes(x) ?? false,
      { timeout },
      sel,
      text,
    );

  beforeAll(async () => {
    expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/setup.sh`).toBe(true);
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'backups', 'catalog', 'shots');
    o = await startObservedServer(t.dirs, { http: true });
    ({ srv, httpUrl, readToken } = o);
    c = await o.connect('page-test');
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 1000 });
  }, 120_000);

  afterAll(async () => {
    await browser?.close().catch(() => undefined);
    await c?.close();
    await srv?.kill();
    await t?.cleanup();
  });

  it('asks for a token when it has none, and refuses a wrong one', async () => {
    const ctx = await browser!.createBrowserContext();
    try {
      const p = await ctx.newPage();
      await p.goto(httpUrl, { waitUntil: 'domcontentloaded' });
      await p.waitForFunction(() => !(document.getElementById('login') as HTMLElement).hidden, {
        timeout: 20_000,
      });
      expect(await p.$eval('#main', (el) => (el as HTMLElement).hidden)).toBe(true);
      await p.type('#token', 'not-a-token');
      await p.click('#login button');
      await p.waitForFunction(() => document.getElementById('login-error')?.textContent === 'wrong token');
    } finally {
      await ctx.close();
    }
  }, 60_000);

  it('opens with the read-only token and shows a freeze and a backup as they happen', async () => {
    await page.goto(`${httpUrl}#token=${encodeURIComponent(readToken)}`, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => document.getElementById('live')?.textContent === 'live', {
      timeout: 20_000,
    });
    // The token left the address bar; a session cookie holds it.
    expect(page.url()).not.toContain(readToken);
    expect(await textOf('#mirror-state')).toBe('PAIR');
    expect(await textOf('#freezes tbody')).toBe('');

    // Some writes for the cache plot and something to back up.
    await run(
      `set -e; cd '${t.dirs.mnt}'; mkdir -p d; for i in 1 2 3 4; do head -c 3000000 /dev/urandom > d/f$i; sleep 0.4; done; echo a > a.txt`,
    );

    const f: any = await c!.request('freeze', { selector: { paths: ['/a.txt'] }, timeoutMs: 120_000 });
    await waitForText('#freezes tbody', f.freezeId);
    expect(await textOf('#freezes tbody')).toContain('/a.txt');
    await waitForText('#events tbody', `frozen /a.txt (${f.freezeId})`);

    const target = `dir:${t.dirs.backups}`;
    const r = await o.backupOfD(target, t.dirs.catalog!);
    expect(r.code, r.stderr).toBe(0);
    const { backupId, snapshotId, stallMs } = r.last;
    await waitForText('#prepares tbody', backupId);
    expect(await textOf('#prepares tbody')).toContain(`${Math.round(stallMs * 10) / 10} ms`);
    expect(await textOf('#prepares tbody')).toContain('/d/…');
    await waitForText('#last-success tbody', snapshotId);
    expect(await textOf('#last-success tbody')).toContain(target);
    await waitForText('#events tbody', `backup ${snapshotId} to ${target} done`);
    // The stall histogram counted the prepare (uPlot holds what it draws).
    expect(await textOf('#stall-detail')).toMatch(/^1 prepare\(s\), 0 failed/);

    await c!.request('thaw', { freezeId: f.freezeId });
    await page.waitForFunction(
      (id: string) => !document.querySelector('#freezes tbody')?.textContent?.includes(id),
      { timeout: 20_000 },
      f.freezeId,
    );
  }, 120_000);

  it("shows a backup in progress from its peer's reports, its lease, and then its outcome", async () => {
    // The peer's side of the protocol, by hand: prepare, report part of the copy, release, report the outcome.
    const prep: any = await c!.request('prepare', { selector: { subtree: '/d' }, listItems: false });
    await waitForText('#leases tbody', prep.backupId);
    const target = 'dir:/elsewhere/backups';
    const report = {
      target,
      snapshotId: 'snap-in-progress',
      phase: 'copy',
      files: 2,
      filesTotal: 4,
      bytes: 1048576,
      bytesTotal: 4194304,
      copiedBytes: 1048576,
    };
    const f: any = await c!.request('freeze', { selector: { paths: ['/a.txt'] }, timeoutMs: 120_000 });
    await c!.report(prep.backupId, report as any);
    await waitForText('#backups tbody', target);
    expect(await textOf('#backups tbody')).toContain('1.0 MiB / 4.0 MiB');
    expect(await textOf('#backups tbody')).toContain('copy');
    await waitForText('#freezes tbody', f.freezeId);

    // The page with everything on it: a freeze, a held split, a backup in progress, the earlier
    // backup's success, two prepares.
    const shot = process.env.TWINFS_UPDATE_SCREENSHOT
      ? path.join(ROOT, 'docs/status-page.png')
      : path.join(t.dirs.shots!, 'status-page.png');
    await page.screenshot({ path: shot as `${string}.png`, fullPage: true });
    expect((await fsp.stat(shot)).size).toBeGreaterThan(10_000);
    await c!.request('thaw', { freezeId: f.freezeId });
    const metrics = await (
      await fetch(`${httpUrl}metrics`, { headers: { authorization: `Bearer ${readToken}` } })
    ).text();
    expect(metrics).toMatch(/^twinfs_backups_in_progress 1$/m);
    expect(metrics).toMatch(/^twinfs_active_leases 1$/m);

    await c!.request('release', { backupId: prep.backupId });
    await c!.report(prep.backupId, {
      ...report,
      phase: 'done',
      outcome: 'failed',
      error: { code: 'ETWIN_TARGET_TRANSIENT', message: 'disk full' },
    } as any);
    await waitForText('#last-success tbody', 'ETWIN_TARGET_TRANSIENT');
    expect(await textOf('#backups tbody')).not.toContain(target);
    expect(await textOf('#leases tbody')).not.toContain(prep.backupId);
    await waitForText('#events tbody', `backup to ${target} failed: ETWIN_TARGET_TRANSIENT: disk full`);
  }, 60_000);
});
