// @ts-check

import { Readable, Transform } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectsCommand,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { s3Error } from './s3-client.js';
import { S3SnapshotWriter } from './s3-writer.js';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */
/**
 * One line of a snapshot's index object: what a path is and which object holds a file.
 * @typedef {{ path: string, type: import('twinfs').EntryType, size: number, hash?: string, target?: string }} IndexEntry
 * @typedef {{ byPath: Map<string, IndexEntry>, dirs: Set<string> }} SnapshotIndex
 */

/** Snapshot ids become key components: keep them to a safe alphabet (no '@', '/'). */
const SNAPSHOT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * @typedef {object} S3TargetOptions
 * @property {number} partSize bytes per multipart part
 * @property {number} queueSize parts in flight per file
 * @property {number} maxConcurrency files in flight per snapshot
 */

/**
 * The S3 target (`s3:bucket/prefix`), for any S3-compatible object store.
 *
 *   PREFIX/snapshots/<id>/files/<volume path>   one object per file, uploaded whole (multipart
 *                                               for large files: invisible until completed)
 *   PREFIX/snapshots/<id>/index.jsonl           what each path is (written at commit)
 *   PREFIX/manifests/<id>@<time>.jsonl          the manifest: the commit record, written last
 *
 * A snapshot exists when its manifest object does; an interrupted backup leaves objects under
 * snapshots/<id>/ that listSnapshots never shows and deleteSnapshot/abort remove. The start
 * time is part of the manifest's key so that listing snapshots is one LIST, not a GET each.
 * Listing uses ListObjects (v1) with markers: every S3-compatible store has it, and it pages
 * without the continuation tokens some of them get wrong.
 */
export class S3Target {
  /** @type {'s3'} */
  id = 's3';

  /**
   * @param {import('@aws-sdk/client-s3').S3Client} client
   * @param {string} bucket
   * @param {string} prefix '' or 'a/b' (no slashes at either end)
   * @param {S3TargetOptions} options
   * @param {TwinfsApi} api
   */
  constructor(client, bucket, prefix, options, api) {
    this.client = client;
    this.bucket = bucket;
    this.prefix = prefix;
    this.options = options;
    this.api = api;
    this.spec = `s3:${bucket}${prefix ? `/${prefix}` : ''}`;
    this.capabilities = {
      rangedReads: true,
      dedup: false,
      atomicRename: true,
      maxConcurrency: options.maxConcurrency,
    };
    /** @type {Map<string, Promise<SnapshotIndex>>} */
    this.indexes = new Map();
  }

  /**
   * @param {string} location `bucket/prefix`
   * @param {import('@aws-sdk/client-s3').S3Client} client
   * @param {S3TargetOptions} options
   * @param {TwinfsApi} api
   */
  static async open(location, client, options, api) {
    const slash = location.indexOf('/');
    const bucket = slash < 0 ? location : location.slice(0, slash);
    const prefix = slash < 0 ? '' : location.slice(slash + 1).replace(/^\/+|\/+$/g, '');
    const why = bucketNameProblem(bucket);
    if (why) throw api.errors.failed(`s3: "${bucket}" is not a bucket name: ${why} (s3:BUCKET/PREFIX)`);
    if (prefix.split('/').some((p) => p === '' || p === '.' || p === '..'))
      throw api.errors.failed(`s3: bad prefix "${prefix}"`);
    try {
      await client.send(new HeadBucketCommand({ Bucket: bucket }));
    } catch (err) {
      const e = /** @type {any} */ (err);
      if (e?.$metadata?.httpStatusCode === 404 || e?.name === 'NotFound')
        throw api.errors.failed(`s3: bucket ${bucket} does not exist`);
      throw s3Error(api.errors, err, `s3: cannot reach bucket ${bucket}`);
    }
    return new S3Target(client, bucket, prefix, options, api);
  }

  /** @param {import('twinfs').SnapshotMeta} meta */
  async beginSnapshot(meta) {
    this.checkId(meta.snapshotId);
    if (!Number.isFinite(meta.time)) throw this.api.errors.failed('snapshot time must be a number');
    if (await this.manifestKey(meta.snapshotId))
      throw this.api.errors.failed(`snapshot ${meta.snapshotId} already exists at ${this.spec}`);
    // Objects of an earlier attempt with this id (never committed) are not ours to keep.
    await this.abortUploads(this.snapshotPrefix(meta.snapshotId));
    await this.deletePrefix(this.snapshotPrefix(meta.snapshotId));
    return new S3SnapshotWriter(this, meta);
  }

  async listSnapshots() {
    /** @type {Array<{ snapshotId: string, time: number }>} */
    const out = [];
    for (const key of await this.listKeys(this.key('manifests/'))) {
      const m = /^(.+)@(\d+(?:\.\d+)?)\.jsonl$/.exec(key.slice(this.key('manifests/').length));
      if (m?.[1] && SNAPSHOT_ID.test(m[1])) out.push({ snapshotId: m[1], time: Number(m[2]) });
    }
    return out.sort((a, b) => a.time - b.time || a.snapshotId.localeCompare(b.snapshotId));
  }

