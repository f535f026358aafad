export type { Change, ChangeSink, GatePass, WriteGate } from './change-sink.js';
export { nullSink } from './change-sink.js';
export { TwinFs, type TwinFsOptions, type TwinFsStatus } from './filesystem.js';
export { isMountPoint, preflight } from './mount-checks.js';
export { forceUnmount } from './unmount.js';
export { VolumePaths } from './volume-paths.js';
export { type Inhibition, type InhibitSelector, WriteInhibitor } from './write-inhibitor.js';
export { type CacheStats, WritebackCache } from './writeback-cache.js';
