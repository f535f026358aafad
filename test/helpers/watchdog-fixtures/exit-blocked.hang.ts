import { promises as fsp } from 'node:fs';
import { expect, it } from 'vitest';
import { TwinFs } from '../../../src/fusefs/filesystem.js';

// The test passes, but a write to the worker's own mount is left unanswered (a gate that never
// opens): a thread of the pool waits for the answer, and the fork cannot exit once told to.
it('passes and leaves a write to its own mount unanswered', async () => {
  const dir = process.env.HANG_DIR as string;
  const never = new Promise<never>(() => undefined);
  // Without the exit guard: with it, the connection is aborted when this fork's main thread
  // ends, and the fork exits (test/fusefs/exit-guard.test.ts); this fixture is the hang shape.
  process.env.TWINFS_EXIT_GUARD = '0';
  await TwinFs.mount({ primary: `${dir}/primary`, mount: `${dir}/mnt`, gate: { enter: () => never } });
  let settled = false;
  fsp.writeFile(`${dir}/mnt/x`, 'y').then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((r) => setTimeout(r, 1000));
  expect(settled).toBe(false);
});
