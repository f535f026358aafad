import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { isMounted, waitFor } from '../helpers/mounts.js';
import { CLI, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { freePort, jsonLines, q, twinfs, writeSlowPlugin } from './fixtures.js';
import { TmuxTerminal } from './tmux.js';

/**
 * The REPL as an operator meets it: `twinfs repl` in a real pseudo-terminal (tmux), against a
 * real `twinfs serve` with a mirror and a control channel on a fixed port (so it can come back
 * after a restart with the same state directory and token).
 */
describe('twinfs repl in a terminal', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let d: Record<string, string>;
  let srv: ServerHandle;
  let serverArgs: string[];
  let url: string;
  let tokenFile: string;
  let client: ControlClient;
  let env: Record<string, string>;
  /** The snapshot made in beforeAll, as the backup reported it. */
  let snapshotId: string;
  const terms: TmuxTerminal[] = [];

  const repl = async (extra = ''): Promise<TmuxTerminal> => {
    const term = await TmuxTerminal.start(
      `node ${q(CLI)} repl --server ${url} --token-file ${q(tokenFile)} --catalog ${q(d.cat!)} --history ${q(
        path.join(d.etc!, 'history'),
      )} ${extra}`,
      { env, cwd: t.base, socket: path.join(t.base, 'tmux.sock') },
    );
    terms.push(term);
    await term.waitFor(/twinfs> ?$/);
    return term;
  };
  const start = () => startServer({ primary: d.primary!, mount: d.mnt!, args: serverArgs });
  const status = async () => (await client.request('status')) as any;

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'etc', 'plugins', 'pstate', 'cat', 'backups');
    d = t.dirs;
    tokenFile = path.join(d.state!, 'control.token');
    const port = await freePort();
    url = `ws://127.0.0.1:${port}`;
    serverArgs = ['--mirror', d.mirror!, '--state-dir', d.state!, '--control', `127.0.0.1:${port}`];
    srv = await start();
    await fsp.mkdir(path.join(d.mnt!, 'docs'));
    await fsp.mkdir(path.join(d.mnt!, 'many'));
    await fsp.writeFile(path.join(d.mnt!, 'docs/alpha.txt'), 'alpha\n');
    await fsp.writeFile(path.join(d.mnt!, 'docs/beta.txt'), 'beta\n');
    for (let i = 0; i < 40; i++)
      await fsp.writeFile(path.join(d.mnt!, `many/f${String(i).padStart(2, '0')}`), Buffer.alloc(4096, i));
    await writeSlowPlugin(d.plugins!);
    env = { TWINFS_PLUGIN_PATH: d.plugins!, TWINFS_PLUGIN_STATE: d.pstate!, HOME: d.etc! };
    client = await ControlClient.connect(url, {
      token: (await fsp.readFile(tokenFile, 'utf8')).trim(),
      client: 'test',
    });
    // One snapshot in the catalog, for snapshot-id completion.
    const b = await twinfs([
      'backup',
      '--server',
      url,
      '--token-file',
      tokenFile,
      '--subtree',
      '/docs',
      '--target',
      `dir:${d.backups}`,
      '--catalog',
      d.cat!,
      '--json',
    ]);
    expect(b.code, b.stderr).toBe(0);
    snapshotId = (jsonLines(b.stdout).at(-1) as { snapshotId: string }).snapshotId;
  }, 60_000);

  afterEach(async () => {
    for (const term of terms.splice(0)) await term.kill();
  });

  afterAll(async () => {
    await client?.close();
    await TmuxTerminal.killServer(path.join(t.base, 'tmux.sock'));
    await srv?.kill();
    await t?.cleanup();
  });

  it('completes commands, options, volume paths, snapshot ids and target ids', async () => {
    const term = await repl();
    await term.type('fre');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> freeze'));
    await term.type('--ti');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> freeze --timeout'));
    await term.press('C-u');
    // Volume paths: one match is completed, several are listed.
    await term.type('freeze /do');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> freeze /docs/'));
    await term.press('Tab', 'Tab');
    await term.waitFor(/\/docs\/alpha\.txt\s+\/docs\/beta\.txt/);
    await term.type('a');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('/docs/alpha.txt'));
    await term.press('C-u');
    // Inside a directory, for every command that takes paths, relative ones too.
    await term.type('pairs /docs');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> pairs /docs/'));
    await term.type('b');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> pairs /docs/beta.txt'));
    await term.press('C-u');
    await term.type('thaw docs/al');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> thaw docs/alpha.txt'));
    await term.press('C-u');
    // Snapshot ids from the catalog (and 'latest').
    // (The dir: target is a repository: its ids are not folder names, the backup's result has it.)
    const snap = snapshotId;
    expect(snap).toMatch(/^\d{8}T/);
    await term.type('check ');
    await term.press('Tab', 'Tab');
    await term.waitFor(new RegExp(`latest\\s+${snap}`));
    await term.press('C-u');
    // Target ids: built-in plugins and the test plugin's.
    await term.type('backup --target ');
    await term.press('Tab', 'Tab');
    const s = await term.waitFor(/dir:\s+s3:\s+slow:\s+tar:/);
    expect(s).toContain('slow:');
    await term.press('C-u');
    // A plugin-contributed command, completed and run.
    await term.type('slow.h');
    await term.press('Tab');
    await term.waitFor((x) => x.endsWith('twinfs> slow.hello'));
    await term.type('world');
    await term.press('Enter');
    await term.waitFor(/^hello world$/m);
  });

  it('keeps history across sessions: Up recalls a command from the previous one', async () => {
    const first = await repl();
    await first.type('pairs /docs/beta.txt');
    await first.press('Enter');
    await first.waitFor(/^\/docs\/beta\.txt: PAIR$/m);
    await first.type('exit');
    await first.press('Enter');
    await first.waitFor(/\[exit 0\]/);
    const second = await repl();
    await second.press('Up');
    await second.waitFor((s) => s.endsWith('twinfs> exit'));
    await second.press('Up');
    await second.waitFor((s) => s.endsWith('twinfs> pairs /docs/beta.txt'));
    await second.press('Enter');
    await second.waitFor(/^\/docs\/beta\.txt: PAIR$/m);
    expect(await fsp.readFile(path.join(d.etc!, 'history'), 'utf8')).toContain('pairs /docs/beta.txt');
    expect((await fsp.stat(path.join(d.etc!, 'history'))).mode & 0o777).toBe(0o600);
  });

  it('prints a server event above the prompt and keeps the half-typed line', async () => {
    const term = await repl();
    await term.type('pairs /docs/alpha.txt');
    await term.waitFor((s) => s.endsWith('twinfs> pairs /docs/alpha.txt'));
    const fz = (await client.request('freeze', { selector: { paths: ['/docs/beta.txt'] } })) as any;
    // The event goes above; the prompt and the typed words come back below it, intact.
    const s = await term.waitFor(
      (x) => /\[frozen\] \/docs\/beta\.txt frozen/.test(x) && x.endsWith('\ntwinfs> pairs /docs/alpha.txt'),
    );
    expect(s.split('\n').slice(-2)[0]).toMatch(/^\[frozen\] \/docs\/beta\.txt frozen \(fz-/);
    await term.press('Enter');
    await term.waitFor(/^\/docs\/alpha\.txt: PAIR$/m);
    await client.request('thaw', { freezeId: fz.freezeId });
    await term.waitFor(/\[thawed\] fz-\S+ thawed after/);
    expect((await status()).backup.freezes).toEqual([]);
  });

  it('reports errors as one line with the code, never a stack trace', async () => {
    const term = await repl();
    for (const line of [
      'freeze /no/such/file',
      'thaw',
      'stauts',
      'freeze /docs --bogus 1',
      'restore nope --to x',
    ])
      await term.type(line).then(() => term.press('Enter'));
    // Typed ahead: the lines run one after another, in order.
    const s = await term.waitFor(/^error ETWIN_UNKNOWN_SNAPSHOT: .*\ntwinfs>$/m);
    expect(s).toMatch(/^error ETWIN_NOT_FOUND: .*\/no\/such\/file/m);
    // Thaw with nothing frozen is not an error (idempotent).
    expect(s).toMatch(/^twinfs> thaw\nnothing is frozen$/m);
    expect(s).toMatch(/^error ETWIN_USAGE: unknown command "stauts"; did you mean "status"\?/m);
    expect(s).toMatch(
      /^error ETWIN_USAGE: unknown option --bogus for freeze \(freeze --help lists what it takes\)$/m,
    );
    expect(s).toMatch(/^error ETWIN_UNKNOWN_SNAPSHOT: /m);
    expect(s).not.toMatch(/^\s+at /m);
    expect([...s.matchAll(/^error (\w+)/gm)].map((m) => m[1])).toEqual([
      'ETWIN_NOT_FOUND',
      'ETWIN_USAGE',
      'ETWIN_USAGE',
      'ETWIN_UNKNOWN_SNAPSHOT',
    ]);
  });

  it('Ctrl-C at the prompt drops the typed line; twice on an empty line leaves', async () => {
    const term = await repl();
    await term.type('freeze /docs/alpha.txt');
    await term.press('C-c');
    await term.waitFor((s) => s.endsWith('twinfs>') && s.includes('twinfs> freeze /docs/alpha.txt\n'));
    await term.press('C-c');
    await term.waitFor(/\(Ctrl-C again, Ctrl-D or exit to leave\)\ntwinfs>$/);
    await term.press('C-c');
    await term.waitFor(/\[exit 0\]/);
    expect((await status()).backup.freezes).toEqual([]);
  });

  it('Ctrl-C during a long backup cancels it and leaves nothing frozen or split', async () => {
    const term = await repl();
    await term.type('backup --subtree /many --target slow:x');
    await term.press('Enter');
    // The split is made and files are being copied (40 files, 300 ms each at the target).
    await term.waitFor(/\[split\] \/many\/\*\* split for bk-/);
    // The one progress bar: percent, bytes of a total known up front, rate, files, ETA.
    await term.waitFor(
      /copy\s+\d+% \[[#-]{20}\] [\d.]+ \S+ of 160\.0 KiB, .*, \d+\/41 files, ETA \S+ \(Ctrl-C cancels\)/,
    );
    expect((await status()).mirror.splits).toHaveLength(1);
    await term.press('C-c');
    const s = await term.waitFor(/^error ETWIN_ABORTED: .*\n(.*\n)*twinfs>$/m, 15_000);
    expect(s).toMatch(/cancelling\.\.\./);
    // The run released its split before it gave the prompt back.
    const st = await status();
    expect(st.mirror.splits).toEqual([]);
    expect(st.backup.backups).toEqual([]);
    expect(st.backup.freezes).toEqual([]);
    expect(st.mirror.state).toBe('PAIR');
    await term.type('pairs /many/f00');
    await term.press('Enter');
    await term.waitFor(/^\/many\/f00: PAIR$/m);
    // The catalog does not claim the cancelled run.
    const list = jsonLines((await twinfs(['snapshots', '--catalog', d.cat!, '--json'])).stdout)[0] as any[];
    expect(list.filter((x) => x.target === 'slow:x').map((x) => x.state)).toEqual(['failed']);
  });

  it('survives a server restart on the same port and says it reconnected', async () => {
    const term = await repl();
    expect(await srv.stop()).toBe(0);
    await term.waitFor(/\[connection\] lost; reconnecting/);
    await term.type('status');
    await term.press('Enter');
    await term.waitFor(/^error ETWIN_CONTROL_UNREACHABLE: /m);
    srv = await start();
    await term.waitFor(/\[connection\] reconnected to the server/, 15_000);
    await term.type('status');
    await term.press('Enter');
    await term.waitFor(/^mirror\s+PAIR device /m);
    expect(await waitFor(async () => (await term.lastLine()) === 'twinfs>', 5000)).toBe(true);
  });
});

describe('twinfs serve --repl', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let term: TmuxTerminal | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state', 'home');
    await fsp.writeFile(path.join(t.dirs.primary!, 'hello.txt'), 'hello\n');
  });
  afterAll(async () => {
    await term?.kill();
    await TmuxTerminal.killServer(path.join(t.base, 'tmux.sock'));
    await t?.cleanup();
  });

  it("runs the REPL in the server's terminal; exit stops the server and unmounts", async () => {
    const d = t.dirs;
    term = await TmuxTerminal.start(
      `node ${q(CLI)} serve --primary ${q(d.primary!)} --mount ${q(d.mnt!)} --mirror ${q(d.mirror!)} --state-dir ${q(d.state!)} --repl`,
      { env: { HOME: d.home! }, socket: path.join(t.base, 'tmux.sock') },
    );
    await term.waitFor(/twinfs> ?$/, 20_000);
    await term.type('pairs /hel');
    await term.press('Tab');
    await term.waitFor((s) => s.endsWith('twinfs> pairs /hello.txt'));
    await term.press('Enter');
    await term.waitFor(/^\/hello\.txt: PAIR$/m);
    // Restoring into the mount this very process serves would wait on itself: refused, and
    // the server goes on serving.
    await term.type(`restore latest --to ${d.mnt}/restored --catalog ${d.state}/catalog`);
    await term.press('Enter');
    await term.waitFor(/ETWIN_OWN_MOUNT/, 10_000);
    expect(await fsp.readdir(d.primary!)).not.toContain('restored');
    await term.type('pairs /hello.txt');
    await term.press('Enter');
    await term.waitFor((s) => s.split('/hello.txt: PAIR').length >= 3, 10_000);
    await term.type('exit');
    await term.press('Enter');
    await term.waitFor(/\[exit 0\]/, 20_000);
    expect(await isMounted(d.mnt!)).toBe(false);
  });
});
