export { mirrorLayout } from './device.js';
export {
  type MirrorDriverOptions,
  MirrorDriver,
  type MirrorStatus,
  type PairState,
  type ResyncResult,
  type SplitInfo,
  defaultStateDir,
} from './mirror-driver.js';
export { type Selector } from './split-tracker.js';
export { type Difference, type VerifyReport, verifyTrees } from './verify.js';
