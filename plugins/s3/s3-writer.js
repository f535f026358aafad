// @ts-check

import { createHash } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { CopyObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { s3Error } from './s3-client.js';

/** @typedef {import('./s3-target.js').S3Target} S3Target */
/** @typedef {import('./s3-target.js').IndexEntry} IndexEntry */
/** @typedef {import('twinfs').EntryMeta} EntryMeta */

/** CopyObject copies up to 5 GiB in one request; larger files are streamed through instead. */
const MAX_COPY = 5 * 1024 ** 3;

/**
 * Fills one snapshot: every file one object, uploaded whole (lib-storage's Upload: a single PUT
 * below the part size, a multipart upload above it, aborted on failure so nothing partial
 * remains). Directories and symlinks live in the index only.
 */
export class S3SnapshotWriter {
  /**
   * @param {S3Target} target
   * @param {import('twinfs').SnapshotMeta} meta
   */
  constructor(target, meta) {
    this.target = target;
    this.api = target.api;
    this.meta = meta;
    this.snapshotId = meta.snapshotId;
    /** @type {'open' | 'committing' | 'committed' | 'aborted'} */
    this.state = 'open';
    /** @type {Map<string, IndexEntry>} */
    this.entries = new Map();
    /** What each path is, to refuse storing below a file or a symlink. @type {Map<string, IndexEntry['type']>} */
    this.types = new Map();
    /** Operations in flight (commit and abort wait for them). @type {Set<Promise<unknown>>} */
    this.inflight = new Set();
    /** @type {Set<Upload>} */
    this.uploads = new Set();
  }

  /**
   * @param {string} p
   * @param {import('node:stream').Readable} data
   * @param {EntryMeta} _meta
   * @param {{ signal?: AbortSignal }} [opts]
   */
  putFile(p, data, _meta, opts = {}) {
    return this.op(`put ${p}`, p, 'file', async (parts) => {
      const digest = createHash('sha256');
      let bytes = 0;
      const body = new PassThrough({ highWaterMark: 1 << 20 });
      const upload = new Upload({
        client: this.target.client,
        params: { Bucket: this.target.bucket, Key: this.target.fileKey(this.snapshotId, parts), Body: body },
        partSize: this.target.options.partSize,
        queueSize: this.target.options.queueSize,
        leavePartsOnError: false,
      });
      this.uploads.add(upload);
      const onAbort = () => void upload.abort().catch(() => undefined);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      const done = upload.done();
      done.catch(() => undefined);
      try {
        if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
        for await (const chunk of data) {
          if (opts.signal?.aborted) throw this.api.errors.failed(`put ${p} cancelled`);
          const b = /** @type {Buffer} */ (chunk);
          digest.update(b);
          bytes += b.length;
          // A failed upload stops reading: wait for room or for its failure, whichever comes first.
          if (!body.write(b)) await Promise.race([new Promise((r) => body.once('drain', r)), done]);
        }
        body.end();
        await done;
      } catch (err) {
        data.destroy();
        // Abort the multipart upload (if one was started) so that no part stays behind.
        await upload.abort().catch(() => undefined);
        body.destroy();
        throw err;
      } finally {
        opts.signal?.removeEventListener('abort', onAbort);
        this.uploads.delete(upload);
      }
      const hash = digest.digest('hex');
      this.entries.set(parts.join('/'), { path: p, type: 'file', size: bytes, hash });
      return { hash, bytes };
    });
  }

  /**
   * Copies the object server-side from the earlier snapshot (no data through the peer).
   * @param {string} p
   * @param {string} fromSnapshotId
   * @param {import('twinfs').ManifestEntry} entry
   */
  reuseFile(p, fromSnapshotId, entry) {
    return this.op(`reuse ${p}`, p, 'file', async (parts) => {
      const idx = await this.target.index(fromSnapshotId);
      const old = idx.byPath.get(parts.join('/'));
      if (
        old?.type !== 'file' ||
        old.size !== entry.size ||
        (entry.hash && old.hash && old.hash !== entry.hash)
      )
        throw this.api.errors.notFound(`${p} in ${fromSnapshotId} is not the file to reuse`);
      if (old.size > MAX_COPY) {
        await this.putFile(p, await this.target.openFile(fromSnapshotId, p), entry);
        return;
      }
      const source = `${this.target.bucket}/${this.target.fileKey(fromSnapshotId, parts)}`;
      try {
        await this.target.client.send(
          new CopyObjectCommand({
            Bucket: this.target.bucket,
            Key: this.target.fileKey(this.snapshotId, parts),
            CopySource: source.split('/').map(encodeURIComponent).join('/'),
          }),
        );
      } catch (err) {
        throw s3Error(this.api.errors, err, `reuse ${p} from ${fromSnapshotId}`);
      }
      this.entries.set(parts.join('/'), { path: p, type: 'file', size: old.size, hash: old.hash });
    });
  }

  /**
   * @param {string} p
   * @param {EntryMeta} _meta
   */
  putDir(p, _meta) {
    return this.op(`mkdir ${p}`, p, 'dir', async (parts) => {
      if (parts.length) this.entries.set(parts.join('/'), { path: p, type: 'dir', size: 0 });
    });
  }

  /**
   * @param {string} p
   * @param {string} linkTarget
   * @param {EntryMeta} _meta
   */
  putSymlink(p, linkTarget, _meta) {
    return this.op(`symlink ${p}`, p, 'symlink', async (parts) => {
      this.entries.set(parts.join('/'), { path: p, type: 'symlink', size: 0, target: linkTarget });
    });
  }

  /** @param {import('twinfs').SnapshotManifest} manifest */
  async commit(manifest) {
    if (this.state !== 'open') throw this.api.errors.failed(`snapshot ${this.snapshotId} is ${this.state}`);
    if (manifest.meta.snapshotId !== this.snapshotId)
      throw this.api.errors.failed('the manifest names another snapshot');
    if (this.inflight.size)
      throw this.api.errors.failed(`commit while ${this.inflight.size} puts are in flight`);
    this.state = 'committing';
    try {
      await this.target.putLines(
        `${this.target.snapshotPrefix(this.snapshotId)}index.jsonl`,
        this.entries.values(),
      );
      const { entries, ...head } = manifest;
      // The commit point: the snapshot exists once its manifest object does.
      await this.target.putLines(
        this.target.key(`manifests/${this.snapshotId}@${manifest.meta.time}.jsonl`),
        [head, ...entries],
      );
      this.state = 'committed';
    } catch (err) {
      this.state = 'open';
      throw s3Error(this.api.errors, err, `commit of snapshot ${this.snapshotId} failed`);
    }
  }

  async abort() {
    if (this.state === 'committed' || this.state === 'aborted') return;
    this.state = 'aborted';
    for (const u of this.uploads) await u.abort().catch(() => undefined);
    await Promise.allSettled([...this.inflight]);
    await this.target.deletePrefix(this.target.snapshotPrefix(this.snapshotId)).catch(() => undefined);
  }

  // ---- internals --------------------------------------------------------------------------------

  /**
   * Checks the path and the writer's state, then runs fn (tracked for commit/abort).
   * @template T
   * @param {string} what
   * @param {string} p
   * @param {IndexEntry['type']} type
   * @param {(parts: string[]) => Promise<T>} fn
   * @returns {Promise<T>}
   */
  async op(what, p, type, fn) {
    const parts = this.api.volumePathParts(p);
    if (parts.length === 0 && type !== 'dir') throw this.api.errors.pathEscape(`${what}: "/" is not a file`);
    if (this.state !== 'open')
      throw this.api.errors.failed(`${what}: snapshot ${this.snapshotId} is ${this.state}`);
    this.claim(parts, type, what);
    const run = fn(parts);
    this.inflight.add(run);
    try {
      return await run;
    } catch (err) {
      if (type === 'file') this.types.delete(parts.join('/'));
      throw s3Error(this.api.errors, err, what);
    } finally {
      this.inflight.delete(run);
    }
  }

  /**
   * Records `parts` as `type`, refusing a path below a file or a symlink and a change of type.
   * @param {string[]} parts
   * @param {IndexEntry['type']} type
   * @param {string} what
   */
  claim(parts, type, what) {
    for (let i = 1; i < parts.length; i++) {
      const up = parts.slice(0, i).join('/');
      const t = this.types.get(up);
      if (t === 'symlink' || t === 'file')
        throw this.api.errors.pathEscape(`${what}: /${up} is a ${t}; refusing to store anything below it`);
      if (!t) this.types.set(up, 'dir');
    }
    const key = parts.join('/');
    const had = this.types.get(key);
    if (had && (had !== type || type === 'symlink'))
      throw this.api.errors.failed(`${what}: /${key} is already stored as a ${had}`);
    this.types.set(key, type);
  }
}
