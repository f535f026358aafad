// @ts-check
import { createS3Client } from './s3-client.js';
import { S3Store } from './s3-store.js';

/**
 * The S3 target plugin: `s3:bucket/prefix` on AWS or any S3-compatible store. It gives the host
 * an object store under the prefix; the host keeps a repository in it (docs/repository.md),
 * encrypted unless created with `twinfs init --no-encrypt`. Settings come from the plugin
 * configuration, else from the standard AWS_* environment variables.
 * @param {import('twinfs').PluginContext} context
 */
export function activate(context) {
  const { twinfs, configuration: c } = context;
  /** @type {import('@aws-sdk/client-s3').S3Client | undefined} */
  let client;
  context.subscriptions.push(
    twinfs.registerBackupTarget('s3', {
      openStore(location) {
        client ??= createS3Client({
          endpoint: c.get('endpoint'),
          region: c.get('region'),
          forcePathStyle: c.get('forcePathStyle'),
          accessKeyId: c.get('accessKeyId'),
          secretAccessKey: c.get('secretAccessKey'),
          sessionToken: c.get('sessionToken'),
          maxAttempts: c.get('maxAttempts', 5) ?? 5,
        });
        const options = {
          partSize: (c.get('partSizeMiB', 8) ?? 8) * 1024 * 1024,
          queueSize: c.get('queueSize', 4) ?? 4,
          maxConcurrency: c.get('maxConcurrency', 8) ?? 8,
        };
        return S3Store.open(location, client, options, twinfs);
      },
    }),
    { dispose: () => client?.destroy() },
  );
}
