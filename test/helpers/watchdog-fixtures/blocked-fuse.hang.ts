import * as fs from 'node:fs';
import { expect, it } from 'vitest';
import { TwinFs } from '../../../src/fusefs/filesystem.js';

// The worker serves a mount and writes to a file of it synchronously: the request waits for the
// thread that sent it (a FUSE deadlock; SIGKILL alone does not end it, the connection must be
// aborted). Opens, reads, closes and (since fuse-native level 29) the writes of a handle opened
// there are answered in libfuse's threads (native-open.h), which no longer wait for this thread;
// an fsync goes to this thread (the write-back cache and the mirror's sync).
it('writes to a file of its own mount synchronously', async () => {
  const dir = process.env.HANG_DIR as string;
  await TwinFs.mount({ primary: `${dir}/primary`, mount: `${dir}/mnt` });
  const fd = fs.openSync(`${dir}/mnt/x`, 'r+');
  fs.writeSync(fd, 'deadlock');
  fs.fsyncSync(fd);
  expect.unreachable();
});
