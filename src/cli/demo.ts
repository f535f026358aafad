import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMountPoint } from '../fusefs/mount-checks.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** A writer that appends 4 KiB records with fsync and reports how long each write took. */
const WRITER = `
const fs = require('node:fs');
const [file, ms] = process.argv.slice(1);
const fd = fs.openSync(file, 'a');
const rec = Buffer.alloc(4096);
let n = 0, max = 0, slow = 0;
const lat = [];
const end = Date.now() + Number(ms);
while (Date.now() < end) {
  rec.fill(String(n % 10)); rec.write('record ' + n + '\\n');
  const t = process.hrtime.bigint();
  fs.writeSync(fd, rec); fs.fsyncSync(fd);
  const d = Number(process.hrtime.bigint() - t) / 1e6;
  lat.push(d); if (d > max) max = d; if (d > 100) slow++; n++;
}
lat.sort((a, b) => a - b);
process.stdout.write(JSON.stringify({ records: n, maxMs: max, p99Ms: lat[Math.floor(lat.length * 0.99)] ?? 0, over100ms: slow }) + '\\n');
`;

/**
 * The embedded default job: on temporary directories it starts `twinfs serve` (mirror and
 * control channel on), writes a small tree through the mount while a writer keeps appending to
 * a file, backs everything up through a separate `twinfs backup` peer process (which reads the
 * mirror, never the mount), restores the snapshot, verifies it and the mirror, prints the
 * measured write stall, and unmounts cleanly. Returns the exit status.
 */
