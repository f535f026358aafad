import * as fs from 'node:fs';
import { expect, it } from 'vitest';
import { TwinFs } from '../../../src/fusefs/filesystem.js';

// The worker serves a mount and reads it synchronously: the request waits for the thread that
// sent it (a FUSE deadlock; SIGKILL alone does not end it, the connection must be aborted).
it('reads its own mount synchronously', async () => {
  const dir = process.env.HANG_DIR as string;
  await TwinFs.mount({ primary: `${dir}/primary`, mount: `${dir}/mnt` });
  fs.readFileSync(`${dir}/mnt/x`);
  expect.unreachable();
});
