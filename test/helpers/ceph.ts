import { execFile } from 'node:child_process';
import * as path from 'node:path';
import type { S3Store } from '../plugins/s3-fixture.js';
import { ROOT } from './server.js';

const SCRIPT = path.join(ROOT, 'scripts/ceph-rgw.sh');

/** A one-node Ceph cluster with its RADOS Gateway, started by scripts/ceph-rgw.sh. */
export interface RgwCluster extends S3Store {
  region: string;
  /** The cluster's directory (config, logs, daemons' data). */
  dir: string;
  /** Stops every daemon of the cluster and removes its directory. */
  stop(): Promise<void>;
}

function run(args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      'bash',
      [SCRIPT, ...args],
      { timeout: timeoutMs, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`scripts/ceph-rgw.sh ${args[0]} failed: ${err.message}\n${stderr}`));
        else resolve({ stdout, stderr });
      },
    );
  });
}

/**
 * Starts the cluster (the script bounds its own start-up by timeoutSec and tears down what it
 * started when it fails) and returns the gateway's endpoint and S3 keys.
 */
export async function startRgw(timeoutSec = 60): Promise<RgwCluster> {
  // --watch: should this process die before its teardown, the cluster stops all the same.
  const { stdout } = await run(
    ['start', '--timeout', String(timeoutSec), '--watch', String(process.pid)],
    (timeoutSec + 15) * 1000,
  );
  const env: Record<string, string> = {};
  for (const m of stdout.matchAll(/^export ([A-Z_0-9]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  const dir = env.CEPH_RGW_DIR;
  if (!dir || !env.AWS_ENDPOINT_URL || !env.AWS_ACCESS_KEY_ID || !env.AWS_SECRET_ACCESS_KEY)
    throw new Error(`scripts/ceph-rgw.sh start printed no endpoint and keys: ${stdout}`);
  return {
    dir,
    endpoint: env.AWS_ENDPOINT_URL,
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
    region: env.AWS_REGION ?? 'us-east-1',
    async stop() {
      await run(['stop', '--dir', dir], 30_000);
    },
  };
}
