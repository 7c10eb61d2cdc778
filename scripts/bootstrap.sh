#!/usr/bin/env bash
# Installs everything `make demo`, `make test` and `make bench` need on a fresh Debian
# machine (system packages and the project's virtualenv). Idempotent: a second run only
# checks. Must run as root for the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(iperf3 sockperf iproute2 tcpdump wireguard-tools wireguard-go ethtool iptables
                 nftables procps kmod iputils-ping util-linux docker-compose python3
                 python3-venv python3-pip python3-dev build-essential libssl-dev golang-go
                 systemd libseccomp2)
# build-essential, python3-dev and libssl-dev build the native module
# (vpn/core/wireguard/_transport.c, linked to the system's libcrypto); golang-go builds the Go
# example of docs/tun-offload.md (examples/go) for its integration test. nftables and iptables:
# a full-tunnel config's firewall rules go through nft when it exists, as wg-quick's do,
# and through iptables-restore otherwise (vpn/host/firewall.py); the tests try both.
# systemd (systemd-analyze) and libseccomp2: the unit's test verifies packaging/vpn@.service
# and runs the endpoint under the unit's system-call filter. sockperf: `make bench`'s latency
# through the tunnel (ping-pong), beside iperf3's throughput.
VENV=${VENV:-.venv}
# shellcheck source=scripts/apt.sh
. scripts/apt.sh

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
# python3 may come from elsewhere (pyenv); only ask apt for it when none is usable, and
# for python3-dev only when that python has no headers of its own (pyenv ships them).
if python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    headers=$(python3 -c 'import os, sysconfig
print(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))')
    filtered=()
    for pkg in "${missing[@]}"; do
        case "$pkg" in
            python3|python3-venv|python3-pip) ;;
            python3-dev) [ "$headers" = True ] || filtered+=("$pkg") ;;
            *) filtered+=("$pkg") ;;
        esac
    done
    missing=("${filtered[@]}")
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing system packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -qq
    # --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.installed"
# Reinstall (which rebuilds the C modules in place: an editable install does not by itself)
# when the metadata, the build script or any C source changed since the last install, or a
# built module does not import.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
        || [ -n "$(find vpn -name '*.c' -newer "$stamp")" ] \
        || ! "$VENV/bin/python" -c 'import vpn.core.offload._gso, vpn.core.wireguard._transport' \
             2>/dev/null; then
    "$VENV/bin/pip" install -q --upgrade pip
    log="$VENV/install.log"
    if ! "$VENV/bin/pip" install -v -e '.[test,bench]' >"$log" 2>&1; then
        grep -E 'error|Error|ERROR' "$log" | grep -v "WARNING: Location" | head -30 >&2
        echo "bootstrap: installing the project failed (its C modules need build-essential," \
             "python3-dev or a python with its headers, and libssl-dev); the full output" \
             "is in $log" >&2
        exit 1
    fi
    touch "$stamp"
fi