  /**
   * @param {string} snapshotId
   * @returns {Promise<import('twinfs').SnapshotManifest>}
   */
  async readManifest(snapshotId) {
    this.checkId(snapshotId);
    const key = await this.manifestKey(snapshotId);
    if (!key) throw this.api.errors.notFound(`no snapshot ${snapshotId} at ${this.spec}`);
    const lines = await this.getLines(key, `snapshot ${snapshotId}`);
    return { ...JSON.parse(lines[0] ?? '{}'), entries: lines.slice(1).map((l) => JSON.parse(l)) };
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   * @param {{ start?: number, end?: number }} [range]
   * @returns {Promise<Readable>}
   */
  async openFile(snapshotId, p, range = {}) {
    const parts = this.api.volumePathParts(p);
    const e = (await this.index(snapshotId)).byPath.get(parts.join('/'));
    if (e?.type !== 'file') throw this.api.errors.notFound(`${p} is not a file in snapshot ${snapshotId}`);
    const start = Math.max(0, range.start ?? 0);
    const end = Math.min(e.size - 1, range.end ?? e.size - 1);
    if (end < start) return Readable.from([]);
    const whole = start === 0 && end === e.size - 1;
    try {
      const r = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.fileKey(snapshotId, parts),
          Range: whole ? undefined : `bytes=${start}-${end}`,
        }),
      );
      const body = /** @type {Readable} */ (r.Body);
      if (whole) return body;
      // HTTP lets a server answer a Range with more than asked (all of it, with 200; s3rver
      // sends everything for 'bytes=0-0'): cut the range out of what came.
      const m = /bytes (\d+)-(\d+)/.exec(r.ContentRange ?? '');
      const [from, to] = m ? [Number(m[1]), Number(m[2])] : [0, e.size - 1];
      if (from === start && to === end) return body;
      if (from > start || to < end) {
        body.destroy();
        throw this.api.errors.transient(
          `${p}: asked for bytes ${start}-${end}, the server sent ${from}-${to}`,
        );
      }
      const slice = new Slice(start - from, end - start + 1);
      body.on('error', (err) => slice.destroy(err));
      return body.pipe(slice);
    } catch (err) {
      throw s3Error(this.api.errors, err, `${p} in snapshot ${snapshotId}`);
    }
  }

  /**
   * @param {string} snapshotId
   * @param {string} p
   */
  async stat(snapshotId, p) {
    const key = this.api.volumePathParts(p).join('/');
    const idx = await this.index(snapshotId);
    const e = idx.byPath.get(key);
    if (e) return { type: e.type, size: e.type === 'file' ? e.size : 0 };
    if (key === '' || idx.dirs.has(key)) return { type: /** @type {const} */ ('dir'), size: 0 };
    throw this.api.errors.notFound(`${p} is not in snapshot ${snapshotId}`);
  }

  /** @param {string} snapshotId */
  async deleteSnapshot(snapshotId) {
    this.checkId(snapshotId);
    this.indexes.delete(snapshotId);
    // The manifest first: from here on the snapshot does not exist, whatever else fails.
    await this.deletePrefix(this.key(`manifests/${snapshotId}@`));
    await this.abortUploads(this.snapshotPrefix(snapshotId));
    await this.deletePrefix(this.snapshotPrefix(snapshotId));
  }

  async close() {
    this.indexes.clear();
  }

  // ---- internals (the writer uses these too) -------------------------------------------------

  /** @param {string} rel */
  key(rel) {
    return this.prefix ? `${this.prefix}/${rel}` : rel;
  }

  /** @param {string} id */
  snapshotPrefix(id) {
    return this.key(`snapshots/${id}/`);
  }

  /**
   * @param {string} id
   * @param {string[]} parts
   */
  fileKey(id, parts) {
    const k = `${this.snapshotPrefix(id)}files/${parts.join('/')}`;
    if (Buffer.byteLength(k) > 1024)
      throw this.api.errors.failed(`/${parts.join('/')}: the object key would exceed S3's 1024 bytes`);
    return k;
  }

  /** @param {string} id */
  checkId(id) {
    if (typeof id !== 'string' || !SNAPSHOT_ID.test(id) || id.includes('..'))
      throw this.api.errors.failed(`bad snapshot id ${JSON.stringify(id)}`);
  }

  /**
   * The manifest object's key, or undefined when the snapshot is not committed.
   * @param {string} id
   */
  async manifestKey(id) {
    const keys = await this.listKeys(this.key(`manifests/${id}@`));
    return keys.find((k) => k.endsWith('.jsonl'));
  }

  /**
   * Every key under a prefix (ListObjects v1, paged by marker).
   * @param {string} prefix
   */
  async listKeys(prefix) {
    /** @type {string[]} */
    const keys = [];
    /** @type {string | undefined} */
    let marker;
    for (;;) {
      let r;
      try {
        r = await this.client.send(
          new ListObjectsCommand({ Bucket: this.bucket, Prefix: prefix, Marker: marker }),
        );
      } catch (err) {
        throw s3Error(this.api.errors, err, `cannot list ${this.spec}`);
      }
      for (const o of r.Contents ?? []) if (o.Key) keys.push(o.Key);
      if (!r.IsTruncated || !r.Contents?.length) return keys;
      marker = r.NextMarker ?? keys[keys.length - 1];
    }
  }

  /** @param {string} prefix */
  async deletePrefix(prefix) {
    const keys = await this.listKeys(prefix);
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      try {
        const r = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.bucket,
            Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
          }),
        );
        const failed = (r.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
        if (failed.length)
          throw this.api.errors.transient(
            `cannot delete ${failed.length} objects under ${prefix}: ${failed[0]?.Message}`,
          );
      } catch (err) {
        throw s3Error(this.api.errors, err, `cannot delete under ${prefix}`);
      }
    }
  }

  /**
   * Aborts multipart uploads a crashed writer left under a prefix (their parts are stored, and
   * billed, until aborted). Best effort: some S3-compatible stores do not list uploads, and a
   * bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop.
   * @param {string} prefix
   */
  async abortUploads(prefix) {
    try {
      const r = await this.client.send(
        new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: prefix }),
      );
      for (const u of r.Uploads ?? [])
        if (u.Key && u.UploadId)
          await this.client.send(
            new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }),
          );
    } catch {
      // Not supported here, or already gone: the lifecycle rule covers it.
    }
  }

  /**
   * Writes a JSON-lines object whole.
   * @param {string} key
   * @param {Iterable<unknown>} lines
   */
  async putLines(key, lines) {
    let body = '';
    for (const l of lines) body += `${JSON.stringify(l)}\n`;
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentType: 'application/x-ndjson',
        }),
      );
    } catch (err) {
      throw s3Error(this.api.errors, err, `cannot write ${key}`);
    }
  }

  /**
   * @param {string} key
   * @param {string} what
   */
  async getLines(key, what) {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      const text = await /** @type {any} */ (r.Body).transformToString('utf8');
      return String(text)
        .split('\n')
        .filter((l) => l.length > 0);
    } catch (err) {
      throw s3Error(this.api.errors, err, what);
    }
  }

  /**
   * A committed snapshot's index, cached (the last few).
   * @param {string} snapshotId
   * @returns {Promise<SnapshotIndex>}
   */
  index(snapshotId) {
    this.checkId(snapshotId);
    let p = this.indexes.get(snapshotId);
    if (!p) {
      p = this.loadIndex(snapshotId);
      p.catch(() => this.indexes.delete(snapshotId));
      this.indexes.set(snapshotId, p);
      while (this.indexes.size > 4)
        this.indexes.delete(/** @type {string} */ (this.indexes.keys().next().value));
    }
    return p;
  }

  /** @param {string} snapshotId */
  async loadIndex(snapshotId) {
    if (!(await this.manifestKey(snapshotId)))
      throw this.api.errors.notFound(`no snapshot ${snapshotId} at ${this.spec}`);
    const lines = await this.getLines(
      `${this.snapshotPrefix(snapshotId)}index.jsonl`,
      `index of ${snapshotId}`,
    );
    /** @type {Map<string, IndexEntry>} */
    const byPath = new Map();
    const dirs = new Set();
    for (const l of lines) {
      /** @type {IndexEntry} */
      const e = JSON.parse(l);
      // Read back from storage: checked like any path from outside.
      const parts = this.api.volumePathParts(e.path);
      byPath.set(parts.join('/'), e);
      for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
    }
    return { byPath, dirs };
  }
}

