import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';

/** Mount points in this mount namespace, from /proc/self/mountinfo (octal escapes decoded). */
export async function listMountPoints(): Promise<
  Array<{ mountPoint: string; fsType: string; source: string; minor: number }>
> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const out = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const fields = left!.split(' ');
    const rf = (right ?? '').split(' ');
    out.push({
      mountPoint: unescapeMount(fields[4] ?? ''),
      fsType: rf[0] ?? '',
      source: unescapeMount(rf[1] ?? ''),
      // major:minor of the mount's device; for FUSE the minor names /sys/fs/fuse/connections/N.
      minor: Number((fields[2] ?? '').split(':')[1]),
    });
  }
  return out;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
}

export async function isMountPoint(dir: string): Promise<{ mounted: boolean; fsType?: string }> {
  const abs = path.resolve(dir);
  const mounts = await listMountPoints();
  const hit = mounts.filter((m) => m.mountPoint === abs).pop();
  return hit ? { mounted: true, fsType: hit.fsType } : { mounted: false };
}

export interface PreflightInput {
  primary: string;
  mount: string;
  mirror?: string;
  /** Mount over a non-empty directory. */
  force?: boolean;
}

/**
 * Everything that must hold before mounting, each failure a named error with a clear message.
 * Returns the resolved real paths.
 */
export async function preflight(
  input: PreflightInput,
): Promise<{ primary: string; mount: string; mirror?: string }> {
  const mount = path.resolve(input.mount);
  const primary = path.resolve(input.primary);

  let mst: fs.Stats;
  try {
    mst = await fsp.stat(mount);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new TwinError('ETWIN_MOUNTPOINT_MISSING', `mount point ${mount} does not exist`, { mount });
    if (code === 'ENOTCONN' || code === 'EIO')
      throw new TwinError(
        'ETWIN_MOUNTPOINT_BUSY',
        `mount point ${mount} holds a stale FUSE mount; clear it with: twinfs unmount ${mount}`,
        { mount, stale: true },
      );
    throw new TwinError('ETWIN_MOUNTPOINT_MISSING', `mount point ${mount} cannot be inspected: ${code}`, {
      mount,
      code,
    });
  }
  if (!mst.isDirectory())
    throw new TwinError('ETWIN_MOUNTPOINT_NOT_DIR', `mount point ${mount} is not a directory`, { mount });
  const mp = await isMountPoint(mount);
  if (mp.mounted)
    throw new TwinError(
      'ETWIN_MOUNTPOINT_BUSY',
      `mount point ${mount} is already a mount (${mp.fsType}); unmount it first (twinfs unmount ${mount})`,
      { mount, fsType: mp.fsType },
    );
  let pst: fs.Stats;
  try {
    pst = await fsp.stat(primary);
  } catch {
    throw new TwinError('ETWIN_PRIMARY_MISSING', `primary directory ${primary} does not exist`, { primary });
  }
  if (!pst.isDirectory())
    throw new TwinError('ETWIN_PRIMARY_MISSING', `primary ${primary} is not a directory`, { primary });

  const realPrimary = await fsp.realpath(primary);
  const realMount = await fsp.realpath(mount);
  const dirs: Array<[string, string]> = [
    ['primary', realPrimary],
    ['mount', realMount],
  ];
  let realMirror: string | undefined;
  if (input.mirror) {
    realMirror = await fsp.realpath(path.resolve(input.mirror)).catch(() => path.resolve(input.mirror!));
    dirs.push(['mirror', realMirror]);
  }
  for (let i = 0; i < dirs.length; i++) {
    for (let j = i + 1; j < dirs.length; j++) {
      const [an, a] = dirs[i]!;
      const [bn, b] = dirs[j]!;
      if (a === b || a.startsWith(b + path.sep) || b.startsWith(a + path.sep) || a === '/' || b === '/')
        throw new TwinError(
          'ETWIN_OVERLAP',
          `${an} (${a}) and ${bn} (${b}) overlap; they must be separate directories`,
          {
            [an]: a,
            [bn]: b,
          },
        );
    }
  }
  // Only after the overlap check: a primary inside the mount point also makes it non-empty,
  // and the overlap is the error to report (--force cannot help with it).
  const entries = await fsp.readdir(mount);
  if (entries.length > 0 && !input.force)
    throw new TwinError(
      'ETWIN_MOUNTPOINT_NOT_EMPTY',
      `mount point ${mount} is not empty (${entries.length} entries); use --force to mount over it`,
      { mount, entries: entries.length },
    );

  await assertWritable(primary, 'ETWIN_PRIMARY_NOT_WRITABLE', 'primary directory');
  return { primary: realPrimary, mount: realMount, mirror: realMirror };
}

/** Checks a directory can really be written (access() says yes for root even on a read-only fs). */
export async function assertWritable(
  dir: string,
  code: 'ETWIN_PRIMARY_NOT_WRITABLE',
  what: string,
): Promise<void> {
  const probe = path.join(dir, `.twinfs-probe-${process.pid}-${Date.now()}`);
  try {
    await fsp.access(dir, fs.constants.W_OK | fs.constants.X_OK);
    await fsp.writeFile(probe, '');
    await fsp.unlink(probe);
  } catch (err) {
    const c = (err as NodeJS.ErrnoException).code;
    await fsp.unlink(probe).catch(() => undefined);
    throw new TwinError(code, `${what} ${dir} is not writable (${c})`, { dir, errno: c });
  }
}
