import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { type RunResult, sh } from '../helpers/proc.js';
import { CLI } from '../helpers/server.js';
import { memoryTargetPlugin } from '../plugins/plugin-fixtures.js';

export const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Runs the built CLI with a time limit (and optionally stdin and extra environment). */
export function twinfs(
  args: string[],
  opts: { input?: string; env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
  for (const [k, v] of Object.entries(opts.env ?? {})) if (v === undefined) delete env[k];
  return sh(`node ${q(CLI)} ${args.map(q).join(' ')}`, {
    input: opts.input ?? '',
    env,
    timeoutMs: opts.timeoutMs ?? 30_000,
  });
}

export { jsonLines } from '../helpers/cli.js';

/** A TCP port nobody listens on right now (for a server that must come back on the same port). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * A plugin contributing the backup target `slow:` (every file takes delayMs, so a backup can be
 * cancelled halfway) and the command `slow.hello`. Written to dir/twinfs-test-slow.
 */
export async function writeSlowPlugin(dir: string, delayMs = 300): Promise<void> {
  const folder = path.join(dir, 'twinfs-test-slow');
  await fsp.mkdir(folder, { recursive: true });
  await fsp.writeFile(
    path.join(folder, 'package.json'),
    JSON.stringify({
      name: 'twinfs-test-slow',
      version: '1.0.0',
      main: 'index.js',
      type: 'module',
      engines: { twinfs: '^1.0.0' },
      activationEvents: ['onTarget:slow', 'onCommand:slow.hello'],
      contributes: {
        backupTargets: [{ id: 'slow', description: 'slow:NAME - stores nothing, slowly' }],
        commands: [{ command: 'slow.hello', title: 'Say hello' }],
      },
    }),
  );
  // Each put hashes what it is given, then waits delayMs (cut short by the run's signal).
  const putFile = `async (p, data, m, o) => {
    const h = (await import('node:crypto')).createHash('sha256');
    let bytes = 0;
    for await (const c of data) { h.update(c); bytes += c.length; }
    await new Promise((resolve, reject) => {
      const onAbort = () => { clearTimeout(t); reject(new Error('aborted')); };
      const t = setTimeout(() => { o?.signal?.removeEventListener('abort', onAbort); resolve(); }, ${delayMs});
      o?.signal?.addEventListener('abort', onAbort, { once: true });
    });
    return { hash: h.digest('hex'), bytes };
  }`;
  const hello =
    "context.subscriptions.push(context.twinfs.registerCommand('slow.hello', (...who) => 'hello ' + who.join(' ')));";
  await fsp.writeFile(path.join(folder, 'index.js'), memoryTargetPlugin('slow', putFile, hello));
}
