import { promises as fsp } from 'node:fs';
import { TwinError } from '../common/errors.js';
import { mirrorLayout, verifyTrees } from '../mirror-driver/index.js';

/** `twinfs verify --primary DIR --mirror DIR`: exit 0 only when every entry matches. */
export async function verifyOffline(a: {
  primary: string;
  mirror: string;
  content: boolean;
  json?: boolean;
}): Promise<number> {
  const layout = mirrorLayout(a.mirror);
  if (!(await fsp.stat(layout.deviceFile).catch(() => undefined)))
    throw new TwinError('ETWIN_MIRROR_FOREIGN', `${layout.root} is not a twinfs mirror (no device.json)`, {
      mirror: layout.root,
    });
  if (!(await fsp.stat(a.primary).catch(() => undefined)))
    throw new TwinError('ETWIN_PRIMARY_MISSING', `primary directory ${a.primary} does not exist`, {
      primary: a.primary,
    });
  const report = await verifyTrees(a.primary, layout.data, { content: a.content, exactTimes: true });
  if (a.json) process.stdout.write(JSON.stringify(report) + '\n');
  else {
    for (const d of report.differences)
      process.stdout.write(
        `${d.kind.padEnd(18)} ${d.path}${d.primary !== undefined ? `  primary=${d.primary} mirror=${d.mirror}` : ''}\n`,
      );
    process.stdout.write(
      report.ok
        ? `twinfs: verify: ${report.checked} entries match\n`
        : `twinfs: verify: ${report.differences.length} difference(s) in ${report.checked} entries\n`,
    );
  }
  return report.ok ? 0 : 1;
}
