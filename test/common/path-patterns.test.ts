import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PathPatterns, readPatternFile } from '../../src/common/path-patterns.js';

const match = (patterns: string[], p: string) => PathPatterns.compile(patterns).matches(p);

describe("path patterns (restic's --exclude semantics)", () => {
  it('a pattern without a leading / matches at any depth, one with it only at the root', () => {
    expect(match(['*.log'], '/a/b/c.log')).toBe(true);
    expect(match(['*.log'], '/c.log')).toBe(true);
    expect(match(['*.log'], '/a/c.log.gz')).toBe(false);
    expect(match(['cache/tmp'], '/home/u/cache/tmp')).toBe(true);
    expect(match(['/cache'], '/cache')).toBe(true);
    expect(match(['/cache'], '/home/cache')).toBe(false);
    expect(match(['/home/*/cache'], '/home/u/cache')).toBe(true);
    expect(match(['/home/*/cache'], '/home/u/v/cache')).toBe(false);
    expect(match(['/home/**/cache'], '/home/u/v/cache')).toBe(true);
    expect(match(['.git'], '/src/.git')).toBe(true);
    expect(match(['file?.[ch]'], '/x/file1.c')).toBe(true);
    expect(match(['file?.[ch]'], '/x/file12.c')).toBe(false);
  });

  it('a match of a directory matches everything below it, and trailing slashes are ignored', () => {
    expect(match(['node_modules'], '/app/node_modules/x/index.js')).toBe(true);
    expect(match(['/data/'], '/data/a/b')).toBe(true);
    expect(match(['/data'], '/database')).toBe(false);
  });

  it('!PATTERN re-includes: the last matching pattern decides', () => {
    const p = ['/data', '!/data/keep'];
    expect(match(p, '/data/drop/x')).toBe(true);
    expect(match(p, '/data/keep')).toBe(false);
    expect(match(p, '/data/keep/x')).toBe(false);
    expect(match(['!/data/keep', '/data'], '/data/keep/x')).toBe(true);
  });

  it('find matches the path itself, not what is below a matching directory', () => {
    const p = PathPatterns.compile(['/etc']);
    expect(p.matchesExactly('/etc')).toBe(true);
    expect(p.matchesExactly('/etc/passwd')).toBe(false);
  });

  it('malformed patterns are ETWIN_BAD_PATTERN naming the pattern (and its file)', async () => {
    expect(() => PathPatterns.compile(['[abc'])).toThrow(
      expect.objectContaining({ code: 'ETWIN_BAD_PATTERN' }),
    );
    expect(() => PathPatterns.compile(['!'])).toThrow(
      expect.objectContaining({
        code: 'ETWIN_BAD_PATTERN',
        message: expect.stringMatching(/empty pattern "!"/),
      }),
    );
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-patterns-'));
    try {
      const f = path.join(dir, 'excludes');
      // $VAR and ${VAR} are the file's own syntax (not a template string here).
      const braced = ['$', '{HOME_DIR}/x'].join('');
      await fsp.writeFile(f, `# comment\n  *.tmp  \n\n$HOME_DIR/cache\n${braced}\n[bad\n`);
      expect(await readPatternFile(f, { HOME_DIR: '/home/u' })).toEqual([
        '*.tmp',
        '/home/u/cache',
        '/home/u/x',
        '[bad',
      ]);
      await expect(PathPatterns.load({ patterns: ['*.o'], files: [f] })).rejects.toMatchObject({
        code: 'ETWIN_BAD_PATTERN',
        message: expect.stringContaining(`"[bad" (in ${f})`),
      });
      await expect(PathPatterns.load({ files: [path.join(dir, 'missing')] })).rejects.toMatchObject({
        code: 'ETWIN_USAGE',
      });
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('--iexclude and --iexclude-file patterns match ignoring case; the others still do not', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-patterns-'));
    try {
      const f = path.join(dir, 'iexcludes');
      await fsp.writeFile(f, '*.JPG\n');
      const p = await PathPatterns.load({ patterns: ['/Cache'], ipatterns: ['/TMP'], ifiles: [f] });
      expect(p.matches('/tmp/x')).toBe(true);
      expect(p.matches('/Tmp')).toBe(true);
      expect(p.matches('/photos/a.jpg')).toBe(true);
      expect(p.matches('/photos/a.Jpg')).toBe(true);
      expect(p.matches('/Cache/x')).toBe(true);
      expect(p.matches('/cache/x')).toBe(false);
      expect(p.matches('/photos/a.png')).toBe(false);
      expect(p.patterns).toEqual(['/Cache', '/TMP', '*.JPG']);
      await expect(PathPatterns.load({ ipatterns: ['[x'] })).rejects.toMatchObject({
        code: 'ETWIN_BAD_PATTERN',
      });
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
