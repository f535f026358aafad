import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ControlClient } from '../../src/control/client.js';
import { bytesOf, fsPath, hasRawBytes, nameOf } from '../../src/posix/byte-names.js';
import {
  type ControlFixture,
  expectMirrorSettledExact,
  startControlFixture,
} from '../control/control-fixture.js';
import { FIXTURES as FUSE_FIXTURES } from '../helpers/mounts.js';
import { PYTHON } from '../helpers/posix.js';
import { sh, shOk } from '../helpers/proc.js';
import { type ServerHandle, startServer, tempDirs } from '../helpers/server.js';

/**
 * Names are bytes (docs/architecture.md, "Names are bytes"): a Linux name is any bytes but '/'
 * and NUL, and one that is not UTF-8 (a Latin-1 name from an old system, stress-ng's filename
 * stressor) must be the same name on the mount, the primary, the mirror and in what a backup
 * stores. Before, the FUSE layer and node:fs turned each such byte into U+FFFD: readdir lost the
 * name, the mirror got another one (EF BF BD for the byte), a name of 255 such bytes broke the
 * mirror pair (ENAMETOOLONG) and `rm -r` failed (ENOTEMPTY). Every access to the mount is a child
 * process (fixtures/byte-names.py, stress-ng, rm); the trees are compared byte for byte (hex).
 */
const BYTE_NAMES = path.join(FUSE_FIXTURES, 'byte-names.py');

async function listing(dir: string): Promise<Record<string, unknown[]>> {
  return JSON.parse(await shOk(`${PYTHON} '${BYTE_NAMES}' list '${dir}'`, { timeoutMs: 60_000 }));
}

const hex = (s: string) => Buffer.from(s, 'latin1').toString('hex');

