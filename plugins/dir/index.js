// @ts-check
import { DirectoryStore } from './directory-store.js';

/**
 * The directory target plugin: `dir:/backups`. It gives the host an object store on a
 * directory; the host keeps a repository in it (docs/repository.md). Written only against the
 * public plugin API.
 * @param {import('twinfs').PluginContext} context
 */
export function activate(context) {
  const { twinfs } = context;
  context.subscriptions.push(
    twinfs.registerBackupTarget('dir', {
      openStore: (location, opts) => DirectoryStore.open(location, opts, twinfs),
    }),
  );
}
