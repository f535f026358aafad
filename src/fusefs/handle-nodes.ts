/**
 * The kernel nodes of open handles whose name is gone (docs/reliability.md, "Handles held open
 * across operations", item 11).
 *
 * High-level libfuse keeps a node per name, and a handle stays bound to the node of the name it
 * was opened by, through renames (libfuse's hide of an unlinked open file is one). When that
 * name goes while the handle is open (twinfs drops the hidden names of a directory being
 * removed or renamed over, see VolumeOps.dropHiddenNames), the node has no path: no
 * `fuse_invalidate_path` reaches it, and its kernel inode kept the attributes and pages it had
 * while the file changed through its other names. Such nodes are invalidated by their handles
 * instead (fuse-native patch level 12: `#FH,…` in an invalidation lane, the node ids learnt by
 * the level-11 wrappers from the requests that carried those handles).
 *
 * Here: the name each open handle's node has (as libfuse moves it: renames, including hides),
 * and, once that name went, a key per such node (`#N`, never a volume path) that KernelNames
 * treats as one more name of the file: invalidated after every change, tracked while a WRITE
 * through it is in flight, left out of a change made through it.
 */
export class HandleNodes {
  /** Open handles whose node has a name: that name and the file's inode. */
  private readonly named = new Map<number, { path: string; ino: number }>();
  /** Open handles whose node has none: its key. */
  private readonly keyOfFh = new Map<number, string>();
  /** Per key: the file and the open handles of that node. */
  private readonly groups = new Map<string, { ino: number; fhs: Set<number> }>();
  private readonly keysByIno = new Map<number, Set<string>>();
  private next = 0;
  /**
   * Told when the first node without a path appears (true) and when the last one's handles are
   * all closed (false). Native unlinks (native-changes.ts) are off meanwhile: libfuse's thread
   * cannot invalidate such a node's kernel inode, whose cached nlink then stayed 1 for a file
   * an unlink answered there had just taken the last name of (bench/handle-diff.py --dirs,
   * stream 2203102); JS's unlink invalidates it by handle.
   */
  onAnyGone: ((any: boolean) => void) | undefined;
  /**
   * Told, before a hidden name goes, the node libfuse has under it (from the name) and the
   * handles open on that node: the native layer learns them (fuse-native's learnPathlessHandle),
   * as it learns a handle from the requests that carry one. A handle from CREATE is carried by
   * none until the program uses it, and its fstat(2) failed with ESTALE once the node had no path.
   */
  onNodeGone: ((nodeId: number, fhs: number[]) => void) | undefined;

  /** A handle opened under path (the name libfuse's node has). */
  opened(fh: number, path: string, ino: number): void {
    this.closed(fh);
    this.named.set(fh, { path, ino });
  }

  closed(fh: number): void {
    if (this.named.delete(fh)) return;
    const key = this.keyOfFh.get(fh);
    if (key === undefined) return;
    this.keyOfFh.delete(fh);
    const g = this.groups.get(key);
    if (!g) return;
    g.fhs.delete(fh);
    if (g.fhs.size > 0) return;
    this.groups.delete(key);
    const keys = this.keysByIno.get(g.ino);
    keys?.delete(key);
    if (keys?.size === 0) this.keysByIno.delete(g.ino);
    if (this.groups.size === 0) this.onAnyGone?.(false);
  }

  /**
   * `from` may be a directory: names below it move with it. What `to` named is gone: libfuse hid
   * an open node there first, so a handle still known under it is one being released.
   */
  renamed(from: string, to: string): void {
    if (this.named.size === 0) return;
    this.forget(to);
    for (const e of this.named.values()) {
      if (e.path === from) e.path = to;
      else if (e.path.startsWith(`${from}/`)) e.path = to + e.path.slice(from.length);
    }
  }

  /**
   * The handles known under this name (or below it) are being released: libfuse removed the
   * name (an UNLINK it sends, or a rename over it), which it does only to a node with no handle
   * open; a handle still known under it is being released, or what is tracked here of its name
   * went wrong (its node is elsewhere). Not marked as without a path: a first build marked them,
   * and in bench/handle-diff.py stream 1044202 a handle so marked stayed open 20 s with WRITEs
   * that libfuse sent with a path (so not counted as through its key), while changes through the
   * file's other names waited for its key's invalidation, which waited in the kernel for those
   * WRITEs' pages: the 2 s bound each time, the stream 2 minutes instead of 2 s.
   */
  forget(path: string): void {
    if (this.named.size === 0) return;
    for (const [fh, e] of this.named)
      if (e.path === path || e.path.startsWith(`${path}/`)) this.named.delete(fh);
  }

  /**
   * This name went on the primary while libfuse's node of it may be open (twinfs dropped a hidden
   * name itself, VolumeOps.dropHiddenNames): the node of the handles open under it has no path now.
   */
  removed(path: string): void {
    if (this.named.size === 0) return;
    let key: string | undefined;
    for (const [fh, e] of this.named) {
      if (e.path !== path) continue;
      if (key === undefined) {
        if (this.groups.size === 0) this.onAnyGone?.(true);
        key = `#${++this.next}`;
        this.groups.set(key, { ino: e.ino, fhs: new Set() });
        let keys = this.keysByIno.get(e.ino);
        if (!keys) {
          keys = new Set();
          this.keysByIno.set(e.ino, keys);
        }
        keys.add(key);
      }
      this.named.delete(fh);
      this.keyOfFh.set(fh, key);
      this.groups.get(key)!.fhs.add(fh);
    }
    const nodeId = key === undefined ? undefined : hiddenNodeId(path);
    if (nodeId !== undefined) this.onNodeGone?.(nodeId, [...this.groups.get(key!)!.fhs]);
  }

  /** Is any open handle's node without a path? */
  get anyGone(): boolean {
    return this.groups.size > 0;
  }

  /** The key of this handle's node when it has no path. */
  keyOf(fh: number): string | undefined {
    return this.keyOfFh.size === 0 ? undefined : this.keyOfFh.get(fh);
  }

  /** The keys of the nodes without a path of this file. */
  keysOf(ino: number): readonly string[] {
    const keys = this.keysByIno.get(ino);
    return keys ? [...keys] : [];
  }

  /** What the invalidation lane is given for a key (undefined: its handles are all closed). */
  wire(key: string): string | undefined {
    const g = this.groups.get(key);
    return g ? `#${[...g.fhs].join(',')}` : undefined;
  }

  static isKey(name: string): boolean {
    return name.startsWith('#');
  }
}

/**
 * The node id in one of libfuse's hidden names: high-level libfuse (2 and 3) names a hidden node
 * `.fuse_hidden%08x%08x`, its node id then a counter; undefined for any other name.
 */
function hiddenNodeId(path: string): number | undefined {
  const m = /\/\.fuse_hidden([0-9a-f]{8})[0-9a-f]{8}$/.exec(path);
  return m ? Number.parseInt(m[1]!, 16) : undefined;
}
