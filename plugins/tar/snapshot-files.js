// @ts-check
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/**
 * Small durable-file helpers shared by the tar target's reader and writer. Every file that
 * makes a snapshot exist is written beside its final name, fsynced, renamed into place, and the
 * directory fsynced, so a crash leaves either the old state or the new one.
 */

/** Snapshot ids become file names: keep them to a safe alphabet. */
export const SNAPSHOT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** @param {string} id */
export function isSafeId(id) {
  return typeof id === 'string' && SNAPSHOT_ID.test(id) && !id.includes('..') && !id.endsWith('.partial');
}

/** @param {string} p */
export async function fsyncPath(p) {
  const fh = await fsp.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes lines (JSON values) to `file` through a temporary file, durably.
 * @param {string} file
 * @param {Iterable<unknown>} lines
 */
export async function writeJsonLines(file, lines) {
  const tmp = `${file}.tmp`;
  const fh = await fsp.open(tmp, 'w', 0o600);
  try {
    let buf = '';
    for (const l of lines) {
      buf += `${JSON.stringify(l)}\n`;
      if (buf.length > 1 << 20) {
        await fh.write(buf);
        buf = '';
      }
    }
    await fh.write(buf);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await fsyncPath(path.dirname(file));
}

/**
 * Reads a JSON-lines file: its first value and the rest.
 * @param {string} file
 * @returns {Promise<{ head: any, rest: any[] }>}
 */
export async function readJsonLines(file) {
  const text = await fsp.readFile(file, 'utf8');
  const lines = text.split('\n').filter((l) => l.length > 0);
  return { head: JSON.parse(lines[0] ?? '{}'), rest: lines.slice(1).map((l) => JSON.parse(l)) };
}

/**
 * The first line of a file, without reading the rest.
 * @param {string} file
 */
export async function readFirstLine(file) {
  const fh = await fsp.open(file, 'r');
  try {
    let text = '';
    const buf = Buffer.alloc(64 * 1024);
    for (let pos = 0; ; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) return text;
      text += buf.subarray(0, bytesRead).toString('utf8');
      const i = text.indexOf('\n');
      if (i >= 0) return text.slice(0, i);
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

/** @param {string} p */
export async function exists(p) {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}
