import { randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';

/** Reads the control token from file, creating it (random, mode 0600) when it does not exist. */
export async function loadOrCreateToken(file: string): Promise<string> {
  try {
    const t = (await fsp.readFile(file, 'utf8')).trim();
    if (!t) throw new TwinError('ETWIN_TOKEN', `token file ${file} is empty`, { file });
    return t;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (err instanceof TwinError) throw err;
      throw new TwinError(
        'ETWIN_TOKEN',
        `cannot read token file ${file}: ${(err as NodeJS.ErrnoException).code}`,
        { file },
      );
    }
  }
  // Directories we create hold a secret: owner only (the server runs with umask 0).
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const token = randomBytes(32).toString('hex');
  try {
    await fsp.writeFile(file, token + '\n', { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // Another server created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readToken(file);
    throw new TwinError(
      'ETWIN_TOKEN',
      `cannot create token file ${file}: ${(err as NodeJS.ErrnoException).code}`,
      { file },
    );
  }
  return token;
}

/** Reads an existing token file (the client side never creates one). */
export async function readToken(file: string): Promise<string> {
  try {
    const t = (await fsp.readFile(file, 'utf8')).trim();
    if (t) return t;
  } catch (err) {
    throw new TwinError(
      'ETWIN_TOKEN',
      `cannot read token file ${file}: ${(err as NodeJS.ErrnoException).code}`,
      { file },
    );
  }
  throw new TwinError('ETWIN_TOKEN', `token file ${file} is empty`, { file });
}

export function tokensEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
