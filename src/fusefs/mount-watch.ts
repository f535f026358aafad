import type { Disposable } from '../common/lifecycle.js';
import { listMountPoints } from './mount-checks.js';

/**
 * Notices that the server's own mount went away while it serves it: `twinfs unmount`,
 * `fusermount -uz` or `umount -l` by someone else. libfuse2's high-level loop does not say so
 * (with files still open through the detached mount it even keeps answering them), so the
 * mount table is polled: the entry at the mount point with our FUSE connection (its device
 * minor, which names /sys/fs/fuse/connections/N) must still be there. Reading
 * /proc/self/mountinfo never touches the mount itself.
 */
export async function watchMount(
  mountPoint: string,
  opts: { intervalMs: number; onLost: (reason: string) => void },
): Promise<Disposable> {
  const ours = (await listMountPoints()).filter((m) => m.mountPoint === mountPoint).pop();
  if (!ours || opts.intervalMs <= 0) return { dispose: () => undefined };
  let done = false;
  let checking = false;
  const timer = setInterval(() => {
    if (done || checking) return;
    checking = true;
    void listMountPoints()
      .then((mounts) => {
        if (done) return;
        const still = mounts.some((m) => m.mountPoint === mountPoint && m.minor === ours.minor);
        if (still) return;
        done = true;
        clearInterval(timer);
        const other = mounts.filter((m) => m.mountPoint === mountPoint).pop();
        opts.onLost(
          other
            ? `${mountPoint} is now another mount (${other.fsType} from ${other.source}): this server's mount was detached`
            : `${mountPoint} was unmounted while the server was serving it (twinfs unmount, fusermount -u or umount)`,
        );
      })
      .finally(() => {
        checking = false;
      });
  }, opts.intervalMs);
  timer.unref();
  return {
    dispose() {
      done = true;
      clearInterval(timer);
    },
  };
}
