export {
  type BackupEventName,
  type BackupHooks,
  type HookFailurePolicy,
  type PluginSelector,
  pluginSelector,
  runFreezeHooks,
} from './backup-hooks.js';
export {
  type BackupControl,
  type BackupOptions,
  type BackupProgress,
  type BackupResult,
  BackupRun,
  type BackupWarning,
  newSnapshotId,
} from './backup-run.js';
export {
  Catalog,
  defaultCatalogDir,
  type EntryRecord,
  type SnapshotRecord,
  type SnapshotState,
} from './catalog.js';
export { loadSnapshot, pickSnapshot, syncCatalog, targetSnapshots } from './catalog-sync.js';
export { type CheckResult, checkSnapshot } from './check.js';
export { type ForgetResult, forget, type KeepPolicy, parseDuration, planForget } from './forget.js';
export { fuseMountOf, locateMirror, MirrorReader } from './mirror-source.js';
export { loadPeerConfig, type PeerConfig, readToken, selectorFor } from './peer-config.js';
export { PeerDaemon, type PeerEvent } from './peer-daemon.js';
export { type RestoreResult, restore } from './restore.js';
export { checkSnapshotAgainstSource, type SnapshotSourceCheck } from './snapshot-source-check.js';
export { checkAgainstSource, type SourceCheckResult } from './source-check.js';
export * from './target.js';
export { TargetRegistry } from './targets/index.js';
