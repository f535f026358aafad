import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, ListObjectsCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';

/**
 * An S3-compatible server on loopback for the s3 target's tests, behind a small HTTP proxy that
 * counts requests and can fail them on demand (503 SlowDown), to prove multipart uploads and
 * retries. The server is
 * - the store named by the standard environment when AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL is
 *   set (with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION): real S3, MinIO, Ceph's RADOS
 *   Gateway ... (the bucket, TWINFS_S3_TEST_BUCKET or 'twinfs-test', is created if missing);
 * - or the store passed as `upstream` (the RADOS Gateway of scripts/ceph-rgw.sh);
 * - else s3rver (npm), in this process, storing in a temporary folder.
 */
export interface S3Fixture {
  /** The proxy's URL: what the plugin is configured with. */
  endpoint: string;
  /** The server's own URL (no proxy). */
  direct: string;
  bucket: string;
  credentials: S3Credentials;
  region: string;
  /** Which server answers. */
  server: 's3rver' | 'external';
  /** Requests seen by the proxy: METHOD path?query. */
  requests: string[];
  /** Requests the proxy holds open now, and the most at once since the last reset. */
  inFlight: { now: number; peak: number; reset(): void };
  /** Fails (503 SlowDown) the next n requests. */
  failNext(n: number): void;
  /** The keys stored under a prefix (a signed listing straight from the server). */
  listKeys(prefix: string): Promise<string[]>;
  /** An object's bytes, straight from the server. */
  getObject(key: string): Promise<Buffer>;
  close(): Promise<void>;
}

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

/** An S3-compatible store that is already running. */
export interface S3Store {
  endpoint: string;
  credentials: S3Credentials;
  region?: string;
}

const S3RVER_CREDENTIALS: S3Credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

/** The store the standard AWS_* environment names, if it names an endpoint and keys. */
export function s3StoreFromEnv(env: NodeJS.ProcessEnv = process.env): S3Store | undefined {
  const endpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL;
  if (!endpoint) return undefined;
  const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey } = env;
  if (!accessKeyId || !secretAccessKey)
    throw new Error(
      `${endpoint} is set for the s3 tests, but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not`,
    );
  return {
    endpoint,
    credentials: { accessKeyId, secretAccessKey },
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION,
  };
}

/** A client for the tests' own requests (the plugin makes its own). */
export function s3Client(store: S3Store): S3Client {
  return new S3Client({
    endpoint: store.endpoint,
    region: store.region ?? 'us-east-1',
    forcePathStyle: true,
    // A copy: the SDK marks the object it is given (\$source).
    credentials: { ...store.credentials },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

export async function startS3(
  bucket = process.env.TWINFS_S3_TEST_BUCKET || 'twinfs-test',
  upstream: S3Store | undefined = s3StoreFromEnv(),
): Promise<S3Fixture> {
  let store: S3Store;
  let stopServer: () => Promise<void>;
  if (upstream) {
    store = upstream;
    const c = s3Client(store);
    try {
      await c.send(new CreateBucketCommand({ Bucket: bucket }));
    } catch (err) {
      if ((err as Error).name !== 'BucketAlreadyOwnedByYou') throw err;
    } finally {
      c.destroy();
    }
    stopServer = async () => undefined;
  } else {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-s3rver-'));
    const server = new S3rver({
      address: '127.0.0.1',
      port: 0,
      directory: dir,
      silent: true,
      configureBuckets: [{ name: bucket, configs: [] }],
    });
    const { port } = (await server.run()) as AddressInfo;
    store = { endpoint: `http://127.0.0.1:${port}`, credentials: S3RVER_CREDENTIALS };
    stopServer = async () => {
      await server.close();
      await fsp.rm(dir, { recursive: true, force: true });
    };
  }
  const up = new URL(store.endpoint);
  const requests: string[] = [];
  let failures = 0;
  const inFlight = {
    now: 0,
    peak: 0,
    reset() {
      inFlight.peak = inFlight.now;
    },
  };
  const proxy = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    // Open from the request's arrival until the proxy hands over the byte that completes its
    // response. Not until res's 'close': the client and this proxy share one process, so the
    // client can read the whole response, release its slot and send the next request before
    // the proxy's 'close' runs (the proxy would then see one request too many at once).
    inFlight.now++;
    inFlight.peak = Math.max(inFlight.peak, inFlight.now);
    let open = true;
    const done = () => {
      if (open) inFlight.now--;
      open = false;
    };
    res.once('close', done);
    if (failures > 0) {
      failures--;
      req.resume();
      done();
      res.writeHead(503, { 'content-type': 'application/xml' });
      res.end('<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>');
      return;
    }
    // The Host header is passed on unchanged: it is part of what the client signed.
    const upReq = http.request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        const length = r.headers['content-length'];
        const bodyless = req.method === 'HEAD' || r.statusCode === 204 || r.statusCode === 304;
        const expected = bodyless ? 0 : length === undefined ? undefined : Number(length);
        let seen = 0;
        if (expected === 0) done();
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.on('data', (chunk: Buffer) => {
          seen += chunk.length;
          if (expected !== undefined && seen >= expected) done();
          if (!res.write(chunk)) {
            r.pause();
            res.once('drain', () => r.resume());
          }
        });
        r.on('end', () => {
          done();
          res.end();
        });
        r.on('error', () => res.destroy());
      },
    );
    upReq.on('error', () => res.destroy());
    req.pipe(upReq);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const proxyPort = (proxy.address() as AddressInfo).port;
  const lister = s3Client(store);
  return {
    endpoint: `http://127.0.0.1:${proxyPort}`,
    direct: store.endpoint,
    bucket,
    credentials: { ...store.credentials },
    region: store.region ?? 'us-east-1',
    server: upstream ? 'external' : 's3rver',
    requests,
    inFlight,
    failNext(n) {
      failures = n;
    },
    async listKeys(prefix) {
      const keys: string[] = [];
      let marker: string | undefined;
      for (;;) {
        const r = await lister.send(
          new ListObjectsCommand({ Bucket: bucket, Prefix: prefix, Marker: marker }),
        );
        for (const o of r.Contents ?? []) if (o.Key) keys.push(o.Key);
        if (!r.IsTruncated || !r.Contents?.length) return keys;
        marker = r.Contents.at(-1)?.Key;
      }
    },
    async getObject(key) {
      const r = await lister.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from(await r.Body!.transformToByteArray());
    },
    async close() {
      lister.destroy();
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
      await stopServer();
    },
  };
}

/** A prefix no other run shares (the bucket may be a real one, kept between runs). */
export const uniquePrefix = (name: string): string => `${name}-${randomUUID()}`;
