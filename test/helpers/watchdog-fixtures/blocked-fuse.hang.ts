import * as fs from 'node:fs';
import { expect, it } from 'vitest';
import { TwinFs } from '../../../src/fusefs/filesystem.js';

// The worker serves a mount and opens a file of it for writing synchronously: the request waits
// for the thread that sent it (a FUSE deadlock; SIGKILL alone does not end it, the connection
// must be aborted). For writing: a read-only open, its reads and its close are answered in
// libfuse's threads (fuse-native level 26, native-open.h), which no longer wait for this thread.
it('opens its own mount for writing synchronously', async () => {
  const dir = process.env.HANG_DIR as string;
  await TwinFs.mount({ primary: `${dir}/primary`, mount: `${dir}/mnt` });
  fs.openSync(`${dir}/mnt/x`, 'r+');
  expect.unreachable();
});
