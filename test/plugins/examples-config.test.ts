import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/cli/config.js';
import { validateConfiguration } from '../../src/plugins/configuration.js';
import { readPluginSettings } from '../../src/plugins/index.js';
import { readManifest } from '../../src/plugins/manifest.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const FILE = path.join(ROOT, 'examples/twinfs.json');

describe('examples/twinfs.json', () => {
  it('is a valid serve config and a valid plugin settings file for the plugins it names', async () => {
    expect(await loadConfig(FILE)).toMatchObject({ mount: '/srv/twinfs', control: '127.0.0.1:7070' });
    const settings = (await readPluginSettings(FILE))!;
    const folders: Record<string, string> = {
      'twinfs-s3': 'plugins/s3',
      'twinfs-tar': 'plugins/tar',
      'twinfs-example-sqlite-checkpoint': 'examples/plugins/sqlite-checkpoint',
    };
    expect(Object.keys(settings).sort()).toEqual(Object.keys(folders).sort());
    for (const [name, folder] of Object.entries(folders)) {
      const m = await readManifest(path.join(ROOT, folder));
      expect(m.name).toBe(name);
      expect(() => validateConfiguration(m, settings[name]!)).not.toThrow();
    }
  });
});
