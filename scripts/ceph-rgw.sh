#!/usr/bin/env bash
# A one-node Ceph cluster with a RADOS Gateway (S3) on loopback, for tests and benchmarks:
# one monitor, one memstore OSD (data in memory), radosgw with the beast frontend; no mgr.
#
#   scripts/ceph-rgw.sh start [--dir DIR] [--port N] [--timeout SEC] [--memstore-mib N] [--watch PID]
#       Starts the cluster with everything (config, daemons' data, logs, sockets, pid files)
#       under DIR (default: a new temporary directory), creates an S3 user and prints, on
#       stdout, shell lines to eval:
#         CEPH_RGW_DIR=... AWS_ENDPOINT_URL=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
#         AWS_REGION=...
#       The same lines are written to DIR/env. Progress and errors go to stderr. Gives up (and
#       tears down what it started) when the gateway does not answer within --timeout seconds
#       (default 60), naming the step that failed and the end of that daemon's log.
#       With --watch PID, a background watcher stops the cluster (as `stop` does) once process
#       PID has exited: a test run killed before its teardown leaves no daemons behind.
#   scripts/ceph-rgw.sh stop [--dir DIR]     (DIR defaults to $CEPH_RGW_DIR)
#       Stops the daemons started in DIR (by their pid files) and removes DIR.
#
# Needs Debian's ceph-mon, ceph-osd, radosgw and ceph-common (scripts/setup.sh installs them).
# Single-node settings: pools of size 1, 8 placement groups each, CRUSH placing replicas across
# OSDs rather than hosts (chooseleaf type 0), and a short paxos propose interval (each pool the
# gateway creates on its first start would otherwise wait about a second for the monitor).
# Several clusters can run side by side: each has its own fsid, ports and directory.
set -euo pipefail
# Messages go to the caller's stderr even from inside a step whose output goes to a log.
exec 3>&2
trap "" PIPE
say() { echo "ceph-rgw: $*" >&3 2>/dev/null || true; }
die() {
  say "$*"
  exit 1
}

self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cmd=${1:-}
[ $# -gt 0 ] && shift
dir=""
port=""
timeout=60
memstore_mib=1024
watch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --memstore-mib) memstore_mib=$2; shift 2 ;;
    --watch) watch=$2; shift 2 ;;
    *) die "unknown option $1 (usage: ceph-rgw.sh start|stop [--dir DIR] [--port N] [--timeout SEC] [--memstore-mib N] [--watch PID])" ;;
  esac
done

# The pid of a daemon started in $1 (its pid file), if that process is still the daemon.
daemon_pid() {
  local f=$1/run/$2.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # Only a process started with this directory's config file is ours to stop.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$1/ceph.conf" || return 1
  echo "$pid"
}

