import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MirrorDriver } from '../../src/mirror-driver/index.js';
import { FIXTURES, unmountAll, waitFor } from '../helpers/mounts.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import {
  type InProcess,
  mountInProcess,
  pairedVolume,
  run,
  sha,
  twinfs,
  waitForEvent,
} from './mirror-helpers.js';

const MiB = 1024 * 1024;

describe('crash: kill -9 of a server with a mirror during writes', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  let args: string[];
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    // A small cache flushes all the time: the mirror is behind the primary most of the time.
    args = [
      '--mirror',
      t.dirs.mirror!,
      '--state-dir',
      t.dirs.state!,
      '--writeback-ms',
      '100',
      '--cache-mb',
      '16',
    ];
  });
  afterAll(async () => {
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('restarts with the same mirror, recovers, and the offline verify is clean', async () => {
    const mnt = t.dirs.mnt!;
    srv = await startServer({ primary: t.dirs.primary!, mount: mnt, args });
    await waitForEvent(srv, pairedVolume, 20_000);
    // Appends with fsync, unsynced noise, and namespace churn, all at once; killed mid-way.
    const writer = spawn(
      process.execPath,
      [path.join(FIXTURES, 'crash-writer.mjs'), path.join(mnt, 'w'), '7'],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    let safe = 0;
    writer.stdout!.on('data', (d: Buffer) => (safe += d.toString().split('safe ').length - 1));
    const churn = spawn(
      '/bin/bash',
      [
        '-c',
        `mkdir -p '${mnt}/ns' || exit 0; for i in $(seq 1 100000); do
           head -c $((i % 7000)) /dev/zero >'${mnt}/ns/f'$i || exit 0
           mv '${mnt}/ns/f'$i '${mnt}/ns/g'$((i % 40)) || exit 0
           rm -f '${mnt}/ns/g'$(((i + 20) % 40)) || exit 0
           chmod $((600 + i % 100)) '${mnt}/ns/g'$((i % 40)) 2>/dev/null || exit 0
         done`,
      ],
      { stdio: 'ignore' },
    );
    // Streams: a flush writes a whole batch to the primary while the mirror catches up behind it.
    const streams = [1, 2, 3].map((i) =>
      spawn('/bin/sh', ['-c', `dd if=/dev/urandom of='${mnt}/stream${i}' bs=1M count=400 status=none`], {
        stdio: 'ignore',
      }),
    );
    // Killed once the writer made some records durable (on a loaded machine the streams can
    // take most of the server's time for a while: a fixed delay would kill it before any).
    await new Promise((r) => setTimeout(r, 1500));
    await waitFor(() => safe >= 4, 30_000);
    srv.proc.kill('SIGKILL');
    await srv.exited;
    await srv.kill(); // clears the dead mount
    await Promise.all(
      [writer, churn, ...streams].map(
        (c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.on('exit', r))),
      ),
    );
    srv = undefined;

    const second = await startServer({ primary: t.dirs.primary!, mount: mnt, args });
    srv = second;
    // The restarted server recovers in the background and says when its mirror is paired again.
    await waitForEvent(second, pairedVolume, 30_000);
    expect(second.stderr()).toMatch(/recovering/);
    expect(await second.stop()).toBe(0);
    srv = undefined;
    const r = await twinfs(`verify --primary '${t.dirs.primary}' --mirror '${t.dirs.mirror}'`);
    expect(r.stdout).toMatch(/entries match/);
    expect(r.code).toBe(0);
    expect((await fsp.readdir(path.join(t.dirs.primary!, 'w'))).length).toBeGreaterThan(3);
  });
});

