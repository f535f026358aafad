import { describe, expect, it } from 'vitest';
import type { EntryState } from './model.js';
import { checkSnapshot, History } from './oracle.js';
import type { OpRecord } from './writer.js';

const file = (h: string): EntryState => ({ t: 'f', h, size: 1, mode: 0o644, uid: 0, gid: 0, x: '' });
const rec = (s: number, t0: number, t1: number, ch: OpRecord['ch']): OpRecord => ({
  s,
  o: { op: 'fsync', path: '/w0' },
  t0,
  t1,
  ch,
});

/** The snapshot oracle's window rule, on a hand-made history. */
describe('stress oracle', () => {
  const h = new History();
  h.add('/w0', [
    rec(0, 0, 1, { '/w0/a': file('A1') }),
    rec(1, 10, 12, { '/w0/a': file('A2'), '/w0/b': file('B1') }),
    rec(2, 20, 30, { '/w0/a': null }),
  ]);

  it('expects the state after the last operation completed before the prepare was sent', () => {
    expect(h.stateIn('/w0/a', 5, 8)).toEqual(file('A1'));
    expect(h.stateIn('/w0/a', 13, 19)).toEqual(file('A2'));
    expect(h.stateIn('/w0/a', 31, 40)).toBeNull();
    expect(h.stateIn('/w0/b', 5, 8)).toBeNull();
  });

  it('calls a path busy when an operation on it overlapped the window', () => {
    expect(h.stateIn('/w0/a', 11, 15)).toBe('busy');
    expect(h.stateIn('/w0/a', 5, 10.5)).toBe('busy');
    expect(h.stateIn('/w0/a', 25, 26)).toBe('busy');
    // b was not touched by the operation at [20, 30].
    expect(h.stateIn('/w0/b', 25, 26)).toEqual(file('B1'));
  });

  it('reports a snapshot entry that holds another state, a missing one and an extra one', () => {
    const entries = new Map<string, EntryState>([
      ['/w0/a', file('A1')],
      ['/w0/x', file('X')],
    ]);
    const r = checkSnapshot(h, {
      label: 's',
      sent: 13,
      replied: 19,
      covers: () => true,
      entries,
      fields: 'all',
    });
    expect(r.mismatches.map((m) => [m.path, m.expected?.h ?? null, m.actual?.h ?? null]).sort()).toEqual([
      ['/w0/a', 'A2', 'A1'],
      ['/w0/b', 'B1', null],
      ['/w0/x', null, 'X'],
    ]);
    const ok = checkSnapshot(h, {
      label: 's',
      sent: 13,
      replied: 19,
      covers: () => true,
      entries: new Map([
        ['/w0/a', file('A2')],
        ['/w0/b', file('B1')],
      ]),
      fields: 'all',
    });
    expect(ok).toEqual({ checked: 2, unverifiable: 0, mismatches: [] });
  });

  it("leaves out libfuse's .fuse_hidden names of files unlinked while open", () => {
    const r = checkSnapshot(h, {
      label: 's',
      sent: 13,
      replied: 19,
      covers: () => true,
      entries: new Map([
        ['/w0/a', file('A2')],
        ['/w0/b', file('B1')],
        ['/w0/.fuse_hidden0000003b00000001', file('H')],
      ]),
      fields: 'all',
    });
    expect(r).toEqual({ checked: 2, unverifiable: 0, mismatches: [] });
  });
});
