import * as fs from 'node:fs';
import { expect, it } from 'vitest';
import { TwinFs } from '../../../src/fusefs/filesystem.js';

// The worker serves a mount and writes to a file of it synchronously: the request waits for the
// thread that sent it (a FUSE deadlock; SIGKILL alone does not end it, the connection must be
// aborted). A write: opens, reads and closes are answered in libfuse's threads (fuse-native
// levels 26 and 27, native-open.h), which no longer wait for this thread; a WRITE of an existing
// file goes to the write-back cache, on this thread.
it('writes to a file of its own mount synchronously', async () => {
  const dir = process.env.HANG_DIR as string;
  await TwinFs.mount({ primary: `${dir}/primary`, mount: `${dir}/mnt` });
  const fd = fs.openSync(`${dir}/mnt/x`, 'r+');
  fs.writeSync(fd, 'deadlock');
  expect.unreachable();
});
