import { describe, expect, it } from 'vitest';
import { KernelNames } from '../../src/fusefs/kernel-names.js';

// KernelNames.invalidating: which names have an invalidation queued or being sent. A page
// write-back through such a name may be the kernel laundering a page for that invalidation
// (volume-ops write(), TWINFS_WAIT_PAGE_WRITEBACK), so it must not wait behind it.
describe('KernelNames.invalidating', () => {
  it('holds a name from the queueing of its invalidation until the kernel processed it, overlaps counted', async () => {
    const pending: Array<() => void> = [];
    const names = new KernelNames(
      () =>
        new Promise<void>((resolve) => {
          pending.push(resolve);
        }),
      undefined,
      true,
    );
    names.add('/a', 7);
    names.add('/a.lnk', 7);
    const first = names.changed([7], '/a');
    expect(first).toBeDefined();
    expect(names.invalidating('/a.lnk')).toBe(true);
    expect(names.invalidating('/a')).toBe(false); // the name the change went through is not sent
    names.changedBehind(7, '/a'); // both names, not waited for
    expect(names.invalidating('/a')).toBe(true);
    pending.shift()!(); // the first batch (/a.lnk) processed; the second still queued
    await first;
    expect(names.invalidating('/a.lnk')).toBe(true);
    expect(names.invalidating('/a')).toBe(true);
    pending.shift()!();
    await new Promise((r) => setImmediate(r));
    expect(names.invalidating('/a.lnk')).toBe(false);
    expect(names.invalidating('/a')).toBe(false);
  });
});
