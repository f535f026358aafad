import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { watchCli } from '../helpers/cli.js';
import { waitFor } from '../helpers/mounts.js';
import { jsonLines, twinfs } from '../repl/fixtures.js';

/**
 * The command line and the REPL serve one command set: the same script of commands, run
 * through `twinfs repl` (piped, against a real server) and as `twinfs CMD ...` subcommands,
 * prints the same lines, the same errors, and ends with the same exit status.
 */
describe('one command set for the command line and the REPL', () => {
  let fx: ControlFixture;
  let conn: string[];
  let catalog: string;

  beforeAll(async () => {
    fx = await startControlFixture();
    conn = ['--server', fx.url, '--token-file', fx.tokenFile];
    catalog = path.join(fx.base, 'catalog');
    await fsp.mkdir(path.join(fx.mnt, 'docs/sub'), { recursive: true });
    await fsp.writeFile(path.join(fx.mnt, 'docs/a.txt'), 'alpha\n');
    await fsp.writeFile(path.join(fx.mnt, 'docs/sub/b.bin'), Buffer.alloc(1 << 20, 3));
    const b = await twinfs([
      'backup',
      'docs',
      ...conn,
      '--target',
      `dir:${path.join(fx.base, 'backups')}`,
      '--catalog',
      catalog,
    ]);
    expect(b.code, b.stderr).toBe(0);
  }, 90_000);

  afterAll(async () => {
    await fx?.close();
  });

  /** Each line: REPL words; the command line gets the same words plus the connection. */
  const script = () => [
    'thaw',
    'thaw docs/a.txt',
    'pairs docs/',
    'pairs',
    `snapshots --catalog ${catalog}`,
    `check latest --catalog ${catalog} --metadata-only`,
    `forget --keep-last 5 --dry-run --catalog ${catalog}`,
    'verify --no-content',
    'frezee /docs',
    'freeze --timout 3 /docs',
    'pairs --bogus',
    'backup --lease soon --target dir:/nowhere',
    'resync bk-no-such',
  ];

  it('the same script prints the same through both, with the same exit status', async () => {
    const cli = [];
    for (const line of script()) {
      const r = await twinfs([...line.split(' '), ...conn]);
      cli.push(r);
    }
    const repl = await twinfs(['repl', ...conn], { input: script().join('\n') + '\n' });
    const lines = (s: string) => s.split('\n').filter(Boolean);
    expect(lines(repl.stdout)).toEqual(cli.flatMap((r) => lines(r.stdout)));
    expect(lines(repl.stderr)).toEqual(cli.flatMap((r) => lines(r.stderr)));
    // The REPL's status is its last failure's; each command's is its own.
    const failures = cli.map((r) => r.code).filter((c) => c !== 0);
    expect(repl.code).toBe(failures.at(-1));
    expect(cli.map((r) => r.code)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 1]);
    // What the lines say (so that two equally wrong fronts do not pass).
    expect(cli[0]!.stdout).toBe('nothing is frozen\n');
    expect(cli[2]!.stdout).toBe('/docs: PAIR\n');
    expect(cli[8]!.stderr).toBe(
      'twinfs: error ETWIN_USAGE: unknown command "frezee"; did you mean "freeze"? (--help lists the commands)\n',
    );
    expect(cli[9]!.stderr).toBe(
      'twinfs: error ETWIN_USAGE: unknown option --timout (did you mean --timeout?) for freeze (freeze --help lists what it takes)\n',
    );
    expect(cli[12]!.stderr).toMatch(/^twinfs: error ETWIN_UNKNOWN_BACKUP: /);
  }, 240_000);

  it('--json: the same result lines', async () => {
    const lines = script().slice(0, 8);
    const cli = [];
    for (const line of lines) cli.push(await twinfs([...line.split(' '), ...conn, '--json']));
    const repl = await twinfs(['repl', ...conn, '--json'], { input: lines.join('\n') + '\n' });
    expect(repl.code, repl.stderr).toBe(0);
    const timing = new Set(['ms', 'rate', 'etaSec', 'percent', 'time']);
    const strip = (v: unknown) => JSON.parse(JSON.stringify(v, (k, x) => (timing.has(k) ? undefined : x)));
    expect(strip(jsonLines(repl.stdout))).toEqual(strip(cli.flatMap((r) => jsonLines(r.stdout))));
  }, 240_000);

  it('the repository commands: the same lines, results and exit statuses through both', async () => {
    const target = `dir:${path.join(fx.base, 'backups')}`;
    const lines = [
      `ls latest docs --catalog ${catalog}`,
      `diff latest latest --catalog ${catalog}`,
      `snapshots --target ${target} --catalog ${catalog}`,
      `catalog rebuild --target ${target} --catalog ${catalog}`,
      `check --target ${target} --read-data`,
      `prune --target ${target} --dry-run`,
      `catalog fix --target ${target}`,
      'check --read-data',
      `find /docs --target ${target} --catalog ${catalog}`,
      `find docs/[x --catalog ${catalog}`,
    ];
    const text = (s: string) => s.split('\n').filter(Boolean);
    const timing = new Set(['ms', 'rate', 'etaSec', 'percent', 'time']);
    const results = (s: string) =>
      JSON.parse(
        JSON.stringify(
          jsonLines(s).filter((l) => (l as { event?: string }).event !== 'progress'),
          (k, x) => (timing.has(k) ? undefined : x),
        ),
      );
    const cli = [];
    const cliJson = [];
    for (const line of lines) {
      cli.push(await twinfs([...line.split(' '), ...conn]));
      cliJson.push(await twinfs([...line.split(' '), ...conn, '--json']));
    }
    const repl = await twinfs(['repl', ...conn], { input: lines.join('\n') + '\n' });
    const replJson = await twinfs(['repl', ...conn, '--json'], { input: lines.join('\n') + '\n' });
    expect(cli.map((r) => r.code)).toEqual([0, 0, 0, 0, 0, 0, 2, 2, 0, 1]);
    expect(text(repl.stdout)).toEqual(cli.flatMap((r) => text(r.stdout)));
    expect(text(repl.stderr)).toEqual(cli.flatMap((r) => text(r.stderr)));
    expect(results(replJson.stdout)).toEqual(results(cliJson.map((r) => r.stdout).join('')));
    // What they say.
    // (`backup docs` stored the directory itself, not what is below it.)
    expect(cli[0]!.stdout).toMatch(/^dir +0\d{3} .* \/docs\ntwinfs: 1 entries of \d{8}T\S+\n$/);
    expect(jsonLines(cliJson[1]!.stdout).at(-1)).toMatchObject({ changes: [] });
    expect(jsonLines(cliJson[3]!.stdout).at(-1)).toMatchObject({ snapshots: 1, added: 0, removed: 0 });
    const check = jsonLines(cliJson[4]!.stdout).at(-1) as { ok: boolean; packs: number; packsRead: number };
    expect(check).toMatchObject({ ok: true, snapshots: 1 });
    expect(check.packsRead).toBe(check.packs);
    expect(cli[6]!.stderr).toMatch(/^twinfs: error ETWIN_USAGE: catalog takes one action: rebuild/);
    expect(cli[7]!.stderr).toMatch(/^twinfs: error ETWIN_USAGE: check needs a snapshot, or --target/);
    expect(jsonLines(cliJson[8]!.stdout).at(-1)).toMatchObject({
      snapshots: 1,
      found: [{ entries: [{ path: '/docs', type: 'dir' }] }],
    });
    expect(cli[9]!.stderr).toMatch(/^twinfs: error ETWIN_BAD_PATTERN: bad pattern "docs\/\[x"/);
  }, 240_000);

  it('freeze data/a then thaw data/a: one form of a volume path (REPL and command line)', async () => {
    const r = await twinfs(['repl', ...conn], { input: 'freeze docs/a.txt\nthaw docs/a.txt\n' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^frozen \/docs\/a\.txt \(fz-\S+\); writes held/m);
    expect(r.stdout).toMatch(/^thawed \/docs\/a\.txt \(fz-\S+\) after /m);

    const f = watchCli(['freeze', './docs//a.txt', '--timeout', '60', ...conn, '--json'], 60_000);
    expect(await waitFor(() => f.lines.length > 0, 20_000)).toBe(true);
    expect(f.lines[0]).toMatchObject({ event: 'frozen' });
    const t = await twinfs(['thaw', 'docs/a.txt', ...conn, '--json']);
    expect(t.code, t.stderr).toBe(0);
    expect(jsonLines(t.stdout).at(-1)).toEqual([
      { freezeId: f.lines[0].freezeId, heldMs: expect.any(Number) },
    ]);
    expect(await f.exited).toBe(0);
  }, 120_000);

  it('a wrong token: one coded line, no stack trace (command line and REPL)', async () => {
    const env = { TWINFS_TOKEN: 'not-the-token', TWINFS_CONFIG: undefined };
    const cli = await twinfs(['status', '--server', fx.url], { env });
    expect(cli.code).toBe(1);
    expect(cli.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^twinfs: error EPROTO_AUTH: /)]);
    const repl = await twinfs(['repl', '--server', fx.url], { env, input: 'status\n' });
    expect(repl.code).toBe(1);
    expect(repl.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^twinfs: error EPROTO_AUTH: /)]);
  }, 60_000);
});
