import { type ChildProcess, fork } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Selector } from '../../src/common/selector.js';
import { unmountAll } from '../helpers/mounts.js';
import { ROOT, tempDirs } from '../helpers/server.js';
import { fingerprint, type InProcess, mountInProcess } from './mirror-helpers.js';

const WRITER = path.join(ROOT, 'test/mirror-driver/fixtures/hardlink-writer.mjs');
const WRITERS = 4;
/** How long the rounds go on (the test's bound; a failure usually comes much sooner). */
const ROUNDS_MS = 40_000;

/**
 * Names of hard-linked files under splits (stress seeds 4102, 4103, 22): a targeted, seeded
 * attack. Writer processes (fixtures/hardlink-writer.mjs) link, rename away, rename over,
 * unlink, write through names that then go, chmod and chown names of hard-linked files, and
 * rename their directories, through a real mount, while this test splits (the volume, a
 * writer's subtree, or one to three names of hard-linked files) and resyncs in a loop. Each
 * round stops the writers (each finishes its operation in flight), settles the mount, splits,
 * and compares the split copy with the primary: every name, its type, mode, owner, size, mtime
 * and content, and which names are one file. The writers then go on while the split is held
 * and while its resync runs: the resync's comparisons read a primary that runs ahead of the
 * change queue, which is where this family of bugs lives.
 */
