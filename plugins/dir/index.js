// @ts-check
import { DirectoryTarget } from './directory-target.js';

/**
 * The directory target plugin: `dir:/backups`. Written only against the public plugin API.
 * @param {import('twinfs').PluginContext} context
 */
export function activate(context) {
  const { twinfs } = context;
  context.subscriptions.push(
    twinfs.registerBackupTarget('dir', { open: (location) => DirectoryTarget.open(location, twinfs) }),
  );
}
