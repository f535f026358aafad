#!/usr/bin/env node
// postinstall: apply patches/fuse-native+2.2.6.patch and compile fuse-native from source
// against the system libfuse2. See docs/fuse-native-patch.md.
//
// Steps (each fails loudly with what to install):
//   1. check the platform, libfuse2 (libfuse.so.2), and the build tools (python3, make, cc);
//   2. apply the patch with patch-package (idempotent: an already applied patch is a no-op);
//   3. node-gyp rebuild in node_modules/fuse-native against this Node's headers, linking
//      the system libfuse.so.2 (headers come from fuse-shared-library, no libfuse-dev needed);
//   4. check that require('fuse-native') now loads build/Release/fuse.node, that it is the
//      patched build, and that it resolves libfuse.so.2 to the system library.
//   When libfuse3's headers are installed (Debian: libfuse3-dev, pkg-config fuse3), step 3 also
//   builds build/Release/fuse3.node, the same patched source against libfuse3 (TWINFS_FUSE=3),
//   and step 4 checks it too. Without them only the libfuse2 build is made (with a warning).
//
//   5. (first, before 1-4) build the project's own addon native/posix (mknod, utimensat, flock,
//      l*xattr: src/posix), which needs Node's headers and a C compiler but no libfuse.
//
// Arguments:
//   --posix-only                 build native/posix only (a peer host without FUSE; a worktree
//                                whose node_modules is shared and must not be rebuilt).
//
// Environment:
//   TWINFS_SKIP_NATIVE_BUILD=1   skip everything (e.g. a docs-only CI job); fuse-native then
//                                refuses to load until this script has run.
//   FUSE_NATIVE_LIBFUSE=/path    link this libfuse.so.2 instead of the one found below.
//   TWINFS_NO_FUSE3=1            do not build the libfuse3 binary even if libfuse3-dev is there.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PKG_DIR = path.join(ROOT, 'node_modules', 'fuse-native');
const PATCH = path.join(ROOT, 'patches', 'fuse-native+2.2.6.patch');
const EXPECTED_VERSION = '2.2.6';
const EXPECTED_PATCH_LEVEL = 31;
const require = createRequire(path.join(ROOT, 'package.json'));
const POSIX_DIR = path.join(ROOT, 'native', 'posix');
const POSIX_ONLY = process.argv.includes('--posix-only');

const log = (msg) => console.log(`build-native: ${msg}`);

function fail(msg) {
  console.error(`\nbuild-native: ERROR: ${msg}\n`);
  process.exit(1);
}

function run(cmd, args, opts = {}, hint = '') {
  log(`$ ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', timeout: 10 * 60_000, ...opts });
  if (r.error) fail(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}${hint}`);
}

function capture(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  return r.error || r.status !== 0 ? null : r.stdout;
}

