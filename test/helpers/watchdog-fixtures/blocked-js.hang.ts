import { expect, it } from 'vitest';

// The worker's only thread waits forever: its testTimeout is a timer that never fires.
it('never returns', () => {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  expect.unreachable();
});
