// @ts-check

import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsCommand,
  ListPartsCommand,
  PutObjectCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { s3Error } from './s3-client.js';

/** @typedef {import('twinfs').TwinfsApi} TwinfsApi */
/** @typedef {import('twinfs').ObjectInfo} ObjectInfo */

const COMPONENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

/**
 * @typedef {object} S3StoreOptions
 * @property {number} partSize objects larger than this are uploaded in parts of this size
 * @property {number} queueSize parts in flight per object
 * @property {number} [maxConcurrency] requests in flight at once, whatever the repository asks
 */

/**
 * At most `limit` requests in flight; the others wait in order. A multipart upload holds as many
 * slots as parts it sends at once.
 */
export class RequestLimiter {
  /** @param {number} limit */
  constructor(limit) {
    this.limit = Math.max(1, limit);
    this.held = 0;
    /** @type {Array<{ n: number, go: () => void }>} */
    this.waiting = [];
  }

  /**
   * @template T
   * @param {number} n slots (at most the limit)
   * @param {() => Promise<T>} fn
   * @returns {Promise<T>}
   */
  async run(n, fn) {
    const want = Math.min(n, this.limit);
    if (this.waiting.length || this.held + want > this.limit)
      await new Promise((go) => this.waiting.push({ n: want, go: () => go(undefined) }));
    else this.held += want;
    try {
      return await fn();
    } finally {
      this.held -= want;
      while (this.waiting.length && this.held + /** @type {any} */ (this.waiting[0]).n <= this.limit) {
        const w = /** @type {{ n: number, go: () => void }} */ (this.waiting.shift());
        this.held += w.n;
        w.go();
      }
    }
  }
}

/**
 * The object store of the s3 target (`s3:bucket/prefix`): one S3 object per repository object,
 * under the prefix. The host keeps a repository in it (docs/repository.md): packs of chunks,
 * indexes and snapshot objects, none of whose keys say anything of the files backed up.
 *
 * A PUT is atomic (the object appears whole or not at all); an object above the part size goes
 * up as a multipart upload, which is invisible until completed. Listing uses ListObjects (v1)
 * with markers: every S3-compatible store has it, and it pages without the continuation tokens
 * some of them get wrong.
 */
export class S3Store {
  /** A fresh prefix becomes a repository on the first backup, as an empty dir: does. */
  initOnFirstUse = true;
  /** Anything in a bucket may be read by whoever runs the store: encrypted unless told not to. */
  defaultEncrypted = true;

  /**
   * @param {import('@aws-sdk/client-s3').S3Client} client
   * @param {string} bucket
   * @param {string} prefix '' or 'a/b' (no slashes at either end)
   * @param {S3StoreOptions} options
   * @param {TwinfsApi} api
   */
  constructor(client, bucket, prefix, options, api) {
    this.client = client;
    this.bucket = bucket;
    this.prefix = prefix;
    this.options = options;
    this.api = api;
    this.spec = `s3:${bucket}${prefix ? `/${prefix}` : ''}`;
    this.limiter = new RequestLimiter(options.maxConcurrency ?? 8);
  }

  /**
   * One request, within the limit.
   * @param {any} command
   * @returns {Promise<any>}
   */
  send(command) {
    return this.limiter.run(1, () => this.client.send(command));
  }

  /**
   * Checks the spec and that the bucket answers; creates nothing (a bucket is the operator's).
   * @param {string} location `bucket/prefix`
   * @param {import('@aws-sdk/client-s3').S3Client} client
   * @param {S3StoreOptions} options
   * @param {TwinfsApi} api
   */
  static async open(location, client, options, api) {
    const slash = location.indexOf('/');
    const bucket = slash < 0 ? location : location.slice(0, slash);
    const prefix = slash < 0 ? '' : location.slice(slash + 1).replace(/^\/+|\/+$/g, '');
    const why = bucketNameProblem(bucket);
    if (why) throw api.errors.failed(`s3: "${bucket}" is not a bucket name: ${why} (s3:BUCKET/PREFIX)`);
    if (prefix !== '' && prefix.split('/').some((p) => p === '' || p === '.' || p === '..'))
      throw api.errors.failed(`s3: bad prefix "${prefix}"`);
    try {
      await client.send(new HeadBucketCommand({ Bucket: bucket }));
    } catch (err) {
      const e = /** @type {any} */ (err);
      if (e?.$metadata?.httpStatusCode === 404 || e?.name === 'NotFound')
        throw api.errors.failed(`s3: bucket ${bucket} does not exist`);
      throw s3Error(api.errors, err, `s3: cannot reach bucket ${bucket}`);
    }
    return new S3Store(client, bucket, prefix, options, api);
  }

