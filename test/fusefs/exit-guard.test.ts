import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { fuseMinor } from '../helpers/fuse-trace.js';
import { ROOT, tempDirs } from '../helpers/server.js';

/**
 * A process serving a mount must be able to end while one of its own threads waits in the kernel
 * on that mount (docs/reliability.md, finding 43). The fixture server (a child process, running
 * the built TwinFs) leaves a kernel-cache invalidation stuck behind a client's write whose WRITE
 * it never answers; then it exits (process.exit) or is killed (SIGKILL, what vitest does to a
 * fork that does not end on SIGTERM). Without the exit guard neither the server nor its client
 * ever ends: the stuck thread keeps /dev/fuse open, so the kernel never ends the connection.
 * Needs root (/sys/fs/fuse/connections), as the suite does.
 */
const FIXTURE = path.join(ROOT, 'test/fusefs/fixtures/exit-blocked-server.mjs');
const LIMIT_MS = 10_000;

function exitWithin(p: ChildProcess, ms: number): Promise<boolean> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    p.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

function lines(p: ChildProcess): { next(what: string, ms?: number): Promise<string> } {
  const seen: string[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  p.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    seen.push(...parts);
    for (const w of waiters.splice(0)) w();
  });
  return {
    async next(what, ms = 20_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const i = seen.findIndex((l) => l.startsWith(what) || l.startsWith('not '));
        if (i >= 0) return seen.splice(0, i + 1).pop()!;
        if (Date.now() > deadline || p.exitCode !== null)
          throw new Error(`no "${what}" (saw ${seen.join(' | ')})`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
    },
  };
}

function childrenOf(pid: number): number[] {
  try {
    const out: number[] = [];
    for (const t of readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/))
      if (t) out.push(Number(t));
    return out;
  } catch {
    return [];
  }
}

function threadWaits(pid: number, wchan: RegExp): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).some((t) => {
      try {
        return wchan.test(readFileSync(`/proc/${pid}/task/${t}/wchan`, 'utf8'));
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

/** Running (not gone, not a zombie left unreaped). */
const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

describe('a server whose own thread is stuck on its mount', () => {
  let cleanup: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await cleanup?.();
    cleanup = undefined;
  });

  for (const how of ['process.exit', 'SIGKILL'] as const) {
    it(`ends on ${how}, and so does its client`, async () => {
      const t = await tempDirs('primary', 'mnt');
      const mnt = t.dirs.mnt!;
      await fsp.writeFile(path.join(t.dirs.primary!, 'f'), Buffer.alloc(8192, 97));
      const server = spawn(process.execPath, [FIXTURE, t.base], { stdio: ['pipe', 'pipe', 'inherit'] });
      let client: ChildProcess | undefined;
      let minor: number | undefined;
      cleanup = async () => {
        // Old code: the connection must be aborted for anything to end (the watchdog's way).
        if (
          (!(await exitWithin(server, 0)) || (client && !(await exitWithin(client, 0)))) &&
          minor !== undefined
        ) {
          if (fuseMinor(mnt) === minor) writeFileSync(`/sys/fs/fuse/connections/${minor}/abort`, '1');
        }
        server.kill('SIGKILL');
        client?.kill('SIGKILL');
        await exitWithin(server, LIMIT_MS);
        if (client) await exitWithin(client, LIMIT_MS);
        await t.cleanup();
      };
      const out = lines(server);
      await out.next('mounted');
      minor = fuseMinor(mnt);
      expect(minor).toBeDefined();
      const guards = childrenOf(server.pid!);
      // A partial-page write: the kernel keeps the page locked until its WRITE is answered.
      client = spawn('dd', ['if=/dev/zero', `of=${mnt}/f`, 'bs=100', 'count=1', 'seek=1', 'conv=notrunc'], {
        stdio: 'ignore',
      });
      await out.next('held');
      server.stdin!.write('invalidate\n');
      expect(await out.next('blocked')).toBe('blocked');
      // The precondition itself: a thread of the server waits in the kernel for the page lock.
      let waits = false;
      for (let i = 0; i < 100 && !waits; i++) {
        waits = threadWaits(server.pid!, /folio_lock/);
        if (!waits) await new Promise((r) => setTimeout(r, 100));
      }
      expect(waits, 'a server thread waits for the page lock').toBe(true);

      if (how === 'SIGKILL') server.kill('SIGKILL');
      else server.stdin!.write('exit\n');
      expect(await exitWithin(server, LIMIT_MS), 'the server process ended').toBe(true);
      expect(await exitWithin(client, LIMIT_MS), 'its client ended').toBe(true);
      // The client's write failed (the connection ended), it did not succeed behind the gate.
      expect(client.exitCode).not.toBe(0);
      // The guard (the server's one child) did its work and ended too.
      expect(guards.length).toBe(1);
      expect(guards.filter(alive)).toEqual([]);
    }, 60_000);
  }
});
