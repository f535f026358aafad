import { createReadStream, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { TwinError } from '../common/errors.js';
import { readManifest } from './manifest.js';

export interface InstallResult {
  name: string;
  version: string;
  /** The plugin's folder after the install. */
  dir: string;
  replaced: boolean;
}

/**
 * Installs a plugin into a plugin folder (default: the user's): from a plugin folder, or from a
 * tarball as `npm pack` makes it (`package/...`, gzipped). The manifest is checked first
 * (ETWIN_PLUGIN_MANIFEST, ETWIN_PLUGIN_ENGINE); the plugin lands in DEST/NAME. An installed
 * plugin of the same name is refused (ETWIN_PLUGIN_DUPLICATE) unless `force`, which replaces it.
 * Dependencies are not fetched: a plugin ships what it needs (bundled, or in its node_modules).
 */
export async function installPlugin(
  source: string,
  dest: string,
  o: { force?: boolean } = {},
): Promise<InstallResult> {
  const st = await fsp.stat(source).catch(() => undefined);
  if (!st) throw new TwinError('ETWIN_PLUGIN_NOT_FOUND', `${source}: no such plugin folder or tarball`);
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'twinfs-install-'));
  try {
    let from = source;
    if (st.isFile()) {
      await extractTarball(source, work);
      const top = await fsp.readdir(work);
      from = top.length === 1 ? path.join(work, top[0]!) : work;
    } else if (!st.isDirectory())
      throw new TwinError('ETWIN_PLUGIN_MANIFEST', `${source}: neither a plugin folder nor a tarball`);
    const m = await readManifest(from);
    await fsp.mkdir(dest, { recursive: true });
    const target = path.join(dest, m.name);
    const exists = await fsp.stat(target).catch(() => undefined);
    if (exists && !o.force)
      throw new TwinError(
        'ETWIN_PLUGIN_DUPLICATE',
        `plugin ${m.name} is already installed at ${target} (--force replaces it)`,
        { plugin: m.name },
      );
    // Copied next to its place, then renamed in: a failed copy leaves the old plugin as it was.
    const staging = await fsp.mkdtemp(path.join(dest, `.${m.name}-`));
    try {
      await fsp.cp(from, staging, { recursive: true, dereference: false });
      if (exists) await fsp.rm(target, { recursive: true, force: true });
      await fsp.rename(staging, target);
    } catch (err) {
      await fsp.rm(staging, { recursive: true, force: true });
      throw err;
    }
    return { name: m.name, version: m.version, dir: target, replaced: Boolean(exists) };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** Extracts a .tgz (or plain .tar) into dir; entries that would land outside it are refused. */
async function extractTarball(file: string, dir: string): Promise<void> {
  const head = Buffer.alloc(2);
  const fd = await fsp.open(file, 'r');
  try {
    await fd.read(head, 0, 2, 0);
  } finally {
    await fd.close();
  }
  const gz = head[0] === 0x1f && head[1] === 0x8b;
  const ex = tar.extract();
  ex.on('entry', (h, stream, next) => {
    const done = (err?: unknown) => (err ? ex.destroy(err as Error) : next());
    const rel = path.posix.normalize(h.name);
    const to = path.join(dir, rel);
    if (rel.startsWith('../') || path.isAbsolute(rel) || !to.startsWith(dir + path.sep)) {
      stream.resume();
      return done(new TwinError('ETWIN_PATH_ESCAPE', `${file}: entry ${h.name} escapes the plugin folder`));
    }
    (async () => {
      if (h.type === 'directory') {
        await fsp.mkdir(to, { recursive: true });
        stream.resume();
        return;
      }
      await fsp.mkdir(path.dirname(to), { recursive: true });
      if (h.type === 'file') {
        const chunks: Buffer[] = [];
        for await (const c of stream) chunks.push(c as Buffer);
        await fsp.writeFile(to, Buffer.concat(chunks), { mode: (h.mode ?? 0o644) & 0o755 });
      } else stream.resume(); // links and devices have no place in a plugin
    })().then(() => done(), done);
  });
  const input = createReadStream(file);
  try {
    if (gz) await pipeline(input, createGunzip(), ex);
    else await pipeline(input, ex);
  } catch (err) {
    if (err instanceof TwinError) throw err;
    throw new TwinError('ETWIN_PLUGIN_MANIFEST', `${file}: not a plugin tarball: ${(err as Error).message}`);
  }
}
