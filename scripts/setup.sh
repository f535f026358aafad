#!/usr/bin/env bash
# Installs everything twinfs needs on a fresh Debian machine with Node 20, as root:
# Debian packages (libfuse3-dev for the libfuse3 build, the default, libfuse2 and fuse; attr, rsync,
# bindfs, restic and stress-ng for tests and benchmarks (dbench, fsmark, postmark, sysbench and fio for bench/outside.mjs); git, gcc, make and sqlite3 for the real-program test; samba and smbclient for `twinfs serve --smb` and its tests;
# ceph-mon, ceph-osd, radosgw and ceph-common for the one-node Ceph cluster whose RADOS Gateway
# the s3 target is tested against, see scripts/ceph-rgw.sh; chromium for the status page's
# browser test, driven by puppeteer-core, which never downloads a browser of its own) when
# missing, npm dependencies (postinstall patches and builds fuse-native), the TypeScript
# build, and the `twinfs` command on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# fusermount: Debian's `fuse`, or `fuse3` where it replaced `fuse` (installing `fuse` would remove it).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
installed fuse || installed fuse3 || need+=(fuse)
for pkg in libfuse2 attr rsync bindfs restic stress-ng dbench fsmark postmark sysbench fio tar python3 make gcc g++ git samba smbclient sqlite3 openssl strace chromium; do
  installed "$pkg" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Without recommends: Ceph (Debian 12 ships 16.2; nothing starts on install; ~250 MB this way)
# for scripts/ceph-rgw.sh, and libfuse3-dev (with pkg-config) for fuse-native's libfuse3 build
# (the default; libfuse2 with TWINFS_FUSE=2), whose recommends pull in Debian's `fuse3`, which would
# remove `fuse` and its fusermount (twinfs, its tests and scripts work with either fusermount or
# fusermount3; as root libfuse3 mounts with mount(2) and needs neither).
lean=()
for pkg in ceph-mon ceph-osd radosgw ceph-common uuid-runtime curl libfuse3-dev pkg-config; do
  installed "$pkg" || lean+=("$pkg")
done
if [ "${#lean[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages (no recommends): ${lean[*]}"
  [ "${#need[@]}" -gt 0 ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2; exit 1; }

echo "setup: npm dependencies"
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
echo "setup: build"
npm run --silent build
npm link --no-audit --no-fund --loglevel=error >/dev/null
command -v twinfs >/dev/null || { echo "setup: twinfs is not on PATH after npm link" >&2; exit 1; }
echo "setup: done ($(command -v twinfs))"
