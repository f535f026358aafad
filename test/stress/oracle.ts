import { type EntryState, sameState } from './model.js';
import type { OpRecord } from './writer.js';

/**
 * The snapshot oracle. A split copy (or a backup made from one) must equal the volume at the
 * split instant, which lies somewhere between the moment the prepare was sent (S) and the moment
 * its reply arrived (R). For a path no operation touched during [S, R], that state is known
 * exactly: the state after the last operation on it that completed before S (or absence). A
 * path that an operation touched while the window was open may hold either side (or, for a
 * write split into several requests, a mix): it is counted as unverifiable, not checked.
 */

interface Change {
  t0: number;
  t1: number;
  state: EntryState | null;
}

export interface Snapshot {
  label: string;
  /** When the prepare was sent, and when its reply arrived (ms since the epoch). */
  sent: number;
  replied: number;
  /** Does the snapshot cover this volume path? */
  covers(p: string): boolean;
  /** What the snapshot holds under the writers' subtrees. */
  entries: Map<string, EntryState>;
  /** 'all': type, content, mode, owner, xattrs; 'content': type, content, symlink target, device number. */
  fields: 'all' | 'content';
}

export interface Mismatch {
  snapshot: string;
  path: string;
  expected: EntryState | null;
  actual: EntryState | null;
}

export interface SnapshotCheck {
  checked: number;
  unverifiable: number;
  mismatches: Mismatch[];
}

/** Every change to each path, in order (one writer owns each path, so its changes are sequential). */
export class History {
  private readonly byPath = new Map<string, Change[]>();
  /** The writers' roots (volume paths): only what lies below them is checked. */
  readonly roots = new Set<string>();

  add(root: string, records: Iterable<OpRecord>): void {
    this.roots.add(root);
    for (const r of records) {
      if (r.err) continue;
      for (const [p, state] of Object.entries(r.ch)) {
        let list = this.byPath.get(p);
        if (!list) this.byPath.set(p, (list = []));
        list.push({ t0: r.t0, t1: r.t1, state });
      }
    }
  }

  /** The state of p for a window [sent, replied], or 'busy' when an operation on p overlapped it. */
  stateIn(p: string, sent: number, replied: number): EntryState | null | 'busy' {
    let state: EntryState | null = null;
    for (const c of this.byPath.get(p) ?? []) {
      if (c.t0 < replied && c.t1 > sent) return 'busy';
      if (c.t1 <= sent) state = c.state;
    }
    return state;
  }

  paths(): Iterable<string> {
    return this.byPath.keys();
  }

  underRoots(p: string): boolean {
    for (const r of this.roots) if (p === r || p.startsWith(r + '/')) return true;
    return false;
  }
}

export function checkSnapshot(h: History, s: Snapshot): SnapshotCheck {
  const out: SnapshotCheck = { checked: 0, unverifiable: 0, mismatches: [] };
  const paths = new Set<string>(h.paths());
  for (const p of s.entries.keys()) if (h.underRoots(p)) paths.add(p);
  for (const p of paths) {
    if (!s.covers(p) || isFuseHidden(p)) continue;
    const want = h.stateIn(p, s.sent, s.replied);
    if (want === 'busy') {
      out.unverifiable++;
      continue;
    }
    const got = s.entries.get(p) ?? null;
    out.checked++;
    if (!sameState(want, got, s.fields))
      out.mismatches.push({ snapshot: s.label, path: p, expected: want, actual: got });
  }
  return out;
}

/**
 * libfuse renames a file unlinked while still open to `.fuse_hidden…` in its directory (until
 * the last close): the volume really holds that name at the split instant, so a split copy may
 * too, but no writer's model knows it. Not checked (the file's data is checked under its names
 * while it had them).
 */
export function isFuseHidden(p: string): boolean {
  return p.slice(p.lastIndexOf('/') + 1).startsWith('.fuse_hidden');
}
