import { describe, expect, it } from 'vitest';
import { parseOperatorConfig } from '../../src/cli/operator-config.js';
import {
  controlCommands,
  didYouMean,
  type OperatorCommand,
  operatorCommands,
  parseCommandWords,
  selectorOf,
  selectorText,
  volumePath,
} from '../../src/commands/index.js';
import { formatProgressLine, ProgressMeter } from '../../src/common/progress-line.js';
import { type CompletionSources, complete } from '../../src/repl/completion.js';
import { describeEvent, isNoteworthy } from '../../src/repl/events.js';
import { pluginOperatorCommands } from '../../src/repl/plugin-commands.js';
import { helpText } from '../../src/repl/repl-session.js';
import { describeStatus, percentile } from '../../src/repl/status-text.js';
import { splitWords } from '../../src/repl/words.js';

/** The REPL's pure parts: words, completion, status and event text, the operator config. */

const commands: readonly OperatorCommand[] = operatorCommands;
const volume: Record<string, Array<{ name: string; dir: boolean }>> = {
  '/': [
    { name: 'docs', dir: true },
    { name: 'db', dir: true },
    { name: '.hidden', dir: false },
  ],
  '.': [
    { name: 'docs', dir: true },
    { name: 'db', dir: true },
  ],
  '/docs/': [
    { name: 'a.txt', dir: false },
    { name: 'b.txt', dir: false },
  ],
};
const catalogsAsked: Array<string | undefined> = [];
const src: CompletionSources = {
  commands: new Map(commands.map((c) => [c.name, c])),
  builtins: ['help', 'exit'],
  listVolumeDir: async (d) => volume[d] ?? [],
  listLocalDir: async (d) => (d === '/srv/' ? [{ name: 'backups', dir: true }] : []),
  snapshotIds: async (catalog) => {
    catalogsAsked.push(catalog);
    return ['20240101T000000Z-aaaa', '20240102T000000Z-bbbb'];
  },
  targetIds: () => ['dir', 's3', 'tar'],
};
const c = (line: string) => complete(line, src);

describe('completion', () => {
  it('commands, help topics and options (used ones left out)', async () => {
    expect(await c('')).toEqual([expect.arrayContaining(['status ', 'help ', 'exit ']), '']);
    expect(await c('fr')).toEqual([['freeze '], 'fr']);
    expect(await c('help th')).toEqual([['thaw '], 'th']);
    expect(await c('freeze --t')).toEqual([['--timeout '], '--t']);
    expect((await c('backup --full --'))[0]).toEqual(
      expect.arrayContaining(['--catalog ', '--subtree ', '--target ', '--path ']),
    );
    expect((await c('backup --full --'))[0]).not.toContain('--full ');
    expect(await c('nosuch --')).toEqual([[], '--']);
  });

  it('volume paths: absolute and relative, hidden entries only when asked', async () => {
    expect(await c('freeze /d')).toEqual([['/db/', '/docs/'], '/d']);
    expect(await c('freeze /docs/')).toEqual([['/docs/a.txt ', '/docs/b.txt '], '/docs/']);
    expect(await c('freeze do')).toEqual([['docs/'], 'do']);
    expect((await c('freeze /'))[0]).not.toContain('/.hidden ');
    expect(await c('freeze /.')).toEqual([['/.hidden '], '/.']);
    // After an option that takes a value, the next positional is still a path.
    expect(await c('freeze --timeout 5 /do')).toEqual([['/docs/'], '/do']);
    expect(await c('backup --subtree /do')).toEqual([['/docs/'], '/do']);
  });

  it('snapshot ids (from the catalog named on the line), then paths', async () => {
    expect(await c('restore 2024')).toEqual([['20240101T000000Z-aaaa ', '20240102T000000Z-bbbb '], '2024']);
    expect(await c('restore l')).toEqual([['latest '], 'l']);
    await c('restore --catalog /srv/cat 2');
    expect(catalogsAsked.at(-1)).toBe('/srv/cat');
    expect(await c('restore latest /docs/a')).toEqual([['/docs/a.txt '], '/docs/a']);
  });

  it('target ids, and dir: locations on this host; local paths for --to', async () => {
    expect(await c('backup --target ')).toEqual([['dir:', 's3:', 'tar:'], '']);
    expect(await c('backup --target t')).toEqual([['tar:'], 't']);
    expect(await c('backup --target dir:/srv/b')).toEqual([['dir:/srv/backups/'], 'dir:/srv/b']);
    expect(await c('backup --target s3:buck')).toEqual([[], 's3:buck']);
    expect(await c('restore latest --to /srv/')).toEqual([['/srv/backups/'], '/srv/']);
  });

  it('an unterminated quote completes nothing', async () => {
    expect(await c('freeze "/do')).toEqual([[], '']);
  });
});

