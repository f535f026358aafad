import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ControlFixture, startControlFixture } from '../control/control-fixture.js';
import {
  backupProcess,
  rng,
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
    const next = rng(Number(process.env.TWINFS_RACE_SEED ?? 7));
    const outcomes: string[] = [];
    for (let round = 0; round < 2; round++) {
      const spec = `dir:${scratch}/repo${round}`;
      // 0-300 ms apart: the first one's key file (scrypt, then two fsyncs) takes 0.2-1 s here.
      const delay = Math.floor(next() * 300);
      const a = backupProcess(fx, 'a', spec, path.join(scratch, `cat-a${round}`), env);
      await sleep(delay);
      const b = backupProcess(fx, 'b', spec, path.join(scratch, `cat-b${round}`), env);
      const [ra, rb] = await Promise.all([a, b]);
      const words = await verifyRound({
        runs: [
          { sub: 'a', run: ra },
          { sub: 'b', run: rb },
        ],
        files,
        spec,
        scratch,
        env,
        // The loser of the race runs again into the winner's repository (src/commands/peer.ts).
        allowed: [],
        what: `round ${round} (${delay} ms apart)`,
      });
      // At least one of the two stored its snapshot.
      expect(
        words.some((w) => w.endsWith(':done')),
        words.join(' '),
      ).toBe(true);
      outcomes.push(`${round}/${delay}ms ${words.join(' ')}`);
    }
    console.log(`concurrent first backups (dir:): ${outcomes.join(', ')}`);
  }, 90_000);
});