describe('names of hard-linked files under splits and resyncs', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess;
  let P: string;
  let M: string;
  let mnt: string;
  const writers: ChildProcess[] = [];
  const errors: string[] = [];

  beforeAll(async () => {
    // The driver's in-memory trace (trace.ts): the last events, printed with a failure. The
    // file trace (TWINFS_MIRROR_TRACE) changed the timing enough that finding 33 did not fail.
    if (!process.env.TWINFS_MIRROR_TRACE) process.env.TWINFS_MIRROR_TRACE_RING ??= '50000';
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    P = t.dirs.primary!;
    mnt = t.dirs.mnt!;
    m = await mountInProcess({ primary: P, mount: mnt, mirror: t.dirs.mirror!, stateDir: t.dirs.state! });
    M = m.driver.dataRoot;
  });
  afterAll(async () => {
    for (const w of writers) w.kill('SIGKILL');
    await m?.close().catch(() => undefined);
    await unmountAll(mnt);
    await t?.cleanup();
  });

  /** Sends msg to every writer and waits for each one's answer with key. */
  async function all(msg: string, key: string): Promise<void> {
    await Promise.all(
      writers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            if (!w.connected) return reject(new Error(`a writer stopped: ${errors.join('; ')}`));
            const exit = () => reject(new Error(`a writer stopped: ${errors.join('; ')}`));
            const on = (r: Record<string, unknown>) => {
              if (!(key in r)) return;
              w.off('message', on);
              w.off('exit', exit);
              resolve();
            };
            w.on('message', on);
            w.once('exit', exit);
            w.send(msg);
          }),
      ),
    );
  }

  /** The tree as the checks see it: fingerprint plus, per file, the names of its inode. */
  async function tree(root: string): Promise<Record<string, string>> {
    const fp = await fingerprint(root);
    const byIno = new Map<number, string[]>();
    for (const p of Object.keys(fp)) {
      const st = await fsp.lstat(root + p);
      if (st.isFile()) byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), p]);
    }
    for (const names of byIno.values()) for (const p of names) fp[p] += ` names=${names.sort().join(',')}`;
    return fp;
  }

  /** Waits (up to 5 s) until the primary has no name libfuse hid for a file still open, then settles. */
  async function noHiddenNames(): Promise<void> {
    const hidden = async (dir: string): Promise<boolean> => {
      for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
        if (e.name.startsWith('.fuse_hidden')) return true;
        if (e.isDirectory() && (await hidden(path.join(dir, e.name)).catch(() => false))) return true;
      }
      return false;
    };
    for (const until = Date.now() + 5000; Date.now() < until && (await hidden(P)); )
      await new Promise((r) => setTimeout(r, 5));
    await m.settle();
  }

  /**
   * What differs between the split copy and the primary, for a failure to be diagnosable from
   * its output: per file, the byte ranges that differ with the primary's and the copy's value
   * there (each writer's write is one value, logged with HARDLINK_WRITER_LOG=DIR), and where the
   * driver's last events were written.
   */
  async function explain(copy: Record<string, string>, primary: Record<string, string>): Promise<string> {
    const lines: string[] = [];
    for (const p of new Set([...Object.keys(copy), ...Object.keys(primary)])) {
      if (copy[p] === primary[p]) continue;
      lines.push(`${p}: copy ${copy[p]} / primary ${primary[p]}`);
      const [a, b] = await Promise.all([
        fsp.readFile(M + p).catch(() => null),
        fsp.readFile(P + p).catch(() => null),
      ]);
      if (!a || !b) continue;
      for (let i = 0; i < Math.max(a.length, b.length); ) {
        if (a[i] === b[i]) {
          i++;
          continue;
        }
        const from = i;
        while (i < Math.max(a.length, b.length) && a[i] !== b[i] && a[i] === a[from] && b[i] === b[from]) i++;
        lines.push(`  [${from}, ${i}) copy ${a[from]} primary ${b[from]}`);
      }
    }
    const ring = m.driver.traceRing();
    if (ring) {
      const file = path.join(
        process.env.HARDLINK_WRITER_LOG ?? os.tmpdir(),
        `hardlink-trace-${process.pid}.jsonl`,
      );
      await fsp.writeFile(file, ring);
      lines.push(`driver trace: ${file}`);
    }
    return lines.join('\n');
  }

  it('every split copy equals the primary at the split, and the mirror the primary at the end', async () => {
    for (let i = 0; i < WRITERS; i++) {
      const w = fork(WRITER, [mnt, `/w${i}`, String(4100 + i)], {
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      });
      w.on('message', (r: Record<string, unknown>) => {
        if ('error' in r) errors.push(String(r.error));
      });
      writers.push(w);
    }
    let seed = 22;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const until = Date.now() + ROUNDS_MS;
    let rounds = 0;
    while (Date.now() < until) {
      await all('pause', 'paused');
      await m.settle();
      // A writer's close returns before the kernel's release: a file unlinked just after it was
      // closed is hidden by libfuse (.fuse_hidden…) and its hidden name removed at that release,
      // which can come after the split. The split copy then rightly has the hidden name and the
      // primary, read after it, not (finding 35, docs/reliability.md): wait for those releases.
      await noHiddenNames();
      // Volume, a writer's subtree, or names of hard-linked files.
      const kind = rounds % 3;
      let sel: Selector = { volume: true };
      if (kind === 1) sel = { subtrees: [`/w${rounds % WRITERS}`] };
      else if (kind === 2) {
        const linked = Object.entries(await tree(P))
          .filter(([, v]) => /names=.*,/.test(v))
          .map(([p]) => p);
        const paths = [...new Set([0, 1, 2].map(() => linked[Math.floor(rand() * linked.length)]!))];
        if (linked.length > 0) sel = { paths };
      }
      const s = await m.driver.split(sel);
      // The split copy (the mirror, frozen from here on) against the primary at the split.
      const [copy, primary] = [await tree(M), await tree(P)];
      const why = JSON.stringify(copy) === JSON.stringify(primary) ? '' : await explain(copy, primary);
      expect(copy, `split copy of round ${rounds} (${JSON.stringify(sel)})\n${why}`).toEqual(primary);
      for (const w of writers) w.send('resume');
      await pause(20 + rand() * 130);
      await m.driver.resync(s.splitId);
      await pause(rand() * 30);
      rounds++;
    }
    await all('stop', 'done');
    await m.settle();
    // With HARDLINK_WRITER_LOG, the driver's last events are kept for a clean run too (what its
    // comparisons re-read and rewrote: stats.rereadRewrites, trace event reread-rewrite).
    const ring = process.env.HARDLINK_WRITER_LOG && m.driver.traceRing();
    if (ring)
      await fsp.writeFile(
        path.join(process.env.HARDLINK_WRITER_LOG!, `hardlink-trace-${process.pid}.jsonl`),
        ring,
      );
    expect(errors).toEqual([]);
    expect(await tree(M)).toEqual(await tree(P));
    expect((await m.driver.verify()).differences).toEqual([]);
    expect(rounds).toBeGreaterThan(5);
  }, 90_000);
});