describe('crash: the driver dies with a split recorded (in-process)', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let m: InProcess | undefined;
  let P: string;
  let mnt: string;
  const drivers: MirrorDriver[] = [];
  const open = async () => {
    const d = await MirrorDriver.open({
      primary: P,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
      retryBrokenMs: 0,
      log: () => undefined,
    });
    drivers.push(d);
    await d.whenReady();
    return d;
  };
  const journalFile = async () => {
    const dev = JSON.parse(await fsp.readFile(path.join(t.dirs.mirror!, 'device.json'), 'utf8'));
    return path.join(t.dirs.state!, 'journals', `${dev.deviceId}.jsonl`);
  };
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    P = t.dirs.primary!;
    mnt = t.dirs.mnt!;
  });
  afterAll(async () => {
    await m?.close().catch(() => undefined);
    for (const d of drivers) await d.dispose().catch(() => undefined);
    await unmountAll(mnt);
    await t?.cleanup();
  });

  it('the next driver resyncs the split from its journal, copying only the tracked bytes', async () => {
    m = await mountInProcess({
      primary: P,
      mount: mnt,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
      driver: { checkpointMs: 200 },
    });
    await run(`set -e; cd '${mnt}'; dd if=/dev/urandom of=big bs=1M count=16 status=none; mkdir sub;
      head -c 100000 /dev/urandom >sub/x; head -c 5000 /dev/urandom >outside`);
    await m.settle();
    const s = await m.driver.split({ paths: ['/big'], subtrees: ['/sub'] });
    await run(`set -e; cd '${mnt}'; dd if=/dev/urandom of=big bs=1M seek=4 count=1 conv=notrunc status=none;
      dd if=/dev/urandom of=sub/x bs=1k seek=10 count=3 conv=notrunc status=none; mv sub/x sub/y; truncate -s 50000 sub/y;
      truncate -s 60000 sub/y; echo more >>outside`);
    await m.settle();
    // A checkpoint rewrites the journal from the live state (the split, its ranges, renames, cut).
    const file = await journalFile();
    const checkpointed = async () => (await fsp.readFile(file, 'utf8')).split('\n')[0]!.includes('"t":"gen"');
    const before = (await fsp.stat(file)).ino;
    await waitFor(async () => (await fsp.stat(file)).ino !== before && (await checkpointed()), 5000);
    expect((await fsp.readFile(file, 'utf8')).match(/"t":"(ns|tr|w)"/g)?.length).toBeGreaterThanOrEqual(3);
    await run(
      `set -e; cd '${mnt}'; dd if=/dev/urandom of=big bs=1M seek=8 count=1 conv=notrunc status=none; echo new >sub/z`,
    );
    await m.settle();
    const tracked = m.driver.getSplit(s.splitId)!.trackedBytes;
    expect(tracked).toBe(2 * MiB + 3 * 1024 + 4);
    // The crash: unmount, but never dispose (no clean record, no release); and the dead driver
    // must not go on checkpointing the journal behind the next one's back.
    await m.close({ abandon: true });
    (m.driver as unknown as { disposed: boolean }).disposed = true;
    m = undefined;
    const journal = await fsp.readFile(file, 'utf8');
    expect(journal).toMatch(/"t":"split"/);
    expect(journal).not.toMatch(/"t":"clean"/);

    const d = await open();
    const st = d.status();
    expect(st.splits).toEqual([]);
    expect(st.state).toBe('PAIR');
    expect(st.stats.resyncBytes).toBe(tracked);
    expect(st.stats.recoveryBytes).toBe(0);
    expect(st.stats.copyBytes).toBe(0);
    const v = await d.verify();
    expect(v.differences).toEqual([]);
    expect(await sha(`${d.dataRoot}/big`)).toBe(await sha(`${P}/big`));
    await d.dispose();
  });

  it('a crash after a resync but before its release was recorded resyncs again, idempotently', async () => {
    m = await mountInProcess({
      primary: P,
      mount: mnt,
      mirror: t.dirs.mirror!,
      stateDir: t.dirs.state!,
      driver: { checkpointMs: 1e9 },
    });
    const s = await m.driver.split({ subtrees: ['/sub'] });
    await run(
      `set -e; cd '${mnt}'; mkdir sub/d; mv sub/y sub/d/y; echo 1 >>sub/d/y; mv sub/d sub/e; rm sub/z`,
    );
    await m.settle();
    await m.driver.resync(s.splitId);
    await m.close({ abandon: true });
    m = undefined;
    const file = await journalFile();
    const lines = (await fsp.readFile(file, 'utf8')).split('\n').filter((l) => !l.includes('"t":"released"'));
    await fsp.writeFile(file, lines.join('\n'));

    const d = await open();
    expect(d.status().splits).toEqual([]);
    expect((await d.verify()).differences).toEqual([]);
    await d.dispose();
    const r = await twinfs(`verify --primary '${P}' --mirror '${t.dirs.mirror}'`);
    expect(r.code).toBe(0);
  });
});
