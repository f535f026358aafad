// @ts-check
import { TarTarget } from './tar-target.js';

/**
 * The tar target plugin: `tar:/backups` (plain archives) or `tar:/backups?gzip` (block-gzipped,
 * still randomly accessible). Written only against the public plugin API, like any third party's.
 * @param {import('twinfs').PluginContext} context
 */
export function activate(context) {
  const { twinfs, configuration } = context;
  const defaults = {
    gzipLevel: configuration.get('gzipLevel', 6) ?? 6,
    gzipBlockSize: (configuration.get('gzipBlockKiB', 1024) ?? 1024) * 1024,
  };
  context.subscriptions.push(
    twinfs.registerBackupTarget('tar', { open: (location) => TarTarget.open(location, defaults, twinfs) }),
  );
}