/** Skips `skip` bytes, passes `take`, drops the rest. */
class Slice extends Transform {
  /**
   * @param {number} skip
   * @param {number} take
   */
  constructor(skip, take) {
    super();
    this.skip = skip;
    this.remaining = take;
  }

  /**
   * @override
   * @param {Buffer} chunk
   * @param {BufferEncoding} _enc
   * @param {(err?: Error | null) => void} cb
   */
  _transform(chunk, _enc, cb) {
    let c = chunk;
    if (this.skip > 0) {
      const n = Math.min(this.skip, c.length);
      this.skip -= n;
      c = c.subarray(n);
    }
    if (c.length > this.remaining) c = c.subarray(0, this.remaining);
    this.remaining -= c.length;
    if (c.length) this.push(c);
    cb();
  }
}

/**
 * Why a name cannot be an S3 bucket's (the rules of AWS's "Bucket naming rules"), or undefined.
 * @param {string} name
 */
export function bucketNameProblem(name) {
  if (name.length < 3) return `it is ${name.length} character(s) long; a bucket name has 3 to 63`;
  if (name.length > 63) return `it is ${name.length} characters long; a bucket name has 3 to 63`;
  const bad = /[^a-z0-9.-]/.exec(name);
  if (bad) return `"${bad[0]}" is not allowed (only lower-case letters, digits, "." and "-")`;
  if (!/^[a-z0-9]/.test(name) || !/[a-z0-9]$/.test(name))
    return 'it must begin and end with a letter or digit';
  if (name.includes('..')) return 'it may not contain two dots in a row';
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return 'it may not look like an IP address';
  return undefined;
}
