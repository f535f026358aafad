import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES, isMounted, unmountAll } from '../helpers/mounts.js';
import { fusermountUz, shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';
import { bytes } from './fixtures/bytes.mjs';

interface Writer {
  proc: ChildProcess;
  dir: string;
  safe: Array<{ file: string; off: number; len: number; seed: number }>;
  stderr: string;
  exited: Promise<void>;
}

function startWriter(dir: string, seed: number): Writer {
  const proc = spawn(process.execPath, [path.join(FIXTURES, 'crash-writer.mjs'), dir, String(seed)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const w: Writer = {
    proc,
    dir,
    safe: [],
    stderr: '',
    exited: new Promise((r) => proc.on('exit', () => r())),
  };
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const [tag, file, off, len, s] = buf.slice(0, i).split(' ');
      buf = buf.slice(i + 1);
      if (tag === 'safe') w.safe.push({ file: file!, off: Number(off), len: Number(len), seed: Number(s) });
    }
  });
  proc.stderr!.on('data', (d: Buffer) => (w.stderr += d.toString()));
  return w;
}

describe('fsync durability across kill -9 of the server', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;
  const writers: Writer[] = [];
  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt');
  });
  afterAll(async () => {
    for (const w of writers) w.proc.kill('SIGKILL');
    await srv?.kill();
    await unmountAll(t.dirs.mnt!);
    await t?.cleanup();
  });

  it('every record a writer saw fsync acknowledge is on the primary with its bytes', async () => {
    // A long write-back delay: only fsync (and the dirty limit) put data on the primary.
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--writeback-ms', '600000', '--cache-mb', '16'],
    });
    for (let i = 0; i < 3; i++) writers.push(startWriter(path.join(t.dirs.mnt!, `w${i}`), 1000 + i));
    // Let them run until there is a fair amount of acknowledged data, then kill the server mid-stream.
    const until = Date.now() + 8000;
    while (Date.now() < until && writers.some((w) => w.safe.length < 150))
      await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 137));
    srv.proc.kill('SIGKILL');
    await srv.exited;
    // The writers' next calls fail (ENOTCONN); give them a moment, then make sure they are gone.
    await Promise.race([Promise.all(writers.map((w) => w.exited)), new Promise((r) => setTimeout(r, 5000))]);
    for (const w of writers) w.proc.kill('SIGKILL');
    await Promise.all(writers.map((w) => w.exited));
    await shOk(fusermountUz(t.dirs.mnt!));
    expect(await isMounted(t.dirs.mnt!)).toBe(false);

    let checked = 0;
    for (const [i, w] of writers.entries()) {
      expect(w.safe.length, `writer ${i} acknowledged too few records: ${w.stderr}`).toBeGreaterThanOrEqual(
        10,
      );
      const contents = new Map<string, Buffer>();
      for (const rec of w.safe) {
        const file = path.join(t.dirs.primary!, `w${i}`, rec.file);
        let data = contents.get(file);
        if (!data) {
          data = await fsp.readFile(file).catch(() => Buffer.alloc(0));
          contents.set(file, data);
        }
        const where = `w${i}/${rec.file} [${rec.off}, +${rec.len})`;
        expect(data.length, `${where} is past the end of the primary file`).toBeGreaterThanOrEqual(
          rec.off + rec.len,
        );
        const got = data.subarray(rec.off, rec.off + rec.len);
        expect(got.equals(bytes(rec.len, rec.seed)), `${where} has the wrong bytes`).toBe(true);
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(30);
  });

  it('a new server mounts the same primary after the crash and serves the acknowledged data', async () => {
    srv = await startServer({ primary: t.dirs.primary!, mount: t.dirs.mnt! });
    const w = writers[0]!;
    const rec = w.safe[w.safe.length - 1]!;
    const out = await shOk(
      `dd if='${t.dirs.mnt}/w0/${rec.file}' bs=1 skip=${rec.off} count=${rec.len} iflag=skip_bytes,count_bytes 2>/dev/null | sha256sum`,
    );
    expect(out.split(' ')[0]).toBe(createHash('sha256').update(bytes(rec.len, rec.seed)).digest('hex'));
    expect(await srv.stop()).toBe(0);
  });
});