function which(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// 1. preconditions

if (process.env.TWINFS_SKIP_NATIVE_BUILD === '1') {
  log('TWINFS_SKIP_NATIVE_BUILD=1: skipping the native builds (fuse-native and native/posix)');
  process.exit(0);
}
if (process.platform !== 'linux') fail(`twinfs needs Linux (libfuse2); this is ${process.platform}.`);

const missingTools = [];
if (!which('python3') && !which('python')) missingTools.push('python3');
if (!which('make')) missingTools.push('make');
if (!which('cc') && !which('gcc') && !process.env.CC) missingTools.push('a C compiler (gcc)');
if (!which('c++') && !which('g++') && !process.env.CXX)
  missingTools.push('a C++ compiler driver (g++, used by node-gyp to link)');
if (missingTools.length) {
  fail(
    `missing build tools: ${missingTools.join(', ')}.\n  On Debian: apt-get install python3 make g++   (or build-essential python3)`,
  );
}

// The project's own addon first: it needs no libfuse (a peer host builds only this one).
buildPosixAddon();
if (POSIX_ONLY) process.exit(0);

if (!fs.existsSync(path.join(PKG_DIR, 'package.json'))) {
  fail(`${PKG_DIR} is missing: run npm install (fuse-native is a dependency).`);
}
const fnVersion = JSON.parse(fs.readFileSync(path.join(PKG_DIR, 'package.json'), 'utf8')).version;
if (fnVersion !== EXPECTED_VERSION) {
  fail(
    `node_modules/fuse-native is ${fnVersion}, but ${path.relative(ROOT, PATCH)} is for ${EXPECTED_VERSION}. ` +
      `Pin fuse-native to ${EXPECTED_VERSION} or port the patch (docs/fuse-native-patch.md).`,
  );
}
if (!fs.existsSync(PATCH)) fail(`${PATCH} is missing.`);

function findLibfuse2() {
  if (process.env.FUSE_NATIVE_LIBFUSE) {
    if (!fs.existsSync(process.env.FUSE_NATIVE_LIBFUSE))
      fail(`FUSE_NATIVE_LIBFUSE=${process.env.FUSE_NATIVE_LIBFUSE} does not exist.`);
    return process.env.FUSE_NATIVE_LIBFUSE;
  }
  // ldconfig knows the loader's view; fall back to the usual multiarch / lib64 locations.
  const ldconfig = capture('ldconfig', ['-p']) ?? capture('/sbin/ldconfig', ['-p']) ?? '';
  // ldconfig tags 64-bit entries "(libc6,x86-64)" / "(libc6,AArch64)"; skip other ABIs (i386)
  const abiTag = { x64: 'x86-64', arm64: 'AArch64' }[process.arch];
  for (const line of ldconfig.split('\n')) {
    const m = line.match(/^\s*libfuse\.so\.2\s+\(([^)]*)\)\s+=>\s+(\S+)/);
    if (m && (!abiTag || m[1].includes(abiTag)) && fs.existsSync(m[2])) return m[2];
  }
  const triplet = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu', arm: 'arm-linux-gnueabihf' }[
    process.arch
  ];
  const candidates = [
    triplet && `/usr/lib/${triplet}/libfuse.so.2`,
    triplet && `/lib/${triplet}/libfuse.so.2`,
    '/usr/lib64/libfuse.so.2',
    '/lib64/libfuse.so.2',
    '/usr/lib/libfuse.so.2',
  ].filter(Boolean);
  return candidates.find((p) => fs.existsSync(p)) ?? null;
}

const libfuse = findLibfuse2();
if (!libfuse) {
  fail(
    'libfuse2 (libfuse.so.2) was not found.\n' +
      '  twinfs links fuse-native against the system libfuse2. On Debian/Ubuntu, as root:\n' +
      '      apt-get install libfuse2 fuse\n' +
      '  (on Debian 13 / Ubuntu 24.04 the package is named libfuse2t64). Then re-run: node scripts/build-native.mjs',
  );
}
log(`libfuse2: ${libfuse} -> ${fs.realpathSync(libfuse)}`);
// Debian's fuse3 package replaces fuse: either fusermount will do (twinfs unmounts with it).
if (!which('fusermount') && !which('fusermount3')) {
  console.warn(
    'build-native: WARNING: neither fusermount nor fusermount3 found; unmounting will fail. Install one: apt-get install fuse',
  );
}

// ---------------------------------------------------------------------------------------------
// 2. patch (idempotent: patch-package detects an already applied patch and leaves it alone)

let patchPackageBin;
try {
  patchPackageBin = require.resolve('patch-package/index.js');
} catch {
  fail(
    'patch-package is not installed (it is a devDependency; `npm install --omit=dev` skips it).\n' +
      '  Install with dev dependencies, or move patch-package to "dependencies".',
  );
}
run(
  process.execPath,
  [patchPackageBin, '--error-on-fail'],
  { cwd: ROOT },
  '.\n  If node_modules/fuse-native carries an older version of the patch (the patch file changed since\n' +
    '  it was applied), reinstall it pristine and re-run:  rm -rf node_modules/fuse-native && npm install',
);

