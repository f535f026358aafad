import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinFs } from '../../src/fusefs/index.js';
import { VolumeOps } from '../../src/fusefs/volume-ops.js';
import { VolumePaths } from '../../src/fusefs/volume-paths.js';
import { WriteInhibitor } from '../../src/fusefs/write-inhibitor.js';
import { WritebackCache } from '../../src/fusefs/writeback-cache.js';
import { MirrorDriver, type MirrorDriverOptions } from '../../src/mirror-driver/index.js';
import { type RunResult, sh } from '../helpers/proc.js';
import { CLI, ROOT, type ServerHandle, tempDirs } from '../helpers/server.js';

export const MIXED = path.join(ROOT, 'test/mirror-driver/fixtures/mixed.sh');

/** Runs the twinfs CLI (dist/) in a child process. */
export function twinfs(args: string, timeoutMs = 60_000): Promise<RunResult> {
  return sh(`'${process.execPath}' '${CLI}' ${args}`, { timeoutMs });
}

/** sha256 of a file (of the primary or the mirror: never of a mount served by this process). */
export async function sha(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Every entry under root with type, size, mode, owner, mtime and content hash: a tree's fingerprint. */
export async function fingerprint(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const visit = async (rel: string) => {
    for (const name of (await fsp.readdir(root + rel)).sort()) {
      const p = `${rel}/${name}`;
      const st = await fsp.lstat(root + p);
      const head = `${(st.mode & 0o170000).toString(8)} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
      if (st.isDirectory()) {
        out[p] = head;
        await visit(p);
      } else if (st.isSymbolicLink()) out[p] = `${head} -> ${await fsp.readlink(root + p)}`;
      else if (st.isFile()) out[p] = `${head} ${st.size} ${Math.round(st.mtimeMs)} ${await sha(root + p)}`;
      else out[p] = head;
    }
  };
  await visit('');
  return out;
}

/** Runs a shell script in a child process and throws with its output when it fails. */
export async function run(script: string, timeoutMs = 60_000): Promise<string> {
  const r = await sh(script, { timeoutMs });
  if (r.code !== 0) throw new Error(`script failed (${r.code}):\n${script}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Resolves with the first event satisfying pred that the server printed (or rejects after timeoutMs). */
export async function waitForEvent(
  srv: ServerHandle,
  pred: (e: Record<string, unknown>) => boolean,
  timeoutMs: number,
  from = 0,
): Promise<Record<string, unknown>> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const hit = srv.events.slice(from).find(pred);
    if (hit) return hit;
    if (Date.now() > until)
      throw new Error(
        `no such event within ${timeoutMs} ms; got ${JSON.stringify(srv.events)}\nstderr: ${srv.stderr()}`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The event a server prints when the mirror's start-up work (copy, recovery) is done. */
export const pairedVolume = (e: Record<string, unknown>) =>
  e.event === 'state' && e.state === 'PAIR' && e.paths === 'volume';

/** A MirrorDriver opened in this process (quiet unless o.log) once its start-up work is done. */
export async function openDriver(
  o: Pick<MirrorDriverOptions, 'primary' | 'mirror' | 'stateDir'> & Partial<MirrorDriverOptions>,
): Promise<MirrorDriver> {
  const driver = await MirrorDriver.open({ log: () => undefined, ...o });
  await driver.whenReady();
  return driver;
}

export interface DriverOnTempDirs {
  /** The temporary primary, mirror and state directories (cleanup() removes them). */
  t: Awaited<ReturnType<typeof tempDirs>>;
  /** The primary. */
  P: string;
  d: MirrorDriver;
  /** The mirror's data root. */
  M: string;
}

/**
 * A MirrorDriver without a mount over fresh temporary directories: populate makes the primary's
 * first entries, which the driver's initial copy takes to the mirror before this resolves.
 */
export async function driverOnTempDirs(
  populate: (primary: string) => Promise<void>,
): Promise<DriverOnTempDirs> {
  const t = await tempDirs('primary', 'mirror', 'state');
  const P = t.dirs.primary!;
  await populate(P);
  const d = await openDriver({ primary: P, mirror: t.dirs.mirror!, stateDir: t.dirs.state! });
  return { t, P, d, M: d.dataRoot };
}

/**
 * VolumeOps over a real MirrorDriver on temporary directories, in this process: the calls FUSE
 * would make, without a mount (for what the kernel never sends, or to read the change record
 * right after one call). `since` is the generation of a volume split taken after populate.
 */
export async function withVolumeOps(
  populate: (primary: string) => Promise<void>,
  fn: (v: { ops: VolumeOps; d: MirrorDriver; P: string; since: number }) => Promise<void>,
): Promise<void> {
  const { t, P, d } = await driverOnTempDirs(populate);
  const cache = new WritebackCache({ sink: d, writebackMs: 60_000 });
  try {
    const since = (await d.split({ volume: true })).generation;
    const ops = new VolumeOps({ paths: new VolumePaths(P), cache, sink: d, gate: new WriteInhibitor() });
    await fn({ ops, d, P, since });
  } finally {
    await cache.dispose();
    await d.dispose();
    await t.cleanup();
  }
}

export interface InProcess {
  fs: TwinFs;
  driver: MirrorDriver;
  /** Writes everything back and waits until the mirror has applied or tracked it. */
  settle(): Promise<void>;
  /** Unmounts and disposes the driver (unless abandon: a simulated crash of the driver). */
  close(opts?: { abandon?: boolean }): Promise<void>;
}

/**
 * Mounts TwinFs with a MirrorDriver in this process. The test must then never touch the mount
 * itself (only through child processes): a blocked libuv pool would deadlock it.
 */
export async function mountInProcess(o: {
  primary: string;
  mount: string;
  mirror: string;
  stateDir: string;
  driver?: Partial<MirrorDriverOptions>;
}): Promise<InProcess> {
  const driver = await openDriver({
    primary: o.primary,
    mirror: o.mirror,
    stateDir: o.stateDir,
    retryBrokenMs: 0,
    ...o.driver,
  });
  let twin: TwinFs;
  try {
    twin = await TwinFs.mount({
      primary: o.primary,
      mount: o.mount,
      mirror: o.mirror,
      sink: driver,
      writebackMs: 200,
      log: () => undefined,
    });
  } catch (err) {
    await driver.dispose();
    throw err;
  }
  return {
    fs: twin,
    driver,
    async settle() {
      await twin.flushAll();
      await driver.whenIdle();
    },
    async close(opts = {}) {
      await twin.unmount().catch(() => undefined);
      if (opts.abandon) await driver.whenIdle();
      else await driver.dispose();
    },
  };
}