describe('words', () => {
  it('splits with quotes and escapes; parses options by their declared types, as yargs does', () => {
    expect(splitWords(`freeze "/a b" '/c d' /e\\ f`)).toEqual(['freeze', '/a b', '/c d', '/e f']);
    expect(() => splitWords('freeze "/a')).toThrow(/unterminated/);
    const backup = operatorCommands.find((x) => x.name === 'backup')!;
    expect(parseCommandWords(backup, ['a', '--lease', '5', '--full', 'b/', '--target=dir:/x'])).toEqual({
      positional: ['/a', '/b'],
      options: { lease: 5, full: true, target: 'dir:/x' },
      raw: ['a', '--lease', '5', '--full', 'b/', '--target=dir:/x'],
    });
    // The option's old name is an alias; numbers are checked.
    expect(parseCommandWords(backup, ['--lease-sec', '7']).options.lease).toBe(7);
    expect(() => parseCommandWords(backup, ['--lease', 'soon'])).toThrow(/--lease wants a number/);
  });

  it('unknown options: one error with a suggestion', () => {
    const freeze = operatorCommands.find((x) => x.name === 'freeze')!;
    expect(() => parseCommandWords(freeze, ['/a', '--timout', '3'])).toThrow(
      'unknown option --timout (did you mean --timeout?) for freeze (freeze --help lists what it takes)',
    );
    const verify = operatorCommands.find((x) => x.name === 'verify')!;
    expect(parseCommandWords(verify, []).options.content).toBe(true);
    expect(parseCommandWords(verify, ['--no-content']).options.content).toBe(false);
  });

  it('volume paths in one form', () => {
    expect(volumePath('data/a')).toBe('/data/a');
    expect(volumePath('./data//a/')).toBe('/data/a');
    expect(volumePath('/')).toBe('/');
    expect(() => volumePath('a/../../b')).toThrow(/\.\./);
  });

  it('selectors in and out', () => {
    expect(selectorOf([])).toEqual({ volume: true });
    expect(selectorOf(['/'])).toEqual({ volume: true });
    expect(selectorOf(['/a', '/b'])).toEqual({ paths: ['/a', '/b'] });
    expect(selectorOf([], '/db')).toEqual({ subtree: '/db' });
    expect(() => selectorOf(['/a'], '/db')).toThrow(/either paths or --subtree/);
    expect(selectorText({ subtrees: ['/db'] })).toBe('/db/**');
    expect(selectorText({ paths: ['/a', '/b'] })).toBe('/a /b');
    expect(selectorText({ volume: true })).toBe('/');
  });
});

describe('help and suggestions', () => {
  it('lists commands; one command with usage, options and examples; guesses typos', () => {
    const all = helpText(commands);
    for (const name of ['status', 'freeze', 'thaw', 'backup', 'help', 'exit'])
      expect(all).toMatch(new RegExp(`^  ${name}\\b`, 'm'));
    expect(helpText(commands, 'freeze')).toMatch(
      /^freeze PATH\.\.\. \| --subtree DIR \[--timeout SECONDS\]\n.*\noptions:\n {2}--timeout N .*\n {2}--subtree VALUE .*\n {2}e\.g\. freeze/,
    );
    expect(helpText(commands, 'frezee')).toBe('no command "frezee"; did you mean "freeze"?');
    expect(didYouMean('stauts', ['status', 'split'])).toBe('status');
    expect(didYouMean('zzzzzz', ['status'])).toBeUndefined();
    for (const cmd of controlCommands) expect(cmd.examples?.length, cmd.name).toBeGreaterThan(0);
  });
});

