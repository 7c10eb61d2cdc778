#!/usr/bin/env bash
# `make docker-test`: brings the docker/ topology up for real and proves it works.
#
#   client --net-a-- gw-a [vpn] ==underlay (MTU 1500)== gw-b [vpn] --lan (MTU 1500)-- lan
#
# 1. a Docker daemon: the one that answers, else Debian's dockerd started here (data and exec
#    roots in a temporary directory, its own socket, bridge and address pools in
#    198.18.0.0/15, no iptables rules, no host sysctl changes), stopped by its pid at the end;
# 2. a base image: debian:bookworm-slim if present or pullable within a few seconds, else one
#    built with debootstrap and `docker import` (scripts/docker-base.sh), tagged as temporary;
# 3. the endpoint image (docker/Dockerfile) from a wheelhouse made here with pip, so the image
#    build needs no network;
# 4. the four containers (docker/docker-compose.yml with config/gw-a.conf and gw-b.conf);
# 5. checks: both gateways up, ping client -> lan across the tunnel, iperf3 client -> lan
#    (Gb/s printed), a 50 MB transfer whose sha256 must match at both ends, and gw-b's offload
#    counters, read from the line it logs when stopped;
# 6. teardown of everything it made (containers, networks, temporary images, the daemon it
#    started, temporary directories), also on failure and Ctrl-C.
#
# Exit status: 0 when every check passed.  Root only (docker, and dockerd when started here).
# Environment: BASE (base image to use as is; it must exist for the daemon used),
# BASE_INCLUDE (see scripts/docker-base.sh), IPERF_SECONDS (default 10),
# TRANSFER_MB (default 50), DOCKER, COMPOSE (commands), KEEP=1 (leave the topology running
# and print how to take it down; with a daemon started here, the daemon stays too).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
ROOT=$PWD

IPERF_SECONDS=${IPERF_SECONDS:-10}
TRANSFER_MB=${TRANSFER_MB:-50}
DEBIAN_BASE=debian:bookworm-slim
LAN_IP=198.18.22.10
TRANSFER_PORT=5202