export async function demo(opts: { keep?: boolean; log?: (s: string) => void } = {}): Promise<number> {
  const log = opts.log ?? ((s: string) => process.stdout.write(s + '\n'));
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-demo-'));
  const d = Object.fromEntries(
    ['primary', 'mnt', 'mirror', 'state', 'backups', 'catalog', 'restore'].map((n) => [
      n,
      path.join(base, n),
    ]),
  ) as Record<'primary' | 'mnt' | 'mirror' | 'state' | 'backups' | 'catalog' | 'restore', string>;
  for (const dir of Object.values(d)) await fsp.mkdir(dir, { recursive: true });
  log(`demo: working in ${base}`);

  const server = spawn(
    process.execPath,
    [
      MAIN,
      'serve',
      '--primary',
      d.primary,
      '--mount',
      d.mnt,
      '--mirror',
      d.mirror,
      '--state-dir',
      d.state,
      '--control',
      '127.0.0.1:0',
      '--json',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<number | null>((r) => server.on('exit', (code) => r(code)));
  let failures = 0;
  const check = (ok: boolean, what: string) => {
    if (!ok) failures++;
    log(`${ok ? '  ok  ' : '  FAIL'} ${what}`);
  };
  try {
    const mounted = await waitForEvent(server, 'mounted', 30_000);
    const url = (mounted.control as { url: string }).url;
    const tokenFile = path.join(d.state, 'control.token');
    check(
      (await isMountPoint(d.mnt)).mounted,
      `twinfs serve mounted ${d.primary} at ${d.mnt} (control ${url})`,
    );

    // A small tree, written through the mount.
    const files: Record<string, Buffer> = {
      'hello.txt': Buffer.from('hello from twinfs\n'),
      'docs/report.bin': randomBytes(3 * 1024 * 1024 + 17),
      'docs/nested/deep.txt': Buffer.from('deep\n'.repeat(1000)),
    };
    await fsp.mkdir(path.join(d.mnt, 'docs/nested'), { recursive: true });
    for (const [rel, data] of Object.entries(files)) await fsp.writeFile(path.join(d.mnt, rel), data);
    await fsp.symlink('docs/report.bin', path.join(d.mnt, 'report-link'));
    for (const [rel, data] of Object.entries(files))
      check(
        (await fsp.readFile(path.join(d.mnt, rel))).equals(data),
        `wrote and read back ${rel} (${data.length} bytes, sha ${sha(data)})`,
      );

    // Baseline: the writer alone, then the writer while a backup runs through the peer.
    const baseline = await runWriter(path.join(d.mnt, 'baseline.log'), 1500);
    const writer = runWriter(path.join(d.mnt, 'app.log'), 4000);
    await new Promise((r) => setTimeout(r, 800));
    const backup = await run(process.execPath, [
      MAIN,
      'backup',
      '--server',
      url,
      '--token-file',
      tokenFile,
      '--target',
      `dir:${d.backups}`,
      '--catalog',
      d.catalog,
      '--json',
    ]);
    const during = await writer;
    const result = lastJson(backup.stdout);
    check(
      backup.code === 0 && typeof result?.snapshotId === 'string',
      `backup by a separate peer process: snapshot ${result?.snapshotId ?? '(none)'}${backup.code ? ` — ${backup.stderr.trim()}` : ''}`,
    );
    const stallMs = Number(result?.stallMs ?? Number.NaN);
    log(
      `        writes held by the split: ${Number.isFinite(stallMs) ? stallMs.toFixed(1) : '?'} ms (server); writer max ${during.maxMs.toFixed(1)} ms, p99 ${during.p99Ms.toFixed(1)} ms during the backup vs max ${baseline.maxMs.toFixed(1)} ms, p99 ${baseline.p99Ms.toFixed(1)} ms alone (${during.records} records, ${during.over100ms} over 100 ms)`,
    );

    if (typeof result?.snapshotId === 'string') {
      const restore = await run(process.execPath, [
        MAIN,
        'restore',
        result.snapshotId,
        '--to',
        d.restore,
        '--catalog',
        d.catalog,
      ]);
      check(
        restore.code === 0,
        `restored the snapshot into ${d.restore}${restore.code ? ` — ${restore.stderr.trim()}` : ''}`,
      );
      for (const [rel, data] of Object.entries(files)) {
        const back = await fsp.readFile(path.join(d.restore, rel)).catch(() => Buffer.alloc(0));
        check(back.equals(data), `restored ${rel} equals what was written`);
      }
      check(
        (await fsp.readlink(path.join(d.restore, 'report-link')).catch(() => '')) === 'docs/report.bin',
        'restored the symlink',
      );
      const app = await fsp.readFile(path.join(d.restore, 'app.log')).catch(() => Buffer.alloc(0));
      const whole =
        app.length % 4096 === 0 &&
        [...Array(app.length / 4096).keys()].every((i) =>
          app
            .subarray(i * 4096, i * 4096 + 16)
            .toString()
            .startsWith(`record ${i}\n`),
        );
      check(
        app.length > 0 && whole,
        `the file being written during the backup was captured consistently (${app.length / 4096} whole records, no torn write)`,
      );
      const chk = await run(process.execPath, [MAIN, 'check', result.snapshotId, '--catalog', d.catalog]);
      check(chk.code === 0, 'twinfs check: the backup data matches the catalog hashes');
    }
    const verify = await run(process.execPath, [MAIN, 'verify', '--server', url, '--token-file', tokenFile]);
    check(
      verify.code === 0,
      `twinfs verify: mirror and primary are identical after the resync (${verify.stdout.trim().split('\n').pop()})`,
    );

    server.kill('SIGTERM');
    const code = await withTimeout(exited, 30_000, 'server exit');
    check(code === 0, `server exited cleanly on SIGTERM (status ${code})`);
    check(!(await isMountPoint(d.mnt)).mounted, 'mount point is unmounted');
    const onPrimary = await fsp
      .readFile(path.join(d.primary, 'docs/report.bin'))
      .catch(() => Buffer.alloc(0));
    check(onPrimary.equals(files['docs/report.bin']!), 'the primary directory holds the files');
  } catch (err) {
    failures++;
    log(`  FAIL ${(err as Error).message}`);
  } finally {
    if (server.exitCode === null) {
      server.kill('SIGTERM');
      await withTimeout(exited, 20_000, 'server exit').catch(() => server.kill('SIGKILL'));
    }
    if ((await isMountPoint(d.mnt)).mounted)
      await import('../fusefs/unmount.js').then((m) => m.forceUnmount(d.mnt)).catch(() => undefined);
    if (!opts.keep) await fsp.rm(base, { recursive: true, force: true });
  }
  log(failures === 0 ? 'demo: all checks passed' : `demo: ${failures} check(s) failed`);
  return failures === 0 ? 0 : 1;
}

async function runWriter(
  file: string,
  ms: number,
): Promise<{ records: number; maxMs: number; p99Ms: number; over100ms: number }> {
  const r = await run(process.execPath, ['-e', WRITER, file, String(ms)]);
  const j = lastJson(r.stdout);
  if (r.code !== 0 || !j) throw new Error(`writer failed: ${r.stderr}`);
  return j as { records: number; maxMs: number; p99Ms: number; over100ms: number };
}

function run(
  cmd: string,
  args: string[],
  timeoutMs = 120_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (x) => (stdout += x));
    c.stderr.on('data', (x) => (stderr += x));
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

function lastJson(text: string): Record<string, any> | undefined {
  const lines = text.trim().split('\n').reverse();
  for (const l of lines) {
    try {
      return JSON.parse(l);
    } catch {
      /* not JSON */
    }
  }
  return undefined;
}

function waitForEvent(
  child: ReturnType<typeof spawn>,
  event: string,
  ms: number,
): Promise<Record<string, unknown>> {
  return withTimeout(
    new Promise((resolve, reject) => {
      let buf = '';
      child.stdout!.on('data', (chunk: Buffer) => {
        buf += chunk.toString();
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
