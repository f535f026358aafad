import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLEAN_ENV, expectCoded } from '../helpers/coded.js';
import type { RunResult } from '../helpers/proc.js';
import { tempDirs } from '../helpers/server.js';
import { freePort, twinfs } from '../repl/fixtures.js';

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
    expectCoded(
      await twinfs(['status', '--bogus'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /unknown option --bogus for status \(status --help lists what it takes\)/,
    );
    expectCoded(
      await twinfs(['status', 'extra'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /status takes no argument "extra"/,
    );
    expectCoded(
      await twinfs(['freeze', '--timeout'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /Not enough arguments following: timeout/,
    );
    expectCoded(await twinfs(['mirror', 'fix'], { env: CLEAN_ENV }), 2, 'ETWIN_USAGE', /Choices: "repair"/);
    expectCoded(
      await twinfs(['freeze', '--server', dead, '--token-file', token], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /freeze needs at least one path/,
    );
    expectCoded(
      await twinfs(['freeze', '/a', '--timeout', 'soon', '--server', dead, '--token-file', token], {
        env: CLEAN_ENV,
      }),
      2,
      'ETWIN_USAGE',
      /--timeout wants a number/,
    );
    expectCoded(
      await twinfs(
        ['backup', '--lease-sec', '0', '--server', dead, '--token-file', token, '--target', 'dir:/tmp/x'],
        {
          env: CLEAN_ENV,
        },
      ),
      2,
      'ETWIN_USAGE',
      /--lease must be at least 1/,
    );
    expectCoded(
      await twinfs(['forget', '--keep-last', '0'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /--keep-last/,
    );
    const none = await twinfs([], { env: CLEAN_ENV });
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/name a command/);
  });

  it('a typo suggests the command', async () => {
    expectCoded(
      await twinfs(['statsu'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /unknown command "statsu"; did you mean "status"\?/,
    );
    expectCoded(
      await twinfs(['snapshot'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /did you mean "snapshots"\?/,
    );
    expectCoded(
      await twinfs(['xyzzy'], { env: CLEAN_ENV }),
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
    expectCoded(
      await twinfs(['status', '--config', unknownKey], { env: CLEAN_ENV }),
      1,
      'ETWIN_CONFIG',
      /"operator\.sever" is not a setting/,
    );
    const flat = await cfg('b.json', JSON.stringify({ server: 'ws://127.0.0.1:1', tokn: 'x' }));
    expectCoded(
      await twinfs(['status', '--config', flat], { env: CLEAN_ENV }),
      1,
      'ETWIN_CONFIG',
      /"tokn" is not a setting/,
    );
    const badUrl = await cfg('c.json', JSON.stringify({ server: 'http://x' }));
    expectCoded(
      await twinfs(['pairs', '--config', badUrl], { env: CLEAN_ENV }),
      1,
      'ETWIN_CONFIG',
      /"server" must be a ws:\/\/ or wss:\/\/ URL/,
    );
    const badServe = await cfg('d.json', JSON.stringify({ serve: { cacheMb: 'lots' } }));
    expectCoded(
      await twinfs(['status', '--config', badServe], { env: CLEAN_ENV }),
      1,
      'ETWIN_CONFIG',
      /"cacheMb" must be a number/,
    );
    const section = await cfg('e.json', JSON.stringify({ serve: {}, operators: {} }));
    expectCoded(
      await twinfs(['status', '--config', section], { env: CLEAN_ENV }),
      1,
      'ETWIN_CONFIG',
      /"operators" is not a section/,
    );
    const notJson = await cfg('f.json', '{ server: ');
    expectCoded(
      await twinfs(['repl', '--config', notJson], { env: CLEAN_ENV }),
      1,
      'ETWIN_CONFIG',
      /not valid JSON/,
    );
    expectCoded(
      await twinfs(['status'], {
        env: { ...CLEAN_ENV, TWINFS_CONFIG: path.join(t.dirs.etc!, 'missing.json') },
      }),
      1,
      'ETWIN_CONFIG',
      /cannot read config file .*missing\.json: ENOENT/,
    );
    expectCoded(
      await twinfs(['snapshots', '--config', unknownKey], { env: CLEAN_ENV }),
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
      expectCoded(
        await twinfs([...cmd, '--server', dead, '--token-file', token], { env: CLEAN_ENV }),
        1,
        'ETWIN_CONTROL_UNREACHABLE',
        new RegExp(dead.replace(/[/.]/g, '\\$&')),
      );
    const r = await twinfs(['repl', '--server', dead, '--token-file', token], {
      env: CLEAN_ENV,
      input: 'status\n',
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^twinfs: error ETWIN_CONTROL_UNREACHABLE: /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expectCoded(
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
          env: CLEAN_ENV,
        },
      ),
      1,
      'ETWIN_CONTROL_UNREACHABLE',
    );
  });

  it('no server or no token: a usage error saying where they come from; an unreadable token file', async () => {
    expectCoded(
      await twinfs(['status'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /no server: pass --server .*TWINFS_SERVER/,
    );
    expectCoded(
      await twinfs(['status', '--server', dead], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /no token: pass --token-file .*TWINFS_TOKEN/,
    );
    expectCoded(await twinfs(['repl', '--server', dead], { env: CLEAN_ENV }), 2, 'ETWIN_USAGE', /no token/);
    expectCoded(
      await twinfs(['status', '--server', 'http://x'], { env: CLEAN_ENV }),
      2,
      'ETWIN_USAGE',
      /ws:\/\/ or wss:\/\//,
    );
    expectCoded(
      await twinfs(['status', '--server', dead, '--token-file', path.join(t.dirs.etc!, 'nope')], {
        env: CLEAN_ENV,
      }),
      1,
      'ETWIN_TOKEN',
      /nope: ENOENT/,
    );
    // From the environment instead: TWINFS_SERVER and TWINFS_TOKEN are enough to get as far as the server.
    expectCoded(
      await twinfs(['status'], { env: { ...CLEAN_ENV, TWINFS_SERVER: dead, TWINFS_TOKEN: 'abc' } }),
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
      results.push(...(await Promise.all(batch.map((c) => twinfs([c, '--help'], { env: CLEAN_ENV })))));
    }
    for (const [i, r] of results.entries()) {
      expect(r.code, subcommands[i]).toBe(0);
      expect(r.stdout, subcommands[i]).toMatch(new RegExp(`twinfs ${subcommands[i]}`));
      expect(r.stdout, `${subcommands[i]} --help has examples`).toMatch(/^Examples:/m);
    }
    const top = await twinfs(['--help'], { env: CLEAN_ENV });
    for (const c of subcommands) expect(top.stdout).toMatch(new RegExp(`^\\s+twinfs ${c}\\b`, 'm'));
  }, 240_000);
});