const baseStatus = () => ({
  fs: {
    primary: '/p',
    mount: '/m',
    writeThrough: false,
    cache: { dirtyBytes: 2048, limitBytes: 64 << 20, dirtyFiles: 1, openFiles: 0, writeErrors: 0 },
  },
  mirror: {
    state: 'PAIR',
    deviceId: 'twin-1',
    mirrorRoot: '/mi/data',
    queueLength: 0,
    splits: [{ splitId: 'sp-1', selector: { subtrees: ['/db'] }, trackedBytes: 4096, trackedFiles: 2 }],
    broken: ['/bad'],
  },
  backup: {
    maxStallMs: 1000,
    stall: {
      prepares: 3,
      failedPrepares: 0,
      maxStallMs: 9.5,
      lastStallMs: 2.25,
      inhibitor: { held: 2, maxStallMs: 4 },
    },
    backups: [{ backupId: 'bk-1', selector: { subtrees: ['/db'] }, expiresAt: 70_000 }],
    freezes: [{ freezeId: 'fz-1', selector: { paths: ['/a'] }, since: 0 }],
  },
});

describe('status text', () => {
  it('states, cache, stalls, leases, freezes, broken pairs and the last backups', () => {
    const lines = describeStatus(
      baseStatus(),
      {
        catalog: '/cat',
        snapshots: [
          {
            id: 's2',
            time: Date.UTC(2024, 0, 2),
            state: 'complete',
            files: 3,
            bytes: 3072,
            target: 'dir:/b',
            paths: ['/'],
          },
          {
            id: 's1',
            time: Date.UTC(2024, 0, 1),
            state: 'failed',
            files: 0,
            bytes: 0,
            target: 'dir:/b',
            paths: ['/db'],
          },
        ],
      },
      10_000,
    ).join('\n');
    expect(lines).toMatch(/^cache\s+2\.0 KiB dirty of 64\.0 MiB in 1 file\(s\)/m);
    expect(lines).toMatch(/^mirror\s+PAIR device twin-1/m);
    expect(lines).toMatch(/^ {2}split\s+sp-1 \/db\/\*\*: 4\.0 KiB in 2 file\(s\)/m);
    expect(lines).toMatch(/^ {2}BROKEN \/bad/m);
    expect(lines).toMatch(
      /^stall\s+3 prepare\(s\), 0 failed; max 9\.5 ms; last 2\.3 ms \(budget 1000 ms\)$/m,
    );
    expect(lines).toMatch(/2 write\(s\) held by freezes or prepares, longest 4\.0 ms/);
    expect(lines).toMatch(/^lease\s+bk-1 \/db\/\*\* expires in 60 s$/m);
    expect(lines).toMatch(/^frozen\s+fz-1 \/a for 10 s$/m);
    expect(lines).toMatch(
      /^backups\s+s2\s+2024-01-02 00:00:00\s+complete\s+3 files 3\.0 KiB\s+\/\s+dir:\/b$/m,
    );
    expect(lines).toMatch(/^\s+s1\s+2024-01-01 00:00:00\s+failed/m);
  });

  it('percentiles of recent stalls when the server reports them', () => {
    const s = baseStatus() as any;
    s.backup.stall.recentMs = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(describeStatus(s, null).join('\n')).toMatch(/last 100: p50 50\.0 ms, p90 90\.0 ms, p99 99\.0 ms/);
    expect(percentile([1, 2, 3, 4], 0.5)).toBe(2);
    expect(percentile([7], 0.99)).toBe(7);
    expect(Number.isNaN(percentile([], 0.5))).toBe(true);
  });

  it('the SMB service when the server runs one', () => {
    const s = baseStatus() as any;
    s.smb = {
      state: 'running',
      running: true,
      url: 'smb://127.0.0.1:4455/twinfs',
      clients: [{}],
      restarts: 1,
      lastError: null,
    };
    expect(describeStatus(s, null).join('\n')).toMatch(
      /^smb\s+running at smb:\/\/127\.0\.0\.1:4455\/twinfs; 1 client\(s\); 1 restart\(s\)$/m,
    );
  });

  it('says why there are no backups to show', () => {
    expect(
      describeStatus(baseStatus(), { catalog: '/cat', snapshots: [], note: 'busy (a backup holds it)' }).join(
        '\n',
      ),
    ).toMatch(/^backups\s+catalog \/cat: busy/m);
    expect(describeStatus(baseStatus(), { catalog: '/cat', snapshots: [] }).join('\n')).toMatch(
      /none of this volume in \/cat/,
    );
    expect(describeStatus(baseStatus(), null).join('\n')).not.toMatch(/^backups/m);
  });
});

