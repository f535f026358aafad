import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';

/**
 * Token files: a secret that opens the control channel, so they are treated like ssh private
 * keys: created 0600 in a 0700 directory, and refused when group or others may read or write
 * them (ETWIN_TOKEN_PERMISSIONS), on the server and on the client alike.
 */

/** Reads the control token from file, creating it (random, mode 0600) when it does not exist. */
export async function loadOrCreateToken(file: string): Promise<string> {
  try {
    return await readToken(file);
  } catch (err) {
    if (!(err instanceof TwinError) || err.data.errno !== 'ENOENT') throw err;
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
      { file, errno: (err as NodeJS.ErrnoException).code },
    );
  }
  return token;
}

/**
 * Reads an existing token file (the client side never creates one). The mode is checked on the
 * open descriptor, so a file swapped between the check and the read cannot slip through.
 */
export async function readToken(file: string): Promise<string> {
  let text: string;
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(file, 'r');
    const st = await fh.stat();
    if (!st.isFile())
      throw new TwinError('ETWIN_TOKEN', `token file ${file} is not a regular file`, { file });
    checkTokenMode(file, st.mode);
    // The first line: a token file may end with a newline or carry a comment after it.
    text = (await fh.readFile('utf8')).trim().split('\n')[0]!.trim();
  } catch (err) {
    if (err instanceof TwinError) throw err;
    const errno = (err as NodeJS.ErrnoException).code;
    throw new TwinError('ETWIN_TOKEN', `cannot read token file ${file}: ${errno}`, { file, errno });
  } finally {
    await fh?.close().catch(() => undefined);
  }
  if (!text) throw new TwinError('ETWIN_TOKEN', `token file ${file} is empty`, { file });
  return text;
}

/** Refuses a token file that group or others may access (what ssh does for private keys). */
export function checkTokenMode(file: string, mode: number): void {
  if ((mode & 0o077) === 0) return;
  const octal = (mode & 0o777).toString(8).padStart(4, '0');
  throw new TwinError(
    'ETWIN_TOKEN_PERMISSIONS',
    `token file ${file} has mode ${octal}: group or others can access it; run chmod 600 ${file}`,
    { file, mode: octal },
  );
}

/**
 * Compares a presented token with the expected one in constant time: both are hashed first, so
 * neither the content nor the length of the secret shows in the time taken.
 */
export function tokensEqual(presented: string, expected: string): boolean {
  const x = createHash('sha256').update(presented, 'utf8').digest();
  const y = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(x, y);
}
