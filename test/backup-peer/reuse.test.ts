import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type BackupOptions, BackupRun } from '../../src/backup-peer/backup-run.js';
import { Catalog } from '../../src/backup-peer/catalog.js';
import { checkSnapshot } from '../../src/backup-peer/check.js';
import type { BackupTarget } from '../../src/backup-peer/target.js';
import { TargetRegistry } from '../../src/backup-peer/targets/index.js';
import type { ChangesMsg, GenerationMsg, PrepareResult, SelectorMsg } from '../../src/control/protocol.js';
import { readAll } from '../conformance/fixtures.js';
import { type LoadedPlugin, loadTargetPlugin } from '../conformance/index.js';
import { dataPacks, FakeControl, type Mirror, makeMirror, tempDir, volumeBackupRun } from './peer-fixture.js';

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
    volumeBackupRun(target, catalogDir, control, o).run();
  /** The stored copy of a file's content: its data pack at the target, and where in it. */
  const storedCopy = async (rawLength: number) => {
    for (const pack of await dataPacks(targetRoot)) {
      const row = pack.rows.find(([, type, , , raw]) => type === 'data' && raw === rawLength);
      if (row) return { file: pack.file, offset: row[2], length: row[3] };
    }
    throw new Error(`no stored copy of ${rawLength} bytes`);
  };
  const read = async (id: string, p: string) => (await readAll(await target.openFile(id, p))).toString();

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
    expect(await read(third.snapshot.id, '/a.txt')).toBe('ALPHA ALPHA\n');
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

  it('a stored copy gone or changed in size at the target is stored again, and the new snapshot checks clean', async () => {
    const first = await backup(new FakeControl(mirror));
    // The pack holding b.bin's chunk loses its tail (a truncated copy, a half-synced disk).
    const copy = await storedCopy(200_000);
    const bytes = await fsp.readFile(copy.file);
    await fsp.chmod(copy.file, 0o600);
    await fsp.writeFile(copy.file, bytes.subarray(0, bytes.length - 10));
    const second = await backup(new FakeControl(mirror));
    // The first backup's three files share that one pack: none is shared, all are stored again.
    expect(second.refused.atTarget).toBe(3);
    expect(second.snapshot.totals).toMatchObject({ reusedFiles: 0, copiedBytes: 12 + 200_000 + 8 });
    expect((await checkSnapshot({ snapshot: second.snapshot.id, catalogDir, registry })).ok).toBe(true);
    expect(await read(second.snapshot.id, '/b.bin')).toBe(Buffer.alloc(200_000, 7).toString());
    // Content addressing heals the first snapshot too: its chunks have an intact copy again,
    // and a read that finds the truncated one bad goes on to it.
    expect((await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry })).ok).toBe(true);
  });

  it('damage metadata cannot see (a flipped byte, same size): check flags it, the next backup stores it again', async () => {
    const first = await backup(new FakeControl(mirror));
    const copy = await storedCopy(200_000);
    const fh = await fsp.open(copy.file, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, copy.offset + Math.floor(copy.length / 2));
    await fh.write(Buffer.from([b[0]! ^ 0x55]), 0, 1, copy.offset + Math.floor(copy.length / 2));
    await fh.close();
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
    expect(second.snapshot.totals.copiedBytes).toBe(200_000);
    expect((await checkSnapshot({ snapshot: second.snapshot.id, catalogDir, registry })).ok).toBe(true);
    // The new copy is not flagged: the one after shares it again.
    const third = await backup(new FakeControl(mirror));
    expect(third.snapshot.totals.reusedFiles).toBe(3);
    expect((await checkSnapshot({ snapshot: third.snapshot.id, catalogDir, registry })).ok).toBe(true);
  });

  it('a metadata-only check sees a stored copy whose pack changed size', async () => {
    const first = await backup(new FakeControl(mirror));
    expect(
      (await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry, metadataOnly: true })).ok,
    ).toBe(true);
    const copy = await storedCopy(200_000);
    await fsp.chmod(copy.file, 0o600);
    await fsp.appendFile(copy.file, 'x');
    const c = await checkSnapshot({ snapshot: first.snapshot.id, catalogDir, registry, metadataOnly: true });
    // Every file whose chunks are in that pack (the whole first backup: one pack).
    expect(c.problems.map((p) => p.kind)).toContain('stamp');
    expect(c.problems.map((p) => p.path)).toContain('/b.bin');
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
