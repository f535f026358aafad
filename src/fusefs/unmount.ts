import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import { isMountPoint, listMountPoints } from './mount-checks.js';

function run(cmd: string, args: string[], timeoutMs = 10_000): Promise<{ ok: boolean; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs }, (err, _stdout, stderr) =>
      resolve({ ok: !err, stderr: String(stderr).trim() }),
    );
  });
}

/** fusermount from Debian's `fuse`, or fusermount3 where the `fuse3` package replaced it. */
export function fusermountProgram(pathEnv = process.env.PATH ?? ''): string {
  for (const dir of pathEnv.split(':')) {
    if (!dir) continue;
    try {
      fs.accessSync(path.join(dir, 'fusermount'), fs.constants.X_OK);
      return 'fusermount';
    } catch {
      /* not in this directory */
    }
  }
  return 'fusermount3';
}

/**
 * Clears a FUSE mount, stale ones included: fusermount -uz (or fusermount3); if the connection is hung (its
 * server died or hangs), abort it through /sys/fs/fuse/connections and detach lazily.
 */
export async function forceUnmount(dir: string): Promise<{ method: string }> {
  const abs = path.resolve(dir);
  const mp = await isMountPoint(abs);
  if (!mp.mounted) throw new TwinError('ETWIN_NOT_MOUNTED', `${abs} is not a mount point`, { mount: abs });
  if (!mp.fsType?.startsWith('fuse'))
    throw new TwinError(
      'ETWIN_NOT_MOUNTED',
      `${abs} is a ${mp.fsType} mount, not a FUSE mount; refusing to unmount it`,
      {
        mount: abs,
        fsType: mp.fsType,
      },
    );
  const fusermount = fusermountProgram();
  const r = await run(fusermount, ['-uz', abs]);
  if (r.ok && !(await isMountPoint(abs)).mounted) return { method: `${fusermount} -uz` };
  // Hung connection: abort it, then detach.
  const minor = await connectionMinor(abs);
  if (minor !== undefined)
    await fsp.writeFile(`/sys/fs/fuse/connections/${minor}/abort`, '1').catch(() => undefined);
  const u = await run('umount', ['-l', abs]);
  if ((await isMountPoint(abs)).mounted)
    throw new TwinError('ETWIN_UNMOUNT_FAILED', `could not unmount ${abs}: ${r.stderr || u.stderr}`, {
      mount: abs,
    });
  return { method: 'abort + umount -l' };
}

async function connectionMinor(abs: string): Promise<number | undefined> {
  const m = (await listMountPoints()).filter((x) => x.mountPoint === abs).pop();
  return m && Number.isFinite(m.minor) ? m.minor : undefined;
}
