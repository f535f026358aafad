import { parentOf } from './volume-paths.js';

/** libfuse's name for a hidden file: `.fuse_hidden` + node id and counter, 8 hex digits each. */
const HIDDEN_NAME = /^\.fuse_hidden[0-9a-f]{16}$/;

/**
 * libfuse's "hide" of an open rename target, as the filesystem sees it.
 *
 * High-level libfuse (2 and 3) never removes or replaces a file it knows is open: it first
 * renames it to a hidden name in the same directory (removed at the file's last release) and
 * only then does what was asked. For rename(f, g) with g open the filesystem is called with
 * rename(g, H) and then rename(f, g), g being free by then. When f and g are names of one file,
 * POSIX says the rename does nothing and both names stay; the second call alone would remove f.
 *
 * This remembers each hide until the next rename onto the name it hid (the second call of the
 * same request), or until that name is looked up or changed otherwise (then a later rename onto
 * it is another request): VolumeOps.rename asks `take` whether its target was hidden just now.
 * A lookup of the name by another process between the two calls makes the rename fall back to
 * libfuse's behaviour (the source goes, the file keeps the target name and the hidden one).
 */
export class HiddenRenames {
  /** The name a hide moved away -> the hidden name it moved to. */
  private readonly hidden = new Map<string, string>();

  /** A rename the filesystem did: remembered when it was a hide. */
  renamed(from: string, to: string): void {
    if (isHiddenName(from, to)) this.hidden.set(from, to);
  }

  /** The hidden name `name` was moved to by the hide just before this rename onto it, if any. */
  take(name: string): string | undefined {
    if (this.hidden.size === 0) return undefined;
    const h = this.hidden.get(name);
    this.hidden.delete(name);
    return h;
  }

  /** `name` was looked up or changed: a hide of it is not the one just before a rename. */
  touched(name: string): void {
    if (this.hidden.size > 0) this.hidden.delete(name);
  }

  /** A hidden name went away (libfuse unlinks it at the last release). */
  removed(name: string): void {
    if (this.hidden.size === 0) return;
    for (const [k, v] of this.hidden) if (v === name) this.hidden.delete(k);
  }
}

/**
 * How many of libfuse's hidden names each file has now. For the application those names are
 * gone (an unlinked open file, a replaced one), so getattr does not count them in nlink.
 * High-level libfuse takes one off itself for the hidden name a request came by (fuse.c,
 * `node->is_hidden`): enough for a file unlinked once while open, not for a file with a hidden
 * name and another name (`ls -l` of that name said one link too many) or with two hidden names
 * (fstat of the unlinked file said 1, not 0) (bench/handle-diff.py). Every hide and every
 * removal of a hidden name goes through VolumeOps (rename, unlink, the native unlinks' queue).
 */
export class HiddenLinks {
  private readonly byIno = new Map<number, number>();

  added(ino: number): void {
    this.byIno.set(ino, (this.byIno.get(ino) ?? 0) + 1);
  }

  removed(ino: number): void {
    const n = this.byIno.get(ino);
    if (n === undefined) return;
    if (n <= 1) this.byIno.delete(ino);
    else this.byIno.set(ino, n - 1);
  }

  /**
   * The nlink to answer for a file with `nlink` names on the primary, asked for through
   * `path` (null: a handle whose file has no path left, see below). Through a hidden
   * name libfuse takes that name off after this, so it is left in (and the answer stays ≥ 1,
   * libfuse's ≥ 0); through another name the answer stays ≥ 1 whatever was counted.
   */
  shown(ino: number, nlink: number, path: string | null): number {
    const n = this.byIno.size === 0 ? undefined : this.byIno.get(ino);
    // No path: a handle of a hidden node whose directory went (libfuse passes NULL only for a
    // node without a path). libfuse takes one off for the hidden node, as through its hidden
    // name: the names the file has left, plus that one.
    if (path === null) return Math.max(0, nlink - (n ?? 0)) + 1;
    if (n === undefined) return nlink;
    return Math.max(1, nlink - (isHiddenPath(path) ? n - 1 : n));
  }
}

/** Is this directory entry's name one of libfuse's hidden names? */
export function isHiddenEntry(name: string): boolean {
  return HIDDEN_NAME.test(name);
}

/** Is this path one of libfuse's hidden names (`dir/.fuse_hidden…`)? */
export function isHiddenPath(path: string): boolean {
  return isHiddenEntry(path.slice(path.lastIndexOf('/') + 1));
}

function isHiddenName(from: string, to: string): boolean {
  const parent = parentOf(to);
  return parentOf(from) === parent && HIDDEN_NAME.test(to.slice(parent === '/' ? 1 : parent.length + 1));
}
