import { errnoCode } from '../common/errors.js';
import type { MirrorReader } from './mirror-source.js';
import { forEachLimit } from './safe-tree.js';
import { type BackupTarget, Digest, type ManifestEntry } from './target.js';

export interface SourceProblem {
  path: string;
  kind: 'missing' | 'type' | 'meta' | 'hash' | 'target';
  message: string;
}

export interface SourceCheckResult {
  checked: number;
  /** Bytes read (mirror and target together). */
  bytes: number;
  problems: SourceProblem[];
  ok: boolean;
}

/**
 * `backup --check-source`: compares a committed snapshot with the split mirror copy it was read
 * from, while that split is still held (after the release the copy is gone: the resync moves it
 * on). Every entry's type and metadata (size, mode, owner, mtime, a symlink's target) against
 * the split copy's; with readData, every file's sha256 read back from the target and read again
 * from the split copy, both against the manifest's. Without readData the target's side is its
 * stat (size, and the stamp where it gives one): cheap, and blind to damage that keeps size and
 * mtime. Invariant 9: a snapshot equals the split copy it was read from.
 */
export async function checkAgainstSource(o: {
  target: BackupTarget;
  snapshotId: string;
  entries: readonly ManifestEntry[];
  reader: MirrorReader;
  readData?: boolean;
  signal?: AbortSignal;
  concurrency?: number;
}): Promise<SourceCheckResult> {
  const problems: SourceProblem[] = [];
  let bytes = 0;
  const bad = (path: string, kind: SourceProblem['kind'], message: string) =>
    problems.push({ path, kind, message });
  await forEachLimit(o.entries, o.concurrency ?? 4, async (e) => {
    if (o.signal?.aborted) throw o.signal.reason;
    let st: Awaited<ReturnType<MirrorReader['lstat']>>;
    try {
      st = await o.reader.lstat(e.path);
    } catch (err) {
      bad(e.path, 'missing', `not in the split mirror copy (${errnoCode(err) ?? (err as Error).message})`);
      return;
    }
    const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other';
    if (type !== e.type) {
      bad(e.path, 'type', `the snapshot holds a ${e.type}, the split copy a ${type}`);
      return;
    }
    const diffs: string[] = [];
    if (e.type === 'file' && st.size !== e.size) diffs.push(`size ${e.size} ≠ ${st.size}`);
    if ((st.mode & 0o7777) !== e.mode)
      diffs.push(`mode ${e.mode.toString(8)} ≠ ${(st.mode & 0o7777).toString(8)}`);
    if (st.uid !== e.uid || st.gid !== e.gid) diffs.push(`owner ${e.uid}:${e.gid} ≠ ${st.uid}:${st.gid}`);
    if (st.mtimeMs !== e.mtime) diffs.push(`mtime ${e.mtime} ≠ ${st.mtimeMs}`);
    if (e.type === 'symlink') {
      const t = await o.reader.readlink(e.path).catch(() => undefined);
      if (t !== e.target) diffs.push(`target ${JSON.stringify(e.target)} ≠ ${JSON.stringify(t)}`);
    }
    if (diffs.length > 0) bad(e.path, 'meta', diffs.join(', '));
    if (e.type !== 'file') return;
    try {
      if (!o.readData) {
        const ts = await o.target.stat(o.snapshotId, e.path);
        if (ts.type !== 'file' || ts.size !== e.size)
          bad(e.path, 'target', `the target holds ${ts.type} of ${ts.size} bytes`);
        else if (ts.stamp !== undefined && e.stored !== undefined && ts.stamp !== e.stored)
          bad(e.path, 'target', 'the stored copy changed at the target since it was stored');
        return;
      }
      const stored = new Digest();
      for await (const chunk of await o.target.openFile(o.snapshotId, e.path)) stored.update(chunk as Buffer);
      const source = new Digest();
      const { fh } = await o.reader.open(e.path);
      try {
        for await (const chunk of fh.createReadStream({ highWaterMark: 1 << 20, autoClose: false }))
          source.update(chunk as Buffer);
      } finally {
        await fh.close();
      }
      const [a, b] = [stored.result(), source.result()];
      bytes += a.bytes + b.bytes;
      if (b.hash !== e.hash)
        bad(e.path, 'hash', `the split copy's sha256 is ${b.hash}, the manifest says ${e.hash}`);
      else if (a.hash !== e.hash)
        bad(e.path, 'target', `the stored copy's sha256 is ${a.hash}, the split copy's ${b.hash}`);
    } catch (err) {
      bad(e.path, 'target', `cannot read it back: ${(err as Error).message}`);
    }
  });
  problems.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { checked: o.entries.length, bytes, problems, ok: problems.length === 0 };
}
