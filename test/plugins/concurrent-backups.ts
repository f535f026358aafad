import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { pseudoRandom } from '../conformance/fixtures.js';
import type { ControlFixture } from '../control/control-fixture.js';
import { type CliRun, runCli } from '../helpers/cli.js';

const KiB = 1024;

/** xorshift32: the rounds' delays, the same every run for a seed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A subtree's files: volume path → bytes (a file of a few chunks, a small one, one below a dir). */
export function subtreeFiles(sub: string, seed: number): Map<string, Buffer> {
  return new Map([
    [`/${sub}/big.bin`, pseudoRandom(1536 * KiB + seed, seed)],
    [`/${sub}/small.txt`, Buffer.from(`${sub} small ${seed}\n`)],
    [`/${sub}/d/mid.bin`, pseudoRandom(96 * KiB + seed, seed + 1)],
  ]);
}

/** Writes files through the mount (the test process does not serve it). */
export async function writeThroughMount(fx: ControlFixture, files: Map<string, Buffer>): Promise<void> {
  for (const [p, data] of files) {
    await fsp.mkdir(path.dirname(path.join(fx.mnt, p)), { recursive: true });
    await fsp.writeFile(path.join(fx.mnt, p), data);
  }
}

/** `twinfs backup --subtree /SUB` of the fixture's server into spec, a process of its own. */
export function backupProcess(
  fx: ControlFixture,
  sub: string,
  spec: string,
  catalog: string,
  env: NodeJS.ProcessEnv,
): Promise<CliRun> {
  return runCli(
    [
      'backup',
      '--server',
      fx.url,
      '--token-file',
      fx.tokenFile,
      '--subtree',
      `/${sub}`,
      '--target',
      spec,
      '--catalog',
      catalog,
      '--json',
    ],
    { timeoutMs: 90_000, env },
  );
}

/** The ETWIN_ code a failed command printed. */
export const codeOf = (r: { stderr: string }) => /ETWIN_[A-Z_]+/.exec(r.stderr)?.[0];

/**
 * Checks what two backups into one location left: each that exited 0 restores exactly (a
 * `twinfs restore` process from --target alone, compared byte for byte with what was written),
 * each that failed names `allowed` codes only, and `twinfs check --target` passes. Answers one
 * word per backup (`done` or the code) for the round's log line.
 */
export async function verifyRound(o: {
  runs: Array<{ sub: string; run: CliRun }>;
  files: Map<string, Buffer>;
  spec: string;
  scratch: string;
  env: NodeJS.ProcessEnv;
  allowed: string[];
  what: string;
}): Promise<string[]> {
  const out: string[] = [];
  for (const { sub, run } of o.runs) {
    if (run.code !== 0) {
      const code = codeOf(run);
      out.push(`${sub}:${code}`);
      expect(o.allowed, `${o.what}: ${sub} failed: ${run.stderr}`).toContain(code);
      continue;
    }
    expect(run.last, run.stdout).toMatchObject({ event: 'done', snapshotId: expect.any(String) });
    // A backup whose first run lost the race to create the repository runs again into it.
    out.push(`${sub}:${run.stderr.includes('backing up again, into it') ? 'done-again' : 'done'}`);
    const to = path.join(o.scratch, `restore-${sub}-${Math.random().toString(16).slice(2)}`);
    const r = await runCli(
      [
        'restore',
        run.last.snapshotId,
        '--target',
        o.spec,
        '--to',
        to,
        '--catalog',
        path.join(to, '.catalog'),
        '--json',
      ],
      { timeoutMs: 90_000, env: o.env },
    );
    expect(r.code, `${o.what}: restore of ${sub}'s snapshot ${run.last.snapshotId}: ${r.stderr}`).toBe(0);
    for (const [p, data] of o.files) {
      if (!p.startsWith(`/${sub}/`)) continue;
      const got = await fsp.readFile(path.join(to, p));
      expect(got.equals(data), `${o.what}: ${p} of ${sub}'s snapshot`).toBe(true);
    }
    await fsp.rm(to, { recursive: true, force: true });
  }
  const check = await runCli(['check', '--target', o.spec, '--json'], { timeoutMs: 90_000, env: o.env });
  expect(check.code, `${o.what}: check: ${check.stderr}${check.stdout}`).toBe(0);
  expect(check.last, o.what).toMatchObject({ ok: true, problems: [] });
  return out;
}

/**
 * Rounds of two first backups at once (subtrees a and b, the second started a seeded random
 * 0-300 ms after the first) into the location spec(round) names, each round verified
 * (verifyRound: every snapshot reported complete restores exactly, check is clean); the loser
 * of the race to create the repository runs again into the winner's (src/commands/peer.ts), so
 * no failure is allowed. Answers each round's outcome, for the log.
 */
export async function firstBackupRounds(o: {
  fx: ControlFixture;
  rounds: number;
  seed: number;
  spec: (round: number) => string;
  files: Map<string, Buffer>;
  scratch: string;
  env: NodeJS.ProcessEnv;
}): Promise<string[]> {
  const next = rng(o.seed);
  const outcomes: string[] = [];
  for (let round = 0; round < o.rounds; round++) {
    const spec = o.spec(round);
    // 0-300 ms apart: the first one's key file (scrypt, then two fsyncs) takes 0.2-1 s here.
    const delay = Math.floor(next() * 300);
    const a = backupProcess(o.fx, 'a', spec, path.join(o.scratch, `cat-a${round}`), o.env);
    await sleep(delay);
    const b = backupProcess(o.fx, 'b', spec, path.join(o.scratch, `cat-b${round}`), o.env);
    const [ra, rb] = await Promise.all([a, b]);
    const words = await verifyRound({
      runs: [
        { sub: 'a', run: ra },
        { sub: 'b', run: rb },
      ],
      files: o.files,
      spec,
      scratch: o.scratch,
      env: o.env,
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
  return outcomes;
}
