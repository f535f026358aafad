import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { CLI, type ServerHandle, tempDirs } from '../helpers/server.js';
import { startObservedServer } from './observe-fixture.js';

interface Watcher {
  proc: ChildProcess;
  out(): string;
  err(): string;
  exited: Promise<number | null>;
}

/** Runs a command with its output collected; `tty` runs it under script(1), on a pseudo-terminal. */
function start(args: string[], tty = false): Watcher {
  const cmd = [process.execPath, CLI, ...args].map((a) => `'${a}'`).join(' ');
  const proc = tty
    ? spawn('script', ['-qfec', `stty rows 60 cols 200; exec ${cmd}`, '/dev/null'], {
        stdio: ['pipe', 'pipe', 'pipe'],
      })
    : spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  return { proc, out: () => out, err: () => err, exited };
}

async function until(what: string, cond: () => boolean, w: Watcher, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what} not seen within ${timeoutMs} ms:\n${w.out()}\n${w.err()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * `twinfs status --watch` against a real server: as plain lines when piped, as JSON lines with
 * --json, redrawn on a terminal (a pseudo-terminal from script(1)); each shows a freeze and its
 * thaw as the server reports them, ends with 0 on SIGTERM and with ETWIN_CONTROL_CLOSED when the
 * server goes away.
 */
describe('twinfs status --watch', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let c: ControlClient | undefined;
  let conn: string[] = [];
  const watchers: Watcher[] = [];

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    const o = await startObservedServer(t.dirs);
    srv = o.srv;
    await fsp.writeFile(path.join(t.dirs.mnt!, 'a.txt'), 'a\n');
    conn = ['--server', o.controlUrl, '--token-file', o.tokenFile];
    c = await o.connect('watch-test');
  }, 60_000);

  afterAll(async () => {
    for (const w of watchers) if (w.proc.exitCode === null) w.proc.kill('SIGKILL');
    await c?.close();
    await srv?.kill();
    await t?.cleanup();
  });

  it('follows a freeze and its thaw: lines when piped, JSON with --json, a redrawn screen on a terminal', async () => {
    const plain = start(['status', '--watch', ...conn]);
    const json = start(['status', '--watch', '--json', ...conn]);
    const tty = start(['status', '--watch', ...conn], true);
    watchers.push(plain, json, tty);
    await until('the status', () => plain.out().includes('volume '), plain);
    await until('the JSON status', () => json.out().includes('"event":"status"'), json);
    await until('the first screen', () => tty.out().includes('events:'), tty);
    expect(plain.out()).not.toContain('\x1b[');
    expect(JSON.parse(json.out().split('\n')[0]!).fs.mount).toBe(t.dirs.mnt);
    const screens = () => tty.out().split('\x1b[H\x1b[2J').length - 1;
    const before = screens();
    expect(before).toBeGreaterThanOrEqual(1);

    const f: any = await c!.request('freeze', { selector: { paths: ['/a.txt'] } });
    await until(
      'the freeze line',
      () => new RegExp(`\\d\\d:\\d\\d:\\d\\d frozen: /a.txt frozen \\(${f.freezeId}\\)`).test(plain.out()),
      plain,
    );
    await until('the freeze JSON line', () => json.out().includes(f.freezeId), json);
    const ev = json
      .out()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l))
      .find((e) => e.event === 'frozen');
    expect(ev.data.freezeId).toBe(f.freezeId);
    // Redrawn: the status part of the new screen lists the freeze.
    await until(
      'a screen with the freeze',
      () => tty.out().split('\x1b[H\x1b[2J').at(-1)!.includes(`frozen   ${f.freezeId}`),
      tty,
    );
    expect(screens()).toBeGreaterThan(before);

    await c!.request('thaw', { freezeId: f.freezeId });
    await until('the thaw line', () => plain.out().includes(`thawed: ${f.freezeId} thawed`), plain);
    await until(
      'a screen without the freeze',
      () => {
        const last = tty.out().split('\x1b[H\x1b[2J').at(-1)!;
        return last.includes('thawed') && !last.includes(`frozen   ${f.freezeId}`);
      },
      tty,
    );

    tty.proc.kill('SIGTERM');
    // script(1) passes the signal on through the terminal's process group.
    expect(await tty.exited).toBe(0);
  }, 60_000);

  it('ends with ETWIN_CONTROL_CLOSED when the server stops', async () => {
    const plain = start(['status', '--watch', ...conn]);
    watchers.push(plain);
    await until('the status', () => plain.out().includes('volume '), plain);
    await c?.close();
    c = undefined;
    expect(await srv!.stop()).toBe(0);
    srv = undefined;
    expect(await plain.exited).toBe(1);
    expect(plain.err()).toMatch(/ETWIN_CONTROL_CLOSED/);
    expect(plain.err()).not.toMatch(/\n\s+at /);
  }, 60_000);
});