  /** @param {string} name */
  key(name) {
    if (typeof name !== 'string' || !isObjectName(name))
      throw this.api.errors.failed(`bad object name ${JSON.stringify(name)}`);
    return this.prefix ? `${this.prefix}/${name}` : name;
  }

  /**
   * @param {string} name
   * @param {Buffer} data
   */
  async put(name, data) {
    const Key = this.key(name);
    try {
      if (data.length <= this.options.partSize) {
        await this.send(
          new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length }),
        );
        return;
      }
      const queueSize = Math.min(this.options.queueSize, this.limiter.limit);
      await this.limiter.run(queueSize, async () => {
        const upload = new Upload({
          client: this.client,
          params: { Bucket: this.bucket, Key, Body: data },
          partSize: this.options.partSize,
          queueSize,
          leavePartsOnError: false,
        });
        await upload.done();
      });
    } catch (err) {
      throw s3Error(this.api.errors, err, `cannot store ${name} in ${this.spec}`);
    }
  }

  /**
   * Stores a small object only if there is none of that key (ObjectStore.putNew): a PUT with
   * `If-None-Match: *`, which S3 (since 2024-08), MinIO and Ceph's RADOS Gateway answer with 412
   * Precondition Failed when the key exists. A server that ignores the header (s3rver does)
   * stores it anyway: the repository reads the object back and compares (docs/repository.md,
   * "Creating a repository"). A retried PUT whose first attempt landed also gets 412: the caller's
   * read-back tells that apart too (the bytes are its own).
   * @param {string} name
   * @param {Buffer} data
   * @returns {Promise<boolean>}
   */
  async putNew(name, data) {
    const Key = this.key(name);
    try {
      await this.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key,
          Body: data,
          ContentLength: data.length,
          IfNoneMatch: '*',
        }),
      );
      return true;
    } catch (err) {
      const e = /** @type {any} */ (err);
      // 412: the key exists. 409 (S3's ConditionalRequestConflict): another conditional write of
      // the key is in flight; this one stored nothing, and the caller looks for the other's.
      const status = e?.$metadata?.httpStatusCode;
      if (status === 412 || status === 409 || e?.name === 'PreconditionFailed') return false;
      throw s3Error(this.api.errors, err, `cannot store ${name} in ${this.spec}`);
    }
  }

  /**
   * @param {string} name
   * @param {{ start: number, end: number }} [range]
   */
  async get(name, range) {
    const Key = this.key(name);
    try {
      // The slot is held until the body is read: the response streams until then.
      const { r, body } = await this.limiter.run(1, async () => {
        const r = await this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key,
            Range: range ? `bytes=${range.start}-${range.end}` : undefined,
          }),
        );
        return { r, body: Buffer.from(await /** @type {any} */ (r.Body).transformToByteArray()) };
      });
      if (!range) return body;
      // HTTP lets a server answer a Range with more than asked (all of it, with 200; s3rver
      // sends everything for 'bytes=0-0'): cut the range out of what came.
      const m = /bytes (\d+)-(\d+)/.exec(r.ContentRange ?? '');
      const from = m ? Number(m[1]) : 0;
      if (from > range.start)
        throw this.api.errors.transient(
          `${name}: asked for bytes ${range.start}-${range.end}, the server sent from ${from}`,
        );
      const off = range.start - from;
      return body.subarray(off, off + Math.max(0, range.end - range.start + 1));
    } catch (err) {
      throw s3Error(this.api.errors, err, `${name} in ${this.spec}`);
    }
  }

  /** @param {string} name */
  async stat(name) {
    try {
      const r = await this.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(name) }));
      return { name, size: Number(r.ContentLength ?? 0) };
    } catch (err) {
      throw s3Error(this.api.errors, err, `${name} in ${this.spec}`);
    }
  }

  /**
   * Every object whose name starts with prefix (ListObjects v1, paged by marker). Objects that
   * are not repository names (another program's, under the same prefix) are listed too, so a
   * prefix holding anything is never taken for an empty store.
   * @param {string} prefix
   * @returns {Promise<ObjectInfo[]>}
   */
  async list(prefix) {
    const base = this.prefix ? `${this.prefix}/` : '';
    /** @type {ObjectInfo[]} */
    const out = [];
    /** @type {string | undefined} */
    let marker;
    for (;;) {
      let r;
      try {
        r = await this.send(
          new ListObjectsCommand({ Bucket: this.bucket, Prefix: base + prefix, Marker: marker }),
        );
      } catch (err) {
        throw s3Error(this.api.errors, err, `cannot list ${this.spec}`);
      }
      const page = r.Contents ?? [];
      for (const o of page)
        if (o.Key) out.push({ name: o.Key.slice(base.length), size: Number(o.Size ?? 0) });
      if (!r.IsTruncated || !page.length) return out;
      marker = r.NextMarker ?? page[page.length - 1]?.Key;
    }
  }

  /** @param {string} name */
  async delete(name) {
    try {
      await this.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(name) }));
    } catch (err) {
      const e = s3Error(this.api.errors, err, `cannot delete ${name} in ${this.spec}`);
      if (/** @type {any} */ (e).code !== 'ETWIN_TARGET_NOT_FOUND') throw e;
    }
  }

  /**
   * Multipart uploads begun under the prefix and never completed or aborted: a writer killed in
   * the middle of a large put leaves its parts at the store, billed and not listed as objects.
   * Only keys that are repository object names (the same check as `key`) count: another
   * program's uploads beside the repository are left alone. With `abort`, each is aborted.
   * @param {{ abort: boolean }} o
   * @returns {Promise<{ count: number, bytes: number } | undefined>} undefined where the store
   *   does not implement listing uploads (s3rver answers NotImplemented)
   */
  async incompleteWrites(o) {
    const base = this.prefix ? `${this.prefix}/` : '';
    let count = 0;
    let bytes = 0;
    /** @type {string | undefined} */
    let keyMarker;
    /** @type {string | undefined} */
    let uploadIdMarker;
    try {
      for (;;) {
        const r = await this.send(
          new ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: base,
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
          }),
        );
        for (const u of r.Uploads ?? []) {
          const name = u.Key?.slice(base.length) ?? '';
          if (!u.Key || !u.UploadId || !isObjectName(name)) continue;
          count++;
          bytes += await this.partBytes(u.Key, u.UploadId);
          if (o.abort)
            await this.send(
              new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }),
            ).catch((/** @type {unknown} */ err) => {
              // Gone meanwhile (completed or aborted by someone else): nothing left to free.
              if (!isUploadGone(err)) throw err;
            });
        }
        if (!r.IsTruncated) return { count, bytes };
        keyMarker = r.NextKeyMarker;
        uploadIdMarker = r.NextUploadIdMarker;
        if (!keyMarker && !uploadIdMarker) return { count, bytes };
      }
    } catch (err) {
      const e = /** @type {any} */ (err);
      if (e?.name === 'NotImplemented' || e?.$metadata?.httpStatusCode === 501) return undefined;
      throw s3Error(this.api.errors, err, `cannot list or abort unfinished uploads in ${this.spec}`);
    }
  }

  /**
   * The bytes an unfinished upload's parts hold (ListParts, paged).
   * @param {string} Key
   * @param {string} UploadId
   */
  async partBytes(Key, UploadId) {
    let n = 0;
    /** @type {string | undefined} */
    let marker;
    for (;;) {
      const r = await this.send(
        new ListPartsCommand({ Bucket: this.bucket, Key, UploadId, PartNumberMarker: marker }),
      ).catch((/** @type {unknown} */ err) => {
        if (isUploadGone(err)) return undefined;
        throw err;
      });
      if (!r) return n;
      for (const p of r.Parts ?? []) n += Number(p.Size ?? 0);
      if (!r.IsTruncated || !r.NextPartNumberMarker) return n;
      marker = r.NextPartNumberMarker;
    }
  }

  async close() {}
}

/**
 * Whether a multipart call failed because the upload is gone (completed or aborted meanwhile).
 * @param {unknown} err
 */
function isUploadGone(err) {
  const e = /** @type {any} */ (err);
  return e?.name === 'NoSuchUpload' || e?.$metadata?.httpStatusCode === 404;
}

/**
 * Whether a name (relative to the prefix) is a repository object's: components of
 * [A-Za-z0-9_.-] joined by '/'.
 * @param {string} name
 */
function isObjectName(name) {
  const parts = name.split('/');
  return parts.length > 0 && parts.every((p) => COMPONENT.test(p));
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
