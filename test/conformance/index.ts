/**
 * `twinfs/conformance`: the backup-target conformance suite and a harness that runs a plugin
 * folder in a real plugin host. For vitest; see docs/plugins.md ("Testing a target").
 */

export * as fixtures from './fixtures.js';
export { type LoadedPlugin, type LoadPluginOptions, loadTargetPlugin } from './plugin-harness.js';
export {
  type ConformanceOptions,
  describeTargetConformance,
  type TargetFixture,
} from './target-conformance.js';
