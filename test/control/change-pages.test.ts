import { describe, expect, it } from 'vitest';
import { joinPages, toPages } from '../../src/control/change-pages.js';
import { changesSchema, MAX_MESSAGE_BYTES } from '../../src/control/protocol.js';

/**
 * The paging of a prepare's change answer: no list is capped, every page fits a control
 * message, and the pages joined are the answer. (Fetched over a real connection in
 * test/backup-peer/changes-e2e.test.ts.)
 */
describe('change answer pages', () => {
  const answer = (n: number) => ({
    since: 7,
    changed: Array.from({ length: n }, (_, i) => `/some/directory/with/a/long/name/file-${i}`),
    trees: ['/moved'],
    deleted: Array.from({ length: n / 10 }, (_, i) => `/gone-${i}`),
    renamed: [{ from: '/a', to: '/moved' }],
    ranges: Array.from({ length: 50 }, (_, i) => ({
      path: `/big-${i}`,
      ranges: [[i, i + 10] as [number, number]],
    })),
  });

  it('cuts 100,000 changed paths into pages that each fit a message, and joins them back', () => {
    const a = answer(100_000);
    const pages = toPages(a);
    expect(pages.length).toBeGreaterThan(10);
    for (const [i, p] of pages.entries()) {
      expect(changesSchema.safeParse(p).success).toBe(true);
      expect(JSON.stringify(p).length).toBeLessThan(MAX_MESSAGE_BYTES / 2);
      expect(p.more).toBe(i + 1 < pages.length ? String(i + 1) : undefined);
    }
    const { more: _, ...joined } = joinPages(pages);
    expect(joined).toEqual(a);
  });

  it('a small answer is one page; "unknown" travels on the first', () => {
    const pages = toPages({ ...answer(10), unknown: { since: 9, reason: 'unclean shutdown' } });
    expect(pages).toHaveLength(1);
    expect(pages[0]!.unknown).toEqual({ since: 9, reason: 'unclean shutdown' });
    expect(pages[0]!.more).toBeUndefined();
  });
});
