import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMountPoint } from '../fusefs/mount-checks.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);

/**
 * The embedded default job: mount twinfs on temporary directories (the server is a separate
 * process, as in real use), write and read back files through the mount, show the primary
 * holds them, and unmount cleanly. Returns the exit status.
 */
export async function demo(opts: { keep?: boolean; log?: (s: string) => void } = {}): Promise<number> {
  const log = opts.log ?? ((s: string) => process.stdout.write(s + '\n'));
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-demo-'));
  const primary = path.join(base, 'primary');
  const mount = path.join(base, 'mnt');
  await fsp.mkdir(primary);
  await fsp.mkdir(mount);
  log(`demo: primary ${primary}, mount ${mount}`);

  const server = spawn(process.execPath, [MAIN, 'serve', '--primary', primary, '--mount', mount, '--json'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((r) => server.on('exit', (code) => r(code)));
  let failures = 0;
  const check = (ok: boolean, what: string) => {
    if (!ok) failures++;
    log(`${ok ? '  ok  ' : '  FAIL'} ${what}`);
  };
  try {
    await waitForEvent(server, 'mounted', 20_000);
    check((await isMountPoint(mount)).mounted, 'twinfs serve mounted the volume');

    const files: Record<string, Buffer> = {
      'hello.txt': Buffer.from('hello from twinfs\n'),
      'docs/report.bin': randomBytes(3 * 1024 * 1024 + 17),
      'docs/nested/deep.txt': Buffer.from('deep\n'.repeat(1000)),
    };
    await fsp.mkdir(path.join(mount, 'docs/nested'), { recursive: true });
    for (const [rel, data] of Object.entries(files)) {
      const fh = await fsp.open(path.join(mount, rel), 'w');
      await fh.write(data);
      await fh.sync(); // fsync: durable on the primary before this returns
      await fh.close();
    }
    for (const [rel, data] of Object.entries(files)) {
      const back = await fsp.readFile(path.join(mount, rel));
      check(back.equals(data), `read back ${rel} through the mount (${data.length} bytes, sha ${sha(data)})`);
      const onPrimary = await fsp.readFile(path.join(primary, rel));
      check(onPrimary.equals(data), `primary holds ${rel} after fsync`);
    }
    // A write left in the write-back cache reaches the primary at unmount.
    const lazy = Buffer.from('written, never fsynced\n');
    await fsp.writeFile(path.join(mount, 'lazy.txt'), lazy);
    await fsp.rename(path.join(mount, 'hello.txt'), path.join(mount, 'docs/hello-renamed.txt'));

    server.kill('SIGTERM');
    const code = await withTimeout(exited, 30_000, 'server exit');
    check(code === 0, `server exited cleanly on SIGTERM (status ${code})`);
    check(!(await isMountPoint(mount)).mounted, 'mount point is unmounted');
    const lazyOnPrimary = await fsp.readFile(path.join(primary, 'lazy.txt')).catch(() => Buffer.alloc(0));
    check(lazyOnPrimary.equals(lazy), 'cached (never fsynced) write was written back at unmount');
    const renamed = await fsp
      .readFile(path.join(primary, 'docs/hello-renamed.txt'))
      .catch(() => Buffer.alloc(0));
    check(renamed.equals(files['hello.txt']!), 'rename reached the primary');
  } catch (err) {
    failures++;
    log(`  FAIL ${(err as Error).message}`);
  } finally {
    if (server.exitCode === null) {
      server.kill('SIGTERM');
      await withTimeout(exited, 20_000, 'server exit').catch(() => server.kill('SIGKILL'));
    }
    if ((await isMountPoint(mount)).mounted)
      await import('../fusefs/unmount.js').then((m) => m.forceUnmount(mount)).catch(() => undefined);
    if (!opts.keep) await fsp.rm(base, { recursive: true, force: true });
  }
  log(failures === 0 ? 'demo: all checks passed' : `demo: ${failures} check(s) failed`);
  return failures === 0 ? 0 : 1;
}

function waitForEvent(
  child: ReturnType<typeof spawn>,
  event: string,
  ms: number,
): Promise<Record<string, unknown>> {
  return withTimeout(
    new Promise((resolve, reject) => {
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          try {
            const msg = JSON.parse(line);
            if (msg.event === event) resolve(msg);
          } catch {
            /* not a JSON line */
          }
        }
      });
      child.on('exit', (code) => reject(new Error(`server exited with status ${code} before "${event}"`)));
    }),
    ms,
    `"${event}" from the server`,
  );
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, rej) => {
      t = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}
