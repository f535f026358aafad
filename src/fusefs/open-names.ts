/**
 * The names under which files are open for writing, per handle, kept current through renames.
 *
 * Why names and not inodes: high-level libfuse gives the kernel one inode per *name*, and the
 * kernel keeps the dirty pages of a shared writable mapping per kernel inode. Such pages exist
 * only while the mapping does (FUSE writes them back when a mapping goes away), a writable
 * shared mapping needs a descriptor opened for writing, and the mapping keeps that descriptor's
 * FUSE handle open. So the names here are exactly the names whose kernel inodes may hold dirty
 * pages twinfs has not seen; an fsync through each of them makes the kernel send those pages
 * and wait until they are answered (prepare's kernel write-back, control/backup-service.ts).
 */
export class OpenNames {
  private readonly byHandle = new Map<number, { path: string; ino: number }>();

  /** A handle was opened for writing under path. */
  add(fh: number, path: string, ino: number): void {
    this.byHandle.set(fh, { path, ino });
  }

  delete(fh: number): void {
    this.byHandle.delete(fh);
  }

  /** `from` may be a directory: names below it move with it. */
  renamed(from: string, to: string): void {
    for (const e of this.byHandle.values()) {
      if (e.path === from) e.path = to;
      else if (e.path.startsWith(from + '/')) e.path = to + e.path.slice(from.length);
    }
  }

  /** Whether a handle has the inode open for writing. */
  hasInode(ino: number): boolean {
    for (const e of this.byHandle.values()) if (e.ino === ino) return true;
    return false;
  }

  /** The distinct names (volume paths) with a handle open for writing, with their inodes. */
  list(): Array<{ path: string; ino: number }> {
    const out = new Map<string, number>();
    for (const e of this.byHandle.values()) out.set(e.path, e.ino);
    return [...out].map(([path, ino]) => ({ path, ino }));
  }
}
