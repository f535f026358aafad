import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import { runCli, watchCli } from '../helpers/cli.js';
import {
  firstBackupRounds,
  sleep,
  subtreeFiles,
  verifyRound,
  writeThroughMount,
} from './concurrent-backups.js';

/**
 * Two first backups at once into one empty `dir:` location (issues 13/14 follow-up): each
 * `twinfs backup` is a process of its own, against a real server, one subtree each, the second
 * started a seeded random delay after the first. Encrypted (TWINFS_PASSWORD): the case where two
 * creators draw two master keys. Before the config was created exclusively, round 1 ended with
 * both backups reporting complete and neither restorable (ETWIN_REPO_CORRUPT: "authentication
 * failed" on the loser's index object, which every index load reads). bench/concurrent-backups.mjs runs
 * the same for many rounds.
 */
describe('two first backups at once into one new dir: location (twinfs backup processes)', () => {
  let fx: ControlFixture;
  let scratch: string;
  const files = new Map([...subtreeFiles('a', 11), ...subtreeFiles('b', 29)]);
  const env = { ...process.env, TWINFS_PASSWORD: 'two backups at once' };

  beforeAll(async () => {
    fx = await startControlFixture();
    scratch = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-concurrent-'));
    await writeThroughMount(fx, files);
  }, 60_000);
  afterAll(async () => {
    await fx?.close();
    if (scratch) await fsp.rm(scratch, { recursive: true, force: true });
  });

  it('both backups complete (the one that lost the race to create the repository runs again into it), restore exactly, and the repository checks clean', async () => {
    const outcomes = await firstBackupRounds({
      fx,
      rounds: 2,
      seed: Number(process.env.TWINFS_RACE_SEED ?? 7),
      spec: (round) => `dir:${scratch}/repo${round}`,
      files,
      scratch,
      env,
    });
    console.log(`concurrent first backups (dir:): ${outcomes.join(', ')}`);
  }, 90_000);

  it('a backup whose creation loses (another config lands while its key is made) runs again into that repository', async () => {
    // The other creator, made by hand: a repository made by `twinfs init` elsewhere, whose key
    // file and config are put into the location while the backup's own key file is being made
    // (the scrypt, from its snapshot's start): the backup's config then finds one there. Before
    // the second run it failed ETWIN_REPO_CREATE_RACE; before the exclusive config it replaced
    // the other's config. A round where the backup's config landed first is tried again.
    const other = path.join(scratch, 'other');
    const init = await runCli(['init', '--target', `dir:${other}`, '--encrypt'], { env, timeoutMs: 60_000 });
    expect(init.code, init.stderr).toBe(0);
    const keyName = (await fsp.readdir(path.join(other, 'keys')))[0]!;
    let planted = false;
    for (let attempt = 0; attempt < 3 && !planted; attempt++) {
      const repo = path.join(scratch, `lose${attempt}`);
      process.env.TWINFS_PASSWORD = env.TWINFS_PASSWORD;
      const w = watchCli(
        [
          'backup',
          '--server',
          fx.url,
          '--token-file',
          fx.tokenFile,
          '--subtree',
          '/a',
          '--target',
          `dir:${repo}`,
          '--catalog',
          path.join(scratch, `cat-lose${attempt}`),
          '--json',
        ],
        90_000,
      );
      let ended = false;
      void w.exited.then(() => (ended = true));
      while (!ended && !w.lines.some((l) => l.event === 'progress' && l.phase === 'copy')) await sleep(2);
      if (!ended) {
        await fsp.mkdir(path.join(repo, 'keys'), { recursive: true });
        await fsp.copyFile(path.join(other, 'keys', keyName), path.join(repo, 'keys', keyName));
        // wx: never over a config the backup already made (then this attempt did not race).
        planted = await fsp
          .writeFile(path.join(repo, 'config'), await fsp.readFile(path.join(other, 'config')), {
            flag: 'wx',
          })
          .then(
            () => true,
            () => false,
          );
      }
      const code = await w.exited;
      if (!planted) continue;
      expect(code, w.stderr()).toBe(0);
      expect(w.stderr()).toMatch(/another process created the repository .* backing up again, into it/);
      expect(w.lines.some((l) => l.event === 'warning' && l.code === 'ETWIN_REPO_CREATE_RACE')).toBe(true);
      const run = { code, stdout: '', stderr: w.stderr(), lines: w.lines, last: w.lines.at(-1) };
      const words = await verifyRound({
        runs: [{ sub: 'a', run }],
        files,
        spec: `dir:${repo}`,
        scratch,
        env,
        allowed: [],
        what: `attempt ${attempt}`,
      });
      expect(words).toEqual(['a:done-again']);
      // The snapshot is in the repository that was planted, and the backup's own key file is gone.
      expect(JSON.parse(await fsp.readFile(path.join(repo, 'config'), 'utf8')).id).toBe(
        init.last?.id ?? JSON.parse(await fsp.readFile(path.join(other, 'config'), 'utf8')).id,
      );
      expect(await fsp.readdir(path.join(repo, 'keys'))).toEqual([keyName]);
    }
    expect(planted, 'the other config was put while the backup made its key').toBe(true);
  }, 90_000);
});
