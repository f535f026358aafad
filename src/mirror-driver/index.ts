export { mirrorLayout } from './device.js';
export {
  defaultStateDir,
  MirrorDriver,
  type MirrorDriverOptions,
  type MirrorStatus,
  type PairState,
  type ResyncResult,
  type SplitInfo,
} from './mirror-driver.js';
export type { Selector } from './split-tracker.js';
export { type Difference, type VerifyReport, verifyTrees } from './verify.js';
