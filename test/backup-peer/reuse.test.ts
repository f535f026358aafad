import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type BackupOptions, BackupRun } from '../../src/backup-peer/backup-run.js';
import { Catalog } from '../../src/backup-peer/catalog.js';
import { checkSnapshot } from '../../src/backup-peer/check.js';
import type { BackupTarget } from '../../src/backup-peer/target.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import type { ChangesMsg, GenerationMsg, PrepareResult, SelectorMsg } from '../../src/control/protocol.js';
import { type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';
import { FakeControl, type Mirror, makeMirror, tempDir } from './peer-fixture.js';

const DIR_PLUGIN = path.resolve(import.meta.dirname, '../../plugins/dir');

/**
 * When an incremental run may share the previous snapshot's stored copy (invariant 9): only
 * when the server vouches the file did not change since the previous split, and never when the
 * stored copy is visibly or known damaged. A hand-made mirror and the fake control channel
 * (whose change answers come from the mirror's ctimes, as the server's record would); the real
 * directory target plugin. The server's side is tested in incremental-e2e.test.ts.
 */
describe('incremental reuse: vouched and undamaged copies only', () => {
  let base: string;
  let cleanup: () => Promise<void>;
  let mirror: Mirror;
  let plugin: LoadedPlugin;
  let target: BackupTarget;
  let targetRoot: string;
  let catalogDir: string;
  const registry = new TargetRegistry([], (type) => plugin.host.getTargetProvider(type));

  beforeAll(async () => {
    plugin = await loadTargetPlugin(DIR_PLUGIN);
  });
  afterAll(() => plugin?.dispose());
  beforeEach(async () => {
    ({ dir: base, cleanup } = await tempDir());
    mirror = await makeMirror(base, {
      'a.txt': { content: 'alpha alpha\n', mtime: 1_650_000_000_250 },
      'b.bin': Buffer.alloc(200_000, 7),
      d: { 'c.txt': 'charlie\n' },
    });
    targetRoot = path.join(base, 'backups');
    target = await registry.open(`dir:${targetRoot}`);
    catalogDir = path.join(base, 'catalog');
    // The fake's change answers compare ctimes with split instants: let the tree age a little.
    await new Promise((r) => setTimeout(r, 30));
  });
  afterEach(() => cleanup());

  const backup = (control: FakeControl | Answering, o: Partial<BackupOptions> = {}) =>
    new BackupRun({
      server: 'ws://fake',
      token: 't',
      target,
      catalogDir,
      selector: { volume: true },
      connect: async () => control,
      ...o,
    }).run();
  const ino = async (id: string, p: string) => (await fsp.stat(path.join(targetRoot, id, p))).ino;

  it('shares what the server vouches for, records the generation, and copies what it says changed', async () => {
    const first = await backup(new FakeControl(mirror));
    expect(first.snapshot.generation).toEqual({ log: 'fake-log', generation: 0 });
    const second = await backup(new FakeControl(mirror));
    expect(second.snapshot.totals).toMatchObject({ files: 3, reusedFiles: 3, copiedBytes: 0 });
    // Same size, same mtime, other content (as a write through a shared mmap, or a tool that
    // puts the mtime back, leaves it): the size+mtime rule would share the stale copy.
    const a = path.join(mirror.data, 'a.txt');
    const before = await fsp.stat(a);
    await fsp.writeFile(a, 'ALPHA ALPHA\n');
    await fsp.utimes(a, before.atime, before.mtime);
    const third = await backup(new FakeControl(mirror));
    expect(third.snapshot.totals).toMatchObject({ reusedFiles: 2, copiedBytes: 12 });
    expect(third.refused.notVouched).toBe(1);
    expect(await fsp.readFile(path.join(targetRoot, third.snapshot.id, 'a.txt'), 'utf8')).toBe(
      'ALPHA ALPHA\n',
    );
    expect((await checkSnapshot({ snapshot: third.snapshot.id, catalogDir, registry })).ok).toBe(true);
  });

  it('an answer that cannot vouch ("unknown since G") shares nothing', async () => {
    await backup(new FakeControl(mirror));
    const r = await backup(
      new Answering(mirror, () => ({
        since: 0,
        unknown: { since: 7, reason: 'unclean shutdown' },
        changed: [],
        trees: [],
      })),
    );
    expect(r.snapshot.totals).toMatchObject({ files: 3, reusedFiles: 0 });
    expect(r.unknownSince).toEqual({ since: 7, reason: 'unclean shutdown' });
    expect(r.refused.notVouched).toBe(3);
  });

  it('a renamed directory above a file (trees) shares nothing below it', async () => {
    await backup(new FakeControl(mirror));
    const r = await backup(
      new Answering(mirror, (since) => ({ since: since.generation, changed: [], trees: ['/d'] })),
    );
    expect(r.snapshot.totals).toMatchObject({ reusedFiles: 2 });
    expect(r.refused.notVouched).toBe(1);
  });

  it('a stored copy changed at the target (one byte flipped) is stored again, and the new snapshot checks clean', async () => {
    const first = await backup(new FakeControl(mirror));
    const stored = path.join(targetRoot, first.snapshot.id, 'b.bin');
    const fh = await fsp.open(stored, 'r+');
    await fh.write(Buffer.from([0x55]), 0, 1, 1234);
    await fh.close();
    const second = await backup(new FakeControl(mirror));
    expect(second.refused.atTarget).toBe(1);
    expect(second.snapshot.totals).toMatchObject({ reusedFiles: 2, copiedBytes: 200_000 });
    expect(await ino(second.snapshot.id, 'b.bin')).not.toBe(await ino(first.snapshot.id, 'b.bin'));
    expect(await ino(second.snapshot.id, 'a.txt')).toBe(await ino(first.snapshot.id, 'a.txt'));
    expect((await checkSnapshot({ snapshot: second.snapshot.id, catalogDir, registry })).ok).toBe(true);
    // The damaged one is still damaged, and check says so.
    expect((await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry })).ok).toBe(false);
  });

  it('damage the stamp cannot see (mtime put back): check flags it, the next backup stores it again', async () => {
    const first = await backup(new FakeControl(mirror));
    const stored = path.join(targetRoot, first.snapshot.id, 'b.bin');
    const st = await fsp.stat(stored, { bigint: true });
    const fh = await fsp.open(stored, 'r+');
    await fh.write(Buffer.from([0x55]), 0, 1, 4321);
    await fh.close();
    // The mtime put back to the ns (utimes' float seconds cannot): the stamp sees nothing, as
    // with bit rot.
    const secs = st.mtimeNs / 1_000_000_000n;
    const frac = (st.mtimeNs % 1_000_000_000n).toString().padStart(9, '0');
    execFileSync('touch', ['-m', '-d', `@${secs}.${frac}`, stored]);
    expect((await fsp.stat(stored, { bigint: true })).mtimeNs).toBe(st.mtimeNs);
    // A metadata-only check cannot see it; a full one can, and flags the stored copy.
    expect(
      (await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry, metadataOnly: true })).ok,
    ).toBe(true);
    const c = await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry });
    expect(c.ok).toBe(false);
    expect(c.problems.map((p) => [p.path, p.kind])).toEqual([['/b.bin', 'hash']]);
    expect(c.flagged).toBe(1);
    expect([...(await Catalog.with(catalogDir, (k) => k.damaged()))]).toHaveLength(1);
    const second = await backup(new FakeControl(mirror));
    expect(second.refused.flagged).toBe(1);
    expect(await ino(second.snapshot.id, 'b.bin')).not.toBe(await ino(first.snapshot.id, 'b.bin'));
    expect((await checkSnapshot({ snapshot: second.snapshot.id, catalogDir, registry })).ok).toBe(true);
    // The new copy is not flagged: the one after shares it again.
    const third = await backup(new FakeControl(mirror));
    expect(third.snapshot.totals.reusedFiles).toBe(3);
    expect(await ino(third.snapshot.id, 'b.bin')).toBe(await ino(second.snapshot.id, 'b.bin'));
  });

  it('a metadata-only check sees a stored copy rewritten in place', async () => {
    const first = await backup(new FakeControl(mirror));
    await fsp.appendFile(path.join(targetRoot, first.snapshot.id, 'd/c.txt'), '');
    expect(
      (await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry, metadataOnly: true })).ok,
    ).toBe(true);
    await fsp.writeFile(path.join(targetRoot, first.snapshot.id, 'd/c.txt'), 'CHARLIE\n');
    const c = await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry, metadataOnly: true });
    expect(c.problems.map((p) => [p.path, p.kind])).toEqual([['/d/c.txt', 'stamp']]);
    expect(c.bytes).toBe(0);
  });

  it('--check-source compares the committed snapshot with the split copy while the split is held', async () => {
    const control = new FakeControl(mirror);
    const r = await backup(control, { checkSource: 'data' });
    expect(r.sourceCheck).toMatchObject({ ok: true, checked: 5, bytes: 2 * (12 + 200_000 + 8) });
    // The split was released after the comparison: one prepare, one release.
    expect(control.count('release')).toBe(1);
    // A split copy that is not what the snapshot holds (the fake lets the mirror change mid-run).
    // The split copy changes after the copy (as a split that did not hold would).
    const lying = new FakeControl(mirror);
    let changed = false;
    const sneaky = new BackupRun({
      server: 'ws://fake',
      token: 't',
      target,
      catalogDir,
      selector: { volume: true },
      checkSource: 'metadata',
      connect: async () => lying,
    });
    sneaky.onDidProgress(async (p) => {
      if (p.phase === 'commit' && !changed) {
        changed = true;
        await fsp.chmod(path.join(mirror.data, 'a.txt'), 0o600);
      }
    });
    await expect(sneaky.run()).rejects.toMatchObject({ code: 'ETWIN_SOURCE_MISMATCH' });
    // Deleted at the target, failed in the catalog.
    const all = await Catalog.with(catalogDir, (k) => k.list());
    expect(all.at(-1)?.state).toBe('failed');
    expect((await target.listSnapshots()).map((s) => s.snapshotId)).not.toContain(all.at(-1)?.id);
  });
});

/** A FakeControl whose change answer the test writes. */
class Answering extends FakeControl {
  constructor(
    m: Mirror,
    private readonly answer: (since: GenerationMsg) => ChangesMsg,
  ) {
    super(m);
  }
  override async prepare(
    selector: SelectorMsg,
    o: { leaseMs?: number; listItems?: boolean; since?: GenerationMsg },
  ): Promise<PrepareResult> {
    const r = await super.prepare(selector, o);
    return { ...r, changes: o.since && this.answer(o.since) };
  }
}
