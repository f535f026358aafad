import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  hkdfSync,
  randomBytes,
  scrypt as scryptCb,
} from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { TwinError } from '../common/errors.js';

/**
 * The repository's keys and its two sealing schemes (docs/repository.md): a per-pack subkey
 * with counter nonces for blobs, a per-object subkey with nonce 0 for index and snapshot
 * objects. Both subkeys come from HKDF over a random 32-byte salt stored with the object, so
 * no key ever meets a random nonce and nonce reuse cannot happen at any object count.
 */

/** Bytes of an AES-GCM tag after each sealed blob or object. */
export const TAG = 16;
export const SALT = 32;

export interface KeyFile {
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  /** base64: nonce(12) || AES-256-GCM(master key) || tag(16). */
  wrapped: string;
}

/** Encryption keys of an encrypted repository; null members: not encrypted. */
export class RepoKeys {
  private constructor(
    readonly encKey: Buffer | null,
    private readonly macKey: Buffer | null,
  ) {}

  static plain(): RepoKeys {
    return new RepoKeys(null, null);
  }

  static fromMaster(master: Buffer): RepoKeys {
    return new RepoKeys(master.subarray(0, 32), master.subarray(32, 64));
  }

  get encrypted(): boolean {
    return this.encKey !== null;
  }

  /** The master key (encKey || macKey) for a worker thread (fromMaster there); null: plain. */
  material(): Buffer | null {
    return this.encKey && this.macKey ? Buffer.concat([this.encKey, this.macKey]) : null;
  }

  /** A blob's id: SHA-256 of the plaintext, keyed (HMAC) in an encrypted repository. */
  blobId(plain: Buffer): string {
    return this.idOfDigest(createHash('sha256').update(plain).digest());
  }

  /** The id of content whose SHA-256 is already known (a file that is one chunk). */
  idOfDigest(sha256: Buffer): string {
    return this.macKey
      ? createHmac('sha256', this.macKey).update(sha256).digest('hex')
      : sha256.toString('hex');
  }

  /** A name that hides what it names (snapshot ids) in an encrypted repository. */
  hideName(kind: string, name: string): string {
    return this.macKey ? createHmac('sha256', this.macKey).update(`${kind}:${name}`).digest('hex') : name;
  }

  /**
   * A digest of local bytes this repository vouches for (the peer's index cache): HMAC-SHA-256
   * with macKey in an encrypted repository (bytes of another key or forged without it fail),
   * SHA-256 otherwise (damage only).
   */
  digest(kind: string, data: Uint8Array): Buffer {
    const h = this.macKey ? createHmac('sha256', this.macKey) : createHash('sha256');
    return h.update(`${kind}\n`).update(data).digest();
  }

  subkey(salt: Buffer, info: string): Buffer {
    if (!this.encKey) throw new Error('not an encrypted repository');
    return Buffer.from(hkdfSync('sha256', this.encKey, salt, info, 32));
  }
}

/** A 96-bit nonce holding a counter (a blob's offset in its pack) in its last 8 bytes. */
export function counterNonce(i: number | bigint): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(BigInt(i), 4);
  return n;
}

export function seal(key: Buffer, nonce: Buffer, plain: Buffer): Buffer {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
}

export function unseal(key: Buffer, nonce: Buffer, data: Buffer, what: string): Buffer {
  if (data.length < TAG) throw corrupt(`${what}: too short to be sealed`);
  try {
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAuthTag(data.subarray(data.length - TAG));
    return Buffer.concat([d.update(data.subarray(0, data.length - TAG)), d.final()]);
  } catch {
    throw corrupt(`${what}: authentication failed (damaged or not of this repository)`);
  }
}

export function corrupt(message: string, data: Record<string, unknown> = {}): TwinError {
  return new TwinError('ETWIN_REPO_CORRUPT', message, data);
}

function scrypt(pass: Buffer, salt: Buffer, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(pass, salt, 32, { N, r, p, maxmem: 256 * N * r + (1 << 20) }, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
}

/**
 * A new master key (encKey || macKey): random, so usable before its key file exists
 * (RepoKeys.fromMaster); wrapMasterKey makes that file.
 */
export function newMasterKey(): Buffer {
  return randomBytes(64);
}

/** The key file of a master key: wrapped with a key derived (scrypt) from the passphrase. */
export async function wrapMasterKey(master: Buffer, passphrase: Buffer): Promise<KeyFile> {
  const salt = randomBytes(32);
  const N = 32768;
  const kek = await scrypt(passphrase, salt, N, 8, 1);
  const nonce = randomBytes(12);
  const wrapped = Buffer.concat([nonce, seal(kek, nonce, master)]);
  return {
    kdf: 'scrypt',
    N,
    r: 8,
    p: 1,
    salt: salt.toString('base64'),
    wrapped: wrapped.toString('base64'),
  };
}

export async function openKeyFile(file: KeyFile, passphrase: Buffer): Promise<RepoKeys> {
  const kek = await scrypt(passphrase, Buffer.from(file.salt, 'base64'), file.N, file.r, file.p);
  const wrapped = Buffer.from(file.wrapped, 'base64');
  try {
    return RepoKeys.fromMaster(unseal(kek, wrapped.subarray(0, 12), wrapped.subarray(12), 'key'));
  } catch {
    throw new TwinError('ETWIN_REPO_PASSWORD', 'wrong passphrase for this repository');
  }
}

let defaultPasswordFile: string | undefined;

/** The command line's --password-file: wins over the environment for this process. */
export function setPasswordFile(file: string | undefined): void {
  defaultPasswordFile = file;
}

/**
 * The passphrase, as restic reads RESTIC_PASSWORD: an explicit file, else TWINFS_PASSWORD,
 * else TWINFS_PASSWORD_FILE. Undefined when none is set.
 */
export async function readPassphrase(passwordFile?: string): Promise<Buffer | undefined> {
  const file =
    passwordFile ??
    defaultPasswordFile ??
    (process.env.TWINFS_PASSWORD ? undefined : process.env.TWINFS_PASSWORD_FILE);
  if (file) {
    let text: Buffer;
    try {
      text = await fsp.readFile(file);
    } catch (err) {
      throw new TwinError(
        'ETWIN_REPO_PASSWORD',
        `cannot read the password file ${file}: ${(err as Error).message}`,
        {
          file,
        },
      );
    }
    const s = text.at(-1) === 0x0a ? text.subarray(0, text.length - 1) : text;
    if (s.length === 0)
      throw new TwinError('ETWIN_REPO_PASSWORD', `the password file ${file} is empty`, { file });
    return s;
  }
  const env = process.env.TWINFS_PASSWORD;
  return env ? Buffer.from(env) : undefined;
}