describe('events', () => {
  it('one line per event; pair states a split already announced are left out', () => {
    expect(describeEvent('frozen', { freezeId: 'fz-1', selector: { paths: ['/a'] } })).toBe(
      '/a frozen (fz-1)',
    );
    expect(describeEvent('thawed', { freezeId: 'fz-1', heldMs: 1500, reason: 'timeout' })).toBe(
      'fz-1 thawed after 1.5 s (timeout)',
    );
    expect(describeEvent('split', { backupId: 'bk-1', selector: { subtrees: ['/db'] }, stallMs: 3.14 })).toBe(
      '/db/** split for bk-1, writes held 3.1 ms',
    );
    expect(describeEvent('resynced', { backupId: 'bk-1', bytesCopied: 2048, entries: 3 })).toBe(
      'bk-1 resynced: 2.0 KiB copied, 3 entries',
    );
    expect(describeEvent('broken', { path: '/x', error: 'ENOSPC' })).toBe('mirror pair /x BROKEN: ENOSPC');
    expect(describeEvent('lease-expired', { backupId: 'bk-2' })).toMatch(/bk-2 lease expired/);
    expect(describeEvent('state', { paths: 'volume', state: 'COPY' })).toBe('volume: COPY');
    expect(isNoteworthy('state', { paths: 'volume', state: 'PAIR' })).toBe(true);
    expect(isNoteworthy('state', { paths: ['/a'], state: 'SPLIT', splitId: 'sp' })).toBe(false);
    expect(isNoteworthy('state', { paths: ['/a'], state: 'PAIR', splitId: 'sp' })).toBe(false);
    expect(isNoteworthy('frozen', {})).toBe(true);
  });
});

describe('progress', () => {
  it('percent, rate and ETA by bytes when their total is known; never backwards', () => {
    let now = 0;
    const meter = new ProgressMeter(() => now);
    const p = (bytes: number, files = 0, filesTotal = 10) => ({
      phase: 'copy',
      files,
      filesTotal,
      bytes,
      bytesTotal: 1000,
    });
    expect(meter.view(p(0))).toEqual({ percent: 0, rate: null, etaSec: null });
    now = 1000;
    expect(meter.view(p(250))).toEqual({ percent: 25, rate: 250, etaSec: 3 });
    now = 2000;
    expect(meter.view(p(500))).toEqual({ percent: 50, rate: 250, etaSec: 2 });
    const byFiles = new ProgressMeter(() => now);
    byFiles.view({ phase: 'walk', files: 0, filesTotal: 4, bytes: 0 });
    now = 4000;
    expect(byFiles.view({ phase: 'walk', files: 3, filesTotal: 4, bytes: 0 }).percent).toBe(75);
    // The total grew (a walk found more): the bar stays where it was.
    expect(byFiles.view({ phase: 'walk', files: 3, filesTotal: 6, bytes: 0 }).percent).toBe(75);
  });

  it('the progress line: percent, bytes, rate, files, ETA', () => {
    expect(
      formatProgressLine(
        { phase: 'backup copy', files: 3, filesTotal: 10, bytes: 512, bytesTotal: 2048 },
        { percent: 25, rate: 1024, etaSec: 4 },
      ),
    ).toBe('backup copy  25% [#####---------------] 512 B of 2.0 KiB, 1.0 KiB/s, 3/10 files, ETA 4s');
    expect(
      formatProgressLine(
        { phase: 'restore', files: 1, filesTotal: 2, bytes: 0 },
        { percent: 50, rate: null, etaSec: null },
      ),
    ).toMatch(/^restore {2}50% .* ETA -$/);
  });
});

