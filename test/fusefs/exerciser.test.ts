import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll } from '../helpers/mounts.js';
import { sh } from '../helpers/proc.js';
import { ROOT, type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/**
 * bench/exerciser.mjs's model check on a twinfs mount (issue 12; the benchmark times the same
 * stream against bindfs): two processes of seeded random operations (writes and reads at random
 * offsets, truncate, fallocate, mmap writes, rename, hard and symbolic links, mkdir/rmdir, chmod,
 * utimens, xattrs, stat, readdir, fsync), every read, listing and stat(2) attribute checked
 * against each process's model (--strict: a stale size, nlink, mode or mtime through any name
 * of a hard link fails too), and a final walk that reads everything and compares it with the
 * model. The same seed runs on a plain directory first: the same checks must hold there, and the
 * models' digests must match (the mount got the same stream). Correctness only: no timing here.
 * A failure names seed, process and op index: `node bench/exerciser.mjs --run-in DIR --seed S
 * --procs 2 --ops 250 --strict` replays it.
 */
const EXERCISER = path.join(ROOT, 'bench/exerciser.mjs');
const OPS = 250;

interface Summary {
  failures: Array<Record<string, unknown>>;
  attrMismatches: number;
  digests: string;
  perOp: Record<string, { n: number; ms: number }>;
}

async function exercise(dir: string, seed: number, extra = ''): Promise<{ code: number | null; s: Summary }> {
  const r = await sh(
    `node '${EXERCISER}' --run-in '${dir}' --seed ${seed} --procs 2 --ops ${OPS} --strict ${extra}`,
    { timeoutMs: 240_000 },
  );
  const line = r.stdout.trim().split('\n').pop() ?? '';
  let s: Summary;
  try {
    s = JSON.parse(line) as Summary;
  } catch {
    throw new Error(
      `exerciser printed no summary (exit ${r.code}): ${r.stdout.slice(-1000)}${r.stderr.slice(-2000)}`,
    );
  }
  return { code: r.code, s };
}

for (const [libfuse, mirror] of [
  [2, false],
  [3, true],
] as const) {
  describe(`random operations against the model (libfuse${libfuse}${mirror ? ', mirror on' : ''})`, () => {
    let t: Awaited<ReturnType<typeof tempDirs>>;
    let srv: ServerHandle | undefined;
    beforeAll(async () => {
      t = await tempDirs('primary', 'mirror', 'mnt', 'state', 'plain');
      srv = await startServer({
        primary: t.dirs.primary!,
        mount: t.dirs.mnt!,
        args: [
          '--state-dir',
          t.dirs.state!,
          '--fuse',
          String(libfuse),
          ...(mirror ? ['--mirror', t.dirs.mirror!] : []),
        ],
        timeoutMs: 60_000,
      });
    });
    afterAll(async () => {
      await srv?.kill();
      await unmountAll(t.dirs.mnt!);
      await t?.cleanup();
    });

    for (const seed of [11, 12])
      it(`seed ${seed}: every read, listing and attribute is the model's, as on a plain directory`, async () => {
        const plain = await exercise(path.join(t.dirs.plain!, `s${seed}`), seed);
        const mnt = await exercise(path.join(t.dirs.mnt!, `s${seed}`), seed);
        expect(plain.s.failures).toEqual([]);
        expect(mnt.s.failures).toEqual([]);
        expect(mnt.s.attrMismatches).toBe(0);
        expect(mnt.code).toBe(0);
        expect(mnt.s.digests).toBe(plain.s.digests);
        // The stream did what it is there for: every kind of operation ran.
        const kinds = Object.keys(mnt.s.perOp);
        for (const k of [
          'write',
          'read',
          'truncate',
          'fallocate',
          'mmap',
          'rename',
          'link',
          'setxattr',
          'utimens',
        ])
          expect(kinds).toContain(k);
        expect(Object.values(mnt.s.perOp).reduce((n, o) => n + o.n, 0)).toBe(2 * OPS);
      }, 300_000);

    it('a byte changed behind the model is reported with its seed, process and op index', async () => {
      const r = await exercise(path.join(t.dirs.mnt!, 'tamper'), 13, '--tamper-at 40');
      expect(r.code).toBe(1);
      expect(r.s.failures).toHaveLength(1);
      expect(r.s.failures[0]).toMatchObject({ seed: 13, proc: 0, name: 'tamper', what: 'content mismatch' });
      expect(r.s.failures[0]!.op).toBeGreaterThanOrEqual(40);
    }, 300_000);
  });
}
