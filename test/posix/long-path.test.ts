import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PATH_MAX, underRoot } from '../../src/posix/long-path.js';

const NAME = 200;

/**
 * underRoot (src/posix/long-path.ts): backing paths past PATH_MAX reached through a descriptor
 * of their parent, opened one component at a time without following symlinks. Directories are
 * made here with mkdir -p from inside the tree (the test process cannot chdir in a worker).
 */
describe('underRoot: paths of PATH_MAX bytes and more under a root', () => {
  let root: string;
  let outside: string;
  const comps = Array.from({ length: 24 }, (_, i) => String.fromCharCode(97 + i).repeat(NAME));
  const deep = `/${comps.join('/')}`;
  beforeAll(async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-long-'));
    outside = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-outside-'));
    // mkdir one level at a time through the helper itself is what is tested; build with a shell.
    const r = spawnSync('bash', [
      '-c',
      `cd '${root}' && for c in ${comps.join(' ')}; do mkdir $c && cd $c; done`,
    ]);
    expect(r.status).toBe(0);
  });
  afterAll(async () => {
    // GNU rm walks by descriptors; Node's recursive rm stops at ENAMETOOLONG.
    spawnSync('rm', ['-rf', root, outside]);
  });

  it('a short path is the full path; a long one works and its descriptor is closed after', async () => {
    expect(underRoot(root, ['/x'], (p) => p)).toBe(`${root}/x`);
    expect(Buffer.byteLength(root + deep)).toBeGreaterThan(PATH_MAX);
    expect(() => fs.writeFileSync(`${root}${deep}/f`, 'x')).toThrow(/ENAMETOOLONG/);
    const before = fs.readdirSync('/proc/self/fd').length;
    await underRoot(root, [`${deep}/f`], (p) => fsp.writeFile(p!, 'hello'));
    expect(underRoot(root, [`${deep}/f`], (p) => fs.readFileSync(p!, 'utf8'))).toBe('hello');
    await underRoot(root, [`${deep}/f`, `${deep}/g`], (a, b) => fsp.rename(a!, b!));
    expect(underRoot(root, [`${deep}/g`], (p) => fs.lstatSync(p!).size)).toBe(5);
    await new Promise((r) => setTimeout(r, 50));
    expect(fs.readdirSync('/proc/self/fd').length).toBe(before);
  });

  it('a symlink on the way is never followed: ELOOP or ENOTDIR, nothing written outside', async () => {
    // Replace a directory half way down by a symlink to a copy of the rest outside the root.
    const half = comps.slice(0, 12).join('/');
    const r = spawnSync('bash', [
      '-c',
      `set -e; cd '${outside}'; for c in ${comps.slice(12).join(' ')}; do mkdir $c && cd $c; done; cd '${root}'; cd ${half}; mv ${comps[12]} moved; ln -s '${outside}/${comps[12]}' ${comps[12]}`,
    ]);
    expect(r.status).toBe(0);
    let code: string | undefined;
    try {
      await underRoot(root, [`${deep}/escaped`], (p) => fsp.writeFile(p!, 'x'));
    } catch (err) {
      code = (err as NodeJS.ErrnoException).code;
    }
    expect(['ELOOP', 'ENOTDIR']).toContain(code);
    const found = spawnSync('find', [outside, '-name', 'escaped']);
    expect(found.stdout.toString()).toBe('');
  });

  it('.. is refused (EPERM)', () => {
    const long = `/${comps[0]}/..`.repeat(24) + '/x';
    expect(() => underRoot(root, [long], (p) => p)).toThrow(/EPERM/);
  });
});
