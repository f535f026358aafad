import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFixture, type PosixFixture, shInOk } from '../helpers/posix.js';

// docs/reliability.md, "A stop that waited for good on libuv's signal lock" (fuse-native level
// 28). libfuse cancels its worker threads when the session ends, and blocks only SIGTERM,
// SIGINT, SIGHUP and SIGQUIT in them: the SIGCHLD of a child the server ran could run libuv's
// signal handler in a worker, which took libuv's process-wide signal lock, and a worker
// cancelled there never gave it back (the server's stop then waited on it for good: one round
// in ~60 of bench/differential.mjs, 2026-12-07 16:55). Now no signal but the faults reaches the
// threads of the native layer. Seen from outside: the SigBlk mask of every thread waiting for a
// request on /dev/fuse.
const SIGNALS = {
  SIGHUP: 1,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGCHLD: 17,
  SIGWINCH: 28,
};

function blocked(mask: bigint, signal: number): boolean {
  return ((mask >> BigInt(signal - 1)) & 1n) === 1n;
}

function fuseWaiters(pid: number): bigint[] {
  const masks: bigint[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    let wchan: string;
    let status: string;
    try {
      wchan = readFileSync(`/proc/${pid}/task/${t}/wchan`, 'utf8').trim();
      status = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
    } catch {
      continue; // the thread ended meanwhile
    }
    if (wchan !== 'fuse_dev_do_read') continue;
    const m = /SigBlk:\s*([0-9a-f]+)/.exec(status);
    if (m) masks.push(BigInt(`0x${m[1]}`));
  }
  return masks;
}

describe.each([['3'], ['2']])('threads waiting on /dev/fuse take no signals (libfuse%s)', (fuse) => {
  let fx: PosixFixture;
  beforeAll(async () => {
    fx = await mountFixture(['--fuse', fuse]);
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('block SIGCHLD and the other asynchronous signals, not the faults', async () => {
    // A few requests at once, so that libfuse starts more than one worker.
    await shInOk(fx.mnt, 'for i in 1 2 3 4; do (echo $i > f$i; cat f$i; ls -la) > /dev/null & done; wait');
    const masks = fuseWaiters(fx.srv.proc.pid!);
    expect(masks.length).toBeGreaterThan(0);
    for (const mask of masks) {
      const seen = Object.fromEntries(Object.entries(SIGNALS).map(([name, n]) => [name, blocked(mask, n)]));
      expect(seen).toEqual({
        SIGHUP: true,
        SIGUSR1: true,
        SIGSEGV: false,
        SIGPIPE: true,
        SIGALRM: true,
        SIGTERM: true,
        SIGCHLD: true,
        SIGWINCH: true,
      });
    }
  }, 60_000);
});
