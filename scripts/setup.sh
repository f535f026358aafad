#!/usr/bin/env bash
# Installs everything twinfs needs on a fresh Debian machine with Node 20, as root:
# Debian packages (libfuse2 and fuse for FUSE; attr, rsync, bindfs for tests and benchmarks;
# samba and smbclient for `twinfs serve --smb` and its tests; restic for bench/repository.mjs)
# when missing, npm dependencies (postinstall patches and builds fuse-native), the TypeScript
# build, and the `twinfs` command on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libfuse2 fuse attr rsync bindfs tar python3 make g++ samba smbclient sqlite3 openssl strace restic; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2; exit 1; }

echo "setup: npm dependencies"
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
echo "setup: build"
npm run --silent build
npm link --no-audit --no-fund --loglevel=error >/dev/null
command -v twinfs >/dev/null || { echo "setup: twinfs is not on PATH after npm link" >&2; exit 1; }
echo "setup: done ($(command -v twinfs))"