describe('names that are not UTF-8, through a mount with the mirror on', () => {
  let fx: ControlFixture;
  let c: ControlClient;

  beforeAll(async () => {
    fx = await startControlFixture();
    c = await fx.connect();
  }, 60_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('every kind of entry keeps its bytes on the mount, the primary and the mirror', async () => {
    await shOk(`${PYTHON} '${BYTE_NAMES}' make '${fx.mnt}'`, { timeoutMs: 60_000 });
    const mount = await listing(fx.mnt);
    // What the fixture made, by its bytes (a name through U+FFFD would read ef bf bd).
    const want = [
      'b',
      'b/a\xffb',
      'b/caf\xe9',
      'b/dir2\xf7',
      'b/dir2\xf7/in\xfd',
      'b/fifo\xfc',
      'b/hard\xf9',
      'b/renamed\xf8',
      'b/sym\xfa',
      'b/\xed\xa0\x80surrogate',
      `b/${'\xff'.repeat(255)}`,
    ].map(hex);
    expect(Object.keys(mount).sort()).toEqual(want.sort());
    expect(mount[hex('b/sym\xfa')]![2]).toBe(hex('target\xfb\x80'));
    expect(mount[hex('b/hard\xf9')]![1]).toBe(2);
    expect(mount[hex('b/caf\xe9')]![3]).toBe(
      Buffer.from('content of caf\xe9 and more', 'latin1').toString('hex'),
    );
    expect(mount[hex('b/caf\xe9')]![4]).toBe(hex('\xe9value'));
    expect(mount[hex('b/caf\xe9')]![5]).toEqual([hex('user.k'), hex('user.n\xff')]);
    // After the flush (the append above may still be in the server's cache).
    await expectMirrorSettledExact(fx, c, 30_000);
    expect(await listing(fx.primary)).toEqual(mount);
    expect(await listing(fx.mirrorRoot)).toEqual(mount);
    // And every name can be removed through the mount again.
    const rm = await sh(`timeout 60 rm -r '${fx.mnt}/b'`, { timeoutMs: 70_000 });
    expect(rm.code, rm.stderr).toBe(0);
    expect(await listing(fx.mnt)).toEqual({});
    await expectMirrorSettledExact(fx, c, 30_000);
    expect(await listing(fx.mirrorRoot)).toEqual({});
  }, 120_000);

  it("stress-ng's filename stressor: no failure, the directory removable, the mirror exact", async () => {
    const dir = path.join(fx.mnt, 'fn');
    await shOk(`mkdir '${dir}'`, { timeoutMs: 10_000 });
    const r = await sh(
      `cd '${dir}' && timeout -k 5 60 stress-ng --filename 2 --timeout 4 --temp-path '${dir}' --metrics-brief`,
      { timeoutMs: 70_000 },
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const out = r.stdout + r.stderr;
    expect(out).not.toMatch(/fail:|stat succeeded on non-existent/);
    // It ran: its bogo-ops line counts operations.
    expect(out).toMatch(/filename\s+[1-9]\d*\s/);
    const rm = await sh(`timeout 60 rm -r '${dir}'`, { timeoutMs: 70_000 });
    expect(rm.code, rm.stderr).toBe(0);
    await expectMirrorSettledExact(fx, c, 30_000);
    expect(await listing(fx.mirrorRoot)).toEqual({});
  }, 120_000);
});

describe('names that are not UTF-8 on the primary before the server starts', () => {
  let t: Awaited<ReturnType<typeof tempDirs>>;
  let srv: ServerHandle | undefined;

  beforeAll(async () => {
    t = await tempDirs('primary', 'mnt', 'mirror', 'state');
    // Made here, not through a mount: node:fs takes them as Buffers (bytesOf).
    await fsp.mkdir(bytesOf(path.join(t.dirs.primary!, 'old\udce9')));
    await fsp.writeFile(bytesOf(path.join(t.dirs.primary!, 'old\udce9', 'latin\udce9-1')), 'from before');
    srv = await startServer({
      primary: t.dirs.primary!,
      mount: t.dirs.mnt!,
      args: ['--mirror', t.dirs.mirror!, '--state-dir', t.dirs.state!],
    });
  }, 60_000);

  afterAll(async () => {
    await srv?.stop().catch(() => srv?.kill());
    await t?.cleanup();
  });

  it('are listed and read through the mount and copied to the new mirror under the same bytes', async () => {
    const mount = await listing(t.dirs.mnt!);
    expect(Object.keys(mount).sort()).toEqual([hex('old\xe9'), hex('old\xe9/latin\xe9-1')]);
    expect(mount[hex('old\xe9/latin\xe9-1')]![3]).toBe(Buffer.from('from before').toString('hex'));
    expect(await listing(path.join(t.dirs.mirror!, 'data'))).toEqual(mount);
  }, 60_000);
});

describe('the codec (src/posix/byte-names.ts)', () => {
  // A seeded stream of byte strings: UTF-8 text, bytes that are not, and mixtures.
  function* samples(seed: number, n: number): Generator<Buffer> {
    let x = seed >>> 0;
    const next = () => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x;
    };
    const pieces = ['a', 'é', '€', '😀', '\u{10FFFF}', '\uFFFD'].map((s) => Buffer.from(s));
    for (let i = 0; i < n; i++) {
      const parts: Buffer[] = [];
      const len = next() % 12;
      for (let k = 0; k < len; k++) {
        const r = next();
        if (r % 3 === 0) parts.push(pieces[r % pieces.length]!);
        else if (r % 3 === 1) parts.push(Buffer.from([0x80 + (r % 128)]));
        // A prefix of a multi-byte sequence, cut short: never well-formed.
        else parts.push(pieces[1 + (r % 4)]!.subarray(0, 1 + (r % 2)));
      }
      yield Buffer.concat(parts);
    }
  }

  it('every byte string has one string and back (20,000 seeded samples)', () => {
    let raw = 0;
    for (const b of samples(20261206, 20_000)) {
      const s = nameOf(b);
      expect(bytesOf(s).equals(b)).toBe(true);
      if (hasRawBytes(s)) raw++;
      else expect(s).toBe(b.toString('utf8'));
    }
    // Both kinds were drawn.
    expect(raw).toBeGreaterThan(1000);
    expect(raw).toBeLessThan(20_000);
  });

  it('a path without such bytes stays a string for node:fs; one with them becomes its bytes', () => {
    expect(fsPath('/a/é/😀')).toBe('/a/é/😀');
    expect(fsPath('/a/\udcff')).toEqual(Buffer.from([0x2f, 0x61, 0x2f, 0xff]));
    // A surrogate pair whose low half is in U+DC80..U+DCFF is a character, not a byte.
    expect(hasRawBytes('\u{10080}')).toBe(false);
  });
});