stop_cluster() {
  local d=$1 name pid pids=()
  [ -f "$d/ceph.conf" ] || return 0
  for name in client.rgw.0 osd.0 mon.a; do
    if pid=$(daemon_pid "$d" "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf -- "$d"
}

if [ "$cmd" = stop ]; then
  dir=${dir:-${CEPH_RGW_DIR:-}}
  [ -n "$dir" ] || die "stop: which cluster? --dir DIR or CEPH_RGW_DIR"
  [ -d "$dir" ] || exit 0
  [ -f "$dir/ceph.conf" ] || die "stop: $dir is not a cluster directory (no ceph.conf)"
  stop_cluster "$dir"
  say "stopped, $dir removed"
  exit 0
fi
[ "$cmd" = start ] || die "usage: ceph-rgw.sh start|stop [--dir DIR] [--port N] [--timeout SEC] [--memstore-mib N] [--watch PID]"

for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool uuidgen curl node timeout; do
  command -v "$bin" >/dev/null ||
    die "$bin is not installed (Debian: apt-get install ceph-mon ceph-osd radosgw ceph-common; scripts/setup.sh does it)"
done
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
[[ "$memstore_mib" =~ ^[0-9]+$ ]] || die "--memstore-mib must be a number"
[ -z "$watch" ] || [ -d "/proc/$watch" ] || die "--watch $watch: no such process"

if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/twinfs-ceph-XXXXXX")
else
  [ -e "$dir/ceph.conf" ] && die "$dir already holds a cluster (stop it first)"
  mkdir -p "$dir"
fi
dir=$(cd "$dir" && pwd)
deadline=$((SECONDS + timeout))
step="setup"
ok=0
fail() {
  local log=$1
  shift
  say "$*"
  [ -n "$log" ] && [ -f "$log" ] && { say "last lines of $log:"; tail -n 15 "$log" >&3; }
  exit 1
}
# Whatever happens before the end, tear down what was started.
trap '[ "$ok" = 1 ] || { say "start failed at: $step; tearing down"; stop_cluster "$dir"; }' EXIT

# A free loopback TCP port (bind to 0, read it back, release it).
free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
mon_port=$(free_port)
[ -n "$port" ] || port=$(free_port)
fsid=$(uuidgen)
mkdir -p "$dir"/{run,log,mon/a,osd/0,rgw}
conf=$dir/ceph.conf
cat >"$conf" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
keyring = $dir/keyring
client_mount_timeout = $timeout
rgw_init_timeout = $timeout
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
pid_file = $dir/run/\$name.pid
log_file = $dir/log/\$name.log
mon_cluster_log_file = $dir/log/cluster.log
crash_dir = $dir/crash
log_to_stderr = false
err_to_stderr = true
# One node: one replica, few placement groups, replicas spread over OSDs (not hosts).
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_warn_on_pool_no_redundancy = false
# Pool creations commit at once instead of after the default 1 s.
paxos_propose_interval = 0.01
paxos_min_wait = 0.01
mon_osd_reporter_subtree_level = osd

[mon]
mon_data = $dir/mon/\$id
mon_initial_members = a

[osd]
osd_data = $dir/osd/\$id
osd_objectstore = memstore
memstore_device_bytes = $((memstore_mib * 1024 * 1024))
osd_crush_update_on_start = true

[client.rgw.0]
rgw_data = $dir/rgw
rgw_frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=1
rgw_thread_pool_size = 64
EOF

# Runs a step's command with what is left of the time budget. Daemons keep none of this
# script's descriptors (fd 3 is the caller's stderr: a caller reading it to its end would wait
# for the cluster to stop).
bounded() {
  local l=$((deadline - SECONDS))
  [ "$l" -gt 0 ] || fail "" "timed out after ${timeout}s at: $step"
  timeout "$l" "$@" </dev/null 3>&-
}

step="monitor: create"
# Every daemon's key, with its capabilities, in one keyring the monitor imports at mkfs.
{
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' &&
    ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' &&
    ceph-authtool "$dir/keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' &&
    ceph-authtool "$dir/keyring" --gen-key -n client.rgw.0 --cap mon 'allow rw' --cap osd 'allow rwx'
} >"$dir/log/keyring.log" 2>&1 || fail "$dir/log/keyring.log" "ceph-authtool failed"
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null 2>&1 ||
  fail "" "monmaptool failed"
bounded ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" >"$dir/log/mkfs-mon.log" 2>&1 ||
  fail "$dir/log/mkfs-mon.log" "ceph-mon --mkfs failed"
step="monitor: start"
bounded ceph-mon -c "$conf" -i a >"$dir/log/start-mon.log" 2>&1 || fail "$dir/log/mon.a.log" "ceph-mon did not start"

step="osd: register"
osd_uuid=$(uuidgen)
osd_id=$(bounded ceph -c "$conf" --connect-timeout "$timeout" osd new "$osd_uuid" 2>"$dir/log/osd-new.log") ||
  fail "$dir/log/mon.a.log" "the monitor did not answer (ceph osd new): $(tail -n 3 "$dir/log/osd-new.log")"
[ "$osd_id" = 0 ] || fail "" "expected osd id 0, the monitor gave '$osd_id'"
step="osd: create"
bounded ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$dir/log/mkfs-osd.log" 2>&1 ||
  fail "$dir/log/mkfs-osd.log" "ceph-osd --mkfs failed"
step="osd: start"
bounded ceph-osd -c "$conf" -i 0 >"$dir/log/start-osd.log" 2>&1 || fail "$dir/log/osd.0.log" "ceph-osd did not start"

step="gateway: start"
bounded radosgw -c "$conf" -n client.rgw.0 >"$dir/log/start-rgw.log" 2>&1 ||
  fail "$dir/log/client.rgw.0.log" "radosgw did not start"
step="gateway: answer HTTP on 127.0.0.1:$port"
until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; do
  daemon_pid "$dir" client.rgw.0 >/dev/null || fail "$dir/log/client.rgw.0.log" "radosgw exited"
  daemon_pid "$dir" osd.0 >/dev/null || fail "$dir/log/osd.0.log" "ceph-osd exited"
  [ $SECONDS -lt $deadline ] || fail "$dir/log/client.rgw.0.log" "radosgw did not answer within ${timeout}s"
  sleep 0.1
done

step="gateway: S3 user"
access=$(head -c 15 /dev/urandom | base64 | tr -dc 'A-Z0-9' | head -c 20)
while [ ${#access} -lt 20 ]; do access+=$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Z0-9' | head -c $((20 - ${#access}))); done
secret=$(head -c 30 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
bounded radosgw-admin -c "$conf" -n client.rgw.0 user create --uid=twinfs --display-name=twinfs \
  --access-key="$access" --secret-key="$secret" >"$dir/log/user.log" 2>&1 ||
  fail "$dir/log/user.log" "radosgw-admin user create failed"

cat >"$dir/env" <<EOF
CEPH_RGW_DIR=$dir
AWS_ENDPOINT_URL=http://127.0.0.1:$port
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
EOF
ok=1
if [ -n "$watch" ]; then
  # Detached, holding none of the caller's descriptors.
  setsid bash -c 'while [ -d "/proc/$1" ] && [ -f "$2/ceph.conf" ]; do sleep 1; done
    exec bash "$0" stop --dir "$2"' "$self" "$watch" "$dir" </dev/null >/dev/null 2>&1 3>&- &
fi
say "up in ${SECONDS}s: http://127.0.0.1:$port (stop: $0 stop --dir $dir)"
sed 's/^/export /' "$dir/env"