log() { printf '%s docker-test: %s\n' "$(date +%T)" "$*"; }
die() { log "FAIL: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (docker, dockerd)"

# --- timing -----------------------------------------------------------------------------
T_START=$(date +%s.%N)
T_PHASE=$T_START
PHASE_NAME=""
TIMINGS=()
phase() {
    local now
    now=$(date +%s.%N)
    if [ -n "$PHASE_NAME" ] && [ "$PHASE_NAME" != "-" ]; then
        TIMINGS+=("$(awk -v n="$PHASE_NAME" -v a="$now" -v b="$T_PHASE" 'BEGIN { printf "%-18s %6.1f s", n, a - b }')")
    fi
    PHASE_NAME=$1
    T_PHASE=$now
    [ "$1" = "-" ] || log "== $1"
}

# --- system packages ------------------------------------------------------------------
phase "packages"
missing=()
want=(debootstrap)
# Debian's docker.io only where no Docker is installed at all (docker-ce conflicts with it).
command -v dockerd >/dev/null || want+=(docker.io)
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    want+=(docker-compose)
fi
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep "install ok installed" >/dev/null \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's CLI matches Debian's daemon; another docker (a newer static CLI in /usr/local/bin)
# may precede it on PATH.
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
if [ -z "${COMPOSE:-}" ]; then
    if command -v docker-compose >/dev/null; then COMPOSE=docker-compose
    else COMPOSE="$DOCKER compose"; fi
fi
if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi

# --- state and teardown -----------------------------------------------------------------
TMP=$(mktemp -d /tmp/vpn-docker-test.XXXXXX)
RUN_ID=$(basename "$TMP" | cut -d. -f2 | tr '[:upper:]' '[:lower:]')
PROJECT=vpntest$RUN_ID
IMAGE=vpn-test-endpoint:$RUN_ID
BASE_TAG=vpn-test-base:$RUN_ID
COMPOSE_FILE=$ROOT/docker/docker-compose.yml
OWN_DAEMON_PID=""
COMPOSE_STARTED=0
TEMP_IMAGES=()
BG_PIDS=()
CGROUPS_BEFORE=""
NET_IDS=""

dc() { VPN_IMAGE=$IMAGE $COMPOSE -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
cid() { dc ps -q "$1"; }

teardown() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    phase "teardown"
    local pid
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ] && [ "$status" -eq 0 ]; then
        log "KEEP=1: left running; take it down with:"
        log "  DOCKER_HOST=${DOCKER_HOST:-} VPN_IMAGE=$IMAGE $COMPOSE -p $PROJECT -f $COMPOSE_FILE down"
        [ -n "$OWN_DAEMON_PID" ] && log "  kill $OWN_DAEMON_PID; rm -rf $TMP   (the dockerd started here)"
        return "$status"
    fi
    if [ "$COMPOSE_STARTED" = 1 ]; then
        dc down --volumes --remove-orphans --timeout 3 >"$TMP/down.log" 2>&1 \
            || { log "compose down failed:"; cat "$TMP/down.log"; }
    fi
    local image
    for image in "$IMAGE" "${TEMP_IMAGES[@]}"; do
        if "$DOCKER" image inspect "$image" >/dev/null 2>&1; then
            "$DOCKER" rmi -f "$image" >/dev/null 2>&1 || log "could not remove image $image"
        fi
    done
    if [ -n "$OWN_DAEMON_PID" ]; then
        stop_own_daemon
    fi
    # Unmount whatever is still mounted below the temporary directory (an overlay or netns
    # left by a daemon that had to be killed), then remove it.
    local m
    for m in $(awk -v root="$TMP/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null
    done
    rm -rf "$TMP"
    phase "-"
    log "timings:"
    local line
    for line in "${TIMINGS[@]}"; do log "  $line"; done
    log "$(awk -v a="$(date +%s.%N)" -v b="$T_START" 'BEGIN { printf "  %-18s %6.1f s", "total", a - b }')"
    if [ "$status" -eq 0 ]; then log "PASS"; else log "FAILED (exit $status)"; fi
    return "$status"
}
trap teardown EXIT
trap 'log "interrupted"; exit 130' INT TERM

stop_own_daemon() {
    local pid=$OWN_DAEMON_PID
    OWN_DAEMON_PID=""
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd $pid did not stop in 20 s: killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    # The containerd it managed (and any shim) lives under its exec root: nothing else may.
    local left
    left=$(pgrep -f -- "$TMP/" || true)
    if [ -n "$left" ]; then
        log "processes of the stopped daemon still running: $left; killing them"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
    fi
    # cgroup v1: dockerd made a "docker" cgroup in each hierarchy; remove the empty ones it
    # made (rmdir never removes a cgroup in use).
    local dir
    for dir in /sys/fs/cgroup/*/docker; do
        [ -d "$dir" ] || continue
        case " $CGROUPS_BEFORE " in *" $dir "*) continue ;; esac
        rmdir "$dir" 2>/dev/null
    done
    # What dockerd 20.10 leaves behind on exit, removed only where this run created it: its
    # trust key, its default bridge, the plugin directory and containerd's shim socket
    # directory (empty ones only).
    if [ -z "$HAD_KEY_JSON" ] && [ -f /etc/docker/key.json ]; then
        rm -f /etc/docker/key.json
    fi
    if [ -z "$HAD_DOCKER0" ] && ip link show docker0 >/dev/null 2>&1; then
        ip link del docker0
    fi
    # The bridges of this run's networks, should the daemon have died before removing them.
    local net
    for net in $NET_IDS; do
        ip link show "br-${net:0:12}" >/dev/null 2>&1 && ip link del "br-${net:0:12}"
    done
    [ -n "$HAD_RUN_DOCKER" ] || rmdir /run/docker/plugins /run/docker 2>/dev/null
    [ -n "$HAD_RUN_CONTAINERD" ] || rmdir /run/containerd/s /run/containerd 2>/dev/null
}

# --- 1. the daemon ------------------------------------------------------------------------
phase "daemon"
if timeout 10 "$DOCKER" info >/dev/null 2>&1; then
    log "using the Docker daemon that answers (${DOCKER_HOST:-default socket}); it is left as it is"
else
    command -v dockerd >/dev/null || die "no Docker daemon answers and dockerd is not installed"
    CGROUPS_BEFORE=$(echo /sys/fs/cgroup/*/docker)
    HAD_KEY_JSON=$(ls /etc/docker/key.json 2>/dev/null || true)
    HAD_DOCKER0=$(ip -o link show docker0 2>/dev/null || true)
    HAD_RUN_DOCKER=$(ls -d /run/docker 2>/dev/null || true)
    HAD_RUN_CONTAINERD=$(ls -d /run/containerd 2>/dev/null || true)
    if iptables -S FORWARD 2>/dev/null | grep -- '-P FORWARD DROP' >/dev/null; then
        log "note: the host's FORWARD policy is DROP: with br_netfilter, bridged container traffic may be dropped"
    fi
    mkdir -p "$TMP/data" "$TMP/exec" "$TMP/cli"
    echo '{}' >"$TMP/daemon.json"
    export DOCKER_HOST=unix://$TMP/docker.sock
    export DOCKER_CONFIG=$TMP/cli
    # No iptables rules and no host sysctl changes: the containers only talk over the bridges
    # (layer 2) and the image build uses the host's network (--network host).
    # Its own session: a Ctrl-C at the terminal reaches this script, which then still needs
    # the daemon to take the containers and networks down.
    # TMPDIR: Go's temporary files (containerd's stack dumps on SIGUSR1) stay in $TMP too.
    mkdir -p "$TMP/tmpdir"
    TMPDIR=$TMP/tmpdir setsid dockerd --data-root "$TMP/data" --exec-root "$TMP/exec" -H "$DOCKER_HOST" \
        --pidfile "$TMP/docker.pid" --config-file "$TMP/daemon.json" \
        --bip 198.18.250.1/24 --default-address-pool base=198.18.0.0/16,size=24 \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --userland-proxy=false --log-level=warn >"$TMP/dockerd.log" 2>&1 &
    OWN_DAEMON_PID=$!
    log "started dockerd (pid $OWN_DAEMON_PID, socket $DOCKER_HOST)"
    for _ in $(seq 1 150); do
        "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$OWN_DAEMON_PID" 2>/dev/null || { cat "$TMP/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.2
    done
    "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$TMP/dockerd.log" >&2; die "dockerd did not answer in 30 s"; }
    [ "$(cat "$TMP/docker.pid")" = "$OWN_DAEMON_PID" ] \
        || die "dockerd's pidfile names $(cat "$TMP/docker.pid"), not the $OWN_DAEMON_PID started here"
fi

# --- 2. the base image ------------------------------------------------------------------
phase "base image"
if [ -n "${BASE:-}" ]; then
    log "base image $BASE (from BASE)"
elif "$DOCKER" image inspect "$DEBIAN_BASE" >/dev/null 2>&1; then
    BASE=$DEBIAN_BASE
    log "base image $BASE (present)"
elif timeout 8 "$DOCKER" pull -q "$DEBIAN_BASE" >"$TMP/pull.log" 2>&1; then
    BASE=$DEBIAN_BASE
    log "base image $BASE (pulled)"
else
    log "no $DEBIAN_BASE and no registry within 8 s: building one with debootstrap"
    TEMP_IMAGES+=("$BASE_TAG")
    DOCKER=$DOCKER bash "$ROOT/scripts/docker-base.sh" "$BASE_TAG"
    BASE=$BASE_TAG
fi

# --- 3. wheelhouse and image --------------------------------------------------------------
phase "wheelhouse"
CTX=$TMP/context
mkdir -p "$CTX/wheelhouse" "$TMP/src"
cp "$ROOT/docker/Dockerfile" "$ROOT/docker/entrypoint.sh" "$CTX/"
# Build from a copy of the sources: nothing (build/, *.egg-info) is written into the tree.
# setup.py too: pip wheel builds the native modules here, so the image runs the fast path.
cp -r "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/README.md" "$ROOT/vpn" "$TMP/src/"
find "$TMP/src" -name '*.so' -delete
find "$TMP/src" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$CTX/wheelhouse" "$TMP/src" \
    >"$TMP/wheel.log" 2>&1 || { cat "$TMP/wheel.log" >&2; die "pip wheel of the project failed"; }
# The dependencies as wheels for the image's Python (Debian 12: CPython 3.11, glibc 2.36),
# whatever Python runs here.  pip does not widen an explicit manylinux platform to the older
# ones it implies: list them all.
platforms=()
for v in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${v}_$(uname -m)"); done
for p in manylinux2014 manylinux2010 manylinux1; do platforms+=(--platform "${p}_$(uname -m)"); done
# The project's own wheel carries the native modules built here: linux_<arch>, for this
# very Debian (glibc and libcrypto), which the image is.
platforms+=(--platform "linux_$(uname -m)")
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --implementation cp --python-version 3.11 "${platforms[@]}" \
    -d "$CTX/wheelhouse" "$CTX"/wheelhouse/vpn-*.whl >"$TMP/download.log" 2>&1 \
    || { cat "$TMP/download.log" >&2; die "pip download of the dependencies failed"; }
log "wheelhouse: $(find "$CTX/wheelhouse" -name '*.whl' -printf '%f ')"

phase "image build"
"$DOCKER" build --network host --force-rm -q -t "$IMAGE" --build-arg "BASE=$BASE" "$CTX" \
    >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log" >&2; die "image build failed"; }
log "built $IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

# --- 4. the topology ----------------------------------------------------------------------
phase "compose up"
dc config -q || die "docker/docker-compose.yml does not validate"
COMPOSE_STARTED=1
dc up -d --no-build >"$TMP/up.log" 2>&1 || up_failed=1
NET_IDS=$("$DOCKER" network ls -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT")
[ -z "${up_failed:-}" ] || { cat "$TMP/up.log" >&2; die "compose up failed"; }
GW_A=$(cid gw-a); CLIENT=$(cid client); LAN=$(cid lan)
for name in gw-a gw-b; do
    id=$(cid "$name")
    for _ in $(seq 1 150); do
        "$DOCKER" logs "$id" 2>&1 | grep "interface $name up" >/dev/null && break
        if [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$id")" != true ]; then
            "$DOCKER" logs "$id" >&2 || true
            die "$name exited"
        fi
        sleep 0.2
    done
    "$DOCKER" logs "$id" 2>&1 | grep "interface $name up" >/dev/null \
        || { "$DOCKER" logs "$id" >&2; die "$name did not come up in 30 s"; }
    log "$("$DOCKER" logs "$id" 2>&1 | grep -o "interface $name up.*")"
    "$DOCKER" logs "$id" 2>&1 | grep "interface $name up.*fast path native" >/dev/null \
        || die "$name runs without the native fast path (the wheel was built without it?)"
done

# --- 5. checks ------------------------------------------------------------------------------
phase "ping"
"$DOCKER" exec "$CLIENT" ping -c 3 -i 0.3 -w 15 "$LAN_IP" >"$TMP/ping.log" 2>&1 \
    || { cat "$TMP/ping.log" >&2; die "no ping from client to lan ($LAN_IP) across the tunnel"; }
grep -E 'packets transmitted|rtt' "$TMP/ping.log" | while read -r line; do log "ping: $line"; done
# Proof that it went through the tunnel: gw-a's tunnel interface carried packets.
tun_tx=$("$DOCKER" exec "$GW_A" cat /sys/class/net/gw-a/statistics/tx_packets)
[ "$tun_tx" -gt 0 ] || die "gw-a's tunnel interface carried nothing: the ping took another path"

phase "iperf3"
"$DOCKER" exec -d "$LAN" iperf3 -s
sleep 0.5
"$DOCKER" exec "$CLIENT" iperf3 -c "$LAN_IP" -t "$IPERF_SECONDS" -J >"$TMP/iperf.json" 2>&1 \
    || { cat "$TMP/iperf.json" >&2; die "iperf3 client -> lan failed"; }
IPERF=$("$PY" - "$TMP/iperf.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
end = r["end"]
rx = end["sum_received"]["bits_per_second"] / 1e9
tx = end["sum_sent"]
print(f"{rx:.2f} Gb/s received ({tx['bytes'] / 1e9:.2f} GB in {tx['seconds']:.1f} s, "
      f"{tx.get('retransmits', 0)} retransmits)")
EOF
) || die "cannot read iperf3's result"
log "iperf3 client -> lan across the tunnel: $IPERF"

phase "sha256 transfer"
"$DOCKER" exec "$LAN" python3 -c '
import hashlib, socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
while data := c.recv(1 << 20):
    h.update(data)
    n += len(data)
print(h.hexdigest(), n)
' "$TRANSFER_PORT" >"$TMP/recv.out" 2>&1 &
BG_PIDS+=($!)
recv_pid=$!
"$DOCKER" exec "$CLIENT" python3 -c '
import hashlib, os, socket, sys, time
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
deadline = time.monotonic() + 15
while True:
    try:
        s = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
h, sent = hashlib.sha256(), 0
while sent < total:
    chunk = os.urandom(min(1 << 20, total - sent))
    h.update(chunk)
    s.sendall(chunk)
    sent += len(chunk)
s.shutdown(socket.SHUT_WR)
s.settimeout(60)
s.recv(1)  # the receiver closes once it has read everything
print(h.hexdigest(), sent)
' "$LAN_IP" "$TRANSFER_PORT" "$TRANSFER_MB" >"$TMP/send.out" 2>&1 \
    || { cat "$TMP/send.out" >&2; die "sending $TRANSFER_MB MB client -> lan failed"; }
wait "$recv_pid" || { cat "$TMP/recv.out" >&2; die "the receiver on lan failed"; }
BG_PIDS=()
read -r sent_hash sent_bytes <"$TMP/send.out"
read -r recv_hash recv_bytes <"$TMP/recv.out"
log "sent     $sent_bytes bytes sha256 $sent_hash (client)"
log "received $recv_bytes bytes sha256 $recv_hash (lan)"
if [ "$sent_hash" != "$recv_hash" ] || [ "$sent_bytes" != "$recv_bytes" ]; then
    die "the transfer arrived altered"
fi

phase "offload counters"
# SIGTERM (docker stop): each endpoint logs its counters as it shuts down.
dc stop --timeout 15 gw-b gw-a >"$TMP/stop.log" 2>&1 || { cat "$TMP/stop.log" >&2; die "stopping the gateways failed"; }
for name in gw-b gw-a; do
    line=$("$DOCKER" logs "$(cid "$name")" 2>&1 | grep -o "interface $name stopping; offload: .*" || true)
    [ -n "$line" ] || { "$DOCKER" logs "$(cid "$name")" >&2; die "$name logged no counters"; }
    echo "${line#*offload: }" >"$TMP/$name.counters"
    log "$name offload counters: ${line#*offload: }"
done
"$PY" - "$TMP/gw-b.counters" "$TMP/gw-a.counters" <<'EOF' || die "gw-b wrote no jumbo frames to its TUN"
import json, sys
b = json.load(open(sys.argv[1]))
a = json.load(open(sys.argv[2]))
frames, segments = b.get("jumbo_frames", 0), b.get("jumbo_segments", 0)
per = segments / frames if frames else 0.0
print(f"docker-test: gw-b wrote {frames} jumbo frames to its TUN carrying {segments} segments "
      f"({per:.1f} segments per frame); gw-a read {a.get('super_packets', 0)} super-packets "
      f"from its TUN")
sys.exit(0 if frames > 0 else 1)
EOF
phase "-"