const indexJs = fs.readFileSync(path.join(PKG_DIR, 'index.js'), 'utf8');
const cSource = fs.readFileSync(path.join(PKG_DIR, 'fuse-native.c'), 'utf8');
if (
  !indexJs.includes(`const PATCH_LEVEL = ${EXPECTED_PATCH_LEVEL}`) ||
  !cSource.includes('flag_utime_omit_ok = 1')
) {
  fail(
    'patch-package finished but node_modules/fuse-native does not contain the patch (see the output above).',
  );
}

// ---------------------------------------------------------------------------------------------
// 3. compile

function findNodeGyp() {
  const found = (p) => (p && fs.existsSync(p) ? p : null);
  let local = null;
  try {
    local = require.resolve('node-gyp/bin/node-gyp.js'); // a project-local node-gyp, if one is added
  } catch {}
  const prefix = path.resolve(path.dirname(fs.realpathSync(process.execPath)), '..');
  const bundled = (root) => path.join(root, 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  return (
    found(local) ??
    found(process.env.npm_config_node_gyp) ?? // npm sets this for lifecycle scripts: its bundled node-gyp
    found(bundled(path.join(prefix, 'lib', 'node_modules'))) ??
    found(bundled((capture('npm', ['root', '-g']) ?? '').trim()))
  );
}

function findNodeHeaders() {
  // Node's installed headers (<prefix>/include/node), as shipped by the official tarballs and
  // NodeSource packages. They must match this Node's version exactly.
  const prefix = path.resolve(path.dirname(fs.realpathSync(process.execPath)), '..');
  const versionH = path.join(prefix, 'include', 'node', 'node_version.h');
  if (!fs.existsSync(versionH) || !fs.existsSync(path.join(prefix, 'include', 'node', 'common.gypi')))
    return null;
  const h = fs.readFileSync(versionH, 'utf8');
  const v = ['MAJOR', 'MINOR', 'PATCH']
    .map((k) => h.match(new RegExp(`#define NODE_${k}_VERSION (\\d+)`))?.[1])
    .join('.');
  return `v${v}` === process.version ? prefix : null;
}

function gypArgsFor(nodeGyp) {
  const nodedir = findNodeHeaders();
  const args = [nodeGyp, 'rebuild', '--release', '--loglevel=warn'];
  if (nodedir) {
    args.push(`--nodedir=${nodedir}`);
    log(`node headers: ${nodedir}/include/node (${process.version})`);
  } else {
    console.warn(
      `build-native: WARNING: no installed headers for Node ${process.version} under <prefix>/include/node; ` +
        'node-gyp will try to download them (needs network access to nodejs.org).',
    );
  }
  return args;
}

/**
 * native/posix: twinfs's own N-API addon (src/posix loads build/Release/twinfs_posix.node).
 * Checked by loading it in a child process and calling one function.
 */
function buildPosixAddon() {
  const gyp = findNodeGyp();
  if (!gyp) fail('node-gyp was not found (it ships with npm); it builds native/posix.');
  log(`node-gyp: ${gyp}`);
  fs.rmSync(path.join(POSIX_DIR, 'build'), { recursive: true, force: true });
  run(process.execPath, gypArgsFor(gyp), { cwd: POSIX_DIR });
  const built = path.join(POSIX_DIR, 'build', 'Release', 'twinfs_posix.node');
  const probe = spawnSync(
    process.execPath,
    [
      '-e',
      `const p = require(${JSON.stringify(built)}); process.stdout.write(String(p.utimensat('/', null, null, false)));`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  if (probe.status !== 0 || probe.stdout !== '0') fail(`${built} does not load or work:\n${probe.stderr}`);
  log(`ok: native/posix loads ${path.relative(ROOT, built)}`);
}

const nodeGyp = findNodeGyp();
if (!nodeGyp) {
  fail(
    'node-gyp was not found (it ships with npm). Install npm with Node, or add it to the project:\n' +
      '      npm install --save-dev node-gyp',
  );
}
const gypArgs = gypArgsFor(nodeGyp);
log(`node-gyp: ${nodeGyp}`);

// The libfuse3 build needs libfuse3's headers and pkg-config (libfuse3-dev).
const withFuse3 =
  process.env.TWINFS_NO_FUSE3 !== '1' && capture('pkg-config', ['--exists', 'fuse3']) !== null;
if (!withFuse3 && process.env.TWINFS_NO_FUSE3 !== '1') {
  console.warn(
    'build-native: WARNING: libfuse3-dev (pkg-config fuse3) not found: only the libfuse2 build is made, ' +
      'twinfs serves with libfuse2 instead of its default libfuse3, and TWINFS_FUSE=3 will not work. ' +
      'Install it: apt-get install --no-install-recommends libfuse3-dev pkg-config',
  );
}

fs.rmSync(path.join(PKG_DIR, 'build'), { recursive: true, force: true });
run(process.execPath, gypArgs, {
  cwd: PKG_DIR,
  env: { ...process.env, FUSE_NATIVE_LIBFUSE: libfuse, FUSE_NATIVE_FUSE3: withFuse3 ? '1' : '0' },
});

// ---------------------------------------------------------------------------------------------
// 4. verify

const built = path.join(PKG_DIR, 'build', 'Release', 'fuse.node');
if (!fs.existsSync(built)) fail(`node-gyp succeeded but ${built} is missing.`);

const ldd = capture('ldd', [built]);
if (ldd) {
  const m = ldd.match(/libfuse\.so\.2\s+=>\s+(\S+)/);
  if (!m || m[1] === 'not') fail(`${built} does not resolve libfuse.so.2:\n${ldd}`);
  log(`fuse.node links libfuse.so.2 => ${m[1]}`);
}

const probe = spawnSync(
  process.execPath,
  [
    '-e',
    `const F = require(${JSON.stringify(PKG_DIR)});
     const where = require(${JSON.stringify(require.resolve('node-gyp-build', { paths: [PKG_DIR] }))}).resolve(${JSON.stringify(PKG_DIR)});
     console.log(JSON.stringify({ patchLevel: F.patchLevel, where }));`,
  ],
  { encoding: 'utf8', timeout: 60_000 },
);
if (probe.status !== 0) fail(`require('fuse-native') failed after the build:\n${probe.stderr}`);
const { patchLevel, where } = JSON.parse(probe.stdout.trim().split('\n').pop());
if (patchLevel !== EXPECTED_PATCH_LEVEL)
  fail(`fuse-native reports patch level ${patchLevel}, expected ${EXPECTED_PATCH_LEVEL}.`);
if (path.resolve(where) !== path.resolve(built)) fail(`fuse-native loads ${where} instead of ${built}.`);
log(`ok: fuse-native ${fnVersion} (patch level ${patchLevel}) loads ${path.relative(ROOT, where)}`);

if (withFuse3) {
  const built3 = path.join(PKG_DIR, 'build', 'Release', 'fuse3.node');
  if (!fs.existsSync(built3)) fail(`node-gyp succeeded but ${built3} is missing.`);
  const ldd3 = capture('ldd', [built3]);
  if (ldd3) {
    const m = ldd3.match(/libfuse3\.so\.3\s+=>\s+(\S+)/);
    if (!m || m[1] === 'not') fail(`${built3} does not resolve libfuse3.so.3:\n${ldd3}`);
    log(`fuse3.node links libfuse3.so.3 => ${m[1]}`);
  }
  const probe3 = spawnSync(
    process.execPath,
    [
      '-e',
      `const b = require(${JSON.stringify(built3)}); console.log(JSON.stringify([b.fuse_native_patch_level, b.fuse_native_libfuse_major]));`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  if (probe3.status !== 0) fail(`${built3} does not load:\n${probe3.stderr}`);
  const [level3, major3] = JSON.parse(probe3.stdout.trim().split('\n').pop());
  if (level3 !== EXPECTED_PATCH_LEVEL || major3 !== 3)
    fail(
      `${built3} reports patch level ${level3} / libfuse ${major3}, expected ${EXPECTED_PATCH_LEVEL} / 3.`,
    );
  log(`ok: fuse-native libfuse3 build (patch level ${level3}) at ${path.relative(ROOT, built3)}`);
}
