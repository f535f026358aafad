import * as fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { errnoCode } from '../common/errors.js';

/**
 * Opens file with flags plus O_NOATIME, or without it where the kernel refuses it (EPERM: only
 * the file's owner or root may ask): a backup must not change what the next one records (the
 * copy's atime), and a reader that may not ask still reads.
 */
export function openNoAtime(file: string, flags: number): Promise<FileHandle> {
  return fs.promises
    .open(file, flags | fs.constants.O_NOATIME)
    .catch((err) => (errnoCode(err) === 'EPERM' ? fs.promises.open(file, flags) : Promise.reject(err)));
}
