import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fusermountUz, sh, shOk } from './proc.js';
import { ROOT } from './server.js';

export const FIXTURES = path.join(ROOT, 'test/fusefs/fixtures');

/** True when dir is a mount point in this mount namespace. */
export async function isMounted(dir: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const abs = path.resolve(dir);
  return text.split('\n').some((l) => l.split(' ')[4] === abs);
}

/** Mounts a tmpfs on dir (options such as 'size=1m' or 'ro'). Unmount with unmountAll(). */
export async function mountTmpfs(dir: string, options: string): Promise<void> {
  await shOk(`mount -t tmpfs -o '${options}' tmpfs '${dir}'`);
}

/**
 * Detaches whatever is mounted on each dir (FUSE or not), innermost first, ignoring dirs that
 * are not mounts. For afterAll: never throws.
 */
export async function unmountAll(...dirs: string[]): Promise<void> {
  for (const d of [...dirs].sort((a, b) => b.length - a.length)) {
    for (let i = 0; i < 4 && (await isMounted(d).catch(() => false)); i++) {
      await sh(`${fusermountUz(d)} 2>/dev/null || umount -l '${d}'`, { timeoutMs: 10_000 });
    }
  }
}

export interface StepResult {
  op: string;
  ok: boolean;
  code?: string;
  size?: number;
  sha?: string;
  mtimeMs?: number;
}

/** Runs fixtures/steps.mjs in a child process (the only way tests touch a mount). */
export async function runSteps(
  steps: Array<Record<string, unknown>>,
  timeoutMs = 60_000,
): Promise<StepResult[]> {
  const arg = JSON.stringify(steps).replace(/'/g, `'\\''`);
  const r = await sh(`node '${FIXTURES}/steps.mjs' '${arg}'`, { timeoutMs });
  if (r.code !== 0) throw new Error(`steps.mjs failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as StepResult[];
}

/** Polls cond every intervalMs until it holds or timeoutMs passes; returns whether it held. */
export async function waitFor(
  cond: () => Promise<boolean> | boolean,
  timeoutMs: number,
  intervalMs = 50,
): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
