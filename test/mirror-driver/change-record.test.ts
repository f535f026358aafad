import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TO_END } from '../../src/mirror-driver/change-ranges.js';
import { ChangeRecord, CTIME_MARGIN_MS } from '../../src/mirror-driver/change-record.js';

/**
 * The change record on its own (real files for its persistence): what it vouches for, and when
 * it refuses to. The driver's use of it (stamps from the FUSE layer, the start-up walk, the
 * journal) is exercised end to end in test/backup-peer/incremental-e2e.test.ts.
 */
describe('change record', () => {
  let dir: string;
  let n = 0;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-changes-'));
  });
  afterAll(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });
  const file = () => path.join(dir, `r${++n}.json`);
  const fresh = async (f = file()) => {
    const r = await ChangeRecord.open({
      file: f,
      journal: { clean: false, otherBoot: false, missing: true },
    });
    r.startWalkDone();
    return r;
  };

  it('lists exactly the paths stamped since a generation, and nothing before', async () => {
    const r = await fresh();
    r.stamp('/a');
    const g = r.generation;
    expect(r.since(g).changed).toEqual([]);
    r.stamp('/b');
    r.stamp('/c/d');
    const a = r.since(g);
    expect(a.unknown).toBeUndefined();
    expect(a.changed).toEqual(['/b', '/c/d']);
    expect(r.since(g, (p) => p.startsWith('/c/')).changed).toEqual(['/c/d']);
    expect(a.generation).toBeGreaterThan(g.generation);
  });

  it('a rename marks both names as subtrees; a change to one name of a hard link marks all its names', async () => {
    const r = await fresh();
    r.stamp('/x');
    r.note({ op: 'link', path: '/y', from: '/x' });
    const g = r.generation;
    r.stamp('/y'); // a write through /y changes /x too
    r.stamp('/y');
    r.note({ op: 'unlink', path: '/y' });
    expect(r.since(g).changed).toEqual(['/x', '/y']);
    const g2 = r.generation;
    r.stamp('/d');
    r.stamp('/e');
    r.note({ op: 'rename', from: '/d', path: '/e' });
    expect(r.since(g2).trees).toEqual(['/d', '/e']);
    // A linked name moved by a rename is still linked under its new name.
    r.note({ op: 'rename', from: '/x', path: '/z' });
    const g3 = r.generation;
    r.stamp('/y');
    expect(r.since(g3).changed).toContain('/z');
  });

  it('vouches for nothing before its walk of the primary completes, for another log, or for a generation it never gave', async () => {
    const r = await ChangeRecord.open({
      file: file(),
      journal: { clean: false, otherBoot: false, missing: true },
    });
    const g = r.generation;
    expect(r.since(g).unknown?.reason).toMatch(/start-up comparison/);
    r.startWalkDone();
    expect(r.since(g).unknown).toBeUndefined();
    expect(r.since({ ...g, log: 'another' }).unknown?.reason).toMatch(/another change log/);
    expect(r.since({ ...g, generation: g.generation + 10 }).unknown).toBeDefined();
  });

  it('vouches per path (unchangedSince) exactly where since() lists nothing, and for nothing it cannot answer', async () => {
    const untrusted = await ChangeRecord.open({
      file: file(),
      journal: { clean: false, otherBoot: false, missing: true },
    });
    expect(untrusted.unchangedSince(untrusted.generation)).toBeUndefined();
    const r = await fresh();
    r.stamp('/d/old');
    r.note({ op: 'link', path: '/h2', from: '/h1' });
    const g = r.generation;
    const unchanged = r.unchangedSince(g)!;
    expect(['/d/old', '/d/x', '/h1', '/h2', '/e/y'].filter(unchanged)).toEqual([
      '/d/old',
      '/d/x',
      '/h1',
      '/h2',
      '/e/y',
    ]);
    r.stamp('/d/x');
    r.stamp('/h2'); // a change through one name of a file with several changes them all
    r.note({ op: 'rename', from: '/e', path: '/e2' });
    // Read live: the changes since the predicate was made count.
    expect(['/d/old', '/d/x', '/h1', '/h2', '/e/y', '/e2/y'].filter(unchanged)).toEqual(['/d/old']);
    expect(r.unchangedSince({ ...g, log: 'another' })).toBeUndefined();
    expect(r.unchangedSince({ ...g, generation: r.generation.generation + 1 })).toBeUndefined();
  });

  it('after a clean shutdown vouches again, stamping what changed at the primary meanwhile (ctime)', async () => {
    const f = file();
    const r = await fresh(f);
    r.stamp('/old');
    const g = r.generation;
    await r.save();
    const saved = JSON.parse(await fsp.readFile(f, 'utf8'));
    const j = { clean: true, otherBoot: false, missing: false, log: saved.log, gen: saved.gen };
    const r2 = await ChangeRecord.open({ file: f, journal: j });
    expect(r2.generation).toEqual(g);
    expect(r2.since(g).unknown).toBeDefined(); // until the walk is done
    // The walk finds one entry changed after the shutdown (a real ctime of now) and one older.
    const touched = path.join(dir, 'touched');
    await fsp.writeFile(touched, 'x');
    const st = await fsp.lstat(touched);
    r2.notePrimary('/behind-my-back', st);
    r2.notePrimary(
      '/quiet',
      Object.assign(Object.create(Object.getPrototypeOf(st)), st, {
        ctimeMs: saved.savedAt - CTIME_MARGIN_MS - 1000,
      }),
    );
    const d = await fsp.lstat(dir);
    r2.notePrimary('/dir-renamed-behind-my-back', d);
    r2.startWalkDone();
    const a = r2.since(g);
    expect(a.unknown).toBeUndefined();
    expect(a.changed).toEqual(['/behind-my-back']);
    expect(a.trees).toEqual(['/dir-renamed-behind-my-back']);
  });

  it('an unclean start, a reboot, a mismatched or missing record, a clock that went back: a new epoch', async () => {
    const f = file();
    const r = await fresh(f);
    r.stamp('/a');
    const g = r.generation;
    await r.save();
    const saved = JSON.parse(await fsp.readFile(f, 'utf8'));
    const base = { clean: true, otherBoot: false, missing: false, log: saved.log, gen: saved.gen };
    const cases: Array<[Parameters<typeof ChangeRecord.open>[0], RegExp]> = [
      [{ file: f, journal: { ...base, clean: false } }, /unclean/],
      [{ file: f, journal: { ...base, otherBoot: true } }, /rebooted/],
      [{ file: f, journal: { ...base, gen: saved.gen + 5 } }, /does not match/],
      [{ file: path.join(dir, 'none.json'), journal: base }, /no change record/],
      [{ file: f, journal: base, now: () => saved.savedAt - 60_000 }, /clock went back/],
    ];
    for (const [o, why] of cases) {
      const logs: string[] = [];
      const r2 = await ChangeRecord.open({ ...o, log: (m) => logs.push(m) });
      r2.startWalkDone();
      expect(logs.join('\n')).toMatch(why);
      const a = r2.since(g);
      expect(a.unknown?.since).toBeGreaterThan(g.generation);
      // Generations stay above anything handed out before.
      expect(r2.generation.generation).toBeGreaterThan(g.generation);
      expect(r2.generation.log).toBe(g.log);
    }
  });

  it('stays bounded: past maxEntries the oldest go and what they covered becomes unknown', async () => {
    const r = await ChangeRecord.open({
      file: file(),
      journal: { clean: false, otherBoot: false, missing: true },
      maxEntries: 100,
    });
    r.startWalkDone();
    const g0 = r.generation;
    for (let i = 0; i < 150; i++) r.stamp(`/f${i}`);
    expect(r.since(g0).unknown?.reason).toMatch(/starts at generation/);
    const g1 = r.generation;
    r.stamp('/late');
    expect(r.since(g1).changed).toEqual(['/late']);
  });

  it('an answer too large for one reply is "unknown", never a truncated list', async () => {
    const r = await ChangeRecord.open({
      file: file(),
      journal: { clean: false, otherBoot: false, missing: true },
      maxAnswerBytes: 1000,
    });
    r.startWalkDone();
    const g = r.generation;
    for (let i = 0; i < 200; i++) r.stamp(`/some/longer/path/${i}`);
    expect(r.since(g).unknown?.reason).toMatch(/too many changes/);
  });

  const write = (r: ChangeRecord, p: string, offset: number, length: number) => {
    r.stamp(p);
    r.note({ op: 'write', path: p, offset, data: Buffer.alloc(length) });
  };

  it('records deletions and renames since a generation', async () => {
    const r = await fresh();
    r.stamp('/old');
    r.stamp('/gone');
    const g = r.generation;
    r.stamp('/gone');
    r.note({ op: 'unlink', path: '/gone' });
    r.stamp('/dir');
    r.note({ op: 'rename', from: '/dir', path: '/moved' });
    const a = r.since(g);
    expect(a.deleted).toEqual(['/gone']);
    expect(a.renamed).toEqual([{ from: '/dir', to: '/moved' }]);
    expect(a.trees).toEqual(['/dir', '/moved']);
    // Nothing of it before g: an answer for the generation after is empty.
    const b = r.since(r.generation);
    expect([b.deleted, b.renamed, b.changed, b.trees]).toEqual([[], [], [], []]);
  });

  it('answers the byte ranges written since each baseline, and "whole file" where it cannot vouch', async () => {
    const r = await fresh();
    r.stamp('/big');
    r.note({ op: 'create', path: '/big', mode: 0o644, uid: 0, gid: 0 });
    write(r, '/big', 0, 1 << 20);
    const g1 = r.generation;
    write(r, '/big', 5 << 20, 4096);
    const g2 = r.generation;
    write(r, '/big', 9 << 20, 100);
    r.stamp('/big');
    r.note({ op: 'truncate', path: '/big', size: 20 << 20 });
    const rangesOf = (g: typeof g1, p = '/big') => r.since(g).ranges.find((x) => x.path === p)?.ranges;
    expect(rangesOf(g1)).toEqual([
      [5 << 20, (5 << 20) + 4096],
      [9 << 20, (9 << 20) + 100],
      [20 << 20, TO_END],
    ]);
    expect(rangesOf(g2)).toEqual([
      [9 << 20, (9 << 20) + 100],
      [20 << 20, TO_END],
    ]);
    // A metadata change alone: changed, with no data range.
    const g3 = r.generation;
    r.stamp('/big');
    r.note({ op: 'chmod', path: '/big', mode: 0o600 });
    expect(r.since(g3).changed).toEqual(['/big']);
    expect(rangesOf(g3)).toEqual([]);
    // Replaced by a rename: the ranges before it cannot be vouched for (compare whole).
    r.stamp('/other');
    r.note({ op: 'rename', from: '/other', path: '/big' });
    write(r, '/big', 0, 10);
    expect(rangesOf(g3)).toBeUndefined();
    expect(r.since(g3).changed).toContain('/big');
    // A file created since the baseline: whole.
    r.stamp('/new');
    r.note({ op: 'create', path: '/new', mode: 0o644, uid: 0, gid: 0 });
    write(r, '/new', 0, 10);
    expect(rangesOf(g3, '/new')).toBeUndefined();
  });

  it('a file with more writes than its log keeps is "whole" for the baselines it dropped, exact for later ones', async () => {
    const r = await fresh();
    const g0 = r.generation;
    for (let i = 0; i < 400; i++) write(r, '/log', i * 8192, 10);
    const g1 = r.generation;
    write(r, '/log', 0, 10);
    const a = r.since(g0);
    expect(a.changed).toEqual(['/log']);
    expect(a.ranges).toEqual([]);
    expect(r.since(g1).ranges).toEqual([{ path: '/log', ranges: [[0, 10]] }]);
  });

  it('deletions, renames and ranges survive a clean restart', async () => {
    const f = file();
    const r = await fresh(f);
    write(r, '/big', 0, 100);
    const g = r.generation;
    write(r, '/big', 1000, 100);
    r.stamp('/x');
    r.note({ op: 'unlink', path: '/x' });
    r.note({ op: 'rename', from: '/a', path: '/b' });
    await r.save();
    const saved = JSON.parse(await fsp.readFile(f, 'utf8'));
    const j = { clean: true, otherBoot: false, missing: false, log: saved.log, gen: saved.gen };
    const r2 = await ChangeRecord.open({ file: f, journal: j });
    r2.startWalkDone();
    const a = r2.since(g);
    expect(a.unknown).toBeUndefined();
    expect(a.deleted).toEqual(['/x']);
    expect(a.renamed).toEqual([{ from: '/a', to: '/b' }]);
    expect(a.ranges).toEqual([{ path: '/big', ranges: [[1000, 1100]] }]);
  });
});
