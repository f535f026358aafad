// @ts-check
import { ChecksumTarget } from './checksum-target.js';

/**
 * An example third-party plugin: the `checksum:/DIR` backup target and a `checksum.verify`
 * command. Only `context` is used — no twinfs internals.
 * @param {import('twinfs').PluginContext} context
 */
export function activate(context) {
  const { twinfs, configuration, logger } = context;
  const options = { verifyOnRead: configuration.get('verifyOnRead', true) ?? true };
  context.subscriptions.push(
    twinfs.registerBackupTarget('checksum', {
      open: (location) => ChecksumTarget.open(location, twinfs, options),
    }),
    twinfs.registerCommand('checksum.verify', async (location, snapshotId) => {
      if (!location || !snapshotId) throw new Error('usage: checksum.verify /DIR SNAPSHOT_ID');
      const result = await (await ChecksumTarget.open(location, twinfs, options)).verify(snapshotId);
      if (result.bad.length) logger.warn(`${snapshotId}: ${result.bad.length} files differ from SHA256SUMS`);
      return result;
    }),
  );
}