describe('plugin commands in the REPL', () => {
  it('`plugins` and one command per contributed command; names taken by twinfs are kept', async () => {
    const calls: unknown[][] = [];
    const host = {
      list: () => [
        {
          name: 'p1',
          version: '1.0.0',
          state: 'active',
          source: 'user',
          targets: ['x'],
          commands: ['p1.go', 'status'],
          problems: [],
        },
      ],
      commandList: () => [
        { command: 'p1.go', title: 'Go', plugin: 'p1' },
        { command: 'status', title: 'Clash', plugin: 'p1' },
      ],
      executeCommand: async (id: string, ...args: unknown[]) => {
        calls.push([id, ...args]);
        return { ran: id };
      },
    };
    const cmds = pluginOperatorCommands(host, new Set(['status']));
    expect(cmds.map((x) => x.name)).toEqual(['plugins', 'p1.go']);
    const printed: string[] = [];
    const ctx = {
      client: async () => {
        throw new Error('no server needed');
      },
      print: (l: string) => printed.push(l),
      warn: () => undefined,
      progress: () => undefined,
      json: false,
      signal: new AbortController().signal,
      defaults: {},
    };
    expect(await cmds[1]!.run(ctx, parseCommandWords(cmds[1]!, ['a', '--b', 'c']))).toEqual({ ran: 'p1.go' });
    expect(calls).toEqual([['p1.go', 'a', '--b', 'c']]);
    await cmds[0]!.run(ctx, parseCommandWords(cmds[0]!, []));
    expect(printed.join('\n')).toMatch(/^p1@1\.0\.0 {2}active {2}\[user\]\n {4}targets: {2}x/m);
    await expect(cmds[0]!.run(ctx, parseCommandWords(cmds[0]!, ['nope']))).rejects.toMatchObject({
      code: 'ETWIN_PLUGIN_NOT_FOUND',
    });
  });
});

describe('operator config', () => {
  const F = '/etc/twinfs/config.json';
  it('sections or flat; paths relative to the file; server and token derived from serve settings', () => {
    expect(
      parseOperatorConfig(
        { operator: { server: 'ws://h:1', tokenFile: 'tok', catalog: '../cat', target: 'dir:b' } },
        F,
      ),
    ).toEqual({
      server: 'ws://h:1',
      tokenFile: '/etc/twinfs/tok',
      catalog: '/etc/cat',
      target: 'dir:/etc/twinfs/b',
    });
    expect(
      parseOperatorConfig(
        { serve: { primary: '/p', mount: '/m', control: '0.0.0.0:7420', stateDir: '/var/lib/t' } },
        F,
      ),
    ).toEqual({
      server: 'ws://127.0.0.1:7420',
      tokenFile: '/var/lib/t/control.token',
    });
    expect(
      parseOperatorConfig({ control: '[::]:9', tlsCert: '/c', tokenFile: '/t', target: 's3:b/p' }, F),
    ).toEqual({
      server: 'wss://[::1]:9',
      tokenFile: '/t',
      target: 's3:b/p',
    });
    // An explicit operator setting wins over what serve implies; port 0 implies nothing.
    expect(
      parseOperatorConfig(
        { serve: { control: '127.0.0.1:0', tokenFile: '/s' }, operator: { server: 'ws://x:2' } },
        F,
      ),
    ).toEqual({ server: 'ws://x:2', tokenFile: '/s' });
    expect(parseOperatorConfig({ plugins: { 'twinfs-s3': {} } }, F)).toEqual({});
  });

  it('names the bad key', () => {
    const bad = (raw: unknown) => {
      try {
        parseOperatorConfig(raw, F);
      } catch (err) {
        return err as { code: string; message: string; data: { key?: string } };
      }
      throw new Error('accepted');
    };
    expect(bad({ operator: { sever: 'x' } })).toMatchObject({
      code: 'ETWIN_CONFIG',
      data: { key: 'operator.sever' },
    });
    expect(bad({ operator: { server: 'http://x' } }).message).toMatch(
      /"server" must be a ws:\/\/ or wss:\/\/ URL/,
    );
    expect(bad({ operator: { target: 'nocolon' } }).message).toMatch(/"target" must be TYPE:LOCATION/);
    expect(bad({ operator: { catalog: 3 } }).message).toMatch(/"catalog" must be a non-empty string/);
    expect(bad({ operator: [] }).message).toMatch(/"operator" must be an object/);
    expect(bad({ serve: {}, extra: 1 }).message).toMatch(/"extra" is not a section/);
    expect(bad({ primary: '/p', cacheMb: -1 }).message).toMatch(/"cacheMb" must be a positive number/);
    expect(bad({ what: 1 })).toMatchObject({ data: { key: 'what' } });
    expect(bad([1]).message).toMatch(/must hold a JSON object/);
  });
});
