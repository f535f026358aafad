import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunResult } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';
import { freePort, twinfs } from '../repl/fixtures.js';

/** A failed command: the exit status, and one stderr line `twinfs: error CODE: ...` with no stack trace. */
function expectError(r: RunResult, exit: number, code: string, text?: RegExp): void {
  expect(r.code, `stderr: ${r.stderr}`).toBe(exit);
  expect(r.stderr).toMatch(new RegExp(`^twinfs: error ${code}: \\S`));
  expect(r.stderr.trim().split('\n'), 'one line').toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  if (text) expect(r.stderr).toMatch(text);
}

/** Environment without a server or token, so only what a test passes counts. */
const clean = { TWINFS_SERVER: undefined, TWINFS_TOKEN: undefined, TWINFS_CONFIG: undefined };

describe('twinfs CLI: usage mistakes, bad config, unreachable server, missing token', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let token: string;
  let dead: string;
  beforeAll(async () => {
    t = await tempDirs('etc');
    token = path.join(t.dirs.etc!, 'token');
    await fsp.writeFile(token, 'abc\n', { mode: 0o600 });
    dead = `ws://127.0.0.1:${await freePort()}`;
  });
  afterAll(async () => {
    await t?.cleanup();
  });

  it('bad options and arguments exit 2 with a message naming them', async () => {
    expectError(
      await twinfs(['status', '--bogus'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /unknown option --bogus for status \(status --help lists what it takes\)/,
    );
    expectError(
      await twinfs(['status', 'extra'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /status takes no argument "extra"/,
    );
    expectError(
      await twinfs(['freeze', '--timeout'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /Not enough arguments following: timeout/,
    );
    expectError(await twinfs(['mirror', 'fix'], { env: clean }), 2, 'ETWIN_USAGE', /Choices: "repair"/);
    expectError(
      await twinfs(['freeze', '--server', dead, '--token-file', token], { env: clean }),
      2,
      'ETWIN_USAGE',
      /freeze needs at least one path/,
    );
    expectError(
      await twinfs(['freeze', '/a', '--timeout', 'soon', '--server', dead, '--token-file', token], {
        env: clean,
      }),
      2,
      'ETWIN_USAGE',
      /--timeout wants a number/,
    );
    expectError(
      await twinfs(
        ['backup', '--lease-sec', '0', '--server', dead, '--token-file', token, '--target', 'dir:/tmp/x'],
        {
          env: clean,
        },
      ),
      2,
      'ETWIN_USAGE',
      /--lease must be at least 1/,
    );
    expectError(
      await twinfs(['forget', '--keep-last', '0'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /--keep-last/,
    );
    const none = await twinfs([], { env: clean });
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/name a command/);
  });

  it('a typo suggests the command', async () => {
    expectError(
      await twinfs(['statsu'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /unknown command "statsu"; did you mean "status"\?/,
    );
    expectError(await twinfs(['snapshot'], { env: clean }), 2, 'ETWIN_USAGE', /did you mean "snapshots"\?/);
    expectError(
      await twinfs(['xyzzy'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /unknown command "xyzzy" \(--help lists the commands\)/,
    );
  });

  it('a bad config file: the message names the file and the bad key (exit 1)', async () => {
    const cfg = async (name: string, body: string) => {
      const f = path.join(t.dirs.etc!, name);
      await fsp.writeFile(f, body);
      return f;
    };
    const unknownKey = await cfg('a.json', JSON.stringify({ operator: { sever: 'ws://x:1' } }));
    expectError(
      await twinfs(['status', '--config', unknownKey], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /"operator\.sever" is not a setting/,
    );
    const flat = await cfg('b.json', JSON.stringify({ server: 'ws://127.0.0.1:1', tokn: 'x' }));
    expectError(
      await twinfs(['status', '--config', flat], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /"tokn" is not a setting/,
    );
    const badUrl = await cfg('c.json', JSON.stringify({ server: 'http://x' }));
    expectError(
      await twinfs(['pairs', '--config', badUrl], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /"server" must be a ws:\/\/ or wss:\/\/ URL/,
    );
    const badServe = await cfg('d.json', JSON.stringify({ serve: { cacheMb: 'lots' } }));
    expectError(
      await twinfs(['status', '--config', badServe], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /"cacheMb" must be a number/,
    );
    const section = await cfg('e.json', JSON.stringify({ serve: {}, operators: {} }));
    expectError(
      await twinfs(['status', '--config', section], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /"operators" is not a section/,
    );
    const notJson = await cfg('f.json', '{ server: ');
    expectError(
      await twinfs(['repl', '--config', notJson], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /not valid JSON/,
    );
    expectError(
      await twinfs(['status'], { env: { ...clean, TWINFS_CONFIG: path.join(t.dirs.etc!, 'missing.json') } }),
      1,
      'ETWIN_CONFIG',
      /cannot read config file .*missing\.json: ENOENT/,
    );
    expectError(
      await twinfs(['snapshots', '--config', unknownKey], { env: clean }),
      1,
      'ETWIN_CONFIG',
      /operator\.sever/,
    );
  });

  it('an unreachable server: ETWIN_CONTROL_UNREACHABLE, exit 1 (CLI and REPL)', async () => {
    for (const cmd of [
      ['status'],
      ['thaw'],
      ['pairs'],
      ['verify'],
      ['mirror', 'repair'],
      ['flush'],
      ['resync', 'bk-1'],
    ])
      expectError(
        await twinfs([...cmd, '--server', dead, '--token-file', token], { env: clean }),
        1,
        'ETWIN_CONTROL_UNREACHABLE',
        new RegExp(dead.replace(/[/.]/g, '\\$&')),
      );
    const r = await twinfs(['repl', '--server', dead, '--token-file', token], {
      env: clean,
      input: 'status\n',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_CONTROL_UNREACHABLE: /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expectError(
      await twinfs(
        [
          'backup',
          '--server',
          dead,
          '--token-file',
          token,
          '--target',
          `dir:${t.dirs.etc}/b`,
          '--catalog',
          `${t.dirs.etc}/c`,
        ],
        {
          env: clean,
        },
      ),
      1,
      'ETWIN_CONTROL_UNREACHABLE',
    );
  });

  it('no server or no token: a usage error saying where they come from; an unreadable token file', async () => {
    expectError(
      await twinfs(['status'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /no server: pass --server .*TWINFS_SERVER/,
    );
    expectError(
      await twinfs(['status', '--server', dead], { env: clean }),
      2,
      'ETWIN_USAGE',
      /no token: pass --token-file .*TWINFS_TOKEN/,
    );
    expectError(await twinfs(['repl', '--server', dead], { env: clean }), 2, 'ETWIN_USAGE', /no token/);
    expectError(
      await twinfs(['status', '--server', 'http://x'], { env: clean }),
      2,
      'ETWIN_USAGE',
      /ws:\/\/ or wss:\/\//,
    );
    expectError(
      await twinfs(['status', '--server', dead, '--token-file', path.join(t.dirs.etc!, 'nope')], {
        env: clean,
      }),
      1,
      'ETWIN_TOKEN',
      /nope: ENOENT/,
    );
    // From the environment instead: TWINFS_SERVER and TWINFS_TOKEN are enough to get as far as the server.
    expectError(
      await twinfs(['status'], { env: { ...clean, TWINFS_SERVER: dead, TWINFS_TOKEN: 'abc' } }),
      1,
      'ETWIN_CONTROL_UNREACHABLE',
    );
  });

  it('--help of every subcommand shows usage and examples', async () => {
    const subcommands = [
      'serve',
      'unmount',
      'verify',
      'demo',
      'status',
      'freeze',
      'thaw',
      'pairs',
      'split',
      'resync',
      'flush',
      'mirror',
      'repl',
      'plugins',
      'backup',
      'peer',
      'snapshots',
      'restore',
      'check',
      'forget',
    ];
    // Four at a time: twenty Node start-ups at once overran the per-process timeout on a loaded 2-core machine.
    const results: RunResult[] = [];
    for (let i = 0; i < subcommands.length; i += 4) {
      const batch = subcommands.slice(i, i + 4);
      results.push(...(await Promise.all(batch.map((c) => twinfs([c, '--help'], { env: clean })))));
    }
    for (const [i, r] of results.entries()) {
      expect(r.code, subcommands[i]).toBe(0);
      expect(r.stdout, subcommands[i]).toMatch(new RegExp(`twinfs ${subcommands[i]}`));
      expect(r.stdout, `${subcommands[i]} --help has examples`).toMatch(/^Examples:/m);
    }
    const top = await twinfs(['--help'], { env: clean });
    for (const c of subcommands) expect(top.stdout).toMatch(new RegExp(`^\\s+twinfs ${c}\\b`, 'm'));
  }, 240_000);
});
