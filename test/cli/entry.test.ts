import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unmountAll } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/**
 * The command's entry (dist/cli/twinfs.cjs) sizes libuv's thread pool before anything starts
 * it: an ES module entry is loaded with asynchronous reads that start the pool at its default
 * of 4 threads, and the size is read only then (found by the hung-target chaos scenario: a
 * backup's 4 copies stuck at a stopped target left no thread to record the failure).
 */
describe('twinfs entry point', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'state');
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('a server started through the command has a pool of 32 threads, not 4', async () => {
    const env = { ...process.env };
    delete env.UV_THREADPOOL_SIZE;
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--state-dir', t.dirs.state!],
      env,
    });
    // Node 20 names every thread "node": count them. 32 pool threads plus the main thread and
    // V8's 4 platform threads is at least 37; with a pool of 4 an idle server has about 15
    // (libfuse's loop adds a worker or two).
    const tasks = await fsp.readdir(`/proc/${srv.proc.pid}/task`);
    expect(tasks.length).toBeGreaterThanOrEqual(37);
  }, 60_000);
});
