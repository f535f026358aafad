import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { TwinError } from '../common/errors.js';

/**
 * The mirror's on-disk layout. The mirror root is the "second storage device":
 *   ROOT/device.json   stable device id and the primary it belongs to
 *   ROOT/data/         the copy of the volume (what a backup peer reads)
 * The driver's journal is kept in the server's state directory, keyed by the device id: a full
 * or failing mirror must not take its own crash record down with it. (`state` is an older
 * location, still accepted as part of a mirror root.)
 */
export interface MirrorLayout {
  root: string;
  data: string;
  state: string;
  deviceFile: string;
}

export function mirrorLayout(root: string): MirrorLayout {
  const r = path.resolve(root);
  return {
    root: r,
    data: path.join(r, 'data'),
    state: path.join(r, 'state'),
    deviceFile: path.join(r, 'device.json'),
  };
}

export interface DeviceRecord {
  deviceId: string;
  /** Identity of the primary this mirror duplicates. */
  volumeId: string;
  primaryPath: string;
  createdAt: string;
  version: 1;
}

const VOLUME_ID_FILE = '.twinfs-volume-id';

/**
 * Opens (or creates) the mirror's device record and checks it belongs to this primary. The
 * primary's identity is a volume id kept in the mirror's and the primary's *parent-less* side:
 * the server's state directory beside the primary (see volumeIdFile). A mirror created for another
 * primary is refused unless adopt is set.
 */
export async function openDevice(
  layout: MirrorLayout,
  volumeId: string,
  primaryPath: string,
  opts: { adopt?: boolean } = {},
): Promise<{ record: DeviceRecord; created: boolean }> {
  await fsp.mkdir(layout.root, { recursive: true });
  let record: DeviceRecord | undefined;
  try {
    record = JSON.parse(await fsp.readFile(layout.deviceFile, 'utf8')) as DeviceRecord;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT')
      throw new TwinError(
        'ETWIN_MIRROR_FOREIGN',
        `mirror ${layout.root}: device.json is unreadable (${code ?? (err as Error).message})`,
        {
          mirror: layout.root,
        },
      );
  }
  if (record && record.volumeId !== volumeId && !opts.adopt)
    throw new TwinError(
      'ETWIN_MIRROR_FOREIGN',
      `mirror ${layout.root} belongs to another primary (${record.primaryPath}, volume ${record.volumeId}); refusing to overwrite it (use --adopt-mirror to take it over)`,
      { mirror: layout.root, owner: record.primaryPath, volumeId: record.volumeId },
    );
  let created = false;
  if (!record || record.volumeId !== volumeId) {
    const entries = await fsp.readdir(layout.root).catch(() => [] as string[]);
    const foreign = entries.filter((e) => !['data', 'state', 'device.json', 'lost+found'].includes(e));
    if (!record && foreign.length > 0 && !opts.adopt)
      throw new TwinError(
        'ETWIN_MIRROR_FOREIGN',
        `mirror ${layout.root} is not empty and is not a twinfs mirror (${foreign.slice(0, 3).join(', ')}...); use an empty directory or --adopt-mirror`,
        { mirror: layout.root },
      );
    record = {
      deviceId: record?.deviceId ?? `twin-${randomUUID()}`,
      volumeId,
      primaryPath,
      createdAt: new Date().toISOString(),
      version: 1,
    };
    await writeFileDurable(layout.deviceFile, JSON.stringify(record, null, 2) + '\n');
    created = true;
  }
  await fsp.mkdir(layout.data, { recursive: true });
  return { record, created };
}

/**
 * The primary's volume id, kept in a file *beside* the primary directory's contents would be
 * visible through the mount, so it lives in the server's state directory, keyed by the primary's
 * real path. Created on first use.
 */
export async function loadVolumeId(stateDir: string, primaryReal: string): Promise<string> {
  await fsp.mkdir(stateDir, { recursive: true });
  const file = path.join(stateDir, VOLUME_ID_FILE);
  let map: Record<string, string> = {};
  try {
    map = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch {
    map = {};
  }
  if (!map[primaryReal]) {
    map[primaryReal] = `vol-${randomUUID()}`;
    await writeFileDurable(file, JSON.stringify(map, null, 2) + '\n');
  }
  return map[primaryReal]!;
}

export async function writeFileDurable(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await fsp.open(tmp, 'w');
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
}
