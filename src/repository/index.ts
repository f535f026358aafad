import type { ObjectStore } from '../../api/twinfs.js';
import { configOrEmpty, Repository } from './repository.js';
import { RepositoryTarget } from './repository-target.js';

export { setPasswordFile } from './crypto.js';
export { checkRepository, type PruneResult, pruneRepository, type RepoCheckResult } from './maintenance.js';
export { Repository, type SnapshotObject, type StoredEntry } from './repository.js';
export { RepositoryTarget, stampOf } from './repository-target.js';

/** How a command opens a repository target. */
export interface OpenRepositoryOptions {
  /**
   * A backup may create a repository in an empty `dir:` location (saying so); every other
   * command needs an initialised one (ETWIN_REPO_NOT_INITIALISED).
   */
  create?: boolean;
  passwordFile?: string;
  /** Where "created a new repository" goes (default: stderr). */
  onNotice?: (message: string) => void;
}

/** The target contract on the repository in a store (docs/repository.md). */
export async function openRepositoryTarget(
  type: string,
  store: ObjectStore,
  o: OpenRepositoryOptions = {},
): Promise<RepositoryTarget> {
  const opts = {
    passwordFile: o.passwordFile,
    onNotice: o.onNotice ?? ((m: string) => process.stderr.write(`twinfs: ${m}\n`)),
  };
  try {
    // An empty location a backup may create a repository in: created when the first snapshot
    // begins (Repository.open says so), not by merely opening it.
    // (The config first: listing a whole bucket of packs to learn that it is not empty would
    // cost a LIST page per 1,000 objects on every backup.)
    // Key files alone are a creation in progress (configOrEmpty waits for its config).
    if (o.create && store.initOnFirstUse) {
      const at = await configOrEmpty(store);
      if ('empty' in at && at.empty)
        return new RepositoryTarget(
          () => Repository.open(store, { ...opts, create: 'if-empty' }),
          type,
          store,
        );
    }
    const repo = await Repository.open(store, { ...opts, create: 'never' });
    return new RepositoryTarget(repo, type, store);
  } catch (err) {
    await store.close().catch(() => undefined);
    throw err;
  }
}
