import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';

/** The minor number of a FUSE mount's device: its connection's number (/sys/fs/fuse/connections/N). */
export function fuseMinor(mnt: string): number | undefined {
  const l = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((x) => x.split(' ')[4] === mnt && x.includes(' - fuse'));
  return l ? Number(l.split(' ')[2]!.split(':')[1]) : undefined;
}

const TRACEFS = '/sys/kernel/tracing';

/**
 * Counts the requests the kernel sends to one FUSE mount, by opcode name (FUSE_LOOKUP...), from
 * the kernel's own tracepoint fuse_request_send (Linux 6.15+), in a tracing instance of the
 * test's own (its buffer and its event switch are nobody else's). Needs root and tracefs; throws
 * when either is missing rather than counting nothing.
 */
export function traceFuseRequests(mnt: string): { counts(): Map<string, number>; stop(): void } {
  const conn = fuseMinor(mnt);
  if (conn === undefined) throw new Error(`${mnt} is not a FUSE mount`);
  // A machine without systemd may not have tracefs mounted (systemd mounts it at boot): mount it.
  if (!existsSync(`${TRACEFS}/instances`)) execFileSync('mount', ['-t', 'tracefs', 'tracefs', TRACEFS]);
  const dir = `${TRACEFS}/instances/twinfs-test-${process.pid}-${conn}`;
  mkdirSync(dir);
  const event = `${dir}/events/fuse/fuse_request_send`;
  try {
    writeFileSync(`${event}/filter`, `connection == ${conn}`);
    writeFileSync(`${event}/enable`, '1');
  } catch (err) {
    rmdirSync(dir);
    throw err;
  }
  return {
    counts() {
      const out = new Map<string, number>();
      for (const m of readFileSync(`${dir}/trace`, 'utf8').matchAll(/opcode \d+ \((FUSE_[A-Z_]+)\)/g))
        out.set(m[1]!, (out.get(m[1]!) ?? 0) + 1);
      return out;
    },
    stop() {
      writeFileSync(`${event}/enable`, '0');
      rmdirSync(dir);
    },
  };
}
