import { promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import S3rver from 's3rver';

/**
 * A real S3-compatible server on loopback for the s3 target's tests: s3rver (npm), in this
 * process, storing in a temporary folder; plus a small HTTP proxy in front of it that counts
 * requests and can fail them on demand (503 SlowDown), to prove multipart uploads and retries.
 */
export interface S3Fixture {
  /** The proxy's URL: what the plugin is configured with. */
  endpoint: string;
  /** The server's own URL (no proxy). */
  direct: string;
  bucket: string;
  /** Requests seen by the proxy: METHOD path?query. */
  requests: string[];
  /** Fails (503 SlowDown) the next n requests. */
  failNext(n: number): void;
  close(): Promise<void>;
}

export const S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export async function startS3(bucket = 'twinfs-test'): Promise<S3Fixture> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    directory: dir,
    silent: true,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const { port } = (await server.run()) as AddressInfo;
  const requests: string[] = [];
  let failures = 0;
  const proxy = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    if (failures > 0) {
      failures--;
      req.resume();
      res.writeHead(503, { 'content-type': 'application/xml' });
      res.end('<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>');
      return;
    }
    const up = http.request(
      { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const proxyPort = (proxy.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${proxyPort}`,
    direct: `http://127.0.0.1:${port}`,
    bucket,
    requests,
    failNext(n) {
      failures = n;
    },
    async close() {
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
      await server.close();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}
